//! PostgreSQL binary COPY -> Arrow arrays.
//!
//! Stream layout: an 11-byte signature, flags (i32), header extension
//! (i32 length + bytes); then per tuple an i16 field count (-1 ends the
//! stream) and per field an i32 length (-1 = NULL) and that many bytes, in
//! each type's binary send format (big-endian).

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, FixedSizeBinaryArray, Float32Array,
    Float64Array, Int16Array, Int32Array, Int64Array, ListArray, RecordBatch, RecordBatchOptions, StringArray,
    Time64MicrosecondArray, TimestampMicrosecondArray,
};
use arrow_buffer::{BooleanBufferBuilder, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use bytes::{Buf, Bytes};

use crate::columns::{self, ValueError};
use crate::numeric::numeric_to_i128;
use crate::pool::Pool;

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Days from 1970-01-01 to 2000-01-01 (PostgreSQL's epoch).
const EPOCH_DAYS: i32 = 10_957;
const EPOCH_MICROS: i64 = 946_684_800_000_000;
/// A batch is cut early once its buffers hold this much, whatever the row count: with the
/// engine queue and the writer buffer holding a few batches each, this bounds peak memory.
/// (8 MiB measured no better end to end: docs/performance.md, "postgres-rs, session 5".)
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// An error for Python: from the server/connection, or a value Arrow cannot hold.
#[derive(Debug)]
pub enum NativeError {
    Server { sqlstate: Option<String>, message: String },
    Decode { kind: &'static str, column: usize, detail: String },
}

impl NativeError {
    pub fn closed() -> Self {
        NativeError::Server { sqlstate: None, message: "connection is closed".into() }
    }
    fn protocol(detail: impl Into<String>) -> Self {
        NativeError::Decode { kind: "protocol", column: 0, detail: detail.into() }
    }
}

impl From<tokio_postgres::Error> for NativeError {
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            return NativeError::Server {
                sqlstate: Some(db.code().code().to_string()),
                message: db.message().to_string(),
            };
        }
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            let text = s.to_string();
            if !message.contains(&text) {
                message = format!("{message}: {text}");
            }
            source = s.source();
        }
        if e.is_closed() && !message.contains("closed") {
            message = format!("connection is closed: {message}");
        }
        NativeError::Server { sqlstate: None, message }
    }
}

impl From<std::io::Error> for NativeError {
    fn from(e: std::io::Error) -> Self {
        // CopyReader (session.rs) wraps server errors in io::Error; surface the PostgreSQL error itself.
        if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<tokio_postgres::Error>()) {
            if let Some(db) = inner.as_db_error() {
                return NativeError::Server {
                    sqlstate: Some(db.code().code().to_string()),
                    message: db.message().to_string(),
                };
            }
            return NativeError::Server { sqlstate: None, message: format!("connection lost: {inner}") };
        }
        NativeError::Server { sqlstate: None, message: format!("connection lost: {e}") }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    I16,
    I32,
    I64,
    F32,
    F64,
    Numeric,
    Text,
    Bool,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Uuid,
    Bytea,
}

/// One output column: its name, value representation and (for numeric) decimal precision and scale.
pub struct ColumnSpec {
    name: String,
    kind: Kind,
    is_array: bool,
    precision: u8,
    scale: i8,
}

impl ColumnSpec {
    pub fn new(name: String, kind: &str, is_array: bool, precision: u8, scale: i8) -> Result<Self, String> {
        let kind = match kind {
            "int16" => Kind::I16,
            "int32" => Kind::I32,
            "int64" => Kind::I64,
            "float32" => Kind::F32,
            "float64" => Kind::F64,
            "numeric" => Kind::Numeric,
            "text" => Kind::Text,
            "bool" => Kind::Bool,
            "date" => Kind::Date,
            "time" => Kind::Time,
            "timestamp" => Kind::Timestamp,
            "timestamptz" => Kind::TimestampTz,
            "uuid" => Kind::Uuid,
            "bytea" => Kind::Bytea,
            other => return Err(format!("column {name:?}: unknown kind {other:?}")),
        };
        if kind == Kind::Numeric && (precision == 0 || precision > 38 || scale < 0 || scale as u8 > precision) {
            return Err(format!("column {name:?}: invalid decimal({precision},{scale})"));
        }
        Ok(ColumnSpec { name, kind, is_array, precision, scale })
    }

    fn value_type(&self) -> DataType {
        match self.kind {
            Kind::I16 => DataType::Int16,
            Kind::I32 => DataType::Int32,
            Kind::I64 => DataType::Int64,
            Kind::F32 => DataType::Float32,
            Kind::F64 => DataType::Float64,
            Kind::Numeric => DataType::Decimal128(self.precision, self.scale),
            Kind::Text => DataType::Utf8,
            Kind::Bool => DataType::Boolean,
            Kind::Date => DataType::Date32,
            Kind::Time => DataType::Time64(TimeUnit::Microsecond),
            Kind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            Kind::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Kind::Uuid => DataType::FixedSizeBinary(16),
            Kind::Bytea => DataType::Binary,
        }
    }

    fn value_field(&self, name: &str) -> Field {
        let field = Field::new(name, self.value_type(), true);
        if self.kind == Kind::Uuid {
            let meta = HashMap::from([
                ("ARROW:extension:name".to_string(), "arrow.uuid".to_string()),
                ("ARROW:extension:metadata".to_string(), String::new()),
            ]);
            field.with_metadata(meta)
        } else {
            field
        }
    }

    pub fn field(&self) -> Field {
        if self.is_array {
            Field::new(&self.name, DataType::List(Arc::new(self.value_field("item"))), true)
        } else {
            self.value_field(&self.name)
        }
    }
}

/// Growable value storage of one kind.
enum Values {
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Dec(Vec<i128>),
    Bool(BooleanBufferBuilder),
    Bytes { offsets: Vec<i32>, data: Vec<u8> },
    Fixed(Vec<u8>),
}

