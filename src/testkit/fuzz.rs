//! Properties the fuzz targets (`fuzz/`) check on arbitrary input, and the corpus replay
//! (`tests/fuzz_corpus.rs`) checks on every committed input. Each function panics when
//! a property fails; "no panic" alone is never the whole check.
//!
//! The request side is driven exactly as the listener drives it ([`parse_head`], then
//! [`body_complete`] until the body is whole, then the next request), over reads split
//! where the input says.

use std::cell::RefCell;

use bytes::Bytes;

use crate::config::Config;
use crate::dialect::bearer::Bearer;
use crate::dialect::gigma;
use crate::h1::client::{read_answer, ReadError};
use crate::h1::server::{body_complete, parse_head, BodyPlace, RequestView};
use crate::h1::{ChunkedDecoder, FramingError};
use crate::normalise::{self, MAX_DEPTH};
use crate::parse::{self, Route};
use crate::upstream::UpstreamAnswer;

const MAX_HEAD: usize = 8 * 1024;
const MAX_BODY: usize = 4 * 1024;

/// Input cut into a few read boundaries and the bytes: `[n, (u16 le) * n, bytes...]`.
fn splits(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let n = usize::from(data.first().copied().unwrap_or(0) % 8);
    let cuts_end = (1 + 2 * n).min(data.len());
    let stream = data.get(cuts_end..).unwrap_or_default();
    let mut cuts: Vec<usize> = data
        .get(1..cuts_end)
        .unwrap_or_default()
        .chunks(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)])) % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    (cuts, stream)
}

/// What the listener made of one request on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Request {
        method: String,
        target_path: String,
        fields: usize,
        body: Vec<u8>,
        keep_alive: bool,
    },
    Refused(FramingError),
}

/// Frame `stream`, delivered in reads that end at `cuts` (and at its end), as the listener
/// does: requests one after the other until a refusal or a request that closes.
pub fn frame_connection(stream: &[u8], cuts: &[usize]) -> Vec<Event> {
    let mut events = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut head = None;
    let mut chunked = ChunkedDecoder::default();
    let mut have_head = false;
    let ends = cuts.iter().copied().chain(std::iter::once(stream.len()));
    let mut from = 0;
    for end in ends {
        buf.extend_from_slice(stream.get(from..end).unwrap_or_default());
        from = end;
        loop {
            if !have_head {
                match parse_head(&buf, MAX_HEAD, &mut head) {
                    Ok(true) => {
                        have_head = true;
                        chunked.reset();
                    }
                    Ok(false) => break,
                    Err(e) => {
                        events.push(Event::Refused(e));
                        return events;
                    }
                }
            }
            let Some(h) = head.as_ref() else { return events };
            match body_complete(h, &buf, &mut chunked, MAX_BODY) {
                Ok(None) => break,
                Err(e) => {
                    events.push(Event::Refused(e));
                    return events;
                }
                Ok(Some((place, used))) => {
                    let body = match place {
                        BodyPlace::Inline(a, b) => buf[a..b].to_vec(),
                        BodyPlace::Chunked => chunked.body.clone(),
                    };
                    let req = crate::h1::server::Request::new(&buf, h, &body, None);
                    events.push(Event::Request {
                        method: req.method().to_string(),
                        target_path: req.path().to_string(),
                        fields: h.field_count(),
                        body: body.clone(),
                        keep_alive: h.keep_alive,
                    });
                    if !h.keep_alive {
                        return events;
                    }
                    buf.drain(..used);
                    have_head = false;
                }
            }
        }
    }
    events
}

