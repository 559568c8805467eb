//! A reading of RFC 9112 (HTTP/1.1's messages), strict or as lenient as the RFC lets a
//! recipient be, written for these tests alone: what the gateway does is checked
//! against it, so it shares no code with the gateway.

/// How closely a message is read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Mode {
    /// As a recipient may read what others send (RFC 9112 lets it accept a bare LF as
    /// a line's end, empty lines before a request, and a length repeated with one
    /// value; control bytes in a chunk extension leave no doubt about where its line
    /// ends): what a client sends is read so.
    Lenient,
    /// Only what a sender may send, with one reading under any recipient's rules: what
    /// the gateway sends is read so.
    Strict,
}

/// A request or response head: its start line and its fields, names lower-cased and
/// values with the whitespace around them taken off.
struct Head {
    start: Vec<u8>,
    fields: Vec<(String, Vec<u8>)>,
}

impl Head {
    fn values(&self, name: &str) -> impl Iterator<Item = &[u8]> + '_ {
        let name = name.to_string();
        self.fields
            .iter()
            .filter(move |(n, _)| *n == name)
            .map(|(_, v)| &v[..])
    }

    /// The comma-separated elements of every field `name`, lower-cased, empty ones
    /// left out (RFC 9110 §5.6.1).
    fn list(&self, name: &str) -> Vec<String> {
        self.values(name)
            .flat_map(|value| value.split(|byte| *byte == b','))
            .map(|element| String::from_utf8_lossy(element.trim_ascii()).to_ascii_lowercase())
            .filter(|element| !element.is_empty())
            .collect()
    }
}

/// How far a reading got.
pub(super) enum Step<T> {
    Done(T),
    /// More bytes are needed. `head` is whether the head is complete (its start line
    /// then given): a gateway may pass a head on before its body has all arrived.
    Partial {
        start: Option<Vec<u8>>,
    },
    /// Not a message with one reading; `start` is its start line if its head was read.
    Invalid {
        why: String,
        start: Option<Vec<u8>>,
    },
}

/// Reading a head or a chunked body, before the message is known complete.
enum Cut {
    Partial,
    Invalid(String),
}

type Read<T> = Result<T, Cut>;

fn invalid<T>(why: impl Into<String>) -> Read<T> {
    Err(Cut::Invalid(why.into()))
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    mode: Mode,
}

fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

fn is_field_byte(byte: u8) -> bool {
    byte == b'\t' || byte == b' ' || (0x21..=0x7e).contains(&byte) || byte >= 0x80
}

