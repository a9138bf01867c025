//! `state-digest`: records every state group's resolved state (as Synapse
//! reads it) as one line per group, `id<TAB>digest`, to stdout or `--out
//! FILE`; or, with `--compare FILE`, checks the database against such a
//! recording and exits non-zero at the first difference.
//!
//! `--method synapse` runs Synapse's own query once per group (exact, the
//! default); `--method batched` uses one recursive query for all groups
//! (same answers, for big databases).

use clap::Parser;
use compressor_integration_tests::digest::{
    compare_digests, format_digests, parse_digests, state_digest,
};
use compressor_integration_tests::synapse_state::{self, Method};
use postgres::{Client, NoTls};
use std::collections::BTreeMap;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(about = "Digest (or compare) every state group's resolved state")]
struct Args {
    /// Database URL
    #[arg(long)]
    url: String,
    /// Only the groups of this room
    #[arg(long)]
    room: Option<String>,
    /// Write the digests here instead of stdout
    #[arg(long, conflicts_with = "compare")]
    out: Option<String>,
    /// Compare with a recording made earlier; exit 1 on the first difference
    #[arg(long)]
    compare: Option<String>,
    /// synapse (one Synapse query per group) or batched (one query)
    #[arg(long, default_value = "synapse")]
    method: Method,
}

fn digests(
    client: &mut Client,
    room: Option<&str>,
    method: Method,
) -> Result<BTreeMap<i64, String>, postgres::Error> {
    let groups = synapse_state::group_ids(client, room)?;
    let empty = state_digest(&Default::default());
    let mut digests: BTreeMap<i64, String> = groups.iter().map(|&g| (g, empty.clone())).collect();
    match method {
        Method::Synapse => synapse_state::for_each_state_synapse(client, &groups, |g, state| {
            digests.insert(g, state_digest(&state));
        })?,
        Method::Batched => synapse_state::for_each_state_batched(client, room, |g, state| {
            digests.insert(g, state_digest(&state));
        })?,
    }
    Ok(digests)
}

fn run(args: Args) -> Result<(), String> {
    let mut client =
        Client::connect(&args.url, NoTls).map_err(|e| format!("cannot connect: {e}"))?;
    let current = digests(&mut client, args.room.as_deref(), args.method)
        .map_err(|e| format!("reading states failed: {e}"))?;
    if let Some(file) = &args.compare {
        let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {file}: {e}"))?;
        let recorded = parse_digests(&text).map_err(|e| format!("{file}: {e}"))?;
        if let Some(difference) = compare_digests(&recorded, &current) {
            return Err(difference);
        }
        println!("all {} state groups have identical state", current.len());
        return Ok(());
    }
    let text = format_digests(&current);
    match &args.out {
        Some(file) => {
            std::fs::write(file, text).map_err(|e| format!("cannot write {file}: {e}"))?;
            eprintln!(
                "recorded the state of {} state groups in {file}",
                current.len()
            );
        }
        None => print!("{text}"),
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
