//! The Python module `synapse_auto_compressor` (feature `pyo3`, built by
//! maturin from `pyproject.toml`).
//!
//! It only converts arguments and delegates: the run is [`crate::run`], and
//! releasing the GIL, catching panics, the exceptions, the dict of figures
//! and logging are the manual crate's `python` plumbing, shared by both
//! modules.

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use synapse_compress_state::tool::args::Positive;
use synapse_compress_state::tool::python::{init_module, run_job};

use crate::config::AutoConfig;

pyo3::create_exception!(
    synapse_auto_compressor,
    CompressionError,
    PyRuntimeError,
    "A compression run failed; the message is the line the command-line tool prints after \"error: \"."
);

/// Compresses up to `number_of_chunks` chunks of `chunk_size` state groups,
/// like the `synapse_auto_compressor` command, continuing where the last run
/// (of either) stopped.
///
/// Returns the run's figures as a dict (the keys of `--json`). Raises
/// `ValueError` for an argument the command line would refuse, and
/// `CompressionError` when the run fails.
#[pyfunction]
#[pyo3(signature = (db_url, chunk_size, number_of_chunks, default_levels = "100,50,25", vacuum = false))]
fn run_compression<'py>(
    py: Python<'py>,
    db_url: String,
    chunk_size: i64,
    number_of_chunks: i64,
    default_levels: &str,
    vacuum: bool,
) -> PyResult<Bound<'py, PyAny>> {
    run(
        py,
        db_url,
        chunk_size,
        Some(number_of_chunks),
        default_levels,
        None,
        vacuum,
    )
}

/// The name both versions of the reference module used. With
/// `number_of_rooms=` (the reference's first version) it compresses that
/// many rooms, those estimated to save the most, each to its end, like
/// `--largest-rooms` (at most `number_of_chunks` chunks, when given too);
/// otherwise it is `run_compression` with `default_levels` before
/// `number_of_chunks` (the current version). A fourth positional argument
/// is `number_of_chunks`, as in the current version.
#[pyfunction]
#[pyo3(signature = (db_url, chunk_size, default_levels, number_of_chunks = None, number_of_rooms = None))]
fn compress_largest_rooms<'py>(
    py: Python<'py>,
    db_url: String,
    chunk_size: i64,
    default_levels: &str,
    number_of_chunks: Option<i64>,
    number_of_rooms: Option<i64>,
) -> PyResult<Bound<'py, PyAny>> {
    if number_of_chunks.is_none() && number_of_rooms.is_none() {
        return Err(PyValueError::new_err(
            "compress_largest_rooms needs number_of_chunks or number_of_rooms",
        ));
    }
    run(
        py,
        db_url,
        chunk_size,
        number_of_chunks,
        default_levels,
        number_of_rooms,
        false,
    )
}

/// One run with the command line's checks; no chunk count means no cap
/// (only with a room count).
fn run<'py>(
    py: Python<'py>,
    db_url: String,
    chunk_size: i64,
    number_of_chunks: Option<i64>,
    default_levels: &str,
    number_of_rooms: Option<i64>,
    vacuum: bool,
) -> PyResult<Bound<'py, PyAny>> {
    run_job::<CompressionError>(py, move || {
        let config = AutoConfig {
            db_url,
            chunk_size: Positive::named("chunk_size", chunk_size)?,
            number_of_chunks: Positive::named(
                "number_of_chunks",
                number_of_chunks.unwrap_or(i64::MAX),
            )?,
            default_levels: default_levels.parse()?,
            largest_rooms: number_of_rooms
                .map(|n| Positive::named("number_of_rooms", n))
                .transpose()?,
            vacuum,
            jobs: Positive::named("jobs", 1)?,
            reserve_connections: crate::connections::DEFAULT_RESERVE,
            reader: crate::config::Reader::Auto,
            pass_memory: crate::cli::DEFAULT_PASS_MEMORY,
            pass_range_ids: crate::pass::assemble::RANGE_IDS,
        };
        crate::run(&config).map(|summary| summary.to_json())
    })
}

/// Compresses the state tables of a whole Synapse database, a chunk at a
/// time, saving its progress in the database.
///
/// `run_compression(db_url, chunk_size, number_of_chunks, ...)` returns the
/// run's figures as a dict. Log lines go to the `synapse_auto_compressor`
/// and `synapse_compress_state` loggers of Python's `logging` module.
#[pymodule]
mod synapse_auto_compressor {
    #[pymodule_export]
    use super::{compress_largest_rooms, run_compression, CompressionError};

    #[pymodule_init]
    fn init(py: pyo3::Python<'_>) -> pyo3::PyResult<()> {
        super::init_module(py)
    }
}