impl<'a> Cursor<'a> {
    /// The next line, without its end.
    fn line(&mut self) -> Read<&'a [u8]> {
        let buf = self.buf;
        let rest = &buf[self.pos..];
        let Some(end) = rest.iter().position(|byte| *byte == b'\n') else {
            return Err(Cut::Partial);
        };
        let line = match rest[..end].strip_suffix(b"\r") {
            Some(line) => line,
            None if self.mode == Mode::Lenient => &rest[..end],
            None => return invalid("a line ended by a bare LF"),
        };
        if line.contains(&b'\r') {
            return invalid("a bare CR");
        }
        self.pos += end + 1;
        Ok(line)
    }

    /// A field line (`name: value`).
    fn field(line: &[u8]) -> Read<(String, Vec<u8>)> {
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            return invalid("a folded line, or one that starts with whitespace");
        }
        let Some(colon) = line.iter().position(|byte| *byte == b':') else {
            return invalid("a field line without a colon");
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.is_empty() || !name.iter().copied().all(is_tchar) {
            return invalid("a field name that is not a token");
        }
        if !value.iter().copied().all(is_field_byte) {
            return invalid("a control byte in a field value");
        }
        Ok((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            value.to_vec(),
        ))
    }

    fn head(&mut self) -> Read<Head> {
        let mut start = self.line()?;
        while start.is_empty() && self.mode == Mode::Lenient {
            start = self.line()?;
        }
        if start.is_empty() {
            return invalid("an empty line before the start line");
        }
        let start = start.to_vec();
        let mut fields = Vec::new();
        loop {
            let line = self.line()?;
            if line.is_empty() {
                return Ok(Head { start, fields });
            }
            fields.push(Cursor::field(line)?);
        }
    }

    /// A chunked body: its data.
    fn chunked(&mut self) -> Read<Vec<u8>> {
        let mut data = Vec::new();
        loop {
            let line = self.line()?;
            let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
            if digits == 0 {
                return invalid("a chunk size that is not hex");
            }
            let mut size: u64 = 0;
            for digit in &line[..digits] {
                let value = (*digit as char).to_digit(16).unwrap() as u64;
                size = match size.checked_mul(16).and_then(|s| s.checked_add(value)) {
                    Some(size) => size,
                    None => return invalid("a chunk size over 64 bits"),
                };
            }
            // Whitespace after the size, before an extension or the line's end: outside
            // the grammar, but read as nothing by every reader that takes it (nginx
            // and the gateway among them), and refused by the others.
            let rest = line[digits..].trim_ascii_start();
            if !(rest.is_empty() || rest.starts_with(b";")) {
                return invalid("bytes after a chunk size");
            }
            // A control byte in an extension is outside the grammar, but where the line
            // ends is not in doubt: hyper and nginx read it as part of the extension.
            if self.mode == Mode::Strict && !rest.iter().copied().all(is_field_byte) {
                return invalid("a control byte in a chunk extension");
            }
            if size == 0 {
                loop {
                    let line = self.line()?;
                    if line.is_empty() {
                        return Ok(data);
                    }
                    Cursor::field(line)?;
                }
            }
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            if self.buf.len() - self.pos < size.saturating_add(1) {
                return Err(Cut::Partial);
            }
            data.extend_from_slice(&self.buf[self.pos..self.pos + size]);
            self.pos += size;
            if !self.line()?.is_empty() {
                return invalid("chunk data longer than its size");
            }
        }
    }

    fn exactly(&mut self, len: u64) -> Read<Vec<u8>> {
        let rest = &self.buf[self.pos..];
        match usize::try_from(len) {
            Ok(len) if len <= rest.len() => {
                self.pos += len;
                Ok(rest[..len].to_vec())
            }
            _ => Err(Cut::Partial),
        }
    }
}

/// How a message's body is framed.
enum Body {
    None,
    Length(u64),
    Chunked,
    /// To the end of the connection (responses only).
    Close,
}

/// The value of the `Content-Length` fields, if any: one number, or a list of one
/// number repeated when reading leniently.
fn content_length(head: &Head, mode: Mode) -> Result<Option<u64>, String> {
    let values: Vec<&[u8]> = head.values("content-length").collect();
    if values.is_empty() {
        return Ok(None);
    }
    let elements: Vec<&[u8]> = match mode {
        Mode::Strict if values.len() > 1 => return Err("two Content-Length fields".into()),
        Mode::Strict => values,
        Mode::Lenient => values
            .iter()
            .flat_map(|value| value.split(|byte| *byte == b','))
            .map(|element| element.trim_ascii())
            .collect(),
    };
    let mut length = None;
    for element in elements {
        if element.is_empty() || !element.iter().all(u8::is_ascii_digit) {
            return Err("a Content-Length that is not a number".into());
        }
        let value: u64 = std::str::from_utf8(element)
            .unwrap()
            .parse()
            .map_err(|_| "a Content-Length over 64 bits".to_string())?;
        if length.is_some_and(|length| length != value) {
            return Err("Content-Lengths that differ".into());
        }
        length = Some(value);
    }
    Ok(length)
}

/// Whether the transfer codings end in `chunked`, applied once; an error for a
/// coding that is not a bare token.
fn chunked_last(head: &Head, mode: Mode) -> Result<bool, String> {
    let codings = head.list("transfer-encoding");
    if codings.iter().any(|coding| !coding.bytes().all(is_tchar)) {
        return Err("a transfer coding that is not a token".into());
    }
    let chunked = codings.iter().filter(|c| *c == "chunked").count();
    if mode == Mode::Strict && (head.values("transfer-encoding").count() > 1 || codings.len() > 1) {
        return Err("a transfer coding besides chunked".into());
    }
    match (chunked, codings.last()) {
        (0, _) => Ok(false),
        (1, Some(last)) if last == "chunked" => Ok(true),
        _ => Err("chunked applied twice, or not last".into()),
    }
}

