//! The automatic tool: compresses the whole database a chunk at a time.
//! All the work is in the library; this parses arguments, runs, and maps
//! errors to exit codes (75, "temporary failure", when another run holds
//! the lock, so cron wrappers can tell it apart from a real error; 130 or
//! 143 when Ctrl-C or SIGTERM stopped the run between two chunks).

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::process::ExitCode;

use synapse_auto_compressor::cli::AutoArgs;
use synapse_compress_state::tool::{self, args};

fn main() -> ExitCode {
    let args: AutoArgs = match args::parse() {
        Ok(args) => args,
        Err(code) => return code,
    };
    let _started = tool::start(args.no_progress);
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
        synapse_auto_compressor::run(&config).map(|summary| {
            let text = args.json.then(|| format!("{}\n", summary.to_json()));
            (text, summary.interrupted)
        })
    };
    match output {
        Ok((text, interrupted)) => {
            print!("{}", text.unwrap_or_default());
            match interrupted {
                Some(signal) => ExitCode::from(signal.exit_status()),
                None => ExitCode::SUCCESS,
            }
        }
        Err(err) => {
            eprintln!("error: {err}");
            err.exit_code()
        }
    }
}
