//! Native PostgreSQL reader for dativo.
//!
//! Runs `COPY (query) TO STDOUT (FORMAT binary)` on a dedicated Rust thread
//! (no GIL held), decodes the binary tuples straight into Arrow buffers and
//! hands each finished batch to Python through the Arrow C data interface
//! (`__arrow_c_array__` PyCapsules): the batch is never copied on the way.
//!
//! The Python package (`dativo_postgres_rs`) decides the query and the Arrow
//! schema with dativo's shared type mapping and passes one column spec per
//! output column; this module only decodes and enforces the value rules
//! (exact numeric fit, no infinite dates, one-dimensional arrays).

mod columns;
mod decode;
mod lowat;
mod numeric;
mod pool;
mod session;
mod stream;
mod tls;

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arrow_array::{Array, RecordBatch, StructArray};
use arrow_data::ffi::FFI_ArrowArray;
use arrow_schema::ffi::FFI_ArrowSchema;
use arrow_schema::DataType;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyCapsule, PyString, PyTuple};
use session::Session;
use tokio_postgres::CancelToken;

use decode::{ColumnSpec, Decoder, NativeError};
use tls::{ConnectFailure, Connector};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    // mimalloc's C API (libmimalloc-sys links it; its `extended` bindings would pull in another crate).
    fn mi_option_set(option: std::os::raw::c_int, value: std::os::raw::c_long);
}

/// mimalloc options, in the order of `mi_option_e` (mimalloc v3's include/mimalloc.h).
const MI_OPTION_ARENA_EAGER_COMMIT: std::os::raw::c_int = 4;
const MI_OPTION_PURGE_DELAY: std::os::raw::c_int = 15;

/// Give memory back to the OS as soon as batches are freed: the Arrow buffers built here are
/// freed on the writer's threads, and with mimalloc's defaults (arenas committed eagerly, purges
/// delayed 10 ms) their pages stayed resident, +40-80 MB of peak RSS end to end (see
/// docs/performance.md, "Reader-side throughput, session 4"). A `MIMALLOC_*` environment variable
/// set by the user wins.
fn tune_allocator() {
    for (option, env, value) in [
        (MI_OPTION_ARENA_EAGER_COMMIT, "MIMALLOC_ARENA_EAGER_COMMIT", 0),
        (MI_OPTION_PURGE_DELAY, "MIMALLOC_PURGE_DELAY", 0),
    ] {
        if std::env::var_os(env).is_none() {
            // SAFETY: mi_option_set only stores the value in mimalloc's option table.
            unsafe { mi_option_set(option, value) };
        }
    }
}

create_exception!(
    _native,
    ServerError,
    PyException,
    "An error reported by PostgreSQL or the connection: args (sqlstate or None, message)."
);
create_exception!(
    _native,
    DecodeError,
    PyException,
    "A value the Arrow type cannot hold: args (kind, column index, detail)."
);

fn to_py(err: NativeError) -> PyErr {
    match err {
        NativeError::Server { sqlstate, message } => ServerError::new_err((sqlstate, message)),
        NativeError::Decode { kind, column, detail } => DecodeError::new_err((kind, column, detail)),
    }
}

fn server_error(err: tokio_postgres::Error) -> NativeError {
    NativeError::from(err)
}

/// One PostgreSQL connection. `copy` streams a query's result as Arrow batches.
#[pyclass(module = "dativo_postgres_rs._native")]
struct Connection {
    client: Arc<Mutex<Option<Session>>>,
    cancel: CancelToken,
    connector: Connector,
    closed: Arc<AtomicBool>,
}

