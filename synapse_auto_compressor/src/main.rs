//! The automatic tool: compresses the whole database a chunk at a time.
//! All the work is in the library; this parses arguments, runs, and maps
//! errors to exit codes (75, "temporary failure", when another run holds
//! the lock, so cron wrappers can tell it apart from a real error).

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use synapse_auto_compressor::cli::AutoArgs;
use synapse_compress_state::cli::parse_or_exit;
use synapse_compress_state::{logging, progress};

/// sysexits.h EX_TEMPFAIL.
const EXIT_TEMPFAIL: i32 = 75;

fn main() {
    let args: AutoArgs = parse_or_exit();
    logging::init();
    #[allow(clippy::let_unit_value)]
    let _failpoints = synapse_compress_state::failpoint::setup();
    if args.no_progress {
        progress::disable();
    }
    let json = args.json;
    match synapse_auto_compressor::run(&args.into_config()) {
        Ok(summary) => {
            if json {
                println!("{}", summary.to_json());
            }
        }
        Err(err) => {
            eprintln!("error: {err}");
            std::process::exit(if err.is_busy() { EXIT_TEMPFAIL } else { 1 });
        }
    }
}
