//! RESP, Redis's wire protocol, as a pure decoder of requests and encoder of replies.
//!
//! A connection's bytes go into a [`Decoder`] as they arrive, cut anywhere; it hands out each
//! whole request as soon as its last byte is in, whether sent as a multibulk array
//! (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`, what client libraries send) or inline (`GET k\r\n`, what
//! a person types into `telnet`), and holds at most one partial request. What it refuses it
//! refuses as Redis does, with Redis's messages: a client that desynchronised the stream gets
//! `-ERR Protocol error: ...` and the connection is closed, since nothing after it can be read.
//!
//! No request can make the decoder hold more than its [`Limits`] allow: a header announcing a
//! huge array or string reserves nothing until the bytes arrive, and a bulk string is bounded
//! by `max_bulk_len` (Redis's `proto-max-bulk-len`).
//!
//! [`Reply`] is everything a command answers, encoded for the connection's protocol: RESP2 by
//! default, RESP3 after `HELLO 3`, where maps, sets, doubles, booleans and nulls have types of
//! their own and RESP2 spells them as arrays, bulk strings and integers.
//!
//! ```
//! use nonstop_kv::resp::{Decoder, Limits, Protocol, Reply};
//!
//! let mut decoder = Decoder::new(Limits::default());
//! decoder.push(b"*2\r\n$3\r\nGET\r\n$1");
//! assert_eq!(decoder.next_request(), Ok(None)); // not all in yet
//! decoder.push(b"\r\nk\r\nPING\r\n");
//! assert_eq!(decoder.next_request(), Ok(Some(vec![b"GET".to_vec(), b"k".to_vec()])));
//! assert_eq!(decoder.next_request(), Ok(Some(vec![b"PING".to_vec()])));
//!
//! let mut out = Vec::new();
//! Reply::Null.encode(Protocol::Resp2, &mut out);
//! Reply::Null.encode(Protocol::Resp3, &mut out);
//! assert_eq!(out, b"$-1\r\n_\r\n");
//! ```

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// One request: the command's name and its arguments, as the client sent them.
pub type Request = Vec<Vec<u8>>;

/// Longest inline request, and longest header line of a multibulk request (Redis's
/// `PROTO_INLINE_MAX_SIZE`).
pub const INLINE_MAX: usize = 64 * 1024;

/// Arguments reserved ahead of their arrival: a header may announce a million, and only those
/// that come cost memory.
const RESERVED_ARGUMENTS: usize = 1024;

/// What one request may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The longest bulk string (Redis's `proto-max-bulk-len`, 512 MiB by default).
    pub max_bulk_len: usize,
    /// The most arguments in one request (Redis accepts up to `INT_MAX`; a million is more than
    /// any client sends, and bounds the per-argument overhead).
    pub max_arguments: usize,
    /// The most bytes of arguments in one request (Redis's `client-query-buffer-limit`, 1 GiB).
    pub max_request_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_bulk_len: 512 << 20, max_arguments: 1 << 20, max_request_bytes: 1 << 30 }
    }
}

/// Why a connection's bytes cannot be read as requests. The stream cannot be resynchronised
/// after one: answer [`ProtocolError::reply`] and close the connection.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// An inline request longer than [`INLINE_MAX`].
    #[error("Protocol error: too big inline request")]
    InlineTooBig,
    /// An inline request whose quotes do not close, or a closing quote followed by more than a
    /// space.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// A multibulk header (`*N`) longer than [`INLINE_MAX`] without its line end.
    #[error("Protocol error: too big mbulk count string")]
    CountTooBig,
    /// A bulk header (`$N`) longer than [`INLINE_MAX`] without its line end.
    #[error("Protocol error: too big bulk count string")]
    BulkCountTooBig,
    /// `*N` where N is not a number or more than [`Limits::max_arguments`].
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// `$N` where N is not a number, negative, or more than [`Limits::max_bulk_len`].
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// An argument of a multibulk request that does not start with `$`.
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedBulk(char),
    /// A request whose arguments add up to more than [`Limits::max_request_bytes`].
    #[error("Protocol error: a request of more than {0} bytes")]
    RequestTooBig(usize),
}

impl ProtocolError {
    /// The error reply the client gets before the connection is closed.
    pub fn reply(&self) -> Reply {
        Reply::Error(format!("ERR {self}"))
    }
}

