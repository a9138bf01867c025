//! `--metrics-file`: the automatic tool's figures for Prometheus' textfile
//! collector, read back with a real parser of the text exposition format.
//!
//! After a successful run the figures match its `--json` summary and the
//! last success is now; a failed run (refused connection) and an
//! interrupted one (SIGTERM while the first chunk's write waits for row
//! locks) keep
//! that last success and say how they ended; no temporary file is left.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use compressor_integration_tests::check::small_db;
use compressor_integration_tests::{pg, tools};
use prometheus_parse::{Scrape, Value};

const AUTO: &str = "synapse_auto_compressor";
const PREFIX: &str = "synapse_auto_compressor_";

/// The file's metrics by name (without the prefix), asserting that the
/// parser took every sample line, and that each metric is a documented
/// gauge without labels.
fn parse(path: &Path) -> BTreeMap<String, f64> {
    let text = std::fs::read_to_string(path).unwrap();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let sample_lines = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    assert_eq!(
        scrape.samples.len(),
        sample_lines,
        "unparsed lines:\n{text}"
    );
    let mut metrics = BTreeMap::new();
    for sample in scrape.samples {
        let Value::Gauge(value) = sample.value else {
            panic!(
                "{} is not a gauge: {:?}\n{text}",
                sample.metric, sample.value
            );
        };
        assert!(
            scrape.docs.contains_key(&sample.metric),
            "{} has no HELP",
            sample.metric
        );
        assert!(sample.labels.is_empty(), "{}", sample.metric);
        let name = sample.metric.strip_prefix(PREFIX).expect("prefixed");
        metrics.insert(name.to_owned(), value);
    }
    metrics
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn int(json: &serde_json::Value, key: &str) -> f64 {
    json[key]
        .as_i64()
        .unwrap_or_else(|| panic!("{key} in {json}")) as f64
}

#[test]
fn the_metrics_file_says_how_each_run_ended() {
    let (db, _) = small_db("metrics", 300);
    let dir = std::env::temp_dir().join(format!("sct-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("synapse_auto_compressor.prom");
    let file_arg = file.to_str().unwrap();

    // Three chunks of 100 groups, on the server at `url`.
    let args = |url: &str| -> Vec<String> {
        let args = [
            "-p",
            url,
            "-c",
            "100",
            "-n",
            "3",
            "--metrics-file",
            file_arg,
        ];
        args.iter().map(|s| s.to_string()).collect()
    };

    // A successful run.
    let before = now();
    let mut ok_args = args(db.url());
    ok_args.push("--json".to_owned());
    let run = tools::run_bin(AUTO, &ok_args);
    let json = tools::json_summary(&run);
    let ok = parse(&file);
    assert!(ok["last_success_timestamp_seconds"] >= before.floor());
    assert!(ok["last_success_timestamp_seconds"] <= now());
    assert_eq!(
        ok["last_run_timestamp_seconds"],
        ok["last_success_timestamp_seconds"]
    );
    assert!(ok["last_run_duration_seconds"] >= json["seconds"]["total"].as_f64().unwrap());
    assert_eq!(ok["last_run_exit_status"], 0.0);
    assert_eq!(ok["last_run_success"], 1.0);
    assert_eq!(ok["last_run_interrupted"], 0.0);
    for (metric, key) in [
        ("rows_saved", "rows_saved"),
        ("rows_deleted", "rows_deleted"),
        ("chunks", "chunks"),
        ("chunks_skipped", "chunks_skipped"),
        ("groups", "groups"),
        ("rooms_finished", "rooms_finished"),
        ("rooms_busy", "rooms_busy"),
        ("rooms_damaged", "rooms_damaged"),
    ] {
        assert_eq!(
            ok[&format!("last_run_{metric}")],
            int(&json, key),
            "{metric}"
        );
    }
    assert_eq!(ok["last_run_chunks"], 3.0);
    assert!(ok["last_run_rows_saved"] > 0.0, "{json}");

    // A failed run keeps the last success.
    let run = tools::run_bin(AUTO, &args(&pg::refused_url()));
    tools::assert_user_error(&run);
    let failed = parse(&file);
    assert_eq!(
        failed["last_success_timestamp_seconds"],
        ok["last_success_timestamp_seconds"]
    );
    assert!(failed["last_run_timestamp_seconds"] > ok["last_run_timestamp_seconds"]);
    assert_eq!(failed["last_run_exit_status"], 1.0);
    assert_eq!(failed["last_run_success"], 0.0);
    assert!(!failed.contains_key("last_run_rows_saved"), "{failed:?}");

    // An interrupted run: SIGTERM while its first chunk's write waits for
    // the groups' rows (as for a Synapse writer); it stops after that chunk.
    // Room by room: the pass would decide all three chunks first and let
    // their one sweep finish.
    let name = format!("metrics_{}", std::process::id());
    let url = format!("{}?application_name={name}", db.url());
    let mut holder = db.client();
    let mut tx = holder.transaction().unwrap();
    tx.batch_execute("SELECT id FROM state_groups FOR UPDATE")
        .unwrap();
    let child = Command::new(tools::bin_path(AUTO))
        .args(args(&url))
        .args(["--reader", "rooms"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    pg::wait_for_lock_wait(&mut db.client(), &name);
    // SAFETY: kill(2) has no memory effects on this process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    tx.rollback().unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(143), "{stderr}");
    let stopped = parse(&file);
    assert_eq!(
        stopped["last_success_timestamp_seconds"],
        ok["last_success_timestamp_seconds"]
    );
    assert_eq!(stopped["last_run_exit_status"], 143.0);
    assert_eq!(stopped["last_run_success"], 0.0);
    assert_eq!(stopped["last_run_interrupted"], 1.0);
    assert!(stopped["last_run_chunks"] < 3.0, "{stopped:?}");

    // Only the file: no temporary file left beside it.
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(names.len(), 1, "{names:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
