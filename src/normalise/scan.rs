//! One pass over a card answer: is it JSON the chat server can take, and what are its
//! `client.id`, `errorCode` and `errorText`?
//!
//! A card is passed on as the CRM's own bytes, so this pass alone decides whether they are
//! JSON (RFC 8259: the grammar, UTF-8 throughout, nothing after the value), an object, and
//! nested at most [`MAX_DEPTH`] deep. It reads the few members the Auth API check needs and
//! skips the rest without building anything. It does what serde did here (a UTF-8 pass, a
//! nesting pass and a parse, a third of the instructions of a cache miss) in one pass; the
//! `card_scan` fuzz target and the tests below hold it to serde's verdict on any input:
//! - a member the check reads (`client`, `errorCode`, `errorText`; `id` in `client`) may
//!   not appear twice, and its name is compared unescaped (so an escape serde refuses in
//!   such a name makes the answer invalid);
//! - `client` is an object or null; a `null` member counts as absent;
//! - escapes elsewhere are checked for their form only, as serde skips them.

use super::MAX_DEPTH;

/// What the Auth API check reads of a card, as raw JSON text (`null` counts as absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardFacts<'a> {
    /// `client`: `Some` when it is an object, with its raw `id` member.
    pub client: Option<Option<&'a [u8]>>,
    pub error_code: Option<&'a [u8]>,
    pub error_text: Option<&'a [u8]>,
}

/// The answer is not a card-shaped JSON document; which reason to give is worked out
/// again, off the hot path, by [`why`].
#[derive(Debug)]
struct Invalid;

type Step = Result<(), Invalid>;

/// Read `body` as a card answer, or say why it cannot be one.
pub fn card(body: &[u8]) -> Result<CardFacts<'_>, &'static str> {
    let mut facts = CardFacts {
        client: None,
        error_code: None,
        error_text: None,
    };
    let mut c = Cursor { rest: body };
    let read = (|| {
        c.ws();
        if c.peek() != Some(b'{') {
            return Err(Invalid);
        }
        let mut seen = [false; 3];
        c.object(0, |c, key, depth| {
            let slot = if key.is("client")? {
                0
            } else if key.is("errorCode")? {
                1
            } else if key.is("errorText")? {
                2
            } else {
                return c.value(depth);
            };
            let seen = seen.get_mut(slot).ok_or(Invalid)?;
            if std::mem::replace(seen, true) {
                return Err(Invalid);
            }
            match slot {
                0 => facts.client = c.client(depth)?,
                1 => facts.error_code = c.raw(depth)?,
                _ => facts.error_text = c.raw(depth)?,
            }
            Ok(())
        })?;
        c.ws();
        if c.rest.is_empty() {
            Ok(())
        } else {
            Err(Invalid)
        }
    })();
    match read {
        Ok(()) => Ok(facts),
        Err(Invalid) => Err(why(body)),
    }
}

/// Why `body` is not a card, in the order the checks were always made.
fn why(body: &[u8]) -> &'static str {
    if std::str::from_utf8(body).is_err() {
        "answer is not UTF-8"
    } else if !super::nesting_within(body, MAX_DEPTH) {
        "answer nested too deeply"
    } else {
        "body is not a JSON object"
    }
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

/// An object member's name, between its quotes.
struct Key<'a> {
    quoted: &'a [u8],
    escaped: bool,
}

impl Key<'_> {
    /// Is the name `name`? An escaped name is unescaped as serde does it, refusals included.
    fn is(&self, name: &str) -> Result<bool, Invalid> {
        if !self.escaped {
            return Ok(self.quoted.get(1..self.quoted.len().saturating_sub(1)) == Some(name.as_bytes()));
        }
        let unescaped: String = serde_json::from_slice(self.quoted).map_err(|_| Invalid)?;
        Ok(unescaped == name)
    }
}

struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    fn skip(&mut self, n: usize) {
        self.rest = self.rest.get(n..).unwrap_or_default();
    }

    /// Take `b` if it comes next.
    fn eat(&mut self, b: u8) -> bool {
        let next = self.peek() == Some(b);
        if next {
            self.skip(1);
        }
        next
    }

    fn expect(&mut self, b: u8) -> Step {
        if self.eat(b) {
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    fn ws(&mut self) {
        if !matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            return; // compact JSON: the common case
        }
        let n = self
            .rest
            .iter()
            .position(|b| !matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
            .unwrap_or(self.rest.len());
        self.skip(n);
    }

    /// Any value, nested in `depth` objects and arrays.
    fn value(&mut self, depth: usize) -> Step {
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'{') => self.object(depth, |c, _, depth| c.value(depth)),
            Some(b'[') => self.array(depth),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(Invalid),
        }
    }

    /// A value as its raw text; `null` is none.
    fn raw(&mut self, depth: usize) -> Result<Option<&'a [u8]>, Invalid> {
        let start = self.rest;
        self.value(depth)?;
        let raw = start
            .get(..start.len().saturating_sub(self.rest.len()))
            .ok_or(Invalid)?;
        Ok((raw != b"null").then_some(raw))
    }

    /// The `client` member: null (none) or an object, with its raw `id`.
    fn client(&mut self, depth: usize) -> Result<Option<Option<&'a [u8]>>, Invalid> {
        if self.peek() != Some(b'{') {
            return self.literal(b"null").map(|()| None);
        }
        let (mut id, mut seen) = (None, false);
        self.object(depth, |c, key, depth| {
            if !key.is("id")? {
                return c.value(depth);
            }
            if std::mem::replace(&mut seen, true) {
                return Err(Invalid);
            }
            id = c.raw(depth)?;
            Ok(())
        })?;
        Ok(Some(id))
    }

    /// An object; `member` reads each member's value (the cursor is at it).
    fn object(&mut self, depth: usize, mut member: impl FnMut(&mut Self, Key<'a>, usize) -> Step) -> Step {
        let depth = deeper(depth)?;
        self.expect(b'{')?;
        self.ws();
        if self.eat(b'}') {
            return Ok(());
        }
        loop {
            let start = self.rest;
            if self.peek() != Some(b'"') {
                return Err(Invalid);
            }
            let escaped = self.string()?;
            let quoted = start
                .get(..start.len().saturating_sub(self.rest.len()))
                .ok_or(Invalid)?;
            self.ws();
            self.expect(b':')?;
            self.ws();
            member(self, Key { quoted, escaped }, depth)?;
            self.ws();
            if self.eat(b'}') {
                return Ok(());
            }
            self.expect(b',')?;
            self.ws();
        }
    }

    fn array(&mut self, depth: usize) -> Step {
        let depth = deeper(depth)?;
        self.expect(b'[')?;
        self.ws();
        if self.eat(b']') {
            return Ok(());
        }
        loop {
            self.value(depth)?;
            self.ws();
            if self.eat(b']') {
                return Ok(());
            }
            self.expect(b',')?;
            self.ws();
        }
    }

    /// A string (the cursor at its opening quote); says whether it has escapes.
    fn string(&mut self) -> Result<bool, Invalid> {
        self.expect(b'"')?;
        let mut escaped = false;
        loop {
            let plain = plain_run(self.rest).ok_or(Invalid)?;
            self.skip(plain);
            match self.peek() {
                Some(b'"') => {
                    self.skip(1);
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.escape()?;
                }
                Some(lead @ 0x80..) => self.utf8(lead)?,
                _ => return Err(Invalid), // a control character
            }
        }
    }

    /// An escape (the cursor at its backslash): its form only, as serde skips one.
    fn escape(&mut self) -> Step {
        match self.rest.get(1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.skip(2),
            Some(b'u') => {
                let hex = self.rest.get(2..6).ok_or(Invalid)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return Err(Invalid);
                }
                self.skip(6);
            }
            _ => return Err(Invalid),
        }
        Ok(())
    }

    /// One multi-byte UTF-8 character starting with `lead`.
    fn utf8(&mut self, lead: u8) -> Step {
        let width = match lead {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return Err(Invalid),
        };
        let char = self.rest.get(..width).ok_or(Invalid)?;
        std::str::from_utf8(char).map_err(|_| Invalid)?;
        self.skip(width);
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Step {
        if !self.rest.starts_with(word) {
            return Err(Invalid);
        }
        self.skip(word.len());
        Ok(())
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Step {
        self.eat(b'-');
        match self.peek() {
            Some(b'0') => self.skip(1),
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(Invalid),
        }
        if self.eat(b'.') {
            self.digits1()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.skip(1);
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.skip(1);
            }
            self.digits1()?;
        }
        Ok(())
    }

    fn digits(&mut self) {
        let n = self
            .rest
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(self.rest.len());
        self.skip(n);
    }

    /// At least one digit.
    fn digits1(&mut self) -> Step {
        if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
            return Err(Invalid);
        }
        self.digits();
        Ok(())
    }
}

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