/// Request framing: the same requests, refusals and bodies whatever the read boundaries;
/// nothing after a refusal; in the structured mode, every body exactly as it was framed.
pub fn request_framing(data: &[u8]) {
    if data.first().is_some_and(|b| b & 0x80 != 0) {
        return framed_bodies(data.get(1..).unwrap_or_default());
    }
    let (cuts, stream) = splits(data);
    let whole = frame_connection(stream, &[]);
    let split = frame_connection(stream, &cuts);
    assert_eq!(whole, split, "the read boundaries {cuts:?} changed the verdict");
    if let Some(pos) = whole.iter().position(|e| matches!(e, Event::Refused(_))) {
        assert_eq!(pos + 1, whole.len(), "a request was read after a refusal");
    }
    for e in &whole {
        if let Event::Request { body, .. } = e {
            assert!(body.len() <= MAX_BODY);
        }
    }
}

/// Build pipelined requests whose bodies are known, framed by length or in chunks of
/// sizes the input picks, and check that exactly those bodies come out.
fn framed_bodies(data: &[u8]) {
    let mut stream = Vec::new();
    let mut bodies = Vec::new();
    let mut rest = data;
    while let Some((&ctl, tail)) = rest.split_first() {
        let len = usize::from(ctl & 0x3f).min(tail.len());
        let (body, tail) = tail.split_at(len);
        rest = tail;
        stream.extend_from_slice(b"POST /f HTTP/1.1\r\nHost: f\r\n");
        if ctl & 0x40 == 0 {
            stream.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            stream.extend_from_slice(body);
        } else {
            stream.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            let size = usize::from(ctl >> 7) + 1 + usize::from(ctl & 0x7);
            for chunk in body.chunks(size) {
                stream.extend_from_slice(format!("{:x};e=1\r\n", chunk.len()).as_bytes());
                stream.extend_from_slice(chunk);
                stream.extend_from_slice(b"\r\n");
            }
            stream.extend_from_slice(b"0\r\n\r\n");
        }
        bodies.push(body.to_vec());
    }
    let cut = usize::from(data.first().copied().unwrap_or(0)) % (stream.len() + 1);
    // Many small reads too, but not so many that a long input costs quadratic time.
    let step = (stream.len() / 64).max(7);
    for cuts in [vec![], vec![cut], (1..stream.len()).step_by(step).collect()] {
        let got: Vec<Vec<u8>> = frame_connection(&stream, &cuts)
            .into_iter()
            .map(|e| match e {
                Event::Request { body, .. } => body,
                Event::Refused(e) => panic!("a well-framed request was refused: {e}"),
            })
            .collect();
        assert_eq!(got, bodies, "bodies differ with reads ending at {cuts:?}");
    }
}

thread_local! {
    static RUNTIME: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    RUNTIME.with(|rt| {
        let mut rt = rt.borrow_mut();
        let rt = rt.get_or_insert_with(|| {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap_or_else(|e| panic!("a runtime for the fuzz target: {e}"))
        });
        rt.block_on(f)
    })
}

/// What reading one answer came to, comparable across read boundaries.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Answer {
        status: u16,
        body: Bytes,
        reusable: bool,
    },
    Io {
        answered: bool,
    },
    Framing(FramingError),
}

/// The outcome, and whether the reader took the whole input (nothing was left unread).
fn read_in_pieces(stream: &[u8], cuts: &[usize]) -> (Outcome, bool) {
    let mut script = tokio_test::io::Builder::new();
    let mut from = 0;
    for end in cuts.iter().copied().chain(std::iter::once(stream.len())) {
        if end > from {
            script.read(&stream[from..end]);
        }
        from = end;
    }
    let mut io = script.build();
    let outcome = match block_on(read_answer(&mut io, MAX_BODY)) {
        Ok((head, body, reusable)) => Outcome::Answer {
            status: head.status,
            body,
            reusable,
        },
        Err(ReadError::Io { answered, .. }) => Outcome::Io { answered },
        Err(ReadError::Framing(e)) => Outcome::Framing(e),
    };
    // The reader stops where the answer ends; drain the rest, which the script requires.
    let mut rest = Vec::new();
    let _ = block_on(tokio::io::AsyncReadExt::read_to_end(&mut io, &mut rest));
    (outcome, rest.is_empty())
}

