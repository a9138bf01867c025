//! The Python module `synapse_compress_state` (feature `pyo3`, built by
//! maturin from `pyproject.toml`): the manual tool's `run_compression`,
//! with the reference module's signature. Arguments are checked as the
//! command line checks them; the work is [`crate::manual::run`].

use std::path::PathBuf;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use crate::error::Result;
use crate::manual::config::ManualConfig;
use crate::tool::args::AtLeast;
use crate::tool::python::{init_module, run_job};

pyo3::create_exception!(
    synapse_compress_state,
    CompressionError,
    PyRuntimeError,
    "A compression run failed; the message is the line the command-line tool prints after \"error: \"."
);

/// [`AtLeast::named`] for an argument that may be left out (`None`).
fn check_optional<const MIN: i64>(name: &str, value: Option<i64>) -> Result<Option<AtLeast<MIN>>> {
    value.map(|v| AtLeast::named(name, v)).transpose()
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
    vacuum = false,
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
    vacuum: bool,
) -> PyResult<Bound<'py, PyAny>> {
    run_job::<CompressionError>(py, move || {
        // The command line's checks, in its order.
        let config = ManualConfig {
            db_url,
            room_id,
            min_state_group: check_optional("min_state_group", min_state_group)?,
            groups_to_compress: check_optional("groups_to_compress", groups_to_compress)?,
            max_state_group: check_optional("max_state_group", max_state_group)?,
            level_sizes: level_sizes.parse()?,
            min_saved_rows: check_optional("min_saved_rows", min_saved_rows)?,
            output_file,
            transactions,
            graphs,
            commit_changes,
            verify,
            vacuum,
        };
        crate::manual::run(&config).map(|summary| summary.to_json())
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
