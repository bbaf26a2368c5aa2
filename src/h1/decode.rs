//! Response body decoding, sans I/O: content-length, chunked (extensions
//! skipped, trailers parsed) and read-to-EOF bodies, decoded from bytes
//! already in the read buffer. Data is split off the buffer (no copy).
//!
//! Must not: read the connection (the caller reads when told `NeedMore`),
//! or hold more than the trailer section (bounded) besides O(1) state.

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;

use super::error::{Error, ErrorKind};
use super::parse::parse_trailers;
use super::{MAX_CHUNK_EXTENSION_BYTES, MAX_TRAILERS, MAX_TRAILER_BYTES};

/// One step of decoding.
#[derive(Debug)]
pub(super) enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body ended; every byte of it was consumed.
    End,
    /// The buffer holds no more of the body: read, then decode again.
    NeedMore,
}

#[derive(Debug)]
pub(super) enum Decoder {
    /// Bytes still to come.
    Length(u64),
    Chunked(Chunked),
    /// Until EOF.
    Eof,
}

#[derive(Debug)]
pub(super) struct Chunked {
    state: State,
    /// The current chunk's size while its line is read, then its bytes left.
    size: u64,
    extension_bytes: usize,
    /// The trailer section, raw, once its first byte arrives.
    trailers: Option<Vec<u8>>,
    trailer_count: usize,
}

/// Where in the chunked grammar the decoder stands (hyper's states).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    Size,
    SizeLws,
    Extension,
    SizeLf,
    Body,
    BodyCr,
    BodyLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
    End,
}

// === impl Decoder ===

impl Decoder {
    pub(super) fn chunked() -> Decoder {
        Decoder::Chunked(Chunked { state: State::Start, size: 0, extension_bytes: 0, trailers: None, trailer_count: 0 })
    }

    /// Decodes the next piece of the body from `buf`.
    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Error> {
        match self {
            Decoder::Length(0) => Ok(Decoded::End),
            Decoder::Length(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = usize::try_from(*left).map_or(buf.len(), |l| l.min(buf.len()));
                *left -= n as u64;
                Ok(Decoded::Data(buf.split_to(n).freeze()))
            }
            Decoder::Chunked(c) => c.decode(buf),
            Decoder::Eof if buf.is_empty() => Ok(Decoded::NeedMore),
            Decoder::Eof => Ok(Decoded::Data(buf.split().freeze())),
        }
    }

    /// The connection reached EOF with the buffer decoded.
    pub(super) fn on_eof(&self) -> Result<Decoded, Error> {
        match self {
            Decoder::Eof | Decoder::Length(0) => Ok(Decoded::End),
            _ => Err(Error::new(ErrorKind::Incomplete, "connection closed before the end of the body")),
        }
    }

    /// Every byte of the body has been decoded (the next `decode` says `End`).
    pub(super) fn is_done(&self) -> bool {
        matches!(self, Decoder::Length(0))
    }

    /// The body's length is known to the byte.
    pub(super) fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            _ => None,
        }
    }
}

// === impl Chunked ===

