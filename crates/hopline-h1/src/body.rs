//! Body framing: incremental decoding of length-delimited, chunked and close-delimited
//! bodies, and chunked encoding.

use bytes::{BufMut, Bytes, BytesMut};

/// Longest chunk-size line or trailer line accepted.
const MAX_LINE: usize = 4096;
/// Most trailer bytes accepted (they are read and dropped).
const MAX_TRAILERS: usize = 16 * 1024;

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
    /// A chunk-size line is not valid.
    #[error("invalid chunk size line")]
    BadChunkSize,
    /// A chunk is not followed by CRLF.
    #[error("chunk data not followed by CRLF")]
    BadChunkEnd,
    /// A chunk-size or trailer line is too long, or trailers are too large.
    #[error("chunk-size or trailer line too long")]
    LineTooLong,
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
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    state: State,
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
        BodyDecoder { state }
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
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = parse_chunk_size(&line)?;
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
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    if line.is_empty() {
                        self.state = State::Done;
                    } else if seen + line.len() > MAX_TRAILERS {
                        return Err(BodyError::LineTooLong);
                    } else {
                        self.state = State::Trailers(seen + line.len());
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

/// Takes one line (without its CRLF or LF) off the front of `buf`.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, BodyError> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(pos) => {
            let mut line = buf.split_to(pos + 1);
            line.truncate(pos);
            if line.last() == Some(&b'\r') {
                line.truncate(pos - 1);
            }
            Ok(Some(line))
        }
        None if buf.len() > MAX_LINE => Err(BodyError::LineTooLong),
        None => Ok(None),
    }
}

fn parse_chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
    let hex = crate::head::trim(&line[..end]);
    if hex.is_empty() || hex.len() > 15 {
        return Err(BodyError::BadChunkSize);
    }
    hex.iter().try_fold(0u64, |acc, &c| {
        let d = (c as char).to_digit(16).ok_or(BodyError::BadChunkSize)?;
        Ok(acc * 16 + u64::from(d))
    })
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
        let mut dec = BodyDecoder::new(len);
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
        assert!(matches!(
            decode_all(BodyLength::Chunked, &[b"zz\r\n"]),
            Err(BodyError::BadChunkSize)
        ));
        assert!(matches!(
            decode_all(BodyLength::Chunked, &[b"1\r\nabc"]),
            Err(BodyError::BadChunkEnd)
        ));
        let long = vec![b'1'; 5000];
        assert!(matches!(
            decode_all(BodyLength::Chunked, &[&long]),
            Err(BodyError::LineTooLong)
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
