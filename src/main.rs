//! The manual tool: compresses one room. All the work is in the library;
//! this only parses arguments, runs, prints, and maps errors to exit codes.

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use synapse_compress_state::cli::{parse_or_exit, ManualArgs};
use synapse_compress_state::{logging, manual, progress};

fn main() {
    let args: ManualArgs = parse_or_exit();
    logging::init();
    #[allow(clippy::let_unit_value)]
    let _failpoints = synapse_compress_state::failpoint::setup();
    if args.no_progress {
        progress::disable();
    }
    let json = args.json;
    match manual::run(&args.into_config()) {
        Ok(summary) if json => println!("{}", summary.to_json()),
        Ok(summary) => println!("{summary}"),
        Err(err) => {
            eprintln!("error: {err}");
            // sysexits.h EX_TEMPFAIL: another compressor has the room.
            std::process::exit(if err.is_busy() { 75 } else { 1 });
        }
    }
}