#[pymethods]
impl Connection {
    /// Connect with a libpq-style `key=value` string (keys rust-postgres knows, plus `sslmode` and
    /// `sslrootcert`: TLS with rustls, see `tls.rs`). Releases the GIL. ValueError for a malformed
    /// string; ServerError for everything else (TLS problems start with "SSL/TLS:").
    #[staticmethod]
    fn connect(py: Python<'_>, conninfo: String) -> PyResult<Connection> {
        let (client, connector) = py.detach(|| tls::connect(&conninfo)).map_err(|e| match e {
            ConnectFailure::Invalid(message) => PyValueError::new_err(message),
            ConnectFailure::Server(native) => to_py(native),
        })?;
        let cancel = client.cancel_token();
        Ok(Connection {
            client: Arc::new(Mutex::new(Some(client))),
            cancel,
            connector,
            closed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Run a statement that returns no rows (e.g. BEGIN, SET TRANSACTION SNAPSHOT). Releases the GIL.
    fn execute(&self, py: Python<'_>, sql: String) -> PyResult<()> {
        let client = self.client.clone();
        py.detach(move || -> Result<(), NativeError> {
            let mut guard = client.lock().unwrap_or_else(|p| p.into_inner());
            let c = guard.as_mut().ok_or_else(NativeError::closed)?;
            c.batch_execute(&sql).map_err(server_error)
        })
        .map_err(to_py)
    }

    /// Run a query returning one text value in its first row and column (e.g. pg_export_snapshot()).
    fn query_scalar(&self, py: Python<'_>, sql: String) -> PyResult<Option<String>> {
        let client = self.client.clone();
        py.detach(move || -> Result<Option<String>, NativeError> {
            let mut guard = client.lock().unwrap_or_else(|p| p.into_inner());
            let c = guard.as_mut().ok_or_else(NativeError::closed)?;
            let rows = c.simple_query(&sql).map_err(server_error)?;
            for msg in rows {
                if let tokio_postgres::SimpleQueryMessage::Row(row) = msg {
                    return Ok(row.get(0).map(str::to_owned));
                }
            }
            Ok(None)
        })
        .map_err(to_py)
    }

    /// Run one query without parameters and return `(columns, rows)`: one `(name, type oid, typmod)`
    /// per result column (PostgreSQL's row description), and the rows as tuples of `bool`, `int`,
    /// `str` or `None`. For describing a source (dativo's shared type mapping asks the server with
    /// it); a result column of another type raises DecodeError (kind "protocol"). Releases the GIL;
    /// ServerError for what PostgreSQL or the connection reports.
    fn query<'py>(&self, py: Python<'py>, sql: String) -> PyResult<(Vec<ColumnDesc>, Vec<Bound<'py, PyTuple>>)> {
        let client = self.client.clone();
        let (columns, rows) = py
            .detach(move || -> Result<(Vec<ColumnDesc>, Vec<Vec<Cell>>), NativeError> {
                let mut guard = client.lock().unwrap_or_else(|p| p.into_inner());
                let c = guard.as_mut().ok_or_else(NativeError::closed)?;
                let statement = c.prepare(&sql).map_err(server_error)?;
                let columns = statement
                    .columns()
                    .iter()
                    .map(|col| (col.name().to_string(), col.type_().oid(), col.type_modifier()))
                    .collect();
                let rows = c.query(&statement).map_err(server_error)?;
                let cells = rows
                    .iter()
                    .map(|row| (0..row.len()).map(|i| cell(row, i)).collect::<Result<Vec<_>, _>>())
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((columns, cells))
            })
            .map_err(to_py)?;
        let rows = rows
            .into_iter()
            .map(|cells| {
                let values = cells
                    .into_iter()
                    .map(|c| match c {
                        Cell::Null => py.None().into_bound(py),
                        Cell::Bool(b) => PyBool::new(py, b).to_owned().into_any(),
                        Cell::Int(v) => v.into_pyobject(py).expect("infallible").into_any(),
                        Cell::Text(s) => PyString::new(py, &s).into_any(),
                    })
                    .collect::<Vec<_>>();
                PyTuple::new(py, values)
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok((columns, rows))
    }

    /// Start `COPY (sql) TO STDOUT (FORMAT binary)` on a Rust thread and return the batch stream.
    ///
    /// `columns` holds one `(name, kind, is_array, precision, scale)` tuple per
    /// output column; `skip` trailing result columns are read and dropped.
    /// `setup` (e.g. BEGIN + SET TRANSACTION SNAPSHOT) runs first and
    /// `teardown` (e.g. COMMIT) after the copy, both on this connection.
    #[pyo3(signature = (sql, columns, skip, batch_size, setup=None, teardown=None))]
    fn copy(
        &self,
        sql: String,
        columns: Vec<(String, String, bool, u8, i8)>,
        skip: usize,
        batch_size: usize,
        setup: Option<String>,
        teardown: Option<String>,
    ) -> PyResult<BatchStream> {
        let specs = columns
            .into_iter()
            .map(|(name, kind, is_array, precision, scale)| ColumnSpec::new(name, &kind, is_array, precision, scale))
            .collect::<Result<Vec<_>, String>>()
            .map_err(PyValueError::new_err)?;
        // Rendezvous: a finished batch waits for the engine to take it; the engine's queue does the buffering.
        let (tx, rx) = sync_channel::<Result<RecordBatch, NativeError>>(0);
        let stop = Arc::new(AtomicBool::new(false));
        let client = self.client.clone();
        let closed = self.closed.clone();
        let thread_stop = stop.clone();
        let handle = std::thread::Builder::new()
            .name("dativo-postgres-rs".into())
            .spawn(move || {
                let mut guard = client.lock().unwrap_or_else(|p| p.into_inner());
                let result = match guard.as_mut() {
                    None => Err(NativeError::closed()),
                    Some(c) => run_copy(c, &sql, specs, skip, batch_size.max(1), setup, teardown, &tx, &thread_stop),
                };
                if let Err(e) = result {
                    if !thread_stop.load(Ordering::SeqCst) {
                        let _ = tx.send(Err(e));
                    }
                }
                if closed.load(Ordering::SeqCst) {
                    guard.take();
                }
            })
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start the reader thread: {e}")))?;
        Ok(BatchStream {
            rx: Mutex::new(Some(rx)),
            handle: Mutex::new(Some(handle)),
            stop,
            cancel: self.cancel.clone(),
            connector: self.connector.clone(),
        })
    }

    /// Ask the server to cancel the statement running on this connection. Releases the GIL.
    fn cancel(&self, py: Python<'_>) {
        let (token, connector) = (self.cancel.clone(), self.connector.clone());
        py.detach(move || tls::cancel(&token, &connector));
    }

    /// Close the connection. If a copy is still running, it is cancelled and
    /// the connection closes when that thread ends. Idempotent.
    fn close(&self, py: Python<'_>) {
        self.closed.store(true, Ordering::SeqCst);
        let taken = match self.client.try_lock() {
            Ok(mut guard) => guard.take(),
            Err(_) => {
                let (token, connector) = (self.cancel.clone(), self.connector.clone());
                py.detach(move || tls::cancel(&token, &connector));
                None
            }
        };
        if let Some(client) = taken {
            py.detach(move || drop(client));
        }
    }
}

/// A result column of `query`: name, type OID and typmod (as PostgreSQL's row description has them).
type ColumnDesc = (String, u32, i32);

/// One value of a `query` result, converted while the GIL is released.
enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Text(String),
}

fn cell(row: &tokio_postgres::Row, i: usize) -> Result<Cell, NativeError> {
    use tokio_postgres::types::Type;
    let ty = row.columns()[i].type_();
    let got = |e: tokio_postgres::Error| NativeError::from(e);
    let value = if *ty == Type::BOOL {
        row.try_get::<_, Option<bool>>(i).map_err(got)?.map(Cell::Bool)
    } else if *ty == Type::INT2 {
        row.try_get::<_, Option<i16>>(i).map_err(got)?.map(|v| Cell::Int(v.into()))
    } else if *ty == Type::INT4 {
        row.try_get::<_, Option<i32>>(i).map_err(got)?.map(|v| Cell::Int(v.into()))
    } else if *ty == Type::INT8 {
        row.try_get::<_, Option<i64>>(i).map_err(got)?.map(Cell::Int)
    } else if *ty == Type::OID {
        row.try_get::<_, Option<u32>>(i).map_err(got)?.map(|v| Cell::Int(v.into()))
    } else {
        match row.try_get::<_, Option<String>>(i) {
            Ok(v) => v.map(Cell::Text),
            Err(_) => {
                return Err(NativeError::Decode {
                    kind: "protocol",
                    column: i,
                    detail: format!("query results of type {} are not supported", ty.name()),
                })
            }
        }
    };
    Ok(value.unwrap_or(Cell::Null))
}

#[allow(clippy::too_many_arguments)]
fn run_copy(
    client: &mut Session,
    sql: &str,
    specs: Vec<ColumnSpec>,
    skip: usize,
    batch_size: usize,
    setup: Option<String>,
    teardown: Option<String>,
    tx: &std::sync::mpsc::SyncSender<Result<RecordBatch, NativeError>>,
    stop: &AtomicBool,
) -> Result<(), NativeError> {
    if let Some(setup) = &setup {
        client.batch_execute(setup).map_err(server_error)?;
    }
    let outcome = (|| -> Result<(), NativeError> {
        let copy = format!("COPY ({sql}) TO STDOUT (FORMAT binary)");
        let reader = client.copy_out(copy.as_str()).map_err(server_error)?;
        let mut decoder = Decoder::new(reader, specs, skip, batch_size);
        while let Some(batch) = decoder.next_batch()? {
            if stop.load(Ordering::SeqCst) || tx.send(Ok(batch)).is_err() {
                return Ok(());
            }
        }
        Ok(())
    })();
    match (&outcome, teardown) {
        (Ok(()), Some(t)) if !stop.load(Ordering::SeqCst) => client.batch_execute(&t).map_err(server_error)?,
        (_, Some(_)) => {
            let _ = client.batch_execute("ROLLBACK");
        }
        _ => {}
    }
    outcome
}

/// The batches of one running copy. Iterate it; `close` stops it early.
#[pyclass(module = "dativo_postgres_rs._native")]
struct BatchStream {
    rx: Mutex<Option<Receiver<Result<RecordBatch, NativeError>>>>,
    handle: Mutex<Option<JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
    cancel: CancelToken,
    connector: Connector,
}

#[pymethods]
impl BatchStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next batch (an object with `__arrow_c_array__`), or StopIteration at the end. Releases the GIL while waiting.
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<ArrowBatch>> {
        let taken = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(rx) = taken else { return Ok(None) };
        let (rx, received) = py.detach(move || loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(item) => return (rx, Some(item)),
                Err(RecvTimeoutError::Disconnected) => return (rx, None),
                Err(RecvTimeoutError::Timeout) => continue,
            }
        });
        if !self.stop.load(Ordering::SeqCst) {
            *self.rx.lock().unwrap_or_else(|p| p.into_inner()) = Some(rx);
        }
        match received {
            None => {
                self.join(py);
                Ok(None)
            }
            Some(Ok(batch)) => Ok(Some(ArrowBatch { batch: Some(batch) })),
            Some(Err(e)) => {
                self.join(py);
                Err(to_py(e))
            }
        }
    }

