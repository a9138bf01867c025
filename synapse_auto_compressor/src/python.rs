//! The Python module `synapse_auto_compressor` (feature `pyo3`, built by
//! maturin from `pyproject.toml`).
//!
//! It only converts arguments and delegates: the run is [`crate::run`], and
//! releasing the GIL, catching panics, the exceptions, the dict of figures
//! and logging are the manual crate's `python` plumbing, shared by both
//! modules.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use synapse_compress_state::tool::args::Positive;
use synapse_compress_state::tool::python::{init_module, run_job};

use crate::manager::AutoConfig;

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
    run_job::<CompressionError>(py, move || {
        // The command line's checks, then one run.
        let config = AutoConfig {
            db_url,
            chunk_size: Positive::named("chunk_size", chunk_size)?,
            number_of_chunks: Positive::named("number_of_chunks", number_of_chunks)?,
            default_levels: default_levels.parse()?,
            vacuum,
        };
        crate::run(&config).map(|summary| summary.to_json())
    })
}

/// The older name of `run_compression`, kept for existing scripts; note
/// that `default_levels` comes before `number_of_chunks` here.
#[pyfunction]
#[pyo3(signature = (db_url, chunk_size, default_levels, number_of_chunks))]
fn compress_largest_rooms<'py>(
    py: Python<'py>,
    db_url: String,
    chunk_size: i64,
    default_levels: &str,
    number_of_chunks: i64,
) -> PyResult<Bound<'py, PyAny>> {
    run_compression(
        py,
        db_url,
        chunk_size,
        number_of_chunks,
        default_levels,
        false,
    )
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