/// One level deeper, within [`MAX_DEPTH`].
fn deeper(depth: usize) -> Result<usize, Invalid> {
    depth
        .checked_add(1)
        .filter(|d| *d <= MAX_DEPTH)
        .ok_or(Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::fuzz;

    fn facts(body: &str) -> Result<CardFacts<'_>, &'static str> {
        card(body.as_bytes())
    }

    #[test]
    fn reads_the_members_the_check_needs() {
        let f = facts(r#" {"x":[1,{"client":2}],"client":{"n":"\"}","id":"12"},"errorCode":null} "#).unwrap();
        assert_eq!(f.client, Some(Some(&b"\"12\""[..])));
        assert_eq!((f.error_code, f.error_text), (None, None));
        let f = facts(r#"{"errorCode":1001,"errorText":"not \u0066ound","client":null}"#).unwrap();
        assert_eq!(f.client, None);
        assert_eq!(f.error_code, Some(&b"1001"[..]));
        assert_eq!(f.error_text, Some(&br#""not \u0066ound""#[..]));
        let f = facts(r#"{"cli\u0065nt":{"\u0069d":-1.5e+3}}"#).unwrap();
        assert_eq!(f.client, Some(Some(&b"-1.5e+3"[..])));
    }

    #[test]
    fn refuses_what_is_not_a_card_document() {
        for body in [
            "",
            "[]",
            "\"x\"",
            "{",
            "{}x",
            "{} {}",
            r#"{"client":[{"id":"1"}]}"#,
            r#"{"client":"1"}"#,
            r#"{"client":{},"client":{}}"#,
            r#"{"client":{"id":1,"id":2}}"#,
            r#"{"errorCode":null,"errorCode":1}"#,
            r#"{"\ud800":1}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":-}"#,
            r#"{"a":1e}"#,
            r#"{"a":tru}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12"}"#,
            "{\"a\":\"\t\"}",
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{,}"#,
            r#"{"a":[1,]}"#,
        ] {
            assert_eq!(facts(body), Err("body is not a JSON object"), "{body}");
        }
        assert_eq!(card(b"{\"a\":\"\xff\"}"), Err("answer is not UTF-8"));
        assert_eq!(card(b"{\"a\":\"\xed\xa0\x80\"}"), Err("answer is not UTF-8"));
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(facts(&deep), Err("answer nested too deeply"));
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1));
        assert!(facts(&deep).is_ok());
    }

    #[test]
    fn skips_what_serde_skips() {
        // Lone surrogate escapes where the check reads no name, as serde skips them.
        assert!(facts(r#"{"a":"\ud800","b":{"\udc00":[true,false,null,0,-0.0e-0,"é€𝄞"]}}"#).is_ok());
        assert!(facts(" {\r\n\t\"a\" :\t{ } , \"b\":[ ] }\n").is_ok());
    }

    /// Seeds mutated many ways, each held to serde's verdict (as the fuzz target does, with
    /// a fixed sequence, on every `cargo test`).
    #[test]
    fn agrees_with_serde_on_mutated_cards() {
        let seeds: [&[u8]; 5] = [
            br#"{"client":{"id":"124625","name":"Ivanov","branch":{"id":7,"x":[1.5,-2e3,true,null]}},"companyList":[{"id":225760,"resident":false}]}"#,
            br#"{"errorCode":"1001","errorText":"Client not found"}"#,
            r#"{"cli\u0065nt":{"id":42},"s":"\"\\\/\b\f\n\r\t\u00e9 é€𝄞"}"#.as_bytes(),
            b"{\"client\":{\"id\":\"1\"},\"d\":[[[[{\"a\":[]}]]]]}",
            br#"{"client":null,"errorCode":7,"errorText":null}"#,
        ];
        let pieces: [&[u8]; 32] = [
            b"{", b"}", b"[", b"]", b"\"", b"\\", b":", b",", b" ", b"\t", b"\x01", b"\\u",
            b"\\ud800", b"\"\\udc00\"", b"0", b"01", b"-", b".5", b"e", b"1e5", b"null", b"true",
            b",\"id\":2", b",\"client\":null", b",\"client\":{\"id\":1}", b",\"errorCode\":1",
            b",\"errorText\":\"x\"", b"\"cli\\u0065nt\"", "é𝄞".as_bytes(), b"\xff", b"\xed\xa0\x80",
            b"\xc0\x80",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            usize::try_from(state % n as u64).unwrap()
        };
        for _ in 0..50_000 {
            let mut doc = seeds[next(seeds.len())].to_vec();
            for _ in 0..=next(3) {
                let at = next(doc.len() + 1);
                match next(4) {
                    0 => {
                        doc.remove(at.min(doc.len() - 1));
                    }
                    1 => doc.truncate(at),
                    2 => {
                        let piece = pieces[next(pieces.len())];
                        doc.splice(at..at, piece.iter().copied());
                    }
                    _ => {
                        let from = next(doc.len() + 1);
                        let copy = doc[from.min(at)..from.max(at)].to_vec();
                        doc.splice(at..at, copy);
                    }
                }
                if doc.is_empty() {
                    doc.push(b'{');
                }
            }
            fuzz::card_scan(&doc);
        }
    }
}
