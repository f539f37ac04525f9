//! Body framing: incremental decoding of length-delimited, chunked and close-delimited
//! bodies, and chunked encoding.

use bytes::{BufMut, Bytes, BytesMut};

/// Most chunk-extension bytes accepted in one body (hyper's limit too): extensions are
/// read and dropped, so without a cap they would be free work for a peer.
pub const MAX_CHUNK_EXTENSIONS: usize = 16 * 1024;
/// Default cap on the trailer section (the gateway passes `max_header_bytes`).
pub const DEFAULT_MAX_TRAILERS: usize = 16 * 1024;
/// Most hex digits in a chunk size (16 fill a u64).
const MAX_SIZE_DIGITS: usize = 16;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// A malformed or interrupted body.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The connection ended before the body did.
    #[error("connection closed before the body was complete")]
    Incomplete,
    /// A chunk-size line is not `1*HEXDIG [ chunk-ext ]` (or overflows).
    #[error("invalid chunk size line")]
    BadChunkSize,
    /// A chunk is not followed by CRLF.
    #[error("chunk data not followed by CRLF")]
    BadChunkEnd,
    /// A chunk-size or trailer line ends in a bare LF (CRLF is required).
    #[error("line not ended by CRLF")]
    BareLf,
    /// Chunk extensions larger than [`MAX_CHUNK_EXTENSIONS`] in one body.
    #[error("chunk extensions larger than {MAX_CHUNK_EXTENSIONS} bytes")]
    ExtensionsTooLarge,
    /// The trailer section is larger than its limit.
    #[error("trailers larger than {limit} bytes")]
    TrailersTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A trailer line is not a valid field line.
    #[error("invalid trailer field")]
    BadTrailer,
    /// The chunk sizes declared so far add up to more than the body's limit: refused when
    /// the size line is read, not after that many bytes were awaited.
    #[error("chunked body declares more than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// Reading failed.
    #[error("read failed")]
    Io(#[source] std::io::Error),
}

/// One step of decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Some body bytes.
    Data(Bytes),
    /// More input is needed.
    NeedMore,
    /// The body is complete.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers(usize),
    UntilClose,
    Done,
}

/// Decodes one body from bytes buffered off the wire; leftover bytes (a pipelined next
/// message) stay in the buffer.
///
/// Chunked framing is read as RFC 9112 §7.1 writes it, positively: a size is `1*HEXDIG`
/// (at most 16 digits, no sign, no leading space), extensions are `;`-led and hold no
/// control characters, every line ends in CRLF, chunk data is followed by exactly CRLF,
/// and extensions and trailers are bounded.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    state: State,
    extension_bytes: usize,
    max_trailers: usize,
    /// The chunk sizes declared so far, and the most they may add up to.
    declared: u64,
    max_body: u64,
}

impl BodyDecoder {
    /// A decoder for a body framed as `length`.
    pub fn new(length: BodyLength) -> Self {
        let state = match length {
            BodyLength::Empty | BodyLength::Length(0) => State::Done,
            BodyLength::Length(n) => State::Length(n),
            BodyLength::Chunked => State::ChunkSize,
            BodyLength::UntilClose => State::UntilClose,
        };
        BodyDecoder {
            state,
            extension_bytes: 0,
            max_trailers: DEFAULT_MAX_TRAILERS,
            declared: 0,
            max_body: u64::MAX,
        }
    }

    /// The same decoder refusing a chunked body whose chunk sizes add up to more than
    /// `max` bytes ([`BodyError::TooLarge`], as soon as the size line that passes it is
    /// read). A length-delimited body is checked against its length before decoding.
    pub fn with_max_body(mut self, max: u64) -> Self {
        self.max_body = max;
        self
    }

    /// The same decoder with the trailer section capped at `max` bytes.
    pub fn with_max_trailers(mut self, max: usize) -> Self {
        self.max_trailers = max;
        self
    }