struct ValueBuilder {
    kind: Kind,
    precision: u8,
    scale: i8,
    values: Values,
    /// Created at the first NULL of a batch (backfilled with `true`): a column without NULLs
    /// pays no validity bit per value.
    validity: Option<BooleanBufferBuilder>,
    /// Values (NULLs included) in the current batch.
    len: usize,
    /// Room to reserve at the start of the next batch: the last batch's values and bytes plus 1/8.
    reserve_values: usize,
    reserve_bytes: usize,
    /// Where the finished batches' value (or byte) and offset vectors come back to (pool.rs).
    pool: Pool,
    offsets_pool: Pool,
}

impl ValueBuilder {
    fn new(spec: &ColumnSpec, capacity: usize) -> Self {
        let values = match spec.kind {
            Kind::I16 => Values::I16(Vec::with_capacity(capacity)),
            Kind::I32 | Kind::Date => Values::I32(Vec::with_capacity(capacity)),
            Kind::I64 | Kind::Time | Kind::Timestamp | Kind::TimestampTz => Values::I64(Vec::with_capacity(capacity)),
            Kind::F32 => Values::F32(Vec::with_capacity(capacity)),
            Kind::F64 => Values::F64(Vec::with_capacity(capacity)),
            Kind::Numeric => Values::Dec(Vec::with_capacity(capacity)),
            Kind::Bool => Values::Bool(BooleanBufferBuilder::new(capacity)),
            Kind::Text | Kind::Bytea => {
                let mut offsets = Vec::with_capacity(capacity + 1);
                offsets.push(0);
                Values::Bytes { offsets, data: Vec::with_capacity(capacity * 16) }
            }
            Kind::Uuid => Values::Fixed(Vec::with_capacity(capacity * 16)),
        };
        ValueBuilder {
            kind: spec.kind,
            precision: spec.precision,
            scale: spec.scale,
            values,
            validity: None,
            len: 0,
            reserve_values: 0,
            reserve_bytes: 0,
            pool: Pool::default(),
            offsets_pool: Pool::default(),
        }
    }

