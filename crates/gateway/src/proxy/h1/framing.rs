//! Where an HTTP/1.1 body ends (RFC 9112 §6), found while its bytes pass through the
//! proxy unchanged: a byte count, or the chunked coding read chunk by chunk.
//!
//! **Invariant:** the chunked scanner is strict (sizes under 2^60, CRLF
//! line ends, no control bytes, trailers that are field lines, bounded extensions and
//! trailers): the proxy and the peer after it must never disagree on where a message
//! ends, or one client could slip a request past the proxy inside another's body. The
//! bytes pass on unchanged, so what the scanner lets through is what the next reader
//! gets: a trailer line that is not a field (`GET /other HTTP/1.1`), or a control byte
//! that ends a string in C, could be read as the end of the body by a reader that
//! skips trailers less carefully.

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// A response without either: its body ends when the backend closes.
    UntilClose,
}

/// A body's framing broken by the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub(super) struct Malformed;

/// Chunk extensions and trailer fields allowed per body, in bytes.
const MAX_META: usize = 64 * 1024;

/// Follows one body through its bytes.
#[derive(Debug)]
pub(super) struct BodyEnd {
    state: State,
    /// The size of the chunk being read.
    size: u64,
    /// Bytes of chunk extensions and trailers seen so far.
    meta: usize,
    /// Bytes of the body's data taken so far (its framing not counted).
    data: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Remaining(u64),
    UntilClose,
    /// A chunk size; whether any of its digits has been read.
    Size(bool),
    /// Whitespace after the size (before `;` or the line's end).
    SizeSpace,
    /// After the size: an extension, up to CR.
    Extension,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final CRLF).
    TrailerStart,
    /// A trailer field's name, up to its colon.
    TrailerName,
    /// A trailer field's value, up to CR.
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
}

impl BodyEnd {
    pub(super) fn new(framing: Framing) -> BodyEnd {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Remaining(n),
            Framing::Chunked => State::Size(false),
            Framing::UntilClose => State::UntilClose,
        };
        BodyEnd {
            state,
            size: 0,
            meta: 0,
            data: 0,
        }
    }

    /// Bytes of the body's data taken so far: a chunked body's chunks, not their
    /// framing.
    pub(super) fn data(&self) -> u64 {
        self.data
    }

    /// Whether the body has ended.
    pub(super) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Whether only the peer closing ends the body.
    pub(super) fn until_close(&self) -> bool {
        self.state == State::UntilClose
    }

    /// Takes `bytes`, which follow what was taken before: how many of them belong to
    /// the body (the rest, if any, come after it).
    pub(super) fn advance(&mut self, bytes: &[u8]) -> Result<usize, Malformed> {
        self.advance_data(bytes, |_| {})
    }

    /// [`BodyEnd::advance`], telling `data` where the body's data is among `bytes`,
    /// run by run, in order: what is left once a chunked body's framing is taken out.
    pub(crate) fn advance_data(
        &mut self,
        bytes: &[u8],
        mut data: impl FnMut(std::ops::Range<usize>),
    ) -> Result<usize, Malformed> {
        let mut at = 0;
        while at < bytes.len() {
            match self.state {
                State::Done => break,
                State::UntilClose => {
                    self.data += (bytes.len() - at) as u64;
                    data(at..bytes.len());
                    return Ok(bytes.len());
                }
                State::Remaining(n) => {
                    let take = n.min((bytes.len() - at) as u64);
                    data(at..at + take as usize);
                    at += take as usize;
                    self.data += take;
                    self.state = match n - take {
                        0 => State::Done,
                        left => State::Remaining(left),
                    };
                }
                State::Data(n) => {
                    let take = n.min((bytes.len() - at) as u64);
                    data(at..at + take as usize);
                    at += take as usize;
                    self.data += take;
                    self.state = match n - take {
                        0 => State::DataCr,
                        left => State::Data(left),
                    };
                }
                _ => {
                    self.step(bytes[at])?;
                    at += 1;
                }
            }
        }
        Ok(at)
    }

    /// One byte of chunk framing.
    fn step(&mut self, byte: u8) -> Result<(), Malformed> {
        self.state = match (self.state, byte) {
            (State::Size(digits), _) => match (byte as char).to_digit(16) {
                // Zeros before the first significant digit say nothing (nginx reads
                // them too): they are bounded as extensions are, not as digits.
                Some(0) if self.size == 0 => {
                    self.count_meta()?;
                    State::Size(true)
                }
                // At most 15 significant digits: a size under 2^60.
                Some(digit) if self.size >> 56 == 0 => {
                    self.size = self.size << 4 | u64::from(digit);
                    State::Size(true)
                }
                None if digits && byte == b'\r' => State::SizeLf,
                None if digits && byte == b';' => {
                    self.count_meta()?;
                    State::Extension
                }
                None if digits && matches!(byte, b' ' | b'\t') => {
                    self.count_meta()?;
                    State::SizeSpace
                }
                _ => return Err(Malformed),
            },
            (State::SizeSpace, b'\r') => State::SizeLf,
            (State::SizeSpace, b' ' | b'\t') => {
                self.count_meta()?;
                State::SizeSpace
            }
            (State::SizeSpace, b';') => {
                self.count_meta()?;
                State::Extension
            }
            (State::Extension, b'\r') => State::SizeLf,
            (State::Extension, _) if is_control(byte) => return Err(Malformed),
            (State::Extension, _) => {
                self.count_meta()?;
                State::Extension
            }
            (State::SizeLf, b'\n') if self.size == 0 => State::TrailerStart,
            (State::SizeLf, b'\n') => State::Data(std::mem::take(&mut self.size)),
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => State::Size(false),
            (State::TrailerStart, b'\r') => State::FinalLf,
            (State::TrailerStart | State::TrailerName, _) if is_tchar(byte) => {
                self.count_meta()?;
                State::TrailerName
            }
            (State::TrailerName, b':') => {
                self.count_meta()?;
                State::TrailerLine
            }
            (State::TrailerLine, b'\r') => State::TrailerLf,
            (State::TrailerLine, _) if is_control(byte) => return Err(Malformed),
            (State::TrailerLine, _) => {
                self.count_meta()?;
                State::TrailerLine
            }
            (State::TrailerLf, b'\n') => State::TrailerStart,
            (State::FinalLf, b'\n') => State::Done,
            _ => return Err(Malformed),
        };
        Ok(())
    }

    fn count_meta(&mut self) -> Result<(), Malformed> {
        self.meta += 1;
        if self.meta > MAX_META {
            return Err(Malformed);
        }
        Ok(())
    }
}