    /// True once the whole body has been decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes as much as `buf` allows.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, BodyError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Length(n) | State::ChunkData(n) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = n.min(buf.len() as u64);
                    let left = n - take;
                    self.state = match self.state {
                        State::Length(_) if left == 0 => State::Done,
                        State::Length(_) => State::Length(left),
                        _ if left == 0 => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                    return Ok(Decoded::Data(buf.split_to(take as usize).freeze()));
                }
                State::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                State::ChunkSize => {
                    let room = MAX_SIZE_DIGITS + 2 + MAX_CHUNK_EXTENSIONS - self.extension_bytes;
                    let Some(line) = take_line(buf, room, BodyError::ExtensionsTooLarge)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let (size, ext) = parse_chunk_size(&line)?;
                    self.extension_bytes += ext;
                    if self.extension_bytes > MAX_CHUNK_EXTENSIONS {
                        return Err(BodyError::ExtensionsTooLarge);
                    }
                    self.declared = self.declared.saturating_add(size);
                    if self.declared > self.max_body {
                        return Err(BodyError::TooLarge {
                            limit: self.max_body,
                        });
                    }
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(BodyError::BadChunkEnd);
                    }
                    let _ = buf.split_to(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers(seen) => {
                    let limit = self.max_trailers;
                    let too_large = BodyError::TrailersTooLarge { limit };
                    let Some(line) = take_line(buf, limit - seen.min(limit), too_large)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    if line.is_empty() {
                        self.state = State::Done;
                    } else {
                        check_trailer(&line)?;
                        let seen = seen + line.len() + 2;
                        if seen > limit {
                            return Err(BodyError::TrailersTooLarge { limit });
                        }
                        self.state = State::Trailers(seen);
                    }
                }
            }
        }
    }

    /// Called when the connection reached EOF: ends a close-delimited body, fails others.
    pub fn on_eof(&mut self) -> Result<Decoded, BodyError> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(Decoded::End)
            }
            _ => Err(BodyError::Incomplete),
        }
    }
}

/// Takes one CRLF-ended line (without its CRLF) off the front of `buf`; `too_long` when
/// no line end comes within `max` bytes.
fn take_line(
    buf: &mut BytesMut,
    max: usize,
    too_long: BodyError,
) -> Result<Option<BytesMut>, BodyError> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(pos) if pos > max => Err(too_long),
        Some(0) => Err(BodyError::BareLf),
        Some(pos) if buf[pos - 1] != b'\r' => Err(BodyError::BareLf),
        Some(pos) => {
            let mut line = buf.split_to(pos + 1);
            line.truncate(pos - 1);
            Ok(Some(line))
        }
        None if buf.len() > max => Err(too_long),
        None => Ok(None),
    }
}

/// `chunk-size [ chunk-ext ]`: the size, and how many extension bytes followed it.
fn parse_chunk_size(line: &[u8]) -> Result<(u64, usize), BodyError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > MAX_SIZE_DIGITS {
        return Err(BodyError::BadChunkSize);
    }
    let size = line[..digits].iter().try_fold(0u64, |acc, &c| {
        let d = char::from(c).to_digit(16).ok_or(BodyError::BadChunkSize)?;
        acc.checked_mul(16)
            .and_then(|v| v.checked_add(u64::from(d)))
            .ok_or(BodyError::BadChunkSize)
    })?;
    // chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ); dropped unread, but it
    // must start with ";" and hold no control characters (a bare CR, NUL, ...).
    let ext = &line[digits..];
    let after_ws = ext
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(ext.len());
    match ext.get(after_ws) {
        None if after_ws == 0 => Ok((size, 0)),
        Some(b';') if ext.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)) => {
            Ok((size, ext.len()))
        }
        _ => Err(BodyError::BadChunkSize),
    }
}