/// HTTP/1.0 or HTTP/1.1: whether 1.1.
fn version(text: &[u8]) -> Result<bool, String> {
    match text {
        b"HTTP/1.1" => Ok(true),
        b"HTTP/1.0" => Ok(false),
        _ => Err(format!("version {:?}", String::from_utf8_lossy(text))),
    }
}

/// Whether the connection stays open after this message.
fn persists(head: &Head, http11: bool) -> bool {
    let tokens = head.list("connection");
    if tokens.iter().any(|t| t == "close") {
        return false;
    }
    http11 || tokens.iter().any(|t| t == "keep-alive")
}

/// A request, read whole.
pub(super) struct Requested {
    pub(super) target: String,
    /// `HEAD`: its answer has no body.
    pub(super) head: bool,
    /// Its body's data (de-chunked).
    pub(super) body: Vec<u8>,
    /// Bytes it took.
    pub(super) len: usize,
    /// The connection may carry another request after it.
    pub(super) persists: bool,
    /// Its `Host` fields, lower-cased, `,`-joined.
    pub(super) host: String,
}

/// Reads the request at the start of `buf` (RFC 9112 §§2–3, 6–7).
pub(super) fn read_request(buf: &[u8], mode: Mode) -> Step<Requested> {
    let mut cursor = Cursor { buf, pos: 0, mode };
    let head = match cursor.head() {
        Ok(head) => head,
        Err(Cut::Partial) => return Step::Partial { start: None },
        Err(Cut::Invalid(why)) => return Step::Invalid { why, start: None },
    };
    let start = Some(head.start.clone());
    let bad = |why: String| Step::Invalid {
        why,
        start: start.clone(),
    };
    let parts: Vec<&[u8]> = head.start.split(|byte| *byte == b' ').collect();
    let [method, target, version_text] = parts[..] else {
        return bad("a request line not of three parts".into());
    };
    if method.is_empty() || !method.iter().copied().all(is_tchar) {
        return bad("a method that is not a token".into());
    }
    if target.is_empty() || !target.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return bad("a target with bytes a target cannot have".into());
    }
    let http11 = match version(version_text) {
        Ok(http11) => http11,
        Err(why) => return bad(why),
    };
    let has_length = head.values("content-length").next().is_some();
    let coded = head.values("transfer-encoding").next().is_some();
    let body = if coded {
        // Both: RFC 9112 §6.1 lets a server go by the coding, but it must close the
        // connection afterwards; HTTP/1.0 with a coding: the framing is faulty.
        if has_length || !http11 {
            return bad("Transfer-Encoding beside Content-Length, or in HTTP/1.0".into());
        }
        match chunked_last(&head, mode) {
            Ok(true) => Body::Chunked,
            Ok(false) => return bad("a request coding that does not end in chunked".into()),
            Err(why) => return bad(why),
        }
    } else {
        match content_length(&head, mode) {
            Ok(Some(length)) => Body::Length(length),
            Ok(None) => Body::None,
            Err(why) => return bad(why),
        }
    };
    let read = match body {
        Body::None | Body::Close => Ok(Vec::new()),
        Body::Length(length) => cursor.exactly(length),
        Body::Chunked => cursor.chunked(),
    };
    match read {
        Ok(body) => Step::Done(Requested {
            target: String::from_utf8_lossy(target).into_owned(),
            head: method == b"HEAD",
            body,
            len: cursor.pos,
            persists: persists(&head, http11),
            host: head.list("host").join(","),
        }),
        Err(Cut::Partial) => Step::Partial { start },
        Err(Cut::Invalid(why)) => bad(why),
    }
}

