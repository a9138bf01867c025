//! The manual tool: compresses one room. All the work is in the library;
//! this only parses arguments, runs, prints, and maps errors to exit codes.

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use synapse_compress_state::cli::{parse_or_exit, ManualArgs};
use synapse_compress_state::{logging, manual, progress, sql};

fn main() {
    let args: ManualArgs = parse_or_exit();
    logging::init();
    #[allow(clippy::let_unit_value)]
    let _failpoints = synapse_compress_state::failpoint::setup();
    if args.no_progress {
        progress::disable();
    }
    let json = args.json;
    // With `-o -` stdout carries the SQL (piped into psql): everything else
    // the tool prints goes to stderr.
    let sql_on_stdout = args.output_file.as_deref().is_some_and(sql::is_stdout);
    let print = |text: String| {
        if sql_on_stdout {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    };
    match manual::run(&args.into_config()) {
        Ok(summary) if json => print(summary.to_json().to_string()),
        Ok(summary) => print(summary.to_string()),
        Err(err) => {
            eprintln!("error: {err}");
            // sysexits.h EX_TEMPFAIL: another compressor has the room.
            std::process::exit(if err.is_busy() { 75 } else { 1 });
        }
    }
}
