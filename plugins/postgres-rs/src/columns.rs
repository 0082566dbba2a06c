//! Column-at-a-time decoding of a tile of COPY tuples (see `Decoder` in decode.rs).
//!
//! The decoder scans each tuple once, recording where each of its fields starts, and copies the
//! tuple into the tile's arena. A tile of rows is then decoded one column at a time: the type is
//! switched on once per column and tile, not once per value, and each loop below is specialised to
//! one binary representation (a length check, a big-endian load, a store).
//!
//! Every function here takes `base` and `fields`: per row, the offset from `base` of a field's
//! 4-byte big-endian length prefix (-1 or any negative length = NULL), followed by that many
//! readable bytes. The decoder guarantees it (the tuple scan checked every field against its
//! tuple, copied whole into the arena `base` points to); that is the safety contract of every
//! `unsafe fn` here.

use std::ptr;

use arrow_buffer::BooleanBufferBuilder;

/// An error for one value: (kind, detail), as `NativeError::Decode` carries it.
pub type ValueError = (&'static str, String);

pub fn bad_len(len: i32) -> ValueError {
    ("protocol", format!("unexpected {len}-byte value"))
}

/// The length prefix of the field at `p`.
///
/// # Safety
/// `p` points to 4 readable bytes.
#[inline(always)]
pub unsafe fn field_len(p: *const u8) -> i32 {
    i32::from_be_bytes(ptr::read_unaligned(p as *const [u8; 4]))
}

/// The bytes of the non-NULL field at `p` whose length prefix is `len` (>= 0).
///
/// # Safety
/// `p` points to a length prefix of `len` followed by `len` readable bytes, alive for `'a`.
#[inline(always)]
pub unsafe fn field_bytes<'a>(p: *const u8, len: i32) -> &'a [u8] {
    std::slice::from_raw_parts(p.add(4), len as usize)
}

/// Append one fixed-width value per field to `out`: `convert` turns the big-endian bytes of a
/// `W`-byte value into `T` (None: a value Arrow cannot hold, reported as `invalid`); NULLs append
/// `T::default()`. Returns the number of NULLs. On error `out` holds the values before it.
///
/// # Safety
/// See the module docs.
#[inline(always)]
pub unsafe fn fixed<T: Copy + Default, const W: usize>(
    out: &mut Vec<T>,
    base: *const u8,
    fields: &[u32],
    invalid: &'static str,
    convert: impl Fn([u8; W]) -> Option<T>,
) -> Result<usize, ValueError> {
    out.reserve(fields.len());
    let start = out.len();
    let dst = out.as_mut_ptr().add(start);
    let mut nulls = 0usize;
    for (i, &off) in fields.iter().enumerate() {
        let p = base.add(off as usize);
        let len = field_len(p);
        let value = if len == W as i32 {
            match convert(ptr::read_unaligned(p.add(4) as *const [u8; W])) {
                Some(v) => v,
                None => {
                    out.set_len(start + i);
                    return Err((invalid, String::new()));
                }
            }
        } else if len < 0 {
            nulls += 1;
            T::default()
        } else {
            out.set_len(start + i);
            return Err(bad_len(len));
        };
        dst.add(i).write(value);
    }
    out.set_len(start + fields.len());
    Ok(nulls)
}

/// Append variable-length values (text, bytea) to `offsets`/`data`: one pass for the total size,
/// one copying. UTF-8 is validated once for the whole column when the array is built. Returns the
/// number of NULLs.
///
/// # Safety
/// See the module docs.
pub unsafe fn bytes(
    offsets: &mut Vec<i32>,
    data: &mut Vec<u8>,
    base: *const u8,
    fields: &[u32],
) -> Result<usize, ValueError> {
    let mut total = 0usize;
    let mut nulls = 0usize;
    for &off in fields {
        let len = field_len(base.add(off as usize));
        if len >= 0 {
            total += len as usize;
        } else {
            nulls += 1;
        }
    }
    if data.len() + total > i32::MAX as usize {
        return Err(("protocol", "more than 2 GiB of text in one batch".to_string()));
    }
    data.reserve(total);
    offsets.reserve(fields.len());
    let mut end = data.len();
    let dst = data.as_mut_ptr();
    let obase = offsets.len();
    let odst = offsets.as_mut_ptr().add(obase);
    for (i, &off) in fields.iter().enumerate() {
        let p = base.add(off as usize);
        let len = field_len(p).max(0) as usize;
        ptr::copy_nonoverlapping(p.add(4), dst.add(end), len);
        end += len;
        odst.add(i).write(end as i32);
    }
    data.set_len(end);
    offsets.set_len(obase + fields.len());
    Ok(nulls)
}

/// Append 16-byte values (uuid) to `out`; NULLs append 16 zero bytes. Returns the number of NULLs.
///
/// # Safety
/// See the module docs.
pub unsafe fn fixed16(out: &mut Vec<u8>, base: *const u8, fields: &[u32]) -> Result<usize, ValueError> {
    out.reserve(fields.len() * 16);
    let start = out.len();
    let dst = out.as_mut_ptr().add(start) as *mut [u8; 16];
    let mut nulls = 0usize;
    for (i, &off) in fields.iter().enumerate() {
        let p = base.add(off as usize);
        let len = field_len(p);
        let value = if len == 16 {
            ptr::read_unaligned(p.add(4) as *const [u8; 16])
        } else if len < 0 {
            nulls += 1;
            [0u8; 16]
        } else {
            out.set_len(start + i * 16);
            return Err(bad_len(len));
        };
        ptr::write_unaligned(dst.add(i), value);
    }
    out.set_len(start + fields.len() * 16);
    Ok(nulls)
}

/// Bits gathered 64 at a time and appended to a `BooleanBufferBuilder` as one word.
#[derive(Default)]
pub struct Bits {
    word: u64,
    n: usize,
}

impl Bits {
    #[inline(always)]
    pub fn push(&mut self, out: &mut BooleanBufferBuilder, bit: bool) {
        self.word |= (bit as u64) << self.n;
        self.n += 1;
        if self.n == 64 {
            self.flush(out);
        }
    }

    /// Append the bits gathered so far.
    pub fn flush(&mut self, out: &mut BooleanBufferBuilder) {
        if self.n > 0 {
            out.append_packed_range(0..self.n, &self.word.to_le_bytes());
            self.word = 0;
            self.n = 0;
        }
    }
}