/// A byte a field value or chunk extension cannot hold: a control other than HTAB (CR
/// and LF included).
fn is_control(byte: u8) -> bool {
    (byte < 0x20 && byte != b'\t') || byte == 0x7f
}

/// A byte of a token (RFC 9110 §5.6.2): a field name.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seeded::Rng;

    /// Feeds `body` in pieces of `step` bytes: where it ends.
    fn end_of(framing: Framing, body: &[u8], step: usize) -> Result<Option<usize>, Malformed> {
        let mut end = BodyEnd::new(framing);
        let mut at = 0;
        for piece in body.chunks(step) {
            let taken = end.advance(piece)?;
            at += taken;
            if end.is_done() {
                return Ok(Some(at));
            }
            assert_eq!(taken, piece.len(), "an unfinished body takes every byte");
        }
        Ok(None)
    }

    #[test]
    fn a_length_ends_after_its_bytes_whatever_the_pieces() {
        for step in [1, 2, 5, 100] {
            assert_eq!(
                end_of(Framing::Length(5), b"hello, next", step),
                Ok(Some(5))
            );
            assert_eq!(end_of(Framing::Length(50), b"hello", step), Ok(None));
        }
        assert!(BodyEnd::new(Framing::Length(0)).is_done());
        assert!(BodyEnd::new(Framing::Empty).is_done());
        let mut close = BodyEnd::new(Framing::UntilClose);
        assert_eq!(close.advance(b"anything"), Ok(8));
        assert!(close.until_close() && !close.is_done());
    }

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_trailers() {
        let cases: [(&[u8], usize); 6] = [
            (b"0\r\n\r\nGET", 5),
            (b"5\r\nhello\r\n0\r\n\r\n", 15),
            (
                b"5;name=value\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\nrest",
                41,
            ),
            (b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nX-Other: 2\r\n\r\n", 35),
            (b"000\r\n\r\n", 7),
            // Leading zeros do not count towards the 15 digits.
            (b"0000000000000000000005\r\nhello\r\n0\r\n\r\n", 36),
        ];
        for (body, end) in cases {
            for step in [1, 2, 3, 7, 1000] {
                assert_eq!(
                    end_of(Framing::Chunked, body, step),
                    Ok(Some(end)),
                    "{:?} in pieces of {step}",
                    String::from_utf8_lossy(body)
                );
            }
        }
        assert_eq!(end_of(Framing::Chunked, b"5\r\nhel", 2), Ok(None));
    }

    #[test]
    fn a_bodys_data_is_counted_without_its_framing() {
        let cases: [(Framing, &[u8], u64); 6] = [
            (Framing::Chunked, b"0\r\n\r\nGET", 0),
            (Framing::Chunked, b"5\r\nhello\r\n0\r\n\r\n", 5),
            (
                Framing::Chunked,
                b"5;name=value\r\nhello\r\nA\r\n0123456789\r\n0\r\nX: 1\r\n\r\nrest",
                15,
            ),
            (Framing::Length(5), b"hello, next", 5),
            (Framing::UntilClose, b"anything", 8),
            (Framing::Empty, b"next", 0),
        ];
        for (framing, body, data) in cases {
            for step in [1, 2, 3, 7, 1000] {
                let mut end = BodyEnd::new(framing);
                for piece in body.chunks(step) {
                    end.advance(piece).unwrap();
                }
                assert_eq!(
                    end.data(),
                    data,
                    "{:?} in pieces of {step}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }

    #[test]
    fn malformed_chunk_framing_is_refused() {
        let cases: [&[u8]; 17] = [
            b"\r\n",
            b"x\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\rX",
            b"0\r\nX-Sum: 1\n\r\n",
            b"0\r\n\n",
            b"-5\r\n",
            b"1234567890abcdef0\r\n",
            b"0001234567890abcdef\r\n",
            b"5;ext\n",
            b"5 x\r\n",
            b"5;\0\r\n",
            b"0\r\nGET / HTTP/1.1\r\n",
            b"0\r\nno-colon\r\n",
            b"0\r\n: no name\r\n",
            b"0\r\nX: a\x7fb\r\n",
        ];
        for body in cases {
            assert_eq!(
                end_of(Framing::Chunked, body, 1),
                Err(Malformed),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        let mut long = b"1;".to_vec();
        long.resize(MAX_META + 10, b'a');
        assert_eq!(end_of(Framing::Chunked, &long, 4096), Err(Malformed));
    }

    /// A whole-buffer reading of the chunked coding as the scanner means to take it
    /// (RFC 9112 §7.1, strictly, with whitespace allowed after a size as nginx
    /// does): where the body ends, `None` if `body` is a valid beginning, `Err` at the
    /// first byte that breaks it.
    fn reference_end(body: &[u8]) -> Result<Option<usize>, Malformed> {
        // Reads up to the CRLF that ends a line whose bytes must not hold a control
        // byte but HTAB.
        fn line_end(body: &[u8], mut at: usize) -> Result<Option<usize>, Malformed> {
            loop {
                match body.get(at) {
                    None => return Ok(None),
                    Some(b'\r') => {
                        return match body.get(at + 1) {
                            None => Ok(None),
                            Some(b'\n') => Ok(Some(at + 2)),
                            Some(_) => Err(Malformed),
                        }
                    }
                    Some(byte) if byte.is_ascii_control() && *byte != b'\t' => {
                        return Err(Malformed)
                    }
                    Some(_) => at += 1,
                }
            }
        }
        let mut at = 0;
        loop {
            let digits = body[at..]
                .iter()
                .take_while(|b| b.is_ascii_hexdigit())
                .count();
            let zeros = body[at..at + digits]
                .iter()
                .take_while(|b| **b == b'0')
                .count();
            if digits - zeros > 15 || (digits == 0 && at < body.len()) {
                return Err(Malformed);
            }
            if at + digits == body.len() {
                return Ok(None);
            }
            let size =
                u64::from_str_radix(std::str::from_utf8(&body[at..at + digits]).unwrap(), 16)
                    .unwrap();
            at += digits;
            while matches!(body.get(at), Some(b' ' | b'\t')) {
                at += 1;
            }
            match body.get(at) {
                None => return Ok(None),
                Some(b'\r' | b';') => {}
                Some(_) => return Err(Malformed),
            }
            let Some(next) = line_end(body, at)? else {
                return Ok(None);
            };
            at = next;
            if size == 0 {
                // Trailer lines, then the empty line.
                loop {
                    match (body.get(at), body.get(at + 1)) {
                        (None, _) | (Some(b'\r'), None) => return Ok(None),
                        (Some(b'\r'), Some(b'\n')) => return Ok(Some(at + 2)),
                        _ => {}
                    }
                    // A field line: a token, a colon, then the value.
                    let name = body[at..].iter().take_while(|b| is_tchar(**b)).count();
                    match body.get(at + name) {
                        None => return Ok(None),
                        Some(b':') if name > 0 => at += name,
                        Some(_) => return Err(Malformed),
                    }
                    let Some(next) = line_end(body, at)? else {
                        return Ok(None);
                    };
                    at = next;
                }
            }
            let data_end = at + size as usize;
            if data_end >= body.len() {
                return Ok(None);
            }
            match (body[data_end], body.get(data_end + 1)) {
                (b'\r', None) => return Ok(None),
                (b'\r', Some(b'\n')) => at = data_end + 2,
                _ => return Err(Malformed),
            }
        }
    }

    /// A chunked body, valid, with extensions, trailers and data holding CR and LF,
    /// followed by the start of another message.
    fn chunked_body(rng: &mut Rng) -> Vec<u8> {
        const EXTENSIONS: &[&[u8]] = &[b"", b"", b";a=b", b" ;x", b"\t;q=\"v w\"", b";;"];
        const TRAILERS: &[&[u8]] = &[b"X-Sum: 1\r\n", b"Host: elsewhere\r\n", b"a:\r\n"];
        let mut body = Vec::new();
        for _ in 0..rng.below(4) {
            let size = 1 + rng.below(40);
            let zeros = "0".repeat(rng.pick(&[0, 1, 2, 20]));
            let digits = if rng.below(2) == 0 {
                format!("{zeros}{size:x}")
            } else {
                format!("{zeros}{size:X}")
            };
            body.extend_from_slice(digits.as_bytes());
            body.extend_from_slice(rng.pick(EXTENSIONS));
            body.extend_from_slice(b"\r\n");
            body.extend((0..size).map(|_| rng.pick(&[b"\r", b"\n", b"0", b"x", b";"])[0]));
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(rng.pick(&[b"0", b"000"]));
        body.extend_from_slice(rng.pick(EXTENSIONS));
        body.extend_from_slice(b"\r\n");
        for _ in 0..rng.below(3) {
            body.extend_from_slice(rng.pick(TRAILERS));
        }
        body.extend_from_slice(b"\r\nGET / HTTP/1.1\r\n");
        body
    }

    #[test]
    fn the_scanner_reads_any_chunked_body_as_a_whole_buffer_reading_does() {
        const BYTES: &[&[u8]] = &[b"\r", b"\n", b";", b"0", b"f", b"g", b" ", b"\t", b"\0"];
        let mut rng = Rng(0x5EED_CAFE_F00D_BEEF);
        let (mut ended, mut refused) = (0, 0);
        for case in 0..4000 {
            let mut body = chunked_body(&mut rng);
            let valid = body.clone();
            // Most cases are broken: a byte replaced, removed or added.
            for _ in 0..rng.below(3) {
                let at = rng.below(body.len());
                match rng.below(3) {
                    0 => body[at] = rng.pick(BYTES)[0],
                    1 => drop(body.remove(at)),
                    _ => body.insert(at, rng.pick(BYTES)[0]),
                }
            }
            let expected = reference_end(&body);
            if body == valid {
                assert!(
                    matches!(expected, Ok(Some(_))),
                    "case {case}: the reading itself"
                );
            }
            for step in [1, 1 + rng.below(16), body.len()] {
                assert_eq!(
                    end_of(Framing::Chunked, &body, step),
                    expected,
                    "case {case}, in pieces of {step}: {:?}",
                    String::from_utf8_lossy(&body)
                );
            }
            match expected {
                Ok(Some(_)) => ended += 1,
                Err(_) => refused += 1,
                Ok(None) => {}
            }
        }
        // Both kinds are well represented, so the comparison covered both.
        assert!(
            ended > 1000 && refused > 1000,
            "{ended} ended, {refused} refused"
        );
    }
}