/// A trailer line must be `field-name ":" field-value` (no obs-fold, no control bytes).
fn check_trailer(line: &[u8]) -> Result<(), BodyError> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(BodyError::BadTrailer)?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    let value_ok = value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f));
    if name.is_empty() || !name.iter().all(|&b| crate::head::is_tchar(b)) || !value_ok {
        return Err(BodyError::BadTrailer);
    }
    Ok(())
}

/// Appends `data` as one chunk (nothing for empty data: that would end the body).
pub fn encode_chunk(out: &mut BytesMut, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.reserve(data.len() + 20);
    let hex = format!("{:x}\r\n", data.len());
    out.put_slice(hex.as_bytes());
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// The last chunk with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(len: BodyLength, wire: &[&[u8]]) -> Result<(Vec<u8>, BytesMut), BodyError> {
        decode_all_with(len, u64::MAX, wire)
    }

    fn decode_all_with(
        len: BodyLength,
        max: u64,
        wire: &[&[u8]],
    ) -> Result<(Vec<u8>, BytesMut), BodyError> {
        let mut dec = BodyDecoder::new(len).with_max_body(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut parts = wire.iter();
        loop {
            match dec.decode(&mut buf)? {
                Decoded::Data(d) => out.extend_from_slice(&d),
                Decoded::End => return Ok((out, buf)),
                Decoded::NeedMore => match parts.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => {
                        dec.on_eof()?;
                        return Ok((out, buf));
                    }
                },
            }
        }
    }

    #[test]
    fn chunked_split_anywhere_with_extensions_and_trailers() {
        let (body, rest) = decode_all(
            BodyLength::Chunked,
            &[
                b"5;ext=1\r\nhel",
                b"lo\r\n6\r",
                b"\n world\r\n0\r\nX-T: 1\r\n",
                b"\r\nGET",
            ],
        )
        .expect("decodes");
        assert_eq!(body, b"hello world");
        assert_eq!(&rest[..], b"GET");
    }

    #[test]
    fn a_chunked_body_over_its_limit_is_refused_on_the_size_line() {
        let mut d = BodyDecoder::new(BodyLength::Chunked).with_max_body(10);
        let mut buf = BytesMut::from(&b"FFFFFFFFFFFFFFFF\r\n"[..]);
        assert!(matches!(
            d.decode(&mut buf),
            Err(BodyError::TooLarge { limit: 10 })
        ));
        // Sizes add up: 6 + 5 > 10 fails on the second line, before its data.
        let mut d = BodyDecoder::new(BodyLength::Chunked).with_max_body(10);
        let mut buf = BytesMut::from(&b"6\r\nabcdef\r\n5\r\n"[..]);
        assert_eq!(
            d.decode(&mut buf).expect("first chunk"),
            Decoded::Data(Bytes::from_static(b"abcdef"))
        );
        assert!(matches!(
            d.decode(&mut buf),
            Err(BodyError::TooLarge { .. })
        ));
        // Exactly the limit is fine.
        let (body, _) = decode_all_with(
            BodyLength::Chunked,
            10,
            &[b"6\r\nabcdef\r\n4\r\nghij\r\n0\r\n\r\n"],
        )
        .expect("decodes");
        assert_eq!(body, b"abcdefghij");
    }

    #[test]
    fn length_leaves_pipelined_bytes() {
        let (body, rest) = decode_all(BodyLength::Length(3), &[b"abcdef"]).expect("decodes");
        assert_eq!((body.as_slice(), &rest[..]), (&b"abc"[..], &b"def"[..]));
    }

    #[test]
    fn truncated_bodies_are_errors_but_close_delimited_ends_at_eof() {
        assert!(matches!(
            decode_all(BodyLength::Length(10), &[b"abc"]),
            Err(BodyError::Incomplete)
        ));
        assert!(matches!(
            decode_all(BodyLength::Chunked, &[b"5\r\nab"]),
            Err(BodyError::Incomplete)
        ));
        let (body, _) = decode_all(BodyLength::UntilClose, &[b"ab", b"cd"]).expect("decodes");
        assert_eq!(body, b"abcd");
    }

    #[test]
    fn bad_chunks_are_rejected() {
        type Expect = fn(&BodyError) -> bool;
        let bad: &[(&[u8], Expect)] = &[
            (b"zz\r\n", |e| matches!(e, BodyError::BadChunkSize)),
            (b" 1\r\na\r\n", |e| matches!(e, BodyError::BadChunkSize)),
            (b"+1\r\na\r\n", |e| matches!(e, BodyError::BadChunkSize)),
            (b"0x1\r\na\r\n", |e| matches!(e, BodyError::BadChunkSize)),
            (b"1 x\r\na\r\n", |e| matches!(e, BodyError::BadChunkSize)),
            (b"1;a\rb\r\na\r\n", |e| matches!(e, BodyError::BadChunkSize)),
            (b"1;a\x00\r\na\r\n", |e| {
                matches!(e, BodyError::BadChunkSize)
            }),
            (b"00000000000000001\r\na\r\n", |e| {
                matches!(e, BodyError::BadChunkSize)
            }),
            (b"ffffffffffffffff0\r\n", |e| {
                matches!(e, BodyError::BadChunkSize)
            }),
            (b"1\na\r\n", |e| matches!(e, BodyError::BareLf)),
            (b"1\r\nabc", |e| matches!(e, BodyError::BadChunkEnd)),
            (b"1\r\na\n0\r\n\r\n", |e| {
                matches!(e, BodyError::BadChunkEnd)
            }),
            (b"0\r\n\n", |e| matches!(e, BodyError::BareLf)),
            (b"0\r\nX-T: 1\n\r\n", |e| matches!(e, BodyError::BareLf)),
            (b"0\r\n folded\r\n\r\n", |e| {
                matches!(e, BodyError::BadTrailer)
            }),
            (b"0\r\nnocolon\r\n\r\n", |e| {
                matches!(e, BodyError::BadTrailer)
            }),
        ];
        for (wire, expected) in bad {
            match decode_all(BodyLength::Chunked, &[wire]) {
                Err(e) => assert!(expected(&e), "{:?}: {e:?}", String::from_utf8_lossy(wire)),
                Ok(r) => panic!("{:?} accepted: {r:?}", String::from_utf8_lossy(wire)),
            }
        }
        // 16 digits are fine; the largest size parses without overflow.
        let mut dec = BodyDecoder::new(BodyLength::Chunked);
        let mut buf = BytesMut::from(&b"ffffffffffffffff\r\n"[..]);
        assert_eq!(dec.decode(&mut buf).expect("size"), Decoded::NeedMore);
    }

    #[test]
    fn extensions_and_trailers_are_bounded() {
        let mut wire = Vec::new();
        for _ in 0..20 {
            wire.extend_from_slice(format!("1;{}\r\na\r\n", "e".repeat(1000)).as_bytes());
        }
        assert!(matches!(
            decode_all(BodyLength::Chunked, &[&wire]),
            Err(BodyError::ExtensionsTooLarge)
        ));
        let long = vec![b'1'; 20_000];
        assert!(matches!(
            decode_all(BodyLength::Chunked, &[&long]),
            Err(BodyError::BadChunkSize | BodyError::ExtensionsTooLarge)
        ));
        let mut dec = BodyDecoder::new(BodyLength::Chunked).with_max_trailers(64);
        let mut buf = BytesMut::from(format!("0\r\nX: {}\r\n\r\n", "v".repeat(100)).as_str());
        assert!(matches!(
            dec.decode(&mut buf),
            Err(BodyError::TrailersTooLarge { limit: 64 })
        ));
    }

    #[test]
    fn encode_round_trips() {
        let mut out = BytesMut::new();
        encode_chunk(&mut out, b"hello");
        encode_chunk(&mut out, b"");
        out.extend_from_slice(LAST_CHUNK);
        let (body, _) = decode_all(BodyLength::Chunked, &[&out]).expect("decodes");
        assert_eq!(body, b"hello");
    }
}
