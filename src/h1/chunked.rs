//! The chunked body decoder (RFC 9112 §7.1), for request bodies and the CRM's answers alike.

use super::common::FramingError;

/// Longest chunk-size line (size and extensions, without its CRLF) accepted.
pub const MAX_CHUNK_LINE: usize = 1024;
/// Longest trailer section accepted.
const MAX_TRAILERS: usize = 8 * 1024;
/// Framing bytes (size lines, extensions, CRLFs, trailers) a chunked body may carry
/// beyond this share of its data limit, plus [`OVERHEAD_SLACK`]: a body of many tiny
/// chunks is refused by what it is, whatever the packets it arrived in.
const OVERHEAD_SLACK: usize = 4 * 1024;

/// A chunked body decoder that resumes where it stopped: feed it the bytes after the head
/// (a buffer that only grows between calls) until it reports the body complete, so a body
/// sent in many small pieces is still decoded in one pass.
///
/// Strict on purpose: a size line is hex digits, optionally followed by `;` extensions of
/// visible characters, then CRLF; chunk data is followed by CRLF; trailer fields must be
/// well-formed header fields (they are read and ignored). Every decision depends on the
/// bytes alone, never on how they were split into reads: data beyond `max` and framing
/// bytes beyond `max + 4 KiB` are [`FramingError::BodyTooLarge`] at the same byte.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    /// Bytes of the input consumed so far.
    pos: usize,
    /// Of those, bytes that were framing rather than data.
    overhead: usize,
    state: ChunkState,
    /// The decoded body.
    pub body: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(usize),
    DataEnd,
    Trailers,
    Done,
}

impl ChunkedDecoder {
    /// Start over for a new body (keeps the buffer's allocation).
    pub fn reset(&mut self) {
        self.pos = 0;
        self.overhead = 0;
        self.state = ChunkState::Size;
        self.body.clear();
    }

    /// Go on decoding `input`, at most `max` bytes of data. `Ok(Some(n))`: complete, the
    /// body took `n` bytes of `input`; `Ok(None)`: incomplete, call again with more.
    pub fn decode(&mut self, input: &[u8], max: usize) -> Result<Option<usize>, FramingError> {
        let bad = |why| Err(FramingError::BadChunk(why));
        let max_overhead = max.saturating_add(OVERHEAD_SLACK);
        loop {
            let rest = input.get(self.pos..).unwrap_or_default();
            match self.state {
                ChunkState::Size => {
                    let Some(eol) = find_crlf(rest, MAX_CHUNK_LINE) else {
                        // Decided on the line's length alone: a line of MAX_CHUNK_LINE
                        // bytes whose CR has come but not its LF is still incomplete.
                        return if rest.len() >= MAX_CHUNK_LINE + 2 {
                            bad("malformed chunked body: chunk line too long")
                        } else {
                            Ok(None)
                        };
                    };
                    let line_end = eol.saturating_add(2);
                    self.framing(line_end, max_overhead)?;
                    let size = chunk_size(rest.get(..eol).unwrap_or_default())
                        .ok_or(FramingError::BadChunk("malformed chunked body: bad chunk size"))?;
                    if size > max.saturating_sub(self.body.len()) as u64 {
                        return Err(FramingError::BodyTooLarge);
                    }
                    self.pos = self.pos.saturating_add(line_end);
                    self.state = match size {
                        0 => ChunkState::Trailers,
                        n => ChunkState::Data(n as usize),
                    };
                }
                ChunkState::Data(left) => {
                    let take = left.min(rest.len());
                    if take == 0 {
                        return Ok(None);
                    }
                    self.body.extend_from_slice(rest.get(..take).unwrap_or_default());
                    self.pos = self.pos.saturating_add(take);
                    self.state = match left.saturating_sub(take) {
                        0 => ChunkState::DataEnd,
                        n => ChunkState::Data(n),
                    };
                }
                ChunkState::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(None);
                    }
                    if rest.get(..2) != Some(b"\r\n".as_slice()) {
                        return bad("malformed chunked body: no CRLF after chunk data");
                    }
                    self.framing(2, max_overhead)?;
                    self.pos = self.pos.saturating_add(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let mut fields = [httparse::EMPTY_HEADER; 16];
                    match httparse::parse_headers(rest, &mut fields) {
                        // httparse takes a bare LF as a line end; here only CRLF is.
                        Ok(httparse::Status::Complete((n, _)))
                            if n <= MAX_TRAILERS && crlf_only(rest.get(..n).unwrap_or_default()) =>
                        {
                            self.framing(n, max_overhead)?;
                            self.pos = self.pos.saturating_add(n);
                            self.state = ChunkState::Done;
                        }
                        Ok(httparse::Status::Partial) if rest.len() <= MAX_TRAILERS => return Ok(None),
                        _ => return bad("malformed chunked body: bad trailer section"),
                    }
                }
                ChunkState::Done => return Ok(Some(self.pos)),
            }
        }
    }

    /// Count `n` framing bytes against `max`.
    fn framing(&mut self, n: usize, max: usize) -> Result<(), FramingError> {
        self.overhead = self.overhead.saturating_add(n);
        if self.overhead > max {
            return Err(FramingError::BodyTooLarge);
        }
        Ok(())
    }
}

/// Every LF in `s` ends a CRLF.
fn crlf_only(s: &[u8]) -> bool {
    s.first() != Some(&b'\n')
        && s.windows(2)
            .all(|w| matches!(w, [a, b] if *b != b'\n' || *a == b'\r'))
}

/// The position of the first CRLF within the first `limit + 2` bytes.
fn find_crlf(s: &[u8], limit: usize) -> Option<usize> {
    let end = s.len().min(limit.saturating_add(2));
    s.get(..end)?.windows(2).position(|w| w == b"\r\n")
}