/// Where the decoder is between two requests.
#[derive(Debug)]
enum State {
    /// At the start of a request.
    Start,
    /// Inside a multibulk request: the arguments read, how many are left, and the length of
    /// the next one if its `$N` header has been read.
    Arguments { arguments: Request, left: usize, bulk: Option<usize>, bytes: usize },
}

/// Turns a connection's bytes into requests, incrementally.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    buffer: Vec<u8>,
    /// The first byte of `buffer` not yet consumed.
    at: usize,
    state: State,
}

impl Decoder {
    /// A decoder for a new connection.
    pub fn new(limits: Limits) -> Decoder {
        Decoder { limits, buffer: Vec::new(), at: 0, state: State::Start }
    }

    /// Appends bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.at > 0 && (self.at == self.buffer.len() || self.at >= self.buffer.len() / 2) {
            self.buffer.drain(..self.at);
            self.at = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes received and not yet handed out as requests (for a server's memory accounting).
    pub fn buffered(&self) -> usize {
        let held = match &self.state {
            State::Start => 0,
            State::Arguments { bytes, .. } => *bytes,
        };
        self.buffer.len() - self.at + held
    }

    /// The next whole request, `None` if its bytes are not all in yet. An empty request (a
    /// blank line, `*0`, `*-1`) is skipped, as Redis skips it.
    pub fn next_request(&mut self) -> Result<Option<Request>, ProtocolError> {
        loop {
            match &mut self.state {
                State::Start => {
                    let Some(&first) = self.buffer.get(self.at) else { return Ok(None) };
                    let started = if first == b'*' { self.multibulk_header()? } else { self.inline()? };
                    match started {
                        Started::Incomplete => return Ok(None),
                        Started::Empty => continue,
                        Started::Inline(request) => return Ok(Some(request)),
                        Started::Multibulk(count) => {
                            self.state = State::Arguments {
                                arguments: Vec::with_capacity(count.min(RESERVED_ARGUMENTS)),
                                left: count,
                                bulk: None,
                                bytes: 0,
                            };
                        }
                    }
                }
                State::Arguments { arguments, left, bulk, bytes } => {
                    while *left > 0 {
                        let len = match *bulk {
                            Some(len) => len,
                            None => {
                                let Some((header, next)) = line(&self.buffer, self.at) else {
                                    if self.buffer.len() - self.at > INLINE_MAX {
                                        return Err(ProtocolError::BulkCountTooBig);
                                    }
                                    return Ok(None);
                                };
                                if header.first() != Some(&b'$') {
                                    return Err(ProtocolError::ExpectedBulk(
                                        header.first().map_or('\r', |&b| b as char),
                                    ));
                                }
                                let len = number(&header[1..])
                                    .and_then(|n| usize::try_from(n).ok())
                                    .filter(|&n| n <= self.limits.max_bulk_len)
                                    .ok_or(ProtocolError::InvalidBulkLength)?;
                                if *bytes + len > self.limits.max_request_bytes {
                                    return Err(ProtocolError::RequestTooBig(self.limits.max_request_bytes));
                                }
                                self.at = next;
                                *bulk = Some(len);
                                len
                            }
                        };
                        // The argument and its line end (which Redis skips without reading).
                        if self.buffer.len() - self.at < len + 2 {
                            return Ok(None);
                        }
                        arguments.push(self.buffer[self.at..self.at + len].to_vec());
                        self.at += len + 2;
                        *bytes += len;
                        *left -= 1;
                        *bulk = None;
                    }
                    let State::Arguments { arguments, .. } = std::mem::replace(&mut self.state, State::Start) else {
                        unreachable!("matched above")
                    };
                    return Ok(Some(arguments));
                }
            }
        }
    }

    /// Reads a `*N` header at the start of a request.
    fn multibulk_header(&mut self) -> Result<Started, ProtocolError> {
        let Some((header, next)) = line(&self.buffer, self.at) else {
            if self.buffer.len() - self.at > INLINE_MAX {
                return Err(ProtocolError::CountTooBig);
            }
            return Ok(Started::Incomplete);
        };
        let count = number(&header[1..])
            .filter(|&n| n <= self.limits.max_arguments as i64)
            .ok_or(ProtocolError::InvalidMultibulkLength)?;
        self.at = next;
        Ok(if count <= 0 { Started::Empty } else { Started::Multibulk(count as usize) })
    }

    /// Reads an inline request: one line of arguments split as `redis-cli` quotes them.
    fn inline(&mut self) -> Result<Started, ProtocolError> {
        let pending = &self.buffer[self.at..];
        let Some(newline) = pending.iter().position(|&b| b == b'\n') else {
            if pending.len() > INLINE_MAX {
                return Err(ProtocolError::InlineTooBig);
            }
            return Ok(Started::Incomplete);
        };
        if newline > INLINE_MAX {
            return Err(ProtocolError::InlineTooBig);
        }
        let text = pending[..newline].strip_suffix(b"\r").unwrap_or(&pending[..newline]);
        let arguments = split_arguments(text)?;
        self.at += newline + 1;
        Ok(if arguments.is_empty() { Started::Empty } else { Started::Inline(arguments) })
    }
}

/// How a request began.
enum Started {
    /// Its first line is not all in.
    Incomplete,
    /// It was empty: there is nothing to answer.
    Empty,
    /// An inline request, whole.
    Inline(Request),
    /// A multibulk request of this many arguments.
    Multibulk(usize),
}

/// The line at `at` (without its `\r\n`) and where the next begins, if its `\r\n` is in.
/// Redis ends a header at its first `\r`, and takes the byte after it as the `\n`.
fn line(buffer: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let cr = at + buffer[at..].iter().position(|&b| b == b'\r')?;
    (cr + 1 < buffer.len()).then(|| (&buffer[at..cr], cr + 2))
}

/// A decimal number as Redis's `string2ll` reads it: an optional `-`, digits, no `+`, no
/// leading zeros, no spaces, within `i64`.
pub(crate) fn number(text: &[u8]) -> Option<i64> {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    let well_formed = !digits.is_empty()
        && digits.iter().all(u8::is_ascii_digit)
        && (digits[0] != b'0' || digits.len() == 1)
        && !(digits == b"0" && digits.len() != text.len());
    if !well_formed {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// Splits an inline request into arguments as Redis's `sdssplitargs` does: blanks separate
/// them; `"..."` takes `\n`, `\r`, `\t`, `\b`, `\a`, `\xHH` and `\<any>` escapes; `'...'` takes
/// `\'`; a closing quote must be followed by a blank or the end.
fn split_arguments(text: &[u8]) -> Result<Request, ProtocolError> {
    let mut arguments = Vec::new();
    let mut at = 0;
    loop {
        while at < text.len() && is_blank(text[at]) {
            at += 1;
        }
        if at == text.len() {
            return Ok(arguments);
        }
        let mut argument = Vec::new();
        while let Some(&byte) = text.get(at) {
            match byte {
                b'"' => at = double_quoted(text, at + 1, &mut argument)?,
                b'\'' => at = single_quoted(text, at + 1, &mut argument)?,
                byte if is_blank(byte) => break,
                byte => {
                    argument.push(byte);
                    at += 1;
                }
            }
        }
        arguments.push(argument);
    }
}

fn is_blank(byte: u8) -> bool {
    matches!(byte, b' ' | b'\n' | b'\r' | b'\t' | b'\x0b' | b'\x0c' | b'\0')
}

/// Reads a `"..."` section from just after its opening quote; returns where it ends.
fn double_quoted(text: &[u8], mut at: usize, out: &mut Vec<u8>) -> Result<usize, ProtocolError> {
    loop {
        match text.get(at..).unwrap_or_default() {
            [] => return Err(ProtocolError::UnbalancedQuotes),
            [b'\\', b'x', high, low, ..] if high.is_ascii_hexdigit() && low.is_ascii_hexdigit() => {
                out.push((hex(*high) << 4) | hex(*low));
                at += 4;
            }
            [b'\\', escaped, ..] => {
                out.push(match escaped {
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'b' => b'\x08',
                    b'a' => b'\x07',
                    other => *other,
                });
                at += 2;
            }
            [b'"', rest @ ..] => return closing(rest, at + 1),
            [byte, ..] => {
                out.push(*byte);
                at += 1;
            }
        }
    }
}

/// Reads a `'...'` section from just after its opening quote; returns where it ends.
fn single_quoted(text: &[u8], mut at: usize, out: &mut Vec<u8>) -> Result<usize, ProtocolError> {
    loop {
        match text.get(at..).unwrap_or_default() {
            [] => return Err(ProtocolError::UnbalancedQuotes),
            [b'\\', b'\'', ..] => {
                out.push(b'\'');
                at += 2;
            }
            [b'\'', rest @ ..] => return closing(rest, at + 1),
            [byte, ..] => {
                out.push(*byte);
                at += 1;
            }
        }
    }
}

/// A closing quote must end the argument.
fn closing(rest: &[u8], at: usize) -> Result<usize, ProtocolError> {
    match rest.first() {
        Some(&byte) if !is_blank(byte) => Err(ProtocolError::UnbalancedQuotes),
        _ => Ok(at),
    }
}

fn hex(digit: u8) -> u8 {
    (digit as char).to_digit(16).expect("checked hex digit") as u8
}

/// The protocol a connection speaks: RESP2 until `HELLO 3`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// RESP2: simple strings, errors, integers, bulk strings, arrays.
    #[default]
    Resp2,
    /// RESP3: RESP2's types and null, double, boolean, map, set, verbatim, big number, push.
    Resp3,
}

/// A reply, in the types of RESP3; [`Reply::encode`] spells it for either protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// `+OK`: a status (its line ends become spaces).
    Simple(String),
    /// `-ERR ...`: an error whose first word is its kind (`ERR`, `WRONGTYPE`, `READONLY`, ...).
    Error(String),
    /// `:1`.
    Integer(i64),
    /// `$3\r\nfoo`: a binary-safe string.
    Bulk(Vec<u8>),
    /// A missing value (`GET` of no key): `$-1` in RESP2.
    Null,
    /// A missing array (`EXEC` of an aborted transaction): `*-1` in RESP2.
    NullArray,
    /// An ordered list.
    Array(Vec<Reply>),
    /// Key-value pairs (`HGETALL`, `HELLO`): a flat array of 2N elements in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// An unordered collection (`SMEMBERS`): an array in RESP2.
    Set(Vec<Reply>),
    /// A floating-point number (`ZSCORE`): a bulk string in RESP2.
    Double(f64),
    /// True or false: the integer 1 or 0 in RESP2.
    Boolean(bool),
    /// Text with a three-letter format (`txt`, `mkd`), as `INFO` and `CLIENT INFO` answer: a
    /// bulk string in RESP2.
    Verbatim {
        /// The format.
        format: [u8; 3],
        /// The text.
        text: Vec<u8>,
    },
    /// An out-of-band message (pub/sub): an array in RESP2.
    Push(Vec<Reply>),
    /// Members with their scores (`ZRANGE ... WITHSCORES`): a flat array of 2N elements in
    /// RESP2, an array of two-element arrays in RESP3.
    Pairs(Vec<(Reply, Reply)>),
}

impl Reply {
    /// `+OK`.
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    /// An error reply; `message` starts with its kind, as `"ERR syntax error"`.
    pub fn error(message: impl Into<String>) -> Reply {
        Reply::Error(message.into())
    }

