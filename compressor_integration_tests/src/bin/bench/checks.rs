//! The cheap check after each run: the group count, the edges' sanity and
//! the resolved state of the sampled groups, compared with `bench_src`.

use crate::source::{digests, Source};
use crate::{count, Res};
use postgres::Client;

/// Group count, edge sanity and the sampled states, after a run.
pub fn check_after(c: &mut Client, source: &Source) -> Res<String> {
    let mut problems = Vec::new();
    let groups = count(c, "SELECT count(*) FROM state_groups", &[])?;
    if groups != source.groups {
        problems.push(format!("{} groups, expected {}", groups, source.groups));
    }
    let forward = count(
        c,
        "SELECT count(*) FROM state_group_edges WHERE prev_state_group >= state_group",
        &[],
    )?;
    if forward > 0 {
        problems.push(format!("{forward} edges to a higher id"));
    }
    let doubled = count(
        c,
        "SELECT count(*) FROM (SELECT 1 FROM state_group_edges
         GROUP BY state_group HAVING count(*) > 1) x",
        &[],
    )?;
    if doubled > 0 {
        problems.push(format!("{doubled} groups with several edges"));
    }
    let ids: Vec<i64> = source.sample.keys().copied().collect();
    let after = digests(c, &ids)?;
    let changed = source
        .sample
        .iter()
        .filter(|(g, d)| after.get(*g) != Some(*d))
        .count();
    if changed > 0 {
        problems.push(format!("{changed} of {} sampled states changed", ids.len()));
    }
    Ok(if problems.is_empty() {
        match ids.len() {
            0 => "ok (no sample)".to_string(),
            n => format!("ok ({n} states)"),
        }
    } else {
        format!("FAILED: {}", problems.join("; "))
    })
}