/// The answer parser: the same outcome whatever the read boundaries. One thing may
/// differ: bytes past the answer make its connection unfit for reuse only if they have
/// arrived by then (later ones are caught by the pool's check before reuse); an answer
/// that ends the input exactly is reusable however it arrived. (Even "whole" input may
/// arrive in more than one read: the reader takes what its buffer holds, so an answer
/// can look as if it ended the input when more was still to come.)
pub fn answer_framing(data: &[u8]) {
    let (cuts, stream) = splits(data);
    let (mut whole, took_all) = read_in_pieces(stream, &[]);
    let (mut split, _) = read_in_pieces(stream, &cuts);
    if let (Outcome::Answer { reusable: w, .. }, Outcome::Answer { reusable: s, .. }) =
        (&mut whole, &mut split)
    {
        assert!(
            !(*w && took_all) || *s,
            "an answer that ends the input lost its reuse at boundaries {cuts:?}"
        );
        *s = *w;
    }
    assert_eq!(whole, split, "the read boundaries {cuts:?} changed the outcome");
    if let Outcome::Answer { body, .. } = &whole {
        assert!(body.len() <= MAX_BODY);
    }
}

/// Routes and tokens: a token that is accepted is printable ASCII within the limit, with
/// spaces only inside, and routing it again, percent-encoded in the path, gives the same
/// token.
pub fn route(data: &[u8]) {
    const MAX_TOKEN: usize = 64;
    let method = ["GET", "POST", "HEAD", "PUT"][usize::from(data.first().copied().unwrap_or(0) % 4)];
    let rest = data.get(1..).unwrap_or_default();
    let (path, header) = match rest.iter().position(|&b| b == 0xff) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let mut raw = format!("{method} /rest/chat/client/id").into_bytes();
    raw.extend_from_slice(path);
    raw.extend_from_slice(b" HTTP/1.1\r\nHost: f\r\ntoken: ");
    raw.extend_from_slice(header);
    raw.extend_from_slice(b"\r\n\r\n");
    let Some(token) = route_token(&raw, MAX_TOKEN) else {
        return;
    };
    assert!(!token.is_empty() && token.len() <= MAX_TOKEN);
    assert!(token.iter().all(|b| (0x20..=0x7e).contains(b)), "{token:?}");
    assert!(
        token.first() != Some(&b' ') && token.last() != Some(&b' '),
        "{token:?}"
    );
    let encoded: String = token.iter().map(|b| format!("%{b:02X}")).collect();
    let again = format!("GET /rest/chat/client/id/{encoded} HTTP/1.1\r\nHost: f\r\n\r\n");
    assert_eq!(
        route_token(again.as_bytes(), MAX_TOKEN).as_deref(),
        Some(&token[..])
    );
}

fn route_token(raw: &[u8], max: usize) -> Option<Vec<u8>> {
    let mut head = None;
    if !matches!(parse_head(raw, MAX_HEAD, &mut head), Ok(true)) {
        return None;
    }
    let head = head?;
    let req = crate::h1::server::Request::new(raw, &head, b"", None);
    match parse::route(&req, max).1 {
        Ok(Route::Card(t)) => Some(t.as_bytes().to_vec()),
        _ => None,
    }
}

/// Search parameters: accepted ones are within the limits and free of control
/// characters; `client` is printable ASCII.
pub fn search_params(data: &[u8]) {
    let content_type = if data.first().is_some_and(|b| b & 1 == 1) {
        "application/json"
    } else {
        "application/x-www-form-urlencoded"
    };
    let Ok(req) = parse::search_params(Some(content_type), data.get(1..).unwrap_or_default(), 64) else {
        return;
    };
    assert!(
        req.client.chars().all(|c| (' '..='~').contains(&c)),
        "{:?}",
        req.client
    );
    for (_, v) in req.params() {
        assert!(v.len() <= 64 && !v.chars().any(char::is_control));
    }
}