    /// A bulk string.
    pub fn bulk(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply::Bulk(bytes.into())
    }

    /// Appends the reply's bytes in `protocol` to `out`.
    pub fn encode(&self, protocol: Protocol, out: &mut Vec<u8>) {
        let resp3 = protocol == Protocol::Resp3;
        match self {
            Reply::Simple(text) => line_of(out, b'+', text),
            Reply::Error(text) => line_of(out, b'-', text),
            Reply::Integer(value) => header(out, b':', *value),
            Reply::Bulk(bytes) => bulk(out, b'$', bytes),
            Reply::Null if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::Null => out.extend_from_slice(b"$-1\r\n"),
            Reply::NullArray if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::NullArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(items) => sequence(out, b'*', items, protocol),
            Reply::Set(items) => sequence(out, if resp3 { b'~' } else { b'*' }, items, protocol),
            Reply::Push(items) => sequence(out, if resp3 { b'>' } else { b'*' }, items, protocol),
            Reply::Map(pairs) => {
                if resp3 {
                    header(out, b'%', pairs.len() as i64);
                } else {
                    header(out, b'*', 2 * pairs.len() as i64);
                }
                for (key, value) in pairs {
                    key.encode(protocol, out);
                    value.encode(protocol, out);
                }
            }
            Reply::Pairs(pairs) => {
                header(out, b'*', if resp3 { pairs.len() } else { 2 * pairs.len() } as i64);
                for (first, second) in pairs {
                    if resp3 {
                        header(out, b'*', 2);
                    }
                    first.encode(protocol, out);
                    second.encode(protocol, out);
                }
            }
            Reply::Double(value) if resp3 => line_of(out, b',', &format_double(*value)),
            Reply::Double(value) => bulk(out, b'$', format_double(*value).as_bytes()),
            Reply::Boolean(value) if resp3 => out.extend_from_slice(if *value { b"#t\r\n" } else { b"#f\r\n" }),
            Reply::Boolean(value) => header(out, b':', i64::from(*value)),
            Reply::Verbatim { format, text } if resp3 => {
                let mut framed = format.to_vec();
                framed.push(b':');
                framed.extend_from_slice(text);
                bulk(out, b'=', &framed);
            }
            Reply::Verbatim { text, .. } => bulk(out, b'$', text),
        }
    }
}

/// A status or error line: its line ends would end the reply early, so they become spaces (as
/// Redis's `addReplyError` does).
fn line_of(out: &mut Vec<u8>, kind: u8, text: &str) {
    out.push(kind);
    out.extend(text.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    out.extend_from_slice(b"\r\n");
}

fn header(out: &mut Vec<u8>, kind: u8, value: i64) {
    out.push(kind);
    out.extend_from_slice(value.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn bulk(out: &mut Vec<u8>, kind: u8, bytes: &[u8]) {
    header(out, kind, bytes.len() as i64);
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

fn sequence(out: &mut Vec<u8>, kind: u8, items: &[Reply], protocol: Protocol) {
    header(out, kind, items.len() as i64);
    for item in items {
        item.encode(protocol, out);
    }
}

/// A double as Redis writes it: the shortest text that reads back as the same value, `inf`,
/// `-inf` or `nan`, with an exponent (`1e+21`) outside the range plain digits are readable in.
pub fn format_double(value: f64) -> String {
    if value.is_nan() {
        return "nan".into();
    }
    if value.is_infinite() {
        return if value > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let magnitude = value.abs();
    if magnitude != 0.0 && !(1e-5..1e17).contains(&magnitude) {
        let text = format!("{value:e}");
        // Rust writes `1e21` and `1.5e-7`; C's `%g` writes `1e+21` and `1.5e-07`.
        let (mantissa, exponent) = text.split_once('e').expect("`{:e}` has an exponent");
        let (sign, digits) = exponent.strip_prefix('-').map_or(("+", exponent), |digits| ("-", digits));
        return format!("{mantissa}e{sign}{digits:0>2}");
    }
    format!("{value}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(bytes: &[u8]) -> Result<Vec<Request>, ProtocolError> {
        let mut decoder = Decoder::new(Limits::default());
        decoder.push(bytes);
        let mut requests = Vec::new();
        while let Some(request) = decoder.next_request()? {
            requests.push(request);
        }
        Ok(requests)
    }

    fn args(words: &[&str]) -> Request {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    fn multibulk(request: &Request) -> Vec<u8> {
        let mut out = format!("*{}\r\n", request.len()).into_bytes();
        for argument in request {
            out.extend_from_slice(format!("${}\r\n", argument.len()).as_bytes());
            out.extend_from_slice(argument);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    // The cases of Redis's own protocol tests (tests/unit/protocol.tcl).
    #[test]
    fn redis_protocol_test_cases() {
        assert_eq!(decode_all(b"\r\n"), Ok(vec![]), "an empty query");
        assert_eq!(decode_all(b"*-10\r\nPING\r\n"), Ok(vec![args(&["PING"])]), "a negative multibulk length");
        assert_eq!(decode_all(b"*3000000000\r\n"), Err(ProtocolError::InvalidMultibulkLength));
        assert_eq!(decode_all(b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n"), Err(ProtocolError::ExpectedBulk('f')));
        assert_eq!(decode_all(b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$-10\r\n"), Err(ProtocolError::InvalidBulkLength));
        assert_eq!(decode_all(b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$2000000000\r\n"), Err(ProtocolError::InvalidBulkLength));
        assert_eq!(decode_all(b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$blabla\r\n"), Err(ProtocolError::InvalidBulkLength));
        assert_eq!(decode_all(b"*1\r\nfoo\r\n"), Err(ProtocolError::ExpectedBulk('f')));
        // Desynchronised streams: bytes that never make a line end in time.
        let flood = b"payload".repeat(INLINE_MAX / 7 + 1);
        for (start, error) in [
            (&b"\x00"[..], ProtocolError::InlineTooBig),
            (b"*\x00", ProtocolError::CountTooBig),
            (b"$\x00", ProtocolError::InlineTooBig),
        ] {
            assert_eq!(decode_all(&[start, &flood[..]].concat()), Err(error));
        }
    }

    #[test]
    fn pipelined_requests_of_both_forms_come_out_in_order() {
        let bytes = [&multibulk(&args(&["SET", "k", "v\r\n"]))[..], b"GET k\r\n", b"\n", b"*0\r\n", b"PING\n"].concat();
        assert_eq!(decode_all(&bytes), Ok(vec![args(&["SET", "k", "v\r\n"]), args(&["GET", "k"]), args(&["PING"])]));
    }

    #[test]
    fn inline_arguments_are_split_as_redis_cli_quotes_them() {
        let split = |text: &str| split_arguments(text.as_bytes());
        assert_eq!(split("  set \"a b\" 'c\\'d'  "), Ok(args(&["set", "a b", "c'd"])));
        assert_eq!(split(r#""\x41\x4a\n\t\\\"" x"#), Ok(vec![b"AJ\n\t\\\"".to_vec(), b"x".to_vec()]));
        assert_eq!(split(r#""\xzz""#), Ok(vec![b"xzz".to_vec()]), "not hex: the escaped byte itself");
        assert_eq!(split(r#"a"b c" e"#), Ok(args(&["ab c", "e"])), "a quote inside a word starts a section");
        for unbalanced in [r#""abc"#, "'abc", r#""abc"d"#, "'abc'd", r#""ends in \"#] {
            assert_eq!(split(unbalanced), Err(ProtocolError::UnbalancedQuotes), "{unbalanced}");
        }
    }

    #[test]
    fn numbers_are_read_as_string2ll_reads_them() {
        for (text, value) in
            [("0", Some(0)), ("-1", Some(-1)), ("42", Some(42)), ("9223372036854775807", Some(i64::MAX))]
        {
            assert_eq!(number(text.as_bytes()), value, "{text}");
        }
        for bad in ["", "-", "+1", "01", "-0", " 1", "1 ", "1.0", "9223372036854775808"] {
            assert_eq!(number(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn limits_refuse_before_memory_is_spent() {
        let limits = Limits { max_bulk_len: 10, max_arguments: 3, max_request_bytes: 15 };
        let refused = |bytes: &[u8]| {
            let mut decoder = Decoder::new(limits);
            decoder.push(bytes);
            decoder.next_request()
        };
        assert_eq!(refused(b"*4\r\n"), Err(ProtocolError::InvalidMultibulkLength));
        assert_eq!(refused(b"*1\r\n$11\r\n"), Err(ProtocolError::InvalidBulkLength));
        assert_eq!(refused(b"*2\r\n$10\r\n0123456789\r\n$6\r\n"), Err(ProtocolError::RequestTooBig(15)));
        assert_eq!(
            refused(&[b"*1\r\n$", &b"1".repeat(INLINE_MAX + 1)[..]].concat()),
            Err(ProtocolError::BulkCountTooBig)
        );
        assert_eq!(refused(&b"x".repeat(INLINE_MAX + 2)), Err(ProtocolError::InlineTooBig));
        // A header announcing a million arguments holds only what arrived.
        let mut decoder = Decoder::new(Limits::default());
        decoder.push(b"*1000000\r\n$1\r\na\r\n");
        assert_eq!(decoder.next_request(), Ok(None));
        assert_eq!(decoder.buffered(), 1);
        let State::Arguments { arguments, .. } = &decoder.state else { panic!("inside the request") };
        assert!(arguments.capacity() <= RESERVED_ARGUMENTS);
    }

    #[test]
    fn a_protocol_error_answers_as_redis_does() {
        let mut out = Vec::new();
        ProtocolError::ExpectedBulk('f').reply().encode(Protocol::Resp2, &mut out);
        assert_eq!(out, b"-ERR Protocol error: expected '$', got 'f'\r\n");
    }

    #[test]
    fn replies_are_spelled_for_each_protocol() {
        let map = Reply::Map(vec![(Reply::bulk("a"), Reply::Integer(1))]);
        let cases: Vec<(Reply, &[u8], &[u8])> = vec![
            (Reply::ok(), b"+OK\r\n", b"+OK\r\n"),
            (Reply::error("ERR bad\r\nthing"), b"-ERR bad  thing\r\n", b"-ERR bad  thing\r\n"),
            (Reply::Integer(-7), b":-7\r\n", b":-7\r\n"),
            (Reply::bulk("a\r\nb"), b"$4\r\na\r\nb\r\n", b"$4\r\na\r\nb\r\n"),
            (Reply::Null, b"$-1\r\n", b"_\r\n"),
            (Reply::NullArray, b"*-1\r\n", b"_\r\n"),
            (Reply::Array(vec![Reply::Integer(1), Reply::Null]), b"*2\r\n:1\r\n$-1\r\n", b"*2\r\n:1\r\n_\r\n"),
            (map, b"*2\r\n$1\r\na\r\n:1\r\n", b"%1\r\n$1\r\na\r\n:1\r\n"),
            (Reply::Set(vec![Reply::bulk("x")]), b"*1\r\n$1\r\nx\r\n", b"~1\r\n$1\r\nx\r\n"),
            (Reply::Double(1.5), b"$3\r\n1.5\r\n", b",1.5\r\n"),
            (Reply::Double(f64::NEG_INFINITY), b"$4\r\n-inf\r\n", b",-inf\r\n"),
            (Reply::Boolean(true), b":1\r\n", b"#t\r\n"),
            (Reply::Verbatim { format: *b"txt", text: b"hi".to_vec() }, b"$2\r\nhi\r\n", b"=6\r\ntxt:hi\r\n"),
            (Reply::Push(vec![Reply::bulk("m")]), b"*1\r\n$1\r\nm\r\n", b">1\r\n$1\r\nm\r\n"),
            (
                Reply::Pairs(vec![(Reply::bulk("m"), Reply::Double(2.0))]),
                b"*2\r\n$1\r\nm\r\n$1\r\n2\r\n",
                b"*1\r\n*2\r\n$1\r\nm\r\n,2\r\n",
            ),
        ];
        for (reply, resp2, resp3) in cases {
            for (protocol, expected) in [(Protocol::Resp2, resp2), (Protocol::Resp3, resp3)] {
                let mut out = Vec::new();
                reply.encode(protocol, &mut out);
                assert_eq!(out, expected, "{reply:?} in {protocol:?}");
            }
        }
    }

    #[test]
    fn doubles_are_written_as_redis_writes_them() {
        for (value, text) in
            [(3.0, "3"), (0.1, "0.1"), (-2.5, "-2.5"), (1e21, "1e+21"), (1.5e-7, "1.5e-07"), (0.0, "0")]
        {
            assert_eq!(format_double(value), text);
            assert_eq!(text.parse::<f64>(), Ok(value), "{text} reads back");
        }
        assert_eq!(format_double(f64::NAN), "nan");
    }

    proptest! {
        /// Requests cut into pieces anywhere come out whole, in order, as sent.
        #[test]
        fn requests_cut_anywhere_come_out_whole(
            requests in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6),
                1..8,
            ),
            cuts in proptest::collection::vec(0usize..400, 0..12),
        ) {
            let bytes: Vec<u8> = requests.iter().flat_map(multibulk).collect();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let mut decoder = Decoder::new(Limits::default());
            let (mut from, mut decoded) = (0, Vec::new());
            for cut in cuts {
                decoder.push(&bytes[from..cut]);
                from = cut;
                while let Some(request) = decoder.next_request().unwrap() {
                    decoded.push(request);
                }
            }
            prop_assert_eq!(decoded, requests);
            prop_assert_eq!(decoder.buffered(), 0);
        }

        /// Any bytes at all: an error or requests, never a panic, and never more held than
        /// arrived.
        #[test]
        fn any_bytes_are_refused_or_read(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut decoder = Decoder::new(Limits::default());
            decoder.push(&bytes);
            while let Ok(Some(_)) = decoder.next_request() {}
            prop_assert!(decoder.buffered() <= bytes.len());
        }
    }
}
