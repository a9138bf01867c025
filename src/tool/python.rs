//! What both Python modules (feature `pyo3`; `synapse_compress_state` in
//! `manual::python`, `synapse_auto_compressor` in its own crate) share:
//! the crossing between Python and Rust. A job runs with the GIL released
//! and panics caught; an [`Error`] becomes an exception carrying the command
//! line's one-line message; the run's figures (the `--json` object) become
//! a dict; log records go to Python's `logging`.

use std::panic::{self, AssertUnwindSafe};
use std::sync::OnceLock;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use pyo3::PyTypeInfo;

use crate::error::{Error, Result};
use crate::tool::progress;

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