impl Chunked {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Error> {
        loop {
            match self.state {
                State::Body => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = usize::try_from(self.size).map_or(buf.len(), |s| s.min(buf.len()));
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = State::BodyCr;
                    }
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                State::End => {
                    return match self.trailers.take() {
                        Some(raw) => Ok(Decoded::Trailers(parse_trailers(&raw)?)),
                        None => Ok(Decoded::End),
                    };
                }
                _ => {}
            }
            let Some(&b) = buf.first() else {
                return Ok(Decoded::NeedMore);
            };
            buf.advance(1);
            self.state = self.step(b)?;
        }
    }

    /// One byte of a chunk-size line, chunk end or trailer section.
    fn step(&mut self, b: u8) -> Result<State, Error> {
        let bad = |what| Err(Error::malformed(what));
        Ok(match (self.state, b) {
            (State::Start, _) => match hex(b) {
                Some(d) => {
                    self.size = u64::from(d);
                    State::Size
                }
                None => return bad("chunk size line without a size"),
            },
            (State::Size, _) if hex(b).is_some() => {
                let d = hex(b).map_or(0, u64::from);
                self.size = self.size.checked_mul(16).and_then(|s| s.checked_add(d)).ok_or(Error::malformed("chunk size overflows"))?;
                State::Size
            }
            (State::Size | State::SizeLws, b'\t' | b' ') => State::SizeLws,
            (State::Size | State::SizeLws, b';') => State::Extension,
            (State::Size | State::SizeLws | State::Extension, b'\r') => State::SizeLf,
            (State::Size, _) => return bad("invalid chunk size"),
            (State::SizeLws, _) => return bad("invalid whitespace in chunk size line"),
            (State::Extension, b'\n') => return bad("chunk extension contains a bare newline"),
            (State::Extension, _) => {
                self.extension_bytes += 1;
                if self.extension_bytes >= MAX_CHUNK_EXTENSION_BYTES {
                    return Err(Error::new(ErrorKind::TooLarge, "chunk extensions over the limit"));
                }
                State::Extension
            }
            (State::SizeLf, b'\n') if self.size == 0 => State::EndCr,
            (State::SizeLf, b'\n') => State::Body,
            (State::SizeLf, _) => return bad("chunk size line without LF"),
            (State::BodyCr, b'\r') => State::BodyLf,
            (State::BodyCr, _) => return bad("chunk data not followed by CRLF"),
            (State::BodyLf, b'\n') => State::Start,
            (State::BodyLf, _) => return bad("chunk data not followed by CRLF"),
            (State::EndCr, b'\r') => {
                self.push_trailer_byte(b, false)?;
                State::EndLf
            }
            (State::EndCr, _) => {
                self.push_trailer_byte(b, true)?;
                State::Trailer
            }
            (State::Trailer, b'\r') => {
                self.push_trailer_byte(b, false)?;
                State::TrailerLf
            }
            (State::Trailer, _) => {
                self.push_trailer_byte(b, false)?;
                State::Trailer
            }
            (State::TrailerLf, b'\n') => {
                if self.trailer_count >= MAX_TRAILERS {
                    return Err(Error::new(ErrorKind::TooLarge, "too many trailer fields"));
                }
                self.trailer_count += 1;
                self.push_trailer_byte(b, false)?;
                State::EndCr
            }
            (State::TrailerLf, _) => return bad("trailer field without LF"),
            (State::EndLf, b'\n') => {
                self.push_trailer_byte(b, false)?;
                State::End
            }
            (State::EndLf, _) => return bad("chunked body without its final CRLF"),
            (State::Body | State::End, _) => unreachable!("handled before stepping"),
        })
    }

    /// Appends to the trailer section (started by `start`), within its limit.
    fn push_trailer_byte(&mut self, b: u8, start: bool) -> Result<(), Error> {
        let raw = match (&mut self.trailers, start) {
            (Some(raw), _) => raw,
            (None, true) => self.trailers.insert(Vec::with_capacity(64)),
            (None, false) => return Ok(()),
        };
        raw.push(b);
        if raw.len() >= MAX_TRAILER_BYTES {
            return Err(Error::new(ErrorKind::TooLarge, "trailers over the size limit"));
        }
        Ok(())
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes; the data, the trailers
    /// and whether it ended (`Err` on error, `Ok(None)` if it needs more).
    fn run(mut d: Decoder, input: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>, bool), Error> {
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut trailers = None;
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => data.extend_from_slice(&b),
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return Ok((data, trailers, true)),
                Decoded::NeedMore if fed == input.len() => return Ok((data, trailers, false)),
                Decoded::NeedMore => {
                    let n = step.min(input.len() - fed);
                    buf.extend_from_slice(&input[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn chunked_with_extensions_and_trailers_at_every_split() {
        let body = b"5;a=b\r\nhello\r\n6 ; x\r\n world\r\n0\r\nX-Sum: 1\r\nY: 2\r\n\r\n";
        for step in 1..=body.len() {
            let (data, trailers, done) = run(Decoder::chunked(), body, step).unwrap();
            assert_eq!(data, b"hello world", "step {step}");
            let t = trailers.unwrap();
            assert_eq!(t["x-sum"], "1");
            assert_eq!(t["y"], "2");
            assert!(done);
        }
    }

    #[test]
    fn chunked_rejects_bad_lines() {
        for bad in [&b"\r\n"[..], b"x\r\n", b"5\nhello", b"5\r\nhelloX", b"1;\n", b"0\r\n\r\r", b"10000000000000000\r\n"] {
            assert!(run(Decoder::chunked(), bad, 1).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn length_stops_at_its_end() {
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        let mut d = Decoder::Length(4);
        assert!(matches!(d.decode(&mut buf).unwrap(), Decoded::Data(b) if b == "abcd"));
        assert!(d.is_done());
        assert_eq!(&buf[..], b"ef");
        assert!(d.on_eof().is_ok());
        assert!(Decoder::Length(1).on_eof().is_err());
    }
}