    /// Pre-size the buffers for a batch like the last one, so they do not grow by doubling and
    /// copying. Called when a batch starts (not when the last one is finished: by then the
    /// consumer has taken that batch, and its buffers can be freed before these fill up).
    fn reserve(&mut self) {
        let n = std::mem::take(&mut self.reserve_values);
        let pool = &self.pool;
        // A vector handed out with the last batch is replaced by one that came back, if any.
        fn refill<T: Send + 'static>(v: &mut Vec<T>, pool: &Pool, n: usize) {
            if v.capacity() == 0 {
                *v = pool.take(n);
            } else {
                v.reserve(n);
            }
        }
        match &mut self.values {
            Values::I16(v) => refill(v, pool, n),
            Values::I32(v) => refill(v, pool, n),
            Values::I64(v) => refill(v, pool, n),
            Values::F32(v) => refill(v, pool, n),
            Values::F64(v) => refill(v, pool, n),
            Values::Dec(v) => refill(v, pool, n),
            Values::Bool(b) => b.reserve(n),
            Values::Bytes { offsets, data } => {
                if offsets.is_empty() {
                    *offsets = self.offsets_pool.take(n + 1);
                    offsets.push(0);
                } else {
                    offsets.reserve(n);
                }
                refill(data, pool, std::mem::take(&mut self.reserve_bytes));
            }
            Values::Fixed(v) => refill(v, pool, n * 16),
        }
    }

    fn nbytes(&self) -> usize {
        match &self.values {
            Values::I16(v) => v.len() * 2,
            Values::I32(v) => v.len() * 4,
            Values::I64(v) => v.len() * 8,
            Values::F32(v) => v.len() * 4,
            Values::F64(v) => v.len() * 8,
            Values::Dec(v) => v.len() * 16,
            Values::Bool(b) => b.len() / 8,
            Values::Bytes { offsets, data } => offsets.len() * 4 + data.len(),
            Values::Fixed(v) => v.len(),
        }
    }

    fn push_null(&mut self) {
        let len = self.len;
        self.validity
            .get_or_insert_with(|| {
                let mut v = BooleanBufferBuilder::new(len.max(1024) * 2);
                v.append_n(len, true);
                v
            })
            .append(false);
        self.len += 1;
        match &mut self.values {
            Values::I16(v) => v.push(0),
            Values::I32(v) => v.push(0),
            Values::I64(v) => v.push(0),
            Values::F32(v) => v.push(0.0),
            Values::F64(v) => v.push(0.0),
            Values::Dec(v) => v.push(0),
            Values::Bool(b) => b.append(false),
            Values::Bytes { offsets, data } => offsets.push(data.len() as i32),
            Values::Fixed(v) => v.extend_from_slice(&[0u8; 16]),
        }
    }

    /// Append one non-NULL value from its binary form; Err(kind, detail) for a value Arrow cannot hold.
    #[inline]
    fn push(&mut self, b: &[u8]) -> Result<(), (&'static str, String)> {
        if let Some(v) = &mut self.validity {
            v.append(true);
        }
        self.len += 1;
        let bad_len = || ("protocol", format!("unexpected {}-byte value", b.len()));
        match (&mut self.values, self.kind) {
            (Values::I16(v), _) => v.push(i16::from_be_bytes(b.try_into().map_err(|_| bad_len())?)),
            (Values::I32(v), Kind::Date) => {
                let raw = i32::from_be_bytes(b.try_into().map_err(|_| bad_len())?);
                // i32::MAX/MIN are 'infinity'/'-infinity'; beyond date32 wraps are refused too.
                let days = if raw == i32::MAX || raw == i32::MIN { None } else { raw.checked_add(EPOCH_DAYS) };
                v.push(days.ok_or(("temporal", String::new()))?);
            }
            (Values::I32(v), _) => v.push(i32::from_be_bytes(b.try_into().map_err(|_| bad_len())?)),
            (Values::I64(v), Kind::Timestamp | Kind::TimestampTz) => {
                let raw = i64::from_be_bytes(b.try_into().map_err(|_| bad_len())?);
                let micros = if raw == i64::MAX || raw == i64::MIN { None } else { raw.checked_add(EPOCH_MICROS) };
                v.push(micros.ok_or(("temporal", String::new()))?);
            }
            (Values::I64(v), _) => v.push(i64::from_be_bytes(b.try_into().map_err(|_| bad_len())?)),
            (Values::F32(v), _) => v.push(f32::from_be_bytes(b.try_into().map_err(|_| bad_len())?)),
            (Values::F64(v), _) => v.push(f64::from_be_bytes(b.try_into().map_err(|_| bad_len())?)),
            (Values::Dec(v), _) => v.push(numeric_to_i128(b, self.precision, self.scale)?),
            (Values::Bool(bb), _) => bb.append(b.first().copied().ok_or_else(bad_len)? != 0),
            (Values::Bytes { offsets, data }, _) => {
                data.extend_from_slice(b);
                let end = i32::try_from(data.len())
                    .map_err(|_| ("protocol", "more than 2 GiB of text in one batch".to_string()))?;
                offsets.push(end);
            }
            (Values::Fixed(v), _) => {
                if b.len() != 16 {
                    return Err(bad_len());
                }
                v.extend_from_slice(b);
            }
        }
        Ok(())
    }

    /// Append one tile's values of this column (see columns.rs): one loop per representation.
    ///
    /// # Safety
    /// `fields` as in columns.rs's module docs.
    unsafe fn push_fields(&mut self, base: *const u8, fields: &[u32]) -> Result<(), ValueError> {
        let nulls = match (&mut self.values, self.kind) {
            (Values::I16(v), _) => {
                columns::fixed(v, base, fields, "protocol", |b: [u8; 2]| Some(i16::from_be_bytes(b)))?
            }
            (Values::I32(v), Kind::Date) => columns::fixed(v, base, fields, "temporal", |b: [u8; 4]| {
                // i32::MAX/MIN are 'infinity'/'-infinity'; beyond date32 wraps are refused too.
                let raw = i32::from_be_bytes(b);
                if raw == i32::MAX || raw == i32::MIN {
                    None
                } else {
                    raw.checked_add(EPOCH_DAYS)
                }
            })?,
            (Values::I32(v), _) => {
                columns::fixed(v, base, fields, "protocol", |b: [u8; 4]| Some(i32::from_be_bytes(b)))?
            }
            (Values::I64(v), Kind::Timestamp | Kind::TimestampTz) => {
                columns::fixed(v, base, fields, "temporal", |b: [u8; 8]| {
                    let raw = i64::from_be_bytes(b);
                    if raw == i64::MAX || raw == i64::MIN {
                        None
                    } else {
                        raw.checked_add(EPOCH_MICROS)
                    }
                })?
            }
            (Values::I64(v), _) => {
                columns::fixed(v, base, fields, "protocol", |b: [u8; 8]| Some(i64::from_be_bytes(b)))?
            }
            (Values::F32(v), _) => {
                columns::fixed(v, base, fields, "protocol", |b: [u8; 4]| Some(f32::from_be_bytes(b)))?
            }
            (Values::F64(v), _) => {
                columns::fixed(v, base, fields, "protocol", |b: [u8; 8]| Some(f64::from_be_bytes(b)))?
            }
            (Values::Bytes { offsets, data }, _) => columns::bytes(offsets, data, base, fields)?,
            (Values::Fixed(v), _) => columns::fixed16(v, base, fields)?,
            (Values::Bool(bb), _) => {
                let mut nulls = 0;
                let mut bits = columns::Bits::default();
                for &off in fields {
                    let p = base.add(off as usize);
                    let len = columns::field_len(p);
                    if len > 0 {
                        bits.push(bb, *p.add(4) != 0);
                    } else if len < 0 {
                        nulls += 1;
                        bits.push(bb, false);
                    } else {
                        bits.flush(bb);
                        return Err(columns::bad_len(len));
                    }
                }
                bits.flush(bb);
                nulls
            }
            (Values::Dec(v), _) => {
                let mut nulls = 0;
                v.reserve(fields.len());
                for &off in fields {
                    let p = base.add(off as usize);
                    let len = columns::field_len(p);
                    if len < 0 {
                        nulls += 1;
                        v.push(0);
                    } else {
                        v.push(numeric_to_i128(columns::field_bytes(p, len), self.precision, self.scale)?);
                    }
                }
                nulls
            }
        };
        let n = fields.len();
        if nulls > 0 {
            let len = self.len;
            let validity = self.validity.get_or_insert_with(|| {
                let mut v = BooleanBufferBuilder::new(len.max(1024) * 2);
                v.append_n(len, true);
                v
            });
            let mut bits = columns::Bits::default();
            for &off in fields {
                bits.push(validity, columns::field_len(base.add(off as usize)) >= 0);
            }
            bits.flush(validity);
        } else if let Some(validity) = &mut self.validity {
            validity.append_n(n, true);
        }
        self.len += n;
        Ok(())
    }

    fn len(&self) -> usize {
        self.len
    }

    /// The finished array; the builder starts the next batch with buffers pre-sized to this one's
    /// (plus 1/8), so a batch does not grow its buffers by doubling and copying.
    fn finish(&mut self, field: &Field) -> Result<ArrayRef, NativeError> {
        let len = std::mem::take(&mut self.len);
        let nulls = self.validity.take().map(|mut v| NullBuffer::new(v.finish()));
        self.reserve_values = len + len / 8;
        let err = |e: arrow_schema::ArrowError| NativeError::protocol(format!("column {}: {e}", field.name()));
        let array: ArrayRef = match (&mut self.values, self.kind) {
            (Values::I16(v), _) => {
                Arc::new(Int16Array::new(ScalarBuffer::new(self.pool.buffer(std::mem::take(v)), 0, len), nulls))
            }
            (Values::I32(v), Kind::Date) => {
                Arc::new(Date32Array::new(ScalarBuffer::new(self.pool.buffer(std::mem::take(v)), 0, len), nulls))
            }
            (Values::I32(v), _) => {
                Arc::new(Int32Array::new(ScalarBuffer::new(self.pool.buffer(std::mem::take(v)), 0, len), nulls))
            }
            (Values::I64(v), Kind::Time) => Arc::new(Time64MicrosecondArray::new(
                ScalarBuffer::new(self.pool.buffer(std::mem::take(v)), 0, len),
                nulls,
            )),
            (Values::I64(v), Kind::Timestamp) => Arc::new(TimestampMicrosecondArray::new(
                ScalarBuffer::new(self.pool.buffer(std::mem::take(v)), 0, len),
                nulls,
            )),
            (Values::I64(v), Kind::TimestampTz) => Arc::new(
                TimestampMicrosecondArray::new(ScalarBuffer::new(self.pool.buffer(std::mem::take(v)), 0, len), nulls)
                    .with_timezone("UTC"),
            ),
            (Values::I64(v), _) => {
                Arc::new(Int64Array::new(ScalarBuffer::new(self.pool.buffer(std::mem::take(v)), 0, len), nulls))
            }
            (Values::F32(v), _) => {
                Arc::new(Float32Array::new(ScalarBuffer::new(self.pool.buffer(std::mem::take(v)), 0, len), nulls))
            }
            (Values::F64(v), _) => {
                Arc::new(Float64Array::new(ScalarBuffer::new(self.pool.buffer(std::mem::take(v)), 0, len), nulls))
            }
            (Values::Dec(v), _) => Arc::new(
                Decimal128Array::new(ScalarBuffer::new(self.pool.buffer(std::mem::take(v)), 0, len), nulls)
                    .with_precision_and_scale(self.precision, self.scale)
                    .map_err(err)?,
            ),
            (Values::Bool(bb), _) => {
                let mut values = std::mem::replace(bb, BooleanBufferBuilder::new(0));
                Arc::new(BooleanArray::new(values.finish(), nulls))
            }
            (Values::Bytes { offsets, data }, kind) => {
                let n = offsets.len();
                let offs =
                    OffsetBuffer::new(ScalarBuffer::new(self.offsets_pool.buffer(std::mem::take(offsets)), 0, n));
                self.reserve_bytes = data.len() + data.len() / 8;
                let values = self.pool.buffer(std::mem::take(data));
                if kind == Kind::Text {
                    Arc::new(StringArray::try_new(offs, values, nulls).map_err(err)?)
                } else {
                    Arc::new(BinaryArray::try_new(offs, values, nulls).map_err(err)?)
                }
            }
            (Values::Fixed(v), _) => {
                let values = self.pool.buffer(std::mem::take(v));
                Arc::new(FixedSizeBinaryArray::try_new(16, values, nulls).map_err(err)?)
            }
        };
        Ok(array)
    }
}

