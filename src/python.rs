//! The Python module `synapse_compress_state` (feature `pyo3`, built by
//! maturin from `pyproject.toml`), and the plumbing the
//! `synapse_auto_compressor` module shares with it.
//!
//! This file owns only the crossing between Python and Rust: converting
//! arguments, running the job with the GIL released and panics caught,
//! turning an [`Error`] into an exception carrying the command line's
//! one-line message, the run's figures (the `--json` object) into a dict,
//! and sending log records to Python's `logging`. All the work stays in
//! [`manual::run`].

use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::OnceLock;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use pyo3::PyTypeInfo;

use crate::cli::check_argument;
use crate::config::ManualConfig;
use crate::error::{Error, Result};
use crate::{manual, progress};

pyo3::create_exception!(
    synapse_compress_state,
    CompressionError,
    PyRuntimeError,
    "A compression run failed; the message is the line the command-line tool prints after \"error: \"."
);

/// Resets pyo3-log's cache of Python logger levels. The cache saves taking
/// the GIL for every filtered-out record; resetting it at each call lets a
/// program change its logging levels between calls.
static LOG_CACHE: OnceLock<pyo3_log::ResetHandle> = OnceLock::new();

/// Sets up what a module needs once per process: log records go to Python's
/// `logging` (loggers named after the Rust modules, such as
/// `synapse_compress_state.manual`), and progress bars are off, since they
/// would draw over the host program's output.
pub fn init_module(py: Python<'_>) -> PyResult<()> {
    progress::disable();
    if LOG_CACHE.get().is_none() {
        let logger = pyo3_log::Logger::new(py, pyo3_log::Caching::LoggersAndLevels)?;
        // Fails only if another logger is already installed in this
        // library copy; its records then keep going where they went.
        if let Ok(handle) = logger.install() {
            let _ = LOG_CACHE.set(handle);
        }
    }
    Ok(())
}

/// Runs `job` with the GIL released (other Python threads keep running)
/// and returns its figures as a dict. An [`Error`] becomes an exception
/// whose message is the error's one line: `ValueError` for an argument the
/// command line would refuse too, `E` (the module's `CompressionError`)
/// otherwise. A panic, a bug, becomes an `E` instead of aborting Python.
pub fn run_job<'py, E: PyTypeInfo>(
    py: Python<'py>,
    job: impl FnOnce() -> Result<serde_json::Value> + Send,
) -> PyResult<Bound<'py, PyAny>> {
    if let Some(cache) = LOG_CACHE.get() {
        cache.reset();
    }
    match py.detach(|| panic::catch_unwind(AssertUnwindSafe(job))) {
        Ok(Ok(figures)) => to_python(py, &figures),
        Ok(Err(err)) => Err(match err {
            Error::InvalidArgument(_) | Error::BadConnectionString(_) => {
                PyValueError::new_err(err.to_string())
            }
            _ => PyErr::new::<E, _>(err.to_string()),
        }),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(PyErr::new::<E, _>(format!(
                "internal error (a bug, please report it): {what}"
            )))
        }
    }
}

/// A JSON value as the matching Python object (objects become dicts).
fn to_python<'py>(py: Python<'py>, value: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    use serde_json::Value;
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.into_pyobject(py)?.into_any(),
            (None, Some(u)) => u.into_pyobject(py)?.into_any(),
            _ => n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any(),
        },
        Value::String(s) => s.into_pyobject(py)?.into_any(),
        Value::Array(items) => {
            let items = items
                .iter()
                .map(|item| to_python(py, item))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (key, item) in map {
                dict.set_item(key, to_python(py, item)?)?;
            }
            dict.into_any()
        }
    })
}

/// [`check_argument`] for an argument that may be left out (`None`).
fn check_optional(name: &str, value: Option<i64>, min: i64) -> Result<Option<i64>> {
    value.map(|v| check_argument(name, v, min)).transpose()
}

/// Compresses one room, like the `synapse_compress_state` command.
///
/// Returns the run's figures as a dict (the keys of `--json`). Raises
/// `ValueError` for an argument the command line would refuse, and
/// `CompressionError` when the run fails.
#[pyfunction]
#[pyo3(signature = (
    db_url,
    room_id,
    output_file = None,
    min_state_group = None,
    groups_to_compress = None,
    min_saved_rows = None,
    max_state_group = None,
    level_sizes = "100,50,25",
    transactions = true,
    graphs = false,
    commit_changes = false,
    verify = true,
))]
#[allow(clippy::too_many_arguments)] // the reference module's signature
fn run_compression<'py>(
    py: Python<'py>,
    db_url: String,
    room_id: String,
    output_file: Option<PathBuf>,
    min_state_group: Option<i64>,
    groups_to_compress: Option<i64>,
    min_saved_rows: Option<i64>,
    max_state_group: Option<i64>,
    level_sizes: &str,
    transactions: bool,
    graphs: bool,
    commit_changes: bool,
    verify: bool,
) -> PyResult<Bound<'py, PyAny>> {
    run_job::<CompressionError>(py, move || {
        // The command line's checks, in its order.
        let config = ManualConfig {
            db_url,
            room_id,
            min_state_group: check_optional("min_state_group", min_state_group, 0)?,
            groups_to_compress: check_optional("groups_to_compress", groups_to_compress, 1)?,
            max_state_group: check_optional("max_state_group", max_state_group, 0)?,
            level_sizes: level_sizes.parse()?,
            min_saved_rows: check_optional("min_saved_rows", min_saved_rows, 0)?,
            output_file,
            transactions,
            graphs,
            commit_changes,
            verify,
        };
        manual::run(&config).map(|summary| summary.to_json())
    })
}

/// Compresses the state groups of one room of a Synapse database.
///
/// `run_compression(db_url, room_id, ...)` returns the run's figures as a
/// dict. Log lines go to the `synapse_compress_state` loggers of Python's
/// `logging` module.
#[pymodule]
mod synapse_compress_state {
    #[pymodule_export]
    use super::{run_compression, CompressionError};

    #[pymodule_init]
    fn init(py: pyo3::Python<'_>) -> pyo3::PyResult<()> {
        super::init_module(py)
    }
}
