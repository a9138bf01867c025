//! `generate`: writes realistic Synapse-like state groups into a database
//! that has Synapse's state schema (see `src/generator/`), then prints one
//! line per room and a total:
//!
//! ```text
//! room<TAB>!abc:example.org<TAB>groups=3000<TAB>rows=123456<TAB>snapshots=40
//! total<TAB>groups=3000<TAB>rows=123456<TAB>edges=2960<TAB>snapshots=40
//! ```
//!
//! Room ids are printed with `\`, newline, tab and carriage return escaped
//! as `\\`, `\n`, `\t`, `\r` (only nasty ids have them).

use clap::Parser;
use compressor_integration_tests::generator::{generate, GenConfig};
use postgres::{Client, NoTls};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(about = "Write realistic Synapse-like state groups into a database")]
struct Args {
    /// Database URL, e.g. postgresql://postgres@127.0.0.1:5432/synapse
    #[arg(long)]
    url: String,
    /// Starting point: tiny, small, nasty, multi, medium, demo, bench
    #[arg(long, default_value = "small")]
    preset: String,
    /// Random seed (same options and seed, same data)
    #[arg(long)]
    seed: Option<u64>,
    /// Number of rooms
    #[arg(long)]
    rooms: Option<usize>,
    /// State groups per room
    #[arg(long)]
    groups: Option<usize>,
    /// Members each room grows to
    #[arg(long)]
    members: Option<usize>,
    /// How early members join (1 = spread over the room's life, 3 = in its first third)
    #[arg(long)]
    join_rate: Option<f64>,
    /// Chance of a snapshot with no prev lacking some keys (0..1)
    #[arg(long)]
    resets: Option<f64>,
    /// Chance that a group builds on an older group (0..1)
    #[arg(long)]
    forks: Option<f64>,
    /// Share of forks the main line continues from, forgetting keys (0..1)
    #[arg(long)]
    fork_continue: Option<f64>,
    /// Chance that a resolution drops keys of one branch (0..1)
    #[arg(long)]
    resolve_drop: Option<f64>,
    /// Chance that a group merges two branches (0..1)
    #[arg(long)]
    resolves: Option<f64>,
    /// Synapse's snapshot rule: max groups in a delta chain
    #[arg(long)]
    max_hops: Option<usize>,
    /// Put quotes, dollars, backslashes, emoji, newlines... into every string
    #[arg(long)]
    nasty: bool,
    /// First group id (default: after the highest existing one)
    #[arg(long)]
    first_id: Option<i64>,
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('\t', "\\t")
        .replace('\r', "\\r")
}

fn run(args: Args) -> Result<(), String> {
    let mut cfg = GenConfig::preset(&args.preset).ok_or_else(|| {
        format!(
            "unknown preset {:?} (expected one of {})",
            args.preset,
            GenConfig::PRESETS.join(", ")
        )
    })?;
    if let Some(v) = args.seed {
        cfg.seed = v;
    }
    if let Some(v) = args.rooms {
        cfg.rooms = v;
    }
    if let Some(v) = args.groups {
        cfg.groups_per_room = v;
    }
    if let Some(v) = args.members {
        cfg.members = v;
    }
    if let Some(v) = args.join_rate {
        cfg.join_rate = v;
    }
    if let Some(v) = args.resets {
        cfg.reset_probability = v;
    }
    if let Some(v) = args.forks {
        cfg.fork_probability = v;
    }
    if let Some(v) = args.fork_continue {
        cfg.fork_continue_share = v;
    }
    if let Some(v) = args.resolve_drop {
        cfg.resolve_drop_probability = v;
    }
    if let Some(v) = args.resolves {
        cfg.resolve_probability = v;
    }
    if let Some(v) = args.max_hops {
        cfg.max_delta_hops = v;
    }
    cfg.nasty_strings |= args.nasty;
    for p in [
        cfg.fork_probability,
        cfg.resolve_probability,
        cfg.reset_probability,
        cfg.fork_continue_share,
        cfg.resolve_drop_probability,
    ] {
        if !(0.0..=1.0).contains(&p) {
            return Err(format!("probabilities must be between 0 and 1, got {p}"));
        }
    }

    let mut client =
        Client::connect(&args.url, NoTls).map_err(|e| format!("cannot connect: {e}"))?;
    cfg.first_group_id = match args.first_id {
        Some(id) => id,
        None => client
            .query_one("SELECT COALESCE(max(id), 0) + 1 FROM state_groups", &[])
            .map_err(|e| format!("cannot read state_groups (is the schema loaded?): {e}"))?
            .get(0),
    };

    let generated = generate(&cfg);
    generated
        .write(&mut client)
        .map_err(|e| format!("writing failed: {e}"))?;

    for room in &generated.rooms {
        let snapshots = generated
            .groups
            .iter()
            .filter(|g| g.room_id == room.room_id && g.prev.is_none())
            .count();
        println!(
            "room\t{}\tgroups={}\trows={}\tsnapshots={}",
            escape(&room.room_id),
            room.group_ids.len(),
            generated.room_row_count(&room.room_id),
            snapshots
        );
    }
    println!(
        "total\tgroups={}\trows={}\tedges={}\tsnapshots={}",
        generated.groups.len(),
        generated.row_count(),
        generated.edge_count(),
        generated.snapshot_count()
    );
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