struct ListState {
    offsets: Vec<i32>,
    validity: BooleanBufferBuilder,
    nulls: usize,
}

struct ColumnBuilder {
    field: Field,
    value_field: Option<Arc<Field>>,
    values: ValueBuilder,
    list: Option<ListState>,
}

impl ColumnBuilder {
    fn new(spec: &ColumnSpec, capacity: usize) -> Self {
        let field = spec.field();
        let value_field = match field.data_type() {
            DataType::List(f) => Some(f.clone()),
            _ => None,
        };
        let list = spec.is_array.then(|| {
            let mut offsets = Vec::with_capacity(capacity + 1);
            offsets.push(0);
            ListState { offsets, validity: BooleanBufferBuilder::new(capacity), nulls: 0 }
        });
        ColumnBuilder { field, value_field, values: ValueBuilder::new(spec, capacity), list }
    }

    fn push_null(&mut self) {
        match &mut self.list {
            None => self.values.push_null(),
            Some(list) => {
                list.validity.append(false);
                list.nulls += 1;
                list.offsets.push(self.values.len() as i32);
            }
        }
    }

    /// Append one tile's values of this column; arrays go value by value.
    ///
    /// # Safety
    /// `fields` as in columns.rs's module docs.
    unsafe fn push_fields(&mut self, base: *const u8, fields: &[u32]) -> Result<(), ValueError> {
        if self.list.is_none() {
            return self.values.push_fields(base, fields);
        }
        for &off in fields {
            let p = base.add(off as usize);
            let len = columns::field_len(p);
            if len < 0 {
                self.push_null();
            } else {
                self.push(columns::field_bytes(p, len))?;
            }
        }
        Ok(())
    }

    fn push(&mut self, b: &[u8]) -> Result<(), (&'static str, String)> {
        if self.list.is_none() {
            return self.values.push(b);
        }
        // Array: ndim, has-null flag, element oid, ndim x (size, lower bound), elements.
        let proto = |d: &str| ("protocol", format!("malformed array value: {d}"));
        let ndim = read_i32(b, 0).ok_or_else(|| proto("short header"))?;
        if ndim > 1 {
            return Err(("ndims", ndim.to_string()));
        }
        let mut pos = 12;
        let count = if ndim == 1 {
            let n = read_i32(b, pos).ok_or_else(|| proto("short dimension"))?;
            pos += 8;
            n.max(0) as usize
        } else {
            0
        };
        for _ in 0..count {
            let len = read_i32(b, pos).ok_or_else(|| proto("short element"))?;
            pos += 4;
            if len < 0 {
                self.values.push_null();
            } else {
                let end = pos + len as usize;
                let elem = b.get(pos..end).ok_or_else(|| proto("element past the end"))?;
                self.values.push(elem)?;
                pos = end;
            }
        }
        let list = self.list.as_mut().expect("list column");
        list.validity.append(true);
        let end = i32::try_from(self.values.len()).map_err(|_| ("protocol", "too many array elements".to_string()))?;
        list.offsets.push(end);
        Ok(())
    }

    fn nbytes(&self) -> usize {
        self.values.nbytes() + self.list.as_ref().map_or(0, |l| l.offsets.len() * 4)
    }

    fn reserve(&mut self) {
        self.values.reserve();
    }

