//! The manual tool: compresses one room. All the work is in the library
//! (`manual::run`); this parses arguments, runs, prints, and turns the
//! outcome into the exit status (130 or 143 when Ctrl-C or SIGTERM stopped
//! the run, whose summary then goes to stderr: stdout keeps only what a
//! script reads, the `--json` object or the SQL of `-o -`).

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::process::ExitCode;

use synapse_compress_state::manual::{self, ManualArgs};
use synapse_compress_state::output::sql;
use synapse_compress_state::tool::{self, args, say};

fn main() -> ExitCode {
    let args: ManualArgs = match args::parse() {
        Ok(args) => args,
        Err(code) => return code,
    };
    let _started = tool::start(args.no_progress);
    let json = args.json;
    // With `-o -` stdout carries the SQL (piped into psql): everything else
    // the tool prints goes to stderr.
    let sql_on_stdout = args.output_file.as_deref().is_some_and(sql::is_stdout);
    let print = |text: String| {
        if sql_on_stdout {
            say::err(&text);
        } else {
            say::out(&text);
        }
    };
    match manual::run(&args.into_config()) {
        Ok(summary) => {
            if let Some(signal) = summary.interrupted {
                say::err(&summary.to_string());
                if json {
                    print(summary.to_json().to_string());
                }
                return ExitCode::from(signal.exit_status());
            }
            print(if json {
                summary.to_json().to_string()
            } else {
                summary.to_string()
            });
        }
        Err(err) => {
            say::err(&format!("error: {err}"));
            return err.exit_code();
        }
    }
    ExitCode::SUCCESS
}
