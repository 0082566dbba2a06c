//! PostgreSQL `numeric` (binary send format) -> the unscaled i128 of an Arrow decimal128, exactly.

use crate::decode::read_i16;

/// Decode a binary numeric into the unscaled i128 of decimal(precision, scale), exactly.
///
/// Err(("numeric", text)) when the value is NaN/Infinity, needs rounding at
/// `scale`, or has more than `precision` digits; `text` is PostgreSQL's text form.
pub fn numeric_to_i128(b: &[u8], precision: u8, scale: i8) -> Result<i128, (&'static str, String)> {
    let proto = || ("protocol", "malformed numeric value".to_string());
    let ndigits = read_i16(b, 0).ok_or_else(proto)?;
    let weight = read_i16(b, 2).ok_or_else(proto)? as i32;
    let sign = read_i16(b, 4).ok_or_else(proto)? as u16;
    let dscale = read_i16(b, 6).ok_or_else(proto)?;
    match sign {
        0xC000 => return Err(("numeric", "NaN".into())),
        0xD000 => return Err(("numeric", "Infinity".into())),
        0xF000 => return Err(("numeric", "-Infinity".into())),
        _ => {}
    }
    let ndigits = ndigits.max(0) as usize;
    // The digits are read in place (no allocation per value); the text form only for an error.
    let body = b.get(8..8 + 2 * ndigits).ok_or_else(proto)?;
    let digit = |i: usize| i16::from_be_bytes([body[2 * i], body[2 * i + 1]]);
    let unfit = || {
        let digits: Vec<i16> = (0..ndigits).map(digit).collect();
        ("numeric", numeric_text(&digits, weight, sign == 0x4000, dscale))
    };
    let scale = scale as i32;
    if let Some(acc) = fits_i64(body, weight, scale) {
        if acc as i128 >= POW10[precision.min(38) as usize] {
            return Err(unfit());
        }
        return Ok(if sign == 0x4000 { -(acc as i128) } else { acc as i128 });
    }
    let mut acc: i128 = 0;
    // Digit i (base 10000) stands for d * 10^(4 * (weight - i)); scaled by 10^scale.
    for i in 0..ndigits {
        let exp = 4 * (weight - i as i32) + scale;
        let d = digit(i) as i128;
        if exp >= 0 {
            let term = pow10(exp).and_then(|p| d.checked_mul(p)).ok_or_else(unfit)?;
            acc = acc.checked_add(term).ok_or_else(unfit)?;
        } else if d != 0 {
            // A digit is below 10^4: 10^-exp beyond that leaves a remainder (no 128-bit division).
            let d = d as i32;
            let div = if -exp <= 4 { POW10[(-exp) as usize] as i32 } else { i32::MAX };
            if d % div != 0 {
                return Err(unfit());
            }
            acc = acc.checked_add((d / div) as i128).ok_or_else(unfit)?;
        }
    }
    let limit = pow10(precision as i32).ok_or_else(unfit)?;
    if acc >= limit {
        return Err(unfit());
    }
    Ok(if sign == 0x4000 { -acc } else { acc })
}

/// The common case in 64-bit arithmetic: the unscaled value when every digit is 0..=9999, every
/// step fits in an i64 and nothing is lost at `scale`; None otherwise, and the 128-bit path below
/// decides (the result is the same either way).
#[inline]
fn fits_i64(body: &[u8], weight: i32, scale: i32) -> Option<i64> {
    let mut acc: i64 = 0;
    for (i, pair) in body.chunks_exact(2).enumerate() {
        let d = i16::from_be_bytes([pair[0], pair[1]]);
        if !(0..=9999).contains(&d) {
            return None;
        }
        let d = d as i64;
        let exp = 4 * (weight - i as i32) + scale;
        if (0..=18).contains(&exp) {
            acc = acc.checked_add(d.checked_mul(POW10[exp as usize] as i64)?)?;
        } else if (-4..0).contains(&exp) {
            let div = POW10[(-exp) as usize] as i64;
            if d % div != 0 {
                return None;
            }
            acc = acc.checked_add(d / div)?; // near i64::MAX the 128-bit path decides
        } else if exp > 18 || d != 0 {
            return None;
        }
    }
    Some(acc)
}

/// 10^0 ..= 10^38.
const POW10: [i128; 39] = {
    let mut t = [1i128; 39];
    let mut i = 1;
    while i < 39 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
};

fn pow10(exp: i32) -> Option<i128> {
    if !(0..=38).contains(&exp) {
        return None;
    }
    Some(POW10[exp as usize])
}

/// PostgreSQL's text form of a finite numeric (as `numeric_out` prints it).
fn numeric_text(digits: &[i16], weight: i32, negative: bool, dscale: i16) -> String {
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for i in 0..=weight {
            let d = digits.get(i as usize).copied().unwrap_or(0);
            if i == 0 {
                out.push_str(&d.to_string());
            } else {
                out.push_str(&format!("{d:04}"));
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut frac = String::new();
        let mut i = weight + 1;
        while (frac.len() as i16) < dscale {
            let d = if i < 0 { 0 } else { digits.get(i as usize).copied().unwrap_or(0) };
            frac.push_str(&format!("{d:04}"));
            i += 1;
        }
        frac.truncate(dscale as usize);
        out.push_str(&frac);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits: &[i16], weight: i16, sign: u16, dscale: i16) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(ndigits.len() as i16).to_be_bytes());
        b.extend_from_slice(&weight.to_be_bytes());
        b.extend_from_slice(&sign.to_be_bytes());
        b.extend_from_slice(&dscale.to_be_bytes());
        for d in ndigits {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    }

    #[test]
    fn numeric_fits_exactly_or_fails() {
        // 123.45 = digits [123, 4500], weight 0, dscale 2
        assert_eq!(numeric_to_i128(&numeric(&[123, 4500], 0, 0, 2), 5, 2).unwrap(), 12345);
        assert_eq!(numeric_to_i128(&numeric(&[123, 4500], 0, 0x4000, 2), 5, 2).unwrap(), -12345);
        // 1.0000000001 at scale 9 does not fit
        let (kind, text) = numeric_to_i128(&numeric(&[1, 0, 0, 100], 0, 0, 10), 38, 9).unwrap_err();
        assert_eq!((kind, text.as_str()), ("numeric", "1.0000000001"));
        // 12300 = [1, 2300] weight 1
        assert_eq!(numeric_to_i128(&numeric(&[1, 2300], 1, 0, 0), 5, 0).unwrap(), 12300);
        assert_eq!(numeric_to_i128(&numeric(&[], 0, 0xC000, 0), 5, 0).unwrap_err().1, "NaN");
        // 0.000000001 = [10] weight -3 (1e-9 = 10 * 10^-12... digit 0010 at position -3)
        assert_eq!(numeric_to_i128(&numeric(&[1000], -3, 0x4000, 9), 38, 9).unwrap(), -1);
        assert_eq!(numeric_text(&[1000], -3, true, 9), "-0.000000001");
        // too many integer digits
        assert!(numeric_to_i128(&numeric(&[1, 0], 1, 0, 0), 4, 0).is_err());
        // 92233720368547758.07 / .08 at scale 2: i64::MAX, then one past it (the 128-bit path)
        let near = |frac: i16| numeric(&[9, 2233, 7203, 6854, 7758, frac], 4, 0, 2);
        assert_eq!(numeric_to_i128(&near(700), 38, 2).unwrap(), i64::MAX as i128);
        assert_eq!(numeric_to_i128(&near(800), 38, 2).unwrap(), i64::MAX as i128 + 1);
    }
}
