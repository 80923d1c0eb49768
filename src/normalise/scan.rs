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

use super::lex::{literal, number, string, ws};
use super::MAX_DEPTH;

/// A member's raw JSON text, if it is there and not `null`.
pub type Raw<'a> = Option<&'a [u8]>;

/// What the Auth API check reads of a card, as raw JSON text (`null` counts as absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardFacts<'a> {
    /// `client`: `Some` when it is an object, with its raw `id` member.
    pub client: Option<Raw<'a>>,
    pub error_code: Raw<'a>,
    pub error_text: Raw<'a>,
}

/// Read `body` as a card answer, or say why it cannot be one.
pub fn card(body: &[u8]) -> Result<CardFacts<'_>, &'static str> {
    scan(body).ok_or_else(|| why(body))
}

/// Why `body` is not a card, in the order the checks were always made (off the hot path:
/// the scan only says that it is not).
fn why(body: &[u8]) -> &'static str {
    super::unpassable(body).unwrap_or("body is not a JSON object")
}

// The scan works on indexes into the body: each step takes the index where its part
// starts and returns the one just past it, or None when the part is not valid JSON.
// Indexes never exceed the body's length, so `+ 1` cannot overflow.

fn scan(b: &[u8]) -> Option<CardFacts<'_>> {
    let mut facts = CardFacts {
        client: None,
        error_code: None,
        error_text: None,
    };
    let i = ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    let mut seen = [false; 3];
    let end = object(b, i, 0, |key, i, depth| {
        let slot = if key.is("client")? {
            0
        } else if key.is("errorCode")? {
            1
        } else if key.is("errorText")? {
            2
        } else {
            return value(b, i, depth);
        };
        if std::mem::replace(seen.get_mut(slot)?, true) {
            return None; // a member the check reads, twice
        }
        let (end, raw) = match slot {
            0 => {
                let (end, client) = client(b, i, depth)?;
                facts.client = client;
                return Some(end);
            }
            _ => raw(b, i, depth)?,
        };
        if slot == 1 {
            facts.error_code = raw;
        } else {
            facts.error_text = raw;
        }
        Some(end)
    })?;
    (ws(b, end) == b.len()).then_some(facts)
}

/// The `client` member: null (none) or an object, with its raw `id`.
fn client(b: &[u8], i: usize, depth: usize) -> Option<(usize, Option<Raw<'_>>)> {
    if b.get(i) != Some(&b'{') {
        return literal(b, i, b"null").map(|end| (end, None));
    }
    let (mut id, mut seen) = (None, false);
    let end = object(b, i, depth, |key, i, depth| {
        if !key.is("id")? {
            return value(b, i, depth);
        }
        if std::mem::replace(&mut seen, true) {
            return None;
        }
        let (end, raw) = raw(b, i, depth)?;
        id = raw;
        Some(end)
    })?;
    Some((end, Some(id)))
}

/// A value and its raw text; `null` is none.
fn raw(b: &[u8], i: usize, depth: usize) -> Option<(usize, Raw<'_>)> {
    let end = value(b, i, depth)?;
    let text = b.get(i..end)?;
    Some((end, (text != b"null").then_some(text)))
}

/// Any value, nested in `depth` objects and arrays.
fn value(b: &[u8], i: usize, depth: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string(b, i).map(|(end, _)| end),
        b'{' => object(b, i, depth, |_, i, depth| value(b, i, depth)),
        b'[' => array(b, i, depth),
        b't' => literal(b, i, b"true"),
        b'f' => literal(b, i, b"false"),
        b'n' => literal(b, i, b"null"),
        b'-' | b'0'..=b'9' => number(b, i),
        _ => None,
    }
}

/// An object at `i`; `member` reads each member's value (its name, where it starts, the
/// object's depth) and returns where it ends.
fn object<'a>(
    b: &'a [u8],
    i: usize,
    depth: usize,
    mut member: impl FnMut(Key<'a>, usize, usize) -> Option<usize>,
) -> Option<usize> {
    let depth = deeper(depth)?;
    let mut i = ws(b, i.saturating_add(1));
    if b.get(i) == Some(&b'}') {
        return Some(i.saturating_add(1));
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let (end, escaped) = string(b, i)?;
        let key = Key {
            quoted: b.get(i..end)?,
            escaped,
        };
        i = ws(b, end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = member(key, ws(b, i.saturating_add(1)), depth)?;
        i = ws(b, i);
        match b.get(i)? {
            b',' => i = ws(b, i.saturating_add(1)),
            b'}' => return Some(i.saturating_add(1)),
            _ => return None,
        }
    }
}

fn array(b: &[u8], i: usize, depth: usize) -> Option<usize> {
    let depth = deeper(depth)?;
    let mut i = ws(b, i.saturating_add(1));
    if b.get(i) == Some(&b']') {
        return Some(i.saturating_add(1));
    }
    loop {
        i = ws(b, value(b, i, depth)?);
        match b.get(i)? {
            b',' => i = ws(b, i.saturating_add(1)),
            b']' => return Some(i.saturating_add(1)),
            _ => return None,
        }
    }
}

/// An object member's name, with its quotes.
struct Key<'a> {
    quoted: &'a [u8],
    escaped: bool,
}

impl Key<'_> {
    /// Is the name `name`? An escaped name is unescaped as serde does it, refusals included.
    fn is(&self, name: &str) -> Option<bool> {
        if !self.escaped {
            return Some(self.quoted.get(1..self.quoted.len().saturating_sub(1)) == Some(name.as_bytes()));
        }
        let unescaped: String = serde_json::from_slice(self.quoted).ok()?;
        Some(unescaped == name)
    }
}

/// One level deeper, within [`MAX_DEPTH`].
fn deeper(depth: usize) -> Option<usize> {
    depth.checked_add(1).filter(|d| *d <= MAX_DEPTH)
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
        let deep = format!(
            "{{\"a\":{}1{}}}",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
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
            b"{",
            b"}",
            b"[",
            b"]",
            b"\"",
            b"\\",
            b":",
            b",",
            b" ",
            b"\t",
            b"\x01",
            b"\\u",
            b"\\ud800",
            b"\"\\udc00\"",
            b"0",
            b"01",
            b"-",
            b".5",
            b"e",
            b"1e5",
            b"null",
            b"true",
            b",\"id\":2",
            b",\"client\":null",
            b",\"client\":{\"id\":1}",
            b",\"errorCode\":1",
            b",\"errorText\":\"x\"",
            b"\"cli\\u0065nt\"",
            "é𝄞".as_bytes(),
            b"\xff",
            b"\xed\xa0\x80",
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
