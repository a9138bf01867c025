//! The automatic tool: compresses the whole database a chunk at a time.
//! All the work is in the library; this parses arguments, runs, and maps
//! errors to exit codes (75, "temporary failure", when another run holds
//! the lock, so cron wrappers can tell it apart from a real error; 130 or
//! 143 when Ctrl-C or SIGTERM stopped the run between two chunks), and
//! writes the run's metrics (`--metrics-file`) whatever its outcome.

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::process::ExitCode;
use std::time::SystemTime;

use synapse_auto_compressor::cli::AutoArgs;
use synapse_auto_compressor::metrics;
use synapse_compress_state::tool::{self, args, say};

fn main() -> ExitCode {
    let args: AutoArgs = match args::parse() {
        Ok(args) => args,
        Err(code) => return code,
    };
    let _started = tool::start(args.no_progress);
    let started_at = SystemTime::now();
    if let Some(path) = &args.metrics_file {
        if let Err(err) = metrics::check(path) {
            say::err(&format!("error: {err}"));
            return err.exit_code();
        }
    }
    let config = args.into_config();
    // What goes to stdout: the survey (table or JSON), or with --json the
    // run's summary; and the signal that stopped either, if one did.
    let output = if args.dry_run {
        synapse_auto_compressor::survey::run(&config).map(|survey| {
            let text = if args.json {
                format!("{}\n", survey.to_json())
            } else {
                survey.to_table()
            };
            (Some(text), survey.interrupted)
        })
    } else {
        let run = synapse_auto_compressor::run(&config);
        if let Some(path) = &args.metrics_file {
            let end = metrics::RunEnd {
                summary: run.as_ref().ok(),
                exit_status: match &run {
                    Ok(summary) => summary.interrupted.map_or(0, |s| s.exit_status()),
                    Err(err) => err.exit_status(),
                },
                started: started_at,
                ended: SystemTime::now(),
            };
            if let Err(err) = metrics::write(path, &end) {
                // The run's own error, if any, is the one to report.
                if run.is_ok() {
                    say::err(&format!("error: {err}"));
                    return err.exit_code();
                }
                log::warn!("{err}");
            }
        }
        run.map(|summary| {
            let text = args.json.then(|| format!("{}\n", summary.to_json()));
            (text, summary.interrupted)
        })
    };
    match output {
        Ok((text, interrupted)) => {
            say::out_raw(&text.unwrap_or_default());
            match interrupted {
                Some(signal) => ExitCode::from(signal.exit_status()),
                None => ExitCode::SUCCESS,
            }
        }
        Err(err) => {
            say::err(&format!("error: {err}"));
            err.exit_code()
        }
    }
}