/// A response, read whole.
#[derive(Debug, PartialEq)]
pub(super) struct Answered {
    pub(super) status: u16,
    pub(super) body: Vec<u8>,
    /// Bytes it took, interim answers included.
    pub(super) len: usize,
    /// Its body ran to the end of the bytes (the connection's end).
    pub(super) to_close: bool,
    /// Framed by a coding and a length both: RFC 9112 §6.3 reads the coding, and a
    /// proxy may as well refuse it.
    pub(super) doubtful: bool,
}

/// Reads the final response at the start of `buf`, after any interim ones, to a
/// request that was `HEAD` or not (RFC 9112 §§4, 6). `buf` is everything the
/// connection carried: a body that runs to the connection's end takes all of it.
pub(super) fn read_response(buf: &[u8], head_request: bool, mode: Mode) -> Step<Answered> {
    let mut cursor = Cursor { buf, pos: 0, mode };
    loop {
        let head = match cursor.head() {
            Ok(head) => head,
            Err(Cut::Partial) => return Step::Partial { start: None },
            Err(Cut::Invalid(why)) => return Step::Invalid { why, start: None },
        };
        let start = Some(head.start.clone());
        let bad = |why: &str| Step::Invalid {
            why: why.to_string(),
            start: start.clone(),
        };
        let mut parts = head.start.splitn(3, |byte| *byte == b' ');
        let http11 = match version(parts.next().unwrap_or_default()) {
            Ok(http11) => http11,
            Err(why) => return bad(&why),
        };
        let code = parts.next().unwrap_or_default();
        if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
            return bad("a status that is not three digits");
        }
        let status: u16 = std::str::from_utf8(code).unwrap().parse().unwrap();
        if parts.next().is_none() && mode == Mode::Strict {
            return bad("a status line without a space after the code");
        }
        if !(100..=599).contains(&status) || status == 101 {
            return bad("a status out of range, or a switch nobody asked for");
        }
        if status < 200 {
            continue;
        }
        let has_length = head.values("content-length").next().is_some();
        let coded = head.values("transfer-encoding").next().is_some();
        let mut doubtful = false;
        let body = if head_request || status == 204 || status == 304 {
            Body::None
        } else if coded {
            if !http11 {
                return bad("Transfer-Encoding in HTTP/1.0");
            }
            if has_length {
                if mode == Mode::Strict {
                    return bad("Transfer-Encoding beside Content-Length");
                }
                doubtful = true;
            }
            match chunked_last(&head, mode) {
                Ok(true) => Body::Chunked,
                Ok(false) => Body::Close,
                Err(why) => return bad(&why),
            }
        } else {
            match content_length(&head, mode) {
                Ok(Some(length)) => Body::Length(length),
                Ok(None) => Body::Close,
                Err(why) => return bad(&why),
            }
        };
        let read = match body {
            Body::None => Ok(Vec::new()),
            Body::Length(length) => cursor.exactly(length),
            Body::Chunked => cursor.chunked(),
            Body::Close => {
                let rest = buf[cursor.pos..].to_vec();
                cursor.pos = buf.len();
                Ok(rest)
            }
        };
        return match read {
            Ok(body_bytes) => Step::Done(Answered {
                status,
                body: body_bytes,
                len: cursor.pos,
                to_close: matches!(body, Body::Close),
                doubtful,
            }),
            Err(Cut::Partial) => Step::Partial { start },
            Err(Cut::Invalid(why)) => bad(&why),
        };
    }
}