    fn finish(&mut self) -> Result<ArrayRef, NativeError> {
        match (&mut self.list, &self.value_field) {
            (None, _) => self.values.finish(&self.field),
            (Some(list), Some(value_field)) => {
                let values = self.values.finish(value_field)?;
                let len = list.validity.len();
                let validity = std::mem::replace(&mut list.validity, BooleanBufferBuilder::new(len));
                let nulls = if list.nulls > 0 { Some(NullBuffer::new(validity.finish_cloned())) } else { None };
                list.nulls = 0;
                let offsets = OffsetBuffer::new(ScalarBuffer::from(std::mem::replace(&mut list.offsets, vec![0])));
                let array = ListArray::try_new(value_field.clone(), offsets, values, nulls)
                    .map_err(|e| NativeError::protocol(format!("column {}: {e}", self.field.name())))?;
                Ok(Arc::new(array))
            }
            (Some(_), None) => Err(NativeError::protocol("list column without a value field")),
        }
    }
}

pub(crate) fn read_i32(b: &[u8], pos: usize) -> Option<i32> {
    b.get(pos..pos + 4).map(|s| i32::from_be_bytes(s.try_into().expect("4 bytes")))
}

pub(crate) fn read_i16(b: &[u8], pos: usize) -> Option<i16> {
    b.get(pos..pos + 2).map(|s| i16::from_be_bytes(s.try_into().expect("2 bytes")))
}

/// The data of a COPY TO STDOUT: its CopyData messages in order, each whole (session.rs).
pub trait Messages {
    /// The next message; None after the last one.
    fn next_message(&mut self) -> std::io::Result<Option<Bytes>>;
}

/// Rows decoded column by column at a time: small enough that a tile's tuples and field
/// positions stay in the core's L2 cache between the tuple scan and the column loops.
const TILE_ROWS: usize = 256;
/// A tile is also decoded once its tuples hold this much (wide rows), which bounds the arena.
const TILE_BYTES: usize = 1024 * 1024;

/// Streaming decoder over a COPY binary stream.
///
/// Two passes per tile of rows: the tuple scan checks each tuple's field lengths against its
/// message, records where each field starts (column-major, `TILE_ROWS` per column) and copies the
/// tuple into the tile's arena; then each column is decoded by one loop specialised to its type
/// (`ColumnBuilder::push_fields`, columns.rs). The copy lets each CopyData message go at once:
/// keeping a tile's messages instead (no copy) stopped tokio-postgres reusing its read buffer and
/// more than doubled the page faults (docs/performance.md, "postgres-rs, session 6"). A tuple
/// split across messages (and the header) is first joined into one.
pub struct Decoder<M: Messages> {
    messages: M,
    /// Unparsed bytes: the rest of the current message (or a joined copy).
    pending: Bytes,
    header_done: bool,
    finished: bool,
    specs: Vec<ColumnSpec>,
    schema: Arc<Schema>,
    skip: usize,
    batch_size: usize,
    builders: Vec<ColumnBuilder>,
    /// Field positions of the current tile: `fields[column * TILE_ROWS + row]` is the offset in
    /// `arena` of the field's length prefix.
    fields: Vec<u32>,
    tile_rows: usize,
    /// The tile's tuples, copied whole; reused from tile to tile.
    arena: Vec<u8>,
    /// Counts this stream among those sharing the pools' byte cap (pool.rs).
    _stream: crate::pool::Stream,
}

impl<M: Messages> Decoder<M> {
    pub fn new(messages: M, specs: Vec<ColumnSpec>, skip: usize, batch_size: usize) -> Self {
        let schema = Arc::new(Schema::new(specs.iter().map(ColumnSpec::field).collect::<Vec<_>>()));
        // Capacity that is never written is never resident (mimalloc maps it lazily): sizing the
        // builders for `batch_size` up front costs a 1-row job nothing (measured, session 5).
        let capacity = batch_size.min(1 << 20);
        let builders = specs.iter().map(|s| ColumnBuilder::new(s, capacity)).collect();
        let fields = vec![0u32; specs.len() * TILE_ROWS];
        Decoder {
            messages,
            pending: Bytes::new(),
            header_done: false,
            finished: false,
            specs,
            schema,
            skip,
            batch_size,
            builders,
            fields,
            tile_rows: 0,
            arena: Vec::new(),
            _stream: crate::pool::Stream::start(),
        }
    }