/// Card normalisation, for each dialect: an accepted card is JSON, nested at most
/// [`MAX_DEPTH`] deep, with a `client.id`.
pub fn normalise(data: &[u8]) {
    let ctl = data.first().copied().unwrap_or(0);
    let status = [200, 404, 401, 500][usize::from(ctl & 3)];
    let body = Bytes::copy_from_slice(data.get(1..).unwrap_or_default());
    let answer = UpstreamAnswer {
        status,
        cache_control: None,
        body: body.clone(),
    };
    let card = match (ctl >> 2) % 4 {
        0 => normalise::auth_answer(answer).map(|c| c.body),
        1 => {
            let _ = normalise::search_answer(answer);
            return;
        }
        2 => bearer().card(answer).map(|c| c.body),
        _ => match serde_json::from_slice(&body) {
            Ok(v) => gigma::card(&v, "0"),
            Err(_) => return,
        },
    };
    if let Ok(card) = card {
        assert!(normalise::nesting_within(&card, MAX_DEPTH));
        let v: serde_json::Value =
            serde_json::from_slice(&card).unwrap_or_else(|e| panic!("a card that is not JSON: {e}"));
        let id = &v["client"]["id"];
        assert!(
            id.is_number() || id.as_str().is_some_and(|s| !s.is_empty()),
            "{v}"
        );
    }
}

fn bearer() -> Bearer {
    let cfg = Config::from_toml("[upstream]\nurl = \"http://127.0.0.1:1\"\ndialect = \"bearer\"\n")
        .unwrap_or_else(|e| panic!("{e}"));
    Bearer::new(&cfg.upstream)
}

/// The config loader: any text is a config or one line naming what is wrong.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = Config::from_toml(&text) {
        assert!(!e.0.contains('\n'), "a multi-line error: {e}");
        assert!(!e.0.is_empty());
    }
}

/// The card scan (`normalise::scan`) against serde, the reference it replaced: the same
/// verdict, the same reason and the same members on any input.
pub fn card_scan(data: &[u8]) {
    let ours = normalise::scan::card(data).map(|f| {
        (
            f.client.map(|id| id.map(<[u8]>::to_vec)),
            f.error_code.map(<[u8]>::to_vec),
            f.error_text.map(<[u8]>::to_vec),
        )
    });
    assert_eq!(ours, serde_card(data), "{:?}", String::from_utf8_lossy(data));
}

/// `client` (its `id`), `errorCode`, `errorText`, as raw JSON.
pub type CardMembers = (Option<Option<Vec<u8>>>, Option<Vec<u8>>, Option<Vec<u8>>);

/// What serde makes of a card: the derived probe (duplicates refused, names unescaped),
/// behind the UTF-8 and nesting checks (`normalise::unpassable`, as before the scan), and with the shape the scan requires (the
/// document and `client` are objects; a derived struct would also take an array).
pub fn serde_card(body: &[u8]) -> Result<CardMembers, &'static str> {
    use serde::Deserialize;
    use serde_json::value::RawValue;

    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(borrow)]
        client: Option<ClientProbe<'a>>,
        #[serde(rename = "errorCode", borrow)]
        error_code: Option<&'a RawValue>,
        #[serde(rename = "errorText", borrow)]
        error_text: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct ClientProbe<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct Shape<'a> {
        #[serde(borrow)]
        client: Option<&'a RawValue>,
    }

    if let Some(why) = normalise::unpassable(body) {
        return Err(why);
    }
    let invalid = "body is not a JSON object";
    let probe: Probe = serde_json::from_slice(body).map_err(|_| invalid)?;
    let shape: Shape = serde_json::from_slice(body).map_err(|_| invalid)?;
    let object = |raw: &str| raw.starts_with('{');
    if !body.trim_ascii_start().starts_with(b"{") || !shape.client.is_none_or(|c| object(c.get())) {
        return Err(invalid);
    }
    let raw = |r: Option<&RawValue>| r.map(|r| r.get().as_bytes().to_vec());
    Ok((
        probe.client.map(|c| raw(c.id).filter(|id| id != b"null")),
        raw(probe.error_code),
        raw(probe.error_text),
    ))
}
