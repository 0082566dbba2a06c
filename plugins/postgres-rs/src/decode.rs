//! PostgreSQL binary COPY -> Arrow arrays.
//!
//! Stream layout: an 11-byte signature, flags (i32), header extension
//! (i32 length + bytes); then per tuple an i16 field count (-1 ends the
//! stream) and per field an i32 length (-1 = NULL) and that many bytes, in
//! each type's binary send format (big-endian).

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::Arc;

use arrow_array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, FixedSizeBinaryArray, Float32Array,
    Float64Array, Int16Array, Int32Array, Int64Array, ListArray, RecordBatch, RecordBatchOptions, StringArray,
    Time64MicrosecondArray, TimestampMicrosecondArray,
};
use arrow_buffer::{BooleanBufferBuilder, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema, TimeUnit};

use crate::numeric::numeric_to_i128;

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Days from 1970-01-01 to 2000-01-01 (PostgreSQL's epoch).
const EPOCH_DAYS: i32 = 10_957;
const EPOCH_MICROS: i64 = 946_684_800_000_000;
const READ_CHUNK: usize = 256 * 1024;
/// A batch is cut early once its buffers hold this much, whatever the row count: with the
/// engine queue and the writer buffer holding a few batches each, this bounds peak memory.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// An error for Python: from the server/connection, or a value Arrow cannot hold.
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

impl From<postgres::Error> for NativeError {
    fn from(e: postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            return NativeError::Server { sqlstate: Some(db.code().code().to_string()), message: db.message().to_string() };
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
        // CopyOutReader wraps server errors in io::Error; surface the PostgreSQL error itself.
        if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<postgres::Error>()) {
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
    validity: BooleanBufferBuilder,
    nulls: usize,
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
            validity: BooleanBufferBuilder::new(capacity),
            nulls: 0,
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
        self.validity.append(false);
        self.nulls += 1;
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
    fn push(&mut self, b: &[u8]) -> Result<(), (&'static str, String)> {
        self.validity.append(true);
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
                let end = i32::try_from(data.len()).map_err(|_| ("protocol", "more than 2 GiB of text in one batch".to_string()))?;
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

    fn len(&self) -> usize {
        self.validity.len()
    }

    fn finish(&mut self, field: &Field) -> Result<ArrayRef, NativeError> {
        let len = self.len();
        let validity = std::mem::replace(&mut self.validity, BooleanBufferBuilder::new(len));
        let nulls = if self.nulls > 0 { Some(NullBuffer::new(validity.finish_cloned())) } else { None };
        let _ = validity;
        self.nulls = 0;
        let err = |e: arrow_schema::ArrowError| NativeError::protocol(format!("column {}: {e}", field.name()));
        let array: ArrayRef = match (&mut self.values, self.kind) {
            (Values::I16(v), _) => Arc::new(Int16Array::new(ScalarBuffer::from(std::mem::take(v)), nulls)),
            (Values::I32(v), Kind::Date) => Arc::new(Date32Array::new(ScalarBuffer::from(std::mem::take(v)), nulls)),
            (Values::I32(v), _) => Arc::new(Int32Array::new(ScalarBuffer::from(std::mem::take(v)), nulls)),
            (Values::I64(v), Kind::Time) => {
                Arc::new(Time64MicrosecondArray::new(ScalarBuffer::from(std::mem::take(v)), nulls))
            }
            (Values::I64(v), Kind::Timestamp) => {
                Arc::new(TimestampMicrosecondArray::new(ScalarBuffer::from(std::mem::take(v)), nulls))
            }
            (Values::I64(v), Kind::TimestampTz) => Arc::new(
                TimestampMicrosecondArray::new(ScalarBuffer::from(std::mem::take(v)), nulls).with_timezone("UTC"),
            ),
            (Values::I64(v), _) => Arc::new(Int64Array::new(ScalarBuffer::from(std::mem::take(v)), nulls)),
            (Values::F32(v), _) => Arc::new(Float32Array::new(ScalarBuffer::from(std::mem::take(v)), nulls)),
            (Values::F64(v), _) => Arc::new(Float64Array::new(ScalarBuffer::from(std::mem::take(v)), nulls)),
            (Values::Dec(v), _) => Arc::new(
                Decimal128Array::new(ScalarBuffer::from(std::mem::take(v)), nulls)
                    .with_precision_and_scale(self.precision, self.scale)
                    .map_err(err)?,
            ),
            (Values::Bool(bb), _) => Arc::new(BooleanArray::new(bb.finish(), nulls)),
            (Values::Bytes { offsets, data }, kind) => {
                let offs = OffsetBuffer::new(ScalarBuffer::from(std::mem::replace(offsets, vec![0])));
                let values = Buffer::from_vec(std::mem::take(data));
                if kind == Kind::Text {
                    Arc::new(StringArray::try_new(offs, values, nulls).map_err(err)?)
                } else {
                    Arc::new(BinaryArray::try_new(offs, values, nulls).map_err(err)?)
                }
            }
            (Values::Fixed(v), _) => {
                Arc::new(FixedSizeBinaryArray::try_new(16, Buffer::from_vec(std::mem::take(v)), nulls).map_err(err)?)
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

/// Streaming decoder over a COPY binary byte stream.
pub struct Decoder<R: BufRead> {
    reader: R,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
    header_done: bool,
    finished: bool,
    specs: Vec<ColumnSpec>,
    schema: Arc<Schema>,
    skip: usize,
    batch_size: usize,
    builders: Vec<ColumnBuilder>,
}

impl<R: BufRead> Decoder<R> {
    pub fn new(reader: R, specs: Vec<ColumnSpec>, skip: usize, batch_size: usize) -> Self {
        let schema = Arc::new(Schema::new(specs.iter().map(ColumnSpec::field).collect::<Vec<_>>()));
        let capacity = batch_size.min(1 << 20);
        let builders = specs.iter().map(|s| ColumnBuilder::new(s, capacity)).collect();
        Decoder {
            reader,
            buf: Vec::with_capacity(READ_CHUNK * 2),
            pos: 0,
            eof: false,
            header_done: false,
            finished: false,
            specs,
            schema,
            skip,
            batch_size,
            builders,
        }
    }

    /// Make at least `n` unread bytes available; false at end of stream.
    ///
    /// Takes the server's CopyData messages as they come (`fill_buf`, no
    /// zeroing, one copy of the bytes into the parse buffer).
    fn fill(&mut self, n: usize) -> Result<bool, NativeError> {
        while self.buf.len() - self.pos < n {
            if self.eof {
                return Ok(false);
            }
            if self.pos > 0 && (self.pos >= self.buf.len() / 2 || self.buf.capacity() - self.buf.len() < READ_CHUNK) {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            let chunk = loop {
                match self.reader.fill_buf() {
                    Ok(c) => break c,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e.into()),
                }
            };
            if chunk.is_empty() {
                self.eof = true;
                continue;
            }
            let got = chunk.len();
            self.buf.extend_from_slice(chunk);
            self.reader.consume(got);
        }
        Ok(true)
    }

    fn header(&mut self) -> Result<(), NativeError> {
        if !self.fill(19)? || &self.buf[self.pos..self.pos + 11] != SIGNATURE {
            return Err(NativeError::protocol("the COPY stream does not start with the binary signature"));
        }
        let ext = read_i32(&self.buf, self.pos + 15).unwrap_or(0).max(0) as usize;
        if !self.fill(19 + ext)? {
            return Err(NativeError::protocol("truncated COPY header"));
        }
        self.pos += 19 + ext;
        self.header_done = true;
        Ok(())
    }

    /// Length of the complete tuple at `pos`, or None when more bytes are needed.
    fn tuple_len(&self, nfields: usize) -> Option<usize> {
        let b = &self.buf[self.pos..];
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

    /// The next batch of up to `batch_size` rows; None after the last one.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>, NativeError> {
        if self.finished {
            return Ok(None);
        }
        if !self.header_done {
            self.header()?;
        }
        let ncols = self.specs.len();
        let expected = ncols + self.skip;
        let mut rows = 0usize;
        while rows < self.batch_size {
            if !self.fill(2)? {
                return Err(NativeError::protocol("the COPY stream ended without its trailer"));
            }
            let nfields = read_i16(&self.buf, self.pos).expect("2 bytes");
            if nfields == -1 {
                self.finished = true;
                break;
            }
            if nfields as usize != expected {
                return Err(NativeError::protocol(format!("a row has {nfields} fields, expected {expected}")));
            }
            let total = loop {
                if let Some(t) = self.tuple_len(expected) {
                    break t;
                }
                let have = self.buf.len() - self.pos;
                if !self.fill(have + 1)? && self.tuple_len(expected).is_none() {
                    return Err(NativeError::protocol("the COPY stream ended in the middle of a row"));
                }
            };
            let row = &self.buf[self.pos..self.pos + total];
            let mut p = 2;
            for (i, builder) in self.builders.iter_mut().enumerate() {
                let len = read_i32(row, p).expect("checked");
                p += 4;
                if len < 0 {
                    builder.push_null();
                } else {
                    let end = p + len as usize;
                    builder
                        .push(&row[p..end])
                        .map_err(|(kind, detail)| NativeError::Decode { kind, column: i, detail })?;
                    p = end;
                }
            }
            self.pos += total;
            rows += 1;
            if rows % 1024 == 0 && self.builders.iter().map(ColumnBuilder::nbytes).sum::<usize>() >= MAX_BATCH_BYTES {
                break;
            }
        }
        if rows == 0 {
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