/// The size on a chunk-size line: 1 to 15 hex digits, then nothing or `;` extensions
/// (whitespace before `;` tolerated) of visible characters, spaces and tabs.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return None;
    }
    let (hex, ext) = line.split_at(digits);
    let ext_ok = match ext.iter().position(|&b| b != b' ' && b != b'\t') {
        None => true,
        Some(i) => {
            let ext = ext.get(i..).unwrap_or_default();
            ext.first() == Some(&b';') && ext.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        }
    };
    if !ext_ok {
        return None;
    }
    std::str::from_utf8(hex)
        .ok()
        .and_then(|h| u64::from_str_radix(h, 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode `raw` whole (a fresh decoder).
    fn chunked(raw: &[u8], max: usize) -> Result<Option<(usize, Vec<u8>)>, FramingError> {
        let mut d = ChunkedDecoder::default();
        Ok(d.decode(raw, max)?.map(|n| (n, d.body)))
    }

    #[test]
    fn chunked_bodies() {
        let raw = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let whole = raw.len() - 4;
        assert_eq!(chunked(raw, 100), Ok(Some((whole, b"hello, world".to_vec()))));
        assert_eq!(
            chunked(b"A ; a=b\t\r\n0123456789\r\n0\r\n\r\n", 100)
                .unwrap()
                .unwrap()
                .1,
            b"0123456789"
        );
        // Any cut is incomplete, and feeding the rest resumes where it stopped.
        for cut in 0..whole {
            assert_eq!(chunked(&raw[..cut], 100), Ok(None), "cut {cut}");
            let mut d = ChunkedDecoder::default();
            assert_eq!(d.decode(&raw[..cut], 100), Ok(None));
            assert_eq!(d.decode(raw, 100), Ok(Some(whole)), "cut {cut}");
            assert_eq!(d.body, b"hello, world");
        }
        // Byte by byte, as a slow client sends it: still one pass.
        let mut d = ChunkedDecoder::default();
        for end in 1..=whole {
            let r = d.decode(&raw[..end], 100).unwrap();
            assert_eq!(r.is_some(), end == whole, "at {end}");
        }
        d.reset();
        assert_eq!(d.decode(b"0\r\n\r\n", 100), Ok(Some(5)));
        assert!(d.body.is_empty());
    }

    #[test]
    fn chunked_limits_and_malformed_bodies() {
        let raw = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
        assert_eq!(chunked(raw, 8), Err(FramingError::BodyTooLarge));
        assert_eq!(
            chunked(b"fffffffffffffff\r\n", 8),
            Err(FramingError::BodyTooLarge)
        );
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"ffffffffffffffff\r\n",
            b"3\r\nabcX\r\n",
            b"3;a\nb\r\nabc\r\n0\r\n\r\n",
            b"3 x\r\nabc\r\n0\r\n\r\n",
            b"3\r\nabc\r\n0\r\n\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"3\r\nabc\r\n0\r\nBad Trailer: x\r\n\r\n",
        ] {
            let r = chunked(bad, 100);
            assert!(
                matches!(r, Err(FramingError::BadChunk(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long_line = [b"3;".as_slice(), &[b'x'; MAX_CHUNK_LINE + 8]].concat();
        assert!(matches!(chunked(&long_line, 100), Err(FramingError::BadChunk(_))));
    }

    /// Feed `raw` to a fresh decoder in pieces of `piece` bytes, as reads would bring it.
    fn in_pieces(raw: &[u8], piece: usize, max: usize) -> Result<Option<usize>, FramingError> {
        let mut d = ChunkedDecoder::default();
        let mut end = 0;
        loop {
            end = (end + piece).min(raw.len());
            match d.decode(&raw[..end], max)? {
                Some(n) => return Ok(Some(n)),
                None if end == raw.len() => return Ok(None),
                None => {}
            }
        }
    }

    #[test]
    fn verdicts_do_not_depend_on_read_boundaries() {
        // 8014 bytes of data in one-byte chunks: 40 KB of framing for a 16 KiB limit.
        let tiny: Vec<u8> = [b"1\r\nx\r\n".repeat(8014), b"0\r\n\r\n".to_vec()].concat();
        // The largest chunk line accepted, then one byte too long.
        let line = |len: usize| [b"3;".as_slice(), &vec![b'x'; len - 2], b"\r\nabc\r\n0\r\n\r\n"].concat();
        let long_trailer = [b"1\r\na\r\n0\r\nX: ".as_slice(), &[b'a'; 10_000], b"\r\n\r\n"].concat();
        let cases = [
            (long_trailer, 16 * 1024),
            (tiny, 16 * 1024),
            (line(MAX_CHUNK_LINE), 100),
            (line(MAX_CHUNK_LINE + 1), 100),
            (b"5\r\nhello\r\n0\r\n\r\n".to_vec(), 100),
        ];
        for (raw, max) in cases {
            let whole = in_pieces(&raw, raw.len(), max);
            for piece in [1, 2, 3, 7, 1024, 2048] {
                assert_eq!(in_pieces(&raw, piece, max), whole, "piece {piece}");
            }
        }
        assert_eq!(
            in_pieces(&line(MAX_CHUNK_LINE), 1, 100).map(|r| r.is_some()),
            Ok(true)
        );
        assert!(matches!(
            in_pieces(&line(MAX_CHUNK_LINE + 1), 1, 100),
            Err(FramingError::BadChunk(_))
        ));
        let tiny: Vec<u8> = [b"1\r\nx\r\n".repeat(8014), b"0\r\n\r\n".to_vec()].concat();
        assert_eq!(in_pieces(&tiny, 1, 16 * 1024), Err(FramingError::BodyTooLarge));
    }
}