    /// Append the next non-empty message to `pending` (joining by a copy if `pending` is not
    /// empty); false at the end of the stream.
    fn append_next(&mut self) -> Result<bool, NativeError> {
        loop {
            let next = loop {
                match self.messages.next_message() {
                    Ok(m) => break m,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e.into()),
                }
            };
            let Some(m) = next else { return Ok(false) };
            if m.is_empty() {
                continue;
            }
            if self.pending.is_empty() {
                self.pending = m;
            } else {
                let mut joined = Vec::with_capacity(self.pending.len() + m.len());
                joined.extend_from_slice(&self.pending);
                joined.extend_from_slice(&m);
                self.pending = Bytes::from(joined);
            }
            return Ok(true);
        }
    }

    fn header(&mut self) -> Result<(), NativeError> {
        while self.pending.len() < 19 {
            if !self.append_next()? {
                break;
            }
        }
        if self.pending.len() < 19 || &self.pending[..11] != SIGNATURE {
            return Err(NativeError::protocol("the COPY stream does not start with the binary signature"));
        }
        let ext = read_i32(&self.pending, 15).unwrap_or(0).max(0) as usize;
        while self.pending.len() < 19 + ext {
            if !self.append_next()? {
                return Err(NativeError::protocol("truncated COPY header"));
            }
        }
        self.pending.advance(19 + ext);
        self.header_done = true;
        Ok(())
    }

    /// Record the field positions of the complete tuple at the start of `b` in row slot
    /// `self.tile_rows`, as offsets in the arena once `b` is appended to it; the tuple's length,
    /// or None when `b` does not hold all of it.
    #[inline]
    fn scan(&mut self, b: &[u8]) -> Option<usize> {
        let ncols = self.builders.len();
        let base = self.arena.len();
        let row = self.tile_rows;
        assert!(row < TILE_ROWS && self.fields.len() == ncols * TILE_ROWS);
        let slots = self.fields.as_mut_ptr();
        let mut p = 2usize;
        for c in 0..ncols {
            if p + 4 > b.len() {
                return None;
            }
            // SAFETY: p + 4 <= b.len() was just checked.
            let len = i32::from_be_bytes(unsafe { std::ptr::read_unaligned(b.as_ptr().add(p) as *const [u8; 4]) });
            // SAFETY: c < ncols and row < TILE_ROWS (asserted): inside `fields`. An offset that does
            // not fit in u32 is never used: next_batch refuses the row before it reaches the arena.
            unsafe { *slots.add(c * TILE_ROWS + row) = (base + p) as u32 };
            p += 4 + len.max(0) as usize;
        }
        for _ in 0..self.skip {
            let len = read_i32(b, p)?;
            p += 4 + len.max(0) as usize;
        }
        (p <= b.len()).then_some(p)
    }

    /// Decode the tile column by column into the builders and empty the arena.
    fn flush_tile(&mut self) -> Result<(), NativeError> {
        let n = self.tile_rows;
        let base = self.arena.as_ptr();
        for (c, builder) in self.builders.iter_mut().enumerate() {
            let fields = &self.fields[c * TILE_ROWS..c * TILE_ROWS + n];
            // SAFETY: `scan` recorded each of these offsets for a tuple it checked to be whole, and
            // that tuple was then appended to the arena at the offset `scan` assumed.
            unsafe { builder.push_fields(base, fields) }.map_err(|(kind, detail)| NativeError::Decode {
                kind,
                column: c,
                detail,
            })?;
        }
        self.tile_rows = 0;
        self.arena.clear();
        if self.arena.capacity() > 4 * TILE_BYTES {
            self.arena = Vec::new(); // after a huge row: do not keep its room for the rest of the stream
        }
        Ok(())
    }

    /// The next batch of up to `batch_size` rows; None after the last one.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>, NativeError> {
        if self.finished {
            return Ok(None);
        }
        if !self.header_done {
            self.header()?;
        }
        let expected = self.specs.len() + self.skip;
        self.builders.iter_mut().for_each(ColumnBuilder::reserve);
        let mut rows = 0usize;
        let mut full = false;
        while rows < self.batch_size && !full && !self.finished {
            if self.pending.is_empty() && !self.append_next()? {
                return Err(NativeError::protocol("the COPY stream ended without its trailer"));
            }
            let msg = std::mem::take(&mut self.pending);
            let mut used = 0usize;
            while rows < self.batch_size && !full {
                let rest = &msg[used..];
                let Some(nfields) = read_i16(rest, 0) else { break };
                if nfields == -1 {
                    self.finished = true;
                    used += 2;
                    break;
                }
                check_fields(nfields, expected)?;
                let Some(total) = self.scan(rest) else { break };
                if self.arena.len() + total > u32::MAX as usize {
                    // PostgreSQL sends a row as one CopyData message (< 2 GiB); only a stream joined
                    // across messages could get here, and `scan`'s u32 offsets must not wrap.
                    return Err(NativeError::protocol("a row of the COPY stream is larger than 4 GiB"));
                }
                self.arena.extend_from_slice(&rest[..total]);
                used += total;
                rows += 1;
                self.tile_rows += 1;
                if self.tile_rows == TILE_ROWS || self.arena.len() >= TILE_BYTES {
                    self.flush_tile()?;
                    full = batch_full(&self.builders);
                }
            }
            let complete = rows == self.batch_size || full || self.finished;
            if used < msg.len() {
                self.pending = msg.slice(used..);
            }
            drop(msg);
            if complete || self.pending.is_empty() {
                continue;
            }
            // A tuple split across messages: join until it is whole (or the trailer is there).
            loop {
                let b = &self.pending;
                if b.len() >= 2 {
                    let nfields = read_i16(b, 0).expect("2 bytes");
                    if nfields as isize != expected as isize || tuple_len(b, expected).is_some() {
                        break; // whole, the trailer, or a field count the main loop refuses
                    }
                }
                let short = b.len() < 2;
                if !self.append_next()? {
                    return Err(NativeError::protocol(if short {
                        "the COPY stream ended without its trailer"
                    } else {
                        "the COPY stream ended in the middle of a row"
                    }));
                }
            }
        }
        if self.tile_rows > 0 {
            self.flush_tile()?;
        }
        if rows == 0 {
            if !self.finished {
                return Err(NativeError::protocol("the COPY stream ended without its trailer"));
            }
            return Ok(None);
        }
        let columns = self.builders.iter_mut().map(ColumnBuilder::finish).collect::<Result<Vec<_>, _>>()?;
        let batch = RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .map_err(|e| NativeError::protocol(format!("cannot assemble the batch: {e}")))?;
        Ok(Some(batch))
    }
}

fn check_fields(nfields: i16, expected: usize) -> Result<(), NativeError> {
    if nfields < 0 || nfields as usize != expected {
        return Err(NativeError::protocol(format!("a row has {nfields} fields, expected {expected}")));
    }
    Ok(())
}

/// Length of the complete tuple at the start of `b` (field count included), or None when more bytes are needed.
fn tuple_len(b: &[u8], nfields: usize) -> Option<usize> {
    let mut p = 2;
    for _ in 0..nfields {
        let len = read_i32(b, p)?;
        p += 4;
        if len > 0 {
            p += len as usize;
        }
    }
    (p <= b.len()).then_some(p)
}

