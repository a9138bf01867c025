//! The automatic tool: compresses the whole database a chunk at a time.
//! All the work is in the library; this parses arguments, runs, and maps
//! errors to exit codes (75, "temporary failure", when another run holds
//! the lock, so cron wrappers can tell it apart from a real error).

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::process::ExitCode;

use synapse_auto_compressor::cli::AutoArgs;
use synapse_compress_state::tool::{args, failpoint, logging, progress};

fn main() -> ExitCode {
    let args: AutoArgs = match args::parse() {
        Ok(args) => args,
        Err(code) => return code,
    };
    logging::init();
    #[allow(clippy::let_unit_value)]
    let _failpoints = failpoint::setup();
    if args.no_progress {
        progress::disable();
    }
    let json = args.json;
    match synapse_auto_compressor::run(&args.into_config()) {
        Ok(summary) => {
            if json {
                println!("{}", summary.to_json());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            err.exit_code()
        }
    }
}