/// Bytes as a Rust string literal would show them, for failure messages.
pub(super) fn shown(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

#[test]
fn the_reading_here_is_the_rfcs() {
    // A request read every way the RFC allows, and the ones it does not.
    let read = |bytes: &[u8], mode| match read_request(bytes, mode) {
        Step::Done(request) => Ok((request.target, request.len, request.persists)),
        Step::Partial { start } => Err(format!("partial {}", start.is_some())),
        Step::Invalid { why, .. } => Err(why),
    };
    let plain = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(
        read(plain, Mode::Strict),
        Ok(("/a".into(), plain.len(), true))
    );
    let lf = b"\r\nGET /a HTTP/1.0\nHost: x\nContent-Length: 2, 2\n\nabGET";
    assert_eq!(
        read(lf, Mode::Lenient),
        Ok(("/a".into(), lf.len() - 3, false))
    );
    assert_eq!(
        read(lf, Mode::Strict),
        Err("an empty line before the start line".into())
    );
    let chunked =
        b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n0\r\nT: 1\r\n\r\n";
    assert_eq!(
        read(chunked, Mode::Strict),
        Ok(("/a".into(), chunked.len(), true))
    );
    assert_eq!(
        read(&chunked[..chunked.len() - 1], Mode::Strict),
        Err("partial true".into())
    );
    for (bytes, why) in [
        (
            &b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            "Transfer-Encoding beside Content-Length, or in HTTP/1.0",
        ),
        (
            b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "Content-Lengths that differ",
        ),
        (
            b"POST /a HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            "a Content-Length that is not a number",
        ),
        (
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "chunked applied twice, or not last",
        ),
        (
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "a request coding that does not end in chunked",
        ),
        (
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: \"chunked\"\r\n\r\n",
            "a transfer coding that is not a token",
        ),
        (
            b"POST /a HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n",
            "a field name that is not a token",
        ),
        (
            b"POST /a HTTP/1.1\r\nX: 1\r\n Transfer-Encoding: chunked\r\n\r\n",
            "a folded line, or one that starts with whitespace",
        ),
        (
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
            "bytes after a chunk size",
        ),
        (
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
            "a chunk size over 64 bits",
        ),
        (b"GET /a HTTP/1.1\r\nX: a\rb\r\n\r\n", "a bare CR"),
        (b"GET /a HTTP/1.2\r\n\r\n", "version \"HTTP/1.2\""),
    ] {
        assert_eq!(
            read(bytes, Mode::Lenient),
            Err(why.to_string()),
            "{}",
            shown(bytes)
        );
    }
    // A control byte in a chunk extension: leniently, part of the extension.
    let nul = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;\x00\r\nabc\r\n0\r\n\r\n";
    assert_eq!(read(nul, Mode::Lenient), Ok(("/a".into(), nul.len(), true)));
    assert_eq!(
        read(nul, Mode::Strict),
        Err("a control byte in a chunk extension".into())
    );
    // Strictly, a length once and a coding alone.
    let twice = b"POST /a HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\na";
    assert!(read(twice, Mode::Lenient).is_ok());
    assert_eq!(
        read(twice, Mode::Strict),
        Err("a Content-Length that is not a number".into())
    );

    // Responses: interim answers skipped, the body by HEAD, status, coding, length,
    // or the connection's end.
    let answer = |bytes: &[u8], head: bool| match read_response(bytes, head, Mode::Lenient) {
        Step::Done(a) => Ok((
            a.status,
            String::from_utf8(a.body).unwrap(),
            a.len,
            a.to_close,
            a.doubtful,
        )),
        Step::Partial { .. } => Err("partial".to_string()),
        Step::Invalid { why, .. } => Err(why),
    };
    let hinted = b"HTTP/1.1 103 Early Hints\r\nLink: <x>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP";
    assert_eq!(
        answer(hinted, false),
        Ok((200, "ok".into(), hinted.len() - 4, false, false))
    );
    assert_eq!(
        answer(hinted, true),
        Ok((200, "".into(), hinted.len() - 6, false, false))
    );
    let both = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
    assert_eq!(
        answer(both, false),
        Ok((200, "ok".into(), both.len(), false, true))
    );
    let to_close = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nokok";
    assert_eq!(
        answer(to_close, false),
        Ok((200, "okok".into(), to_close.len(), true, false))
    );
    let empty = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n";
    assert_eq!(
        answer(empty, false),
        Ok((304, "".into(), empty.len(), false, false))
    );
    assert_eq!(
        answer(
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false
        ),
        Err("Transfer-Encoding in HTTP/1.0".into())
    );
}
