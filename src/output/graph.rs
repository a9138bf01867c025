//! Graph export (`-g`): the group structure before and after, as node and
//! edge CSV files that Gephi and similar tools import.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::core::group::{GroupMap, Groups};
use crate::error::{Error, Result};

/// Writes `<prefix>_nodes.csv` and `<prefix>_edges.csv` into `dir` for
/// `before` (prefix `before`) and `after` (prefix `after`); returns the paths.
pub fn write_graphs(dir: &Path, before: &GroupMap, after: &impl Groups) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let ids: Vec<i64> = before.keys().copied().collect();
    let views: [(&str, &dyn Groups); 2] = [("before", before), ("after", after)];
    for (prefix, groups) in views {
        let nodes = dir.join(format!("{prefix}_nodes.csv"));
        let edges = dir.join(format!("{prefix}_edges.csv"));
        write_nodes(&nodes, &ids, groups).map_err(|e| Error::file(&nodes, e))?;
        write_edges(&edges, &ids, groups).map_err(|e| Error::file(&edges, e))?;
        written.push(nodes);
        written.push(edges);
    }
    Ok(written)
}

fn write_nodes(path: &Path, ids: &[i64], groups: &dyn Groups) -> std::io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    writeln!(out, "Id;Label;Rows;Snapshot;Compressed")?;
    for (group, entry) in ids.iter().filter_map(|&g| Some((g, groups.entry(g)?))) {
        writeln!(
            out,
            "{group};{group};{};{};{}",
            entry.delta.len(),
            entry.prev.is_none(),
            entry.in_range
        )?;
    }
    out.flush()
}

fn write_edges(path: &Path, ids: &[i64], groups: &dyn Groups) -> std::io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    writeln!(out, "Source;Target")?;
    for (group, entry) in ids.iter().filter_map(|&g| Some((g, groups.entry(g)?))) {
        if let Some(prev) = entry.prev {
            writeln!(out, "{group};{prev}")?;
        }
    }
    out.flush()
}