    /// Stop reading: cancel the statement, drop what is buffered and wait for the thread. Idempotent.
    fn close(&self, py: Python<'_>) {
        if !self.stop.swap(true, Ordering::SeqCst) {
            let running = self.handle.lock().map(|h| h.as_ref().is_some_and(|h| !h.is_finished())).unwrap_or(false);
            if running {
                let (token, connector) = (self.cancel.clone(), self.connector.clone());
                py.detach(move || tls::cancel(&token, &connector));
            }
        }
        self.rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.join(py);
    }
}

impl BatchStream {
    fn join(&self, py: Python<'_>) {
        let handle = self.handle.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            py.detach(move || {
                let _ = h.join();
            });
        }
    }
}

impl Drop for BatchStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.rx.get_mut().map(|r| r.take()).ok();
    }
}

/// One record batch, exported through the Arrow PyCapsule interface (once).
#[pyclass(module = "dativo_postgres_rs._native")]
struct ArrowBatch {
    batch: Option<RecordBatch>,
}

#[pymethods]
impl ArrowBatch {
    /// Number of rows.
    #[getter]
    fn num_rows(&self) -> usize {
        self.batch.as_ref().map_or(0, RecordBatch::num_rows)
    }

    /// Export as (schema capsule, array capsule) of a struct array; the buffers move, nothing is copied.
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_array__<'py>(
        &mut self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let _ = requested_schema; // the canonical schema is the only one offered
        let batch = self.batch.take().ok_or_else(|| PyValueError::new_err("this Arrow batch was already exported"))?;
        let fields = batch.schema().fields().clone();
        let array = StructArray::from(batch);
        let schema = FFI_ArrowSchema::try_from(&DataType::Struct(fields))
            .map_err(|e| PyRuntimeError::new_err(format!("cannot export the Arrow schema: {e}")))?;
        let data = FFI_ArrowArray::new(&array.to_data());
        let schema_capsule = PyCapsule::new(py, schema, Some(CString::new("arrow_schema").unwrap()))?;
        let array_capsule = PyCapsule::new(py, data, Some(CString::new("arrow_array").unwrap()))?;
        PyTuple::new(py, [schema_capsule.into_any(), array_capsule.into_any()])
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    tune_allocator();
    m.add_class::<Connection>()?;
    m.add_class::<BatchStream>()?;
    m.add_class::<ArrowBatch>()?;
    m.add("ServerError", m.py().get_type::<ServerError>())?;
    m.add("DecodeError", m.py().get_type::<DecodeError>())?;
    Ok(())
}