/// The batch's buffers hold MAX_BATCH_BYTES: cut it here whatever the row count.
fn batch_full(builders: &[ColumnBuilder]) -> bool {
    builders.iter().map(ColumnBuilder::nbytes).sum::<usize>() >= MAX_BATCH_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int32Type, Int64Type};
    use arrow_array::Array;

    /// Hands out the stream in the given pieces, as CopyReader hands out CopyData messages.
    struct Pieces {
        parts: Vec<Vec<u8>>,
        i: usize,
        off: usize,
    }

    impl Messages for Pieces {
        fn next_message(&mut self) -> std::io::Result<Option<Bytes>> {
            let part = self.parts.get(self.i).map(|p| Bytes::copy_from_slice(&p[self.off..]));
            self.i += 1;
            self.off = 0;
            Ok(part)
        }
    }

    fn header() -> Vec<u8> {
        let mut b = SIGNATURE.to_vec();
        b.extend_from_slice(&0i32.to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes());
        b
    }

    /// Row i: (id int8 = i, name text = "n{i}", maybe int4 = NULL every third row), plus one skipped field.
    fn row(i: i64) -> Vec<u8> {
        let mut b = 4i16.to_be_bytes().to_vec();
        b.extend_from_slice(&8i32.to_be_bytes());
        b.extend_from_slice(&i.to_be_bytes());
        let name = format!("n{i}");
        b.extend_from_slice(&(name.len() as i32).to_be_bytes());
        b.extend_from_slice(name.as_bytes());
        if i % 3 == 0 {
            b.extend_from_slice(&(-1i32).to_be_bytes());
        } else {
            b.extend_from_slice(&4i32.to_be_bytes());
            b.extend_from_slice(&(i as i32).to_be_bytes());
        }
        b.extend_from_slice(&1i32.to_be_bytes());
        b.push(1);
        b
    }

    fn specs() -> Vec<ColumnSpec> {
        vec![
            ColumnSpec::new("id".into(), "int64", false, 0, 0).unwrap(),
            ColumnSpec::new("name".into(), "text", false, 0, 0).unwrap(),
            ColumnSpec::new("maybe".into(), "int32", false, 0, 0).unwrap(),
        ]
    }

    fn decode_all(parts: Vec<Vec<u8>>, batch_size: usize) -> Result<Vec<RecordBatch>, String> {
        let mut d = Decoder::new(Pieces { parts, i: 0, off: 0 }, specs(), 1, batch_size);
        let mut out = Vec::new();
        loop {
            match d.next_batch() {
                Ok(Some(b)) => out.push(b),
                Ok(None) => return Ok(out),
                Err(NativeError::Decode { detail, .. }) | Err(NativeError::Server { message: detail, .. }) => {
                    return Err(detail)
                }
            }
        }
    }

    fn check(batches: &[RecordBatch], n: i64) {
        let mut next = 0i64;
        for b in batches {
            let ids = b.column(0).as_primitive::<Int64Type>();
            let names = b.column(1).as_string::<i32>();
            let maybe = b.column(2).as_primitive::<Int32Type>();
            for r in 0..b.num_rows() {
                assert_eq!(ids.value(r), next);
                assert_eq!(names.value(r), format!("n{next}"));
                assert_eq!(maybe.is_null(r), next % 3 == 0, "row {next}");
                if next % 3 != 0 {
                    assert_eq!(maybe.value(r), next as i32);
                }
                next += 1;
            }
        }
        assert_eq!(next, n);
    }

    #[test]
    fn one_message_per_tuple_and_split_tuples_decode_alike() {
        let n = 2500i64;
        let rows: Vec<Vec<u8>> = (0..n).map(row).collect();
        let trailer = (-1i16).to_be_bytes().to_vec();
        // As the server sends it: header with the first tuple, then one message per tuple, trailer alone.
        let mut parts = vec![[header(), rows[0].clone()].concat()];
        parts.extend(rows[1..].iter().cloned());
        parts.push(trailer.clone());
        let batches = decode_all(parts, 1000).unwrap();
        assert_eq!(batches.iter().map(RecordBatch::num_rows).collect::<Vec<_>>(), vec![1000, 1000, 500]);
        check(&batches, n);
        // The same bytes cut at every 7th byte: tuples span pieces; several tuples share one.
        let stream = [header(), rows.concat(), trailer.clone()].concat();
        for size in [1usize, 7, 600, 4096] {
            let parts = stream.chunks(size).map(<[u8]>::to_vec).collect();
            check(&decode_all(parts, 777).unwrap(), n);
        }
        // A truncated stream is an error, not a short result.
        let cut = stream[..stream.len() - 9].chunks(64).map(<[u8]>::to_vec).collect();
        assert!(decode_all(cut, 777).unwrap_err().contains("ended"));
    }

    /// Every kind decoded column by column, NULLs in each, tiles cut mid-batch, then the errors.
    #[test]
    fn every_kind_with_nulls_and_errors() {
        let kinds = [
            ("int16", 2usize),
            ("int32", 4),
            ("float32", 4),
            ("float64", 8),
            ("date", 4),
            ("timestamptz", 8),
            ("time", 8),
            ("uuid", 16),
            ("bool", 1),
            ("numeric", 0),
            ("bytea", 0),
            ("text", 0),
        ];
        let specs = || -> Vec<ColumnSpec> {
            kinds.iter().map(|(k, _)| ColumnSpec::new(format!("c_{k}"), k, false, 6, 2).unwrap()).collect()
        };
        let value = |k: &str, i: i64| -> Vec<u8> {
            match k {
                "int16" => (i as i16).to_be_bytes().to_vec(),
                "int32" | "date" => (i as i32).to_be_bytes().to_vec(),
                "float32" => (i as f32 / 4.0).to_be_bytes().to_vec(),
                "float64" | "timestamptz" | "time" if k == "float64" => (i as f64 / 8.0).to_be_bytes().to_vec(),
                "timestamptz" | "time" => (i * 1_000_003).to_be_bytes().to_vec(),
                "uuid" => (i as u128 * 0x0101_0101).to_be_bytes().to_vec(),
                "bool" => vec![(i % 2) as u8],
                // i / 100 as numeric(6, 2): [i / 100] weight 0 plus [i % 100 * 100] weight -1.
                "numeric" => [2i16, 0, 0, 2, (i / 100) as i16, ((i % 100) * 100) as i16]
                    .iter()
                    .flat_map(|v| v.to_be_bytes())
                    .collect(),
                "bytea" => vec![i as u8; (i % 5) as usize],
                _ => format!("é{i}").into_bytes(),
            }
        };
        let row = |i: i64, bad: Option<(usize, Vec<u8>)>| -> Vec<u8> {
            let mut b = (kinds.len() as i16).to_be_bytes().to_vec();
            for (c, (k, _)) in kinds.iter().enumerate() {
                if (i + c as i64) % 5 == 0 {
                    b.extend_from_slice(&(-1i32).to_be_bytes());
                    continue;
                }
                let v = match &bad {
                    Some((bc, bv)) if *bc == c => bv.clone(),
                    _ => value(k, i),
                };
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(&v);
            }
            b
        };
        let decode = |rows: Vec<Vec<u8>>, batch: usize| -> Result<Vec<RecordBatch>, (&'static str, usize)> {
            let mut parts = vec![header()];
            parts.extend(rows);
            parts.push((-1i16).to_be_bytes().to_vec());
            let mut d = Decoder::new(Pieces { parts, i: 0, off: 0 }, specs(), 0, batch);
            let mut out = Vec::new();
            loop {
                match d.next_batch() {
                    Ok(Some(b)) => out.push(b),
                    Ok(None) => return Ok(out),
                    Err(NativeError::Decode { kind, column, .. }) => return Err((kind, column)),
                    Err(NativeError::Server { .. }) => return Err(("server", 0)),
                }
            }
        };
        let n = 3000i64;
        let batches = decode((1..=n).map(|i| row(i, None)).collect(), 1500).unwrap();
        assert_eq!(batches.len(), 2);
        for (c, (k, _)) in kinds.iter().enumerate() {
            let mut i = 1i64;
            for b in &batches {
                let col = b.column(c);
                for r in 0..b.num_rows() {
                    let null = (i + c as i64) % 5 == 0;
                    assert_eq!(col.is_null(r), null, "{k} row {i}");
                    if !null {
                        let got = arrow_array::Array::to_data(&col.slice(r, 1));
                        let ok = match *k {
                            "int16" => col.as_primitive::<arrow_array::types::Int16Type>().value(r) == i as i16,
                            "int32" => col.as_primitive::<Int32Type>().value(r) == i as i32,
                            "float32" => {
                                col.as_primitive::<arrow_array::types::Float32Type>().value(r) == i as f32 / 4.0
                            }
                            "float64" => {
                                col.as_primitive::<arrow_array::types::Float64Type>().value(r) == i as f64 / 8.0
                            }
                            "date" => {
                                col.as_primitive::<arrow_array::types::Date32Type>().value(r) == i as i32 + EPOCH_DAYS
                            }
                            "timestamptz" => {
                                col.as_primitive::<arrow_array::types::TimestampMicrosecondType>().value(r)
                                    == i * 1_000_003 + EPOCH_MICROS
                            }
                            "time" => {
                                col.as_primitive::<arrow_array::types::Time64MicrosecondType>().value(r)
                                    == i * 1_000_003
                            }
                            "uuid" => col.as_fixed_size_binary().value(r) == value(k, i).as_slice(),
                            "bool" => col.as_boolean().value(r) == (i % 2 == 1),
                            "numeric" => col.as_primitive::<arrow_array::types::Decimal128Type>().value(r) == i as i128,
                            "bytea" => col.as_binary::<i32>().value(r) == value(k, i).as_slice(),
                            _ => col.as_string::<i32>().value(r) == format!("é{i}"),
                        };
                        assert!(ok, "{k} row {i}: {got:?}");
                    }
                    i += 1;
                }
            }
            assert_eq!(i, n + 1);
        }
        // A bad value fails with its column and kind, wherever it is in a tile.
        let with = |c: usize, v: Vec<u8>| {
            let at = (2041..).find(|i| (i + c as i64) % 5 != 0).unwrap(); // not a NULL there
            (1..=n).map(|i| row(i, (i == at).then(|| (c, v.clone())))).collect()
        };
        assert_eq!(decode(with(4, i32::MAX.to_be_bytes().to_vec()), 4096).unwrap_err(), ("temporal", 4));
        assert_eq!(decode(with(5, i64::MIN.to_be_bytes().to_vec()), 4096).unwrap_err(), ("temporal", 5));
        assert_eq!(decode(with(1, vec![1, 2]), 4096).unwrap_err(), ("protocol", 1));
        assert_eq!(decode(with(7, vec![1; 15]), 4096).unwrap_err(), ("protocol", 7));
        assert_eq!(decode(with(8, vec![]), 4096).unwrap_err(), ("protocol", 8));
        let too_big = [1i16, 1, 0, 0, 99].iter().flat_map(|v| v.to_be_bytes()).collect();
        assert_eq!(decode(with(9, too_big), 4096).unwrap_err(), ("numeric", 9));
        // Invalid UTF-8 is found when the column's array is built (its name is in the detail).
        assert_eq!(decode(with(11, vec![0xff, 0xfe]), 4096).unwrap_err(), ("protocol", 0));
    }

    /// A batch's column vectors come back when it is dropped, and the next batch is built in them.
    #[test]
    fn dropped_batches_give_their_buffers_back() {
        let mut parts = vec![header()];
        parts.extend((0..5000i64).map(row));
        parts.push((-1i16).to_be_bytes().to_vec());
        let mut d = Decoder::new(Pieces { parts, i: 0, off: 0 }, specs(), 1, 1000);
        let ptrs = |b: &RecordBatch| {
            let data = b.column(1).to_data();
            (b.column(0).to_data().buffers()[0].as_ptr(), data.buffers()[0].as_ptr(), data.buffers()[1].as_ptr())
        };
        let mut seen = Vec::new();
        while let Some(b) = d.next_batch().unwrap() {
            seen.push(ptrs(&b));
            drop(b);
        }
        assert_eq!(seen.len(), 5);
        // From the third batch on (the second grew its vectors by the 1/8 margin) nothing is new.
        assert_eq!(seen[2], seen[3]);
        assert_eq!(seen[3], seen[4]);
        // A batch still held keeps its buffers: the next one gets others.
        let mut parts = vec![header()];
        parts.extend((0..3000i64).map(row));
        parts.push((-1i16).to_be_bytes().to_vec());
        let mut d = Decoder::new(Pieces { parts, i: 0, off: 0 }, specs(), 1, 1000);
        let held: Vec<RecordBatch> = std::iter::from_fn(|| d.next_batch().unwrap()).collect();
        let p: Vec<_> = held.iter().map(ptrs).collect();
        assert!(p[0].0 != p[1].0 && p[1].0 != p[2].0 && p[0].0 != p[2].0);
        check(&held, 3000);
    }
}
