//! JSON lexing for the card scan: strings (with their escapes and UTF-8), numbers,
//! literals and white space, each read from a byte offset without building anything.

/// A string at `i` (its opening quote): where it ends, and whether it has escapes.
pub(super) fn string(b: &[u8], i: usize) -> Option<(usize, bool)> {
    let mut i = i.saturating_add(1);
    let mut escaped = false;
    loop {
        i = i.saturating_add(plain_run(b.get(i..)?)?);
        match *b.get(i)? {
            b'"' => return Some((i.saturating_add(1), escaped)),
            b'\\' => {
                escaped = true;
                i = escape(b, i)?;
            }
            lead @ 0x80.. => i = utf8(b, i, lead)?,
            _ => return None, // a control character
        }
    }
}

/// An escape at `i` (its backslash): its form only, as serde skips one.
fn escape(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i.saturating_add(1))? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(i.saturating_add(2)),
        b'u' => {
            let hex = b.get(i.saturating_add(2)..i.saturating_add(6))?;
            hex.iter()
                .all(u8::is_ascii_hexdigit)
                .then_some(i.saturating_add(6))
        }
        _ => None,
    }
}

/// One multi-byte UTF-8 character at `i`, starting with `lead`.
fn utf8(b: &[u8], i: usize, lead: u8) -> Option<usize> {
    let width = match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return None,
    };
    let end = i.saturating_add(width);
    std::str::from_utf8(b.get(i..end)?).ok()?;
    Some(end)
}

pub(super) fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    b.get(i..)?
        .starts_with(word)
        .then_some(i.saturating_add(word.len()))
}

/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
pub(super) fn number(b: &[u8], i: usize) -> Option<usize> {
    let mut i = i;
    if b.get(i) == Some(&b'-') {
        i = i.saturating_add(1);
    }
    i = match *b.get(i)? {
        b'0' => i.saturating_add(1),
        b'1'..=b'9' => digits(b, i),
        _ => return None,
    };
    if b.get(i) == Some(&b'.') {
        i = digits1(b, i.saturating_add(1))?;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i = i.saturating_add(1);
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i = i.saturating_add(1);
        }
        i = digits1(b, i)?;
    }
    Some(i)
}

/// Past the digits at `i` (none is fine).
fn digits(b: &[u8], i: usize) -> usize {
    let rest = b.get(i..).unwrap_or_default();
    i.saturating_add(
        rest.iter()
            .position(|c| !c.is_ascii_digit())
            .unwrap_or(rest.len()),
    )
}

/// Past the digits at `i`, of which there must be one at least.
fn digits1(b: &[u8], i: usize) -> Option<usize> {
    b.get(i)?.is_ascii_digit().then(|| digits(b, i))
}

/// Past the whitespace at `i`.
pub(super) fn ws(b: &[u8], i: usize) -> usize {
    let is_ws = |c: &u8| matches!(c, b' ' | b'\n' | b'\r' | b'\t');
    if !b.get(i).is_some_and(is_ws) {
        return i; // compact JSON: the common case
    }
    let rest = b.get(i..).unwrap_or_default();
    i.saturating_add(rest.iter().position(|c| !is_ws(c)).unwrap_or(rest.len()))
}

/// Bytes that stand for themselves inside a string: printable ASCII but `"` and `\`.
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x20;
    while b < 0x80 {
        t[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    t
};

/// How many bytes of `s` stand for themselves in a string ([`PLAIN`]) before one that
/// does not; `None` when all do. Eight bytes at a time: a byte is flagged when it is below
/// 0x20, `"`, `\` or above 0x7f. The flag tricks can also flag bytes above a flagged one
/// (borrows run upwards), never below it, so the lowest flag is exact.
fn plain_run(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut at = 0usize;
    while let Some(chunk) = s.get(at..at.saturating_add(8)) {
        let x = u64::from_le_bytes(chunk.try_into().ok()?);
        let flags = (x.wrapping_sub(ONES.wrapping_mul(0x20)) & !x & HIGH)
            | zero_byte(x ^ ONES.wrapping_mul(u64::from(b'"')))
            | zero_byte(x ^ ONES.wrapping_mul(u64::from(b'\\')))
            | (x & HIGH);
        if flags != 0 {
            return Some(at.saturating_add(flags.trailing_zeros() as usize / 8));
        }
        at = at.saturating_add(8);
    }
    let tail = s.get(at..)?;
    let n = tail
        .iter()
        .position(|&b| !PLAIN.get(usize::from(b)).copied().unwrap_or(false))?;
    Some(at.saturating_add(n))
}
