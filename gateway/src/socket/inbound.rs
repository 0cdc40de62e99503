//! The reader's side of the socket: the client's WebSocket frames
//! (RFC 6455 §5) parsed straight off it.
//!
//! Done here rather than by tungstenite for what an idle connection holds.
//! tungstenite's stream kept about 300 bytes in the connection's task and
//! 450 more on the heap (its read buffer, its frame state, two waker
//! proxies) for the connection's whole life; [`FrameReader`] is 72 bytes
//! and, between commands, holds no buffer at all. Every idle connection
//! carries it, and the client sends a few commands a minute.
//!
//! It checks what RFC 6455 asks of a server reading a client: frames masked,
//! no reserved bits (no extension is negotiated), known opcodes, control
//! frames whole and at most 125 bytes, continuations only inside a
//! fragmented message, text valid UTF-8 once reassembled, close codes a
//! peer may send. A message over the limit is refused from its frame's
//! header, before its payload is read. After any of these, or the
//! client's close, it reads no further frames: the reader ends the
//! connection.
//!
//! Memory per connection is bounded by the limit: the read buffer holds at
//! most the frame being read plus one [`READ_CHUNK`] (a read takes what the
//! frame still needs, or a chunk), and a fragmented message at most the
//! limit.

use std::io;

use bytes::{BufMut, Bytes};

use super::upgrade::ReadHalf;

/// What one read takes from the socket when no frame's length is known
/// yet, or the frame needs less. The buffer exists only while a read's
/// bytes are not all parsed (a frame cut across reads, several frames in
/// one read); it is freed as soon as they are, so an idle connection holds
/// none. A command fits in one read; once a long message's header is in,
/// the next read takes the rest of its frame.
const READ_CHUNK: usize = 4096;

/// The longest control frame payload (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xa;

/// A client's message or control frame.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Frame {
    /// A text message, reassembled; valid UTF-8.
    Text(Bytes),
    /// A binary message, reassembled.
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    /// The client's close, with its code if it sent one.
    Close(Option<u16>),
}

/// Why no more frames are read.
#[derive(Debug)]
pub(super) enum ReadError {
    /// The socket failed.
    Io(io::Error),
    /// The client broke RFC 6455.
    Protocol(&'static str),
    /// A message (after reassembly) over the limit: closes with 1009.
    TooBig,
    /// A text message, or a close reason, that is not UTF-8.
    Utf8,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "reading the socket: {e}"),
            ReadError::Protocol(what) => write!(f, "protocol error: {what}"),
            ReadError::TooBig => f.write_str("a message over the limit"),
            ReadError::Utf8 => f.write_str("text that is not UTF-8"),
        }
    }
}

/// A fragmented message being put together.
#[derive(Debug)]
struct Partial {
    text: bool,
    bytes: Vec<u8>,
}

/// Reads the client's frames off the socket.
#[derive(Debug)]
pub(super) struct FrameReader {
    io: ReadHalf,
    parser: Parser,
    /// A protocol error, a message over the limit, the client's close or
    /// the stream's end was read: nothing more is parsed.
    stopped: bool,
}

/// What was read and not yet taken as frames.
#[derive(Debug)]
struct Parser {
    /// Bytes read and not yet parsed, from `pos` on. Empty, with no
    /// capacity, whenever everything read has been parsed.
    buf: Vec<u8>,
    pos: usize,
    /// A fragmented message whose last frame has not come yet. Boxed:
    /// clients seldom fragment, and every connection carries this field.
    partial: Option<Box<Partial>>,
    max_message: usize,
}

impl FrameReader {
    /// Reads `io`, refusing messages over `max_message` bytes.
    pub(super) fn new(io: ReadHalf, max_message: usize) -> Self {
        FrameReader {
            io,
            parser: Parser::new(max_message),
            stopped: false,
        }
    }

    /// The client's next frame; `None` once the stream ended or after the
    /// client's close or an error (which is returned once). Cancel-safe:
    /// what was read stays here for the next call.
    pub(super) async fn next(&mut self) -> Option<Result<Frame, ReadError>> {
        if self.stopped {
            return None;
        }
        loop {
            match self.parser.parse() {
                Ok(Some(frame)) => {
                    self.stopped = matches!(frame, Frame::Close(_));
                    return Some(Ok(frame));
                }
                Ok(None) => {}
                Err(e) => {
                    self.stopped = true;
                    return Some(Err(e));
                }
            }
            match self.fill().await {
                Ok(0) => {
                    // The client's end, without a close frame (mid-frame
                    // or not): the connection is over either way.
                    self.stopped = true;
                    return None;
                }
                Ok(_) => {}
                Err(e) => {
                    self.stopped = true;
                    return Some(Err(ReadError::Io(e)));
                }
            }
        }
    }

    /// Reads and drops what the client sends, bypassing the frames: after
    /// the reader stopped, to the client's end (`Ok(0)`).
    pub(super) async fn discard(&mut self) -> io::Result<usize> {
        use tokio::io::AsyncReadExt;
        self.parser = Parser::new(self.parser.max_message);
        let mut scratch = [0; 256];
        self.io.read(&mut scratch).await
    }

    /// What the socket holds unread (tests: none, the end, or bytes).
    #[cfg(test)]
    pub(super) fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.try_read(buf)
    }

    /// Reads more from the socket into the buffer, waiting until there is
    /// something; `Ok(0)` at the stream's end. The buffer is made only
    /// once the socket is readable, and freed again if the read finds
    /// nothing after all.
    async fn fill(&mut self) -> io::Result<usize> {
        if let Some(early) = self.io.take_early().filter(|e| !e.is_empty()) {
            self.parser.feed(&early);
            return Ok(early.len());
        }
        let parser = &mut self.parser;
        loop {
            std::future::poll_fn(|cx| self.io.poll_read_ready(cx)).await?;
            let want = parser.prepare_read();
            match self.io.try_read_buf(&mut (&mut parser.buf).limit(want)) {
                Ok(n) => return Ok(n),
                // The readiness was stale; the failed read cleared it, so
                // the next wait is for the next.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if parser.buf.is_empty() {
                        parser.buf = Vec::new();
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Parser {
    fn new(max_message: usize) -> Self {
        Parser {
            buf: Vec::new(),
            pos: 0,
            partial: None,
            max_message,
        }
    }

    /// Makes room for the next read and says how much it may take: the
    /// rest of the frame whose header is in, or [`READ_CHUNK`], whichever
    /// is more. Drops the parsed bytes from the buffer's front first, and
    /// gives back room an earlier, longer frame left.
    fn prepare_read(&mut self) -> usize {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let rest = match Head::parse(&self.buf, self.max_message, 0) {
            Ok(Some(h)) => (h.payload_at + h.payload_len).saturating_sub(self.buf.len()),
            _ => 0,
        };
        let want = rest.max(READ_CHUNK);
        let needed = self.buf.len() + want;
        if self.buf.capacity() > needed + READ_CHUNK {
            self.buf.shrink_to(needed);
        }
        self.buf.reserve_exact(want);
        want
    }

    /// Takes `bytes` as read.
    fn feed(&mut self, bytes: &[u8]) {
        self.prepare_read();
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message or control frame in the buffer, taking the
    /// frames it parses; `None` when the buffer ends in the middle of one.
    fn parse(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            let assembled = self.partial.as_ref().map_or(0, |p| p.bytes.len());
            let Some(head) = Head::parse(&self.buf[self.pos..], self.max_message, assembled)?
            else {
                return Ok(None);
            };
            let start = self.pos + head.payload_at;
            let Some(end) = start
                .checked_add(head.payload_len)
                .filter(|&end| end <= self.buf.len())
            else {
                return Ok(None);
            };
            let payload = &mut self.buf[start..end];
            unmask(payload, head.mask);
            let frame = self.take(head.fin, head.opcode, start, end)?;
            self.pos = end;
            if self.pos == self.buf.len() {
                self.buf = Vec::new();
                self.pos = 0;
            }
            if let Some(frame) = frame {
                return Ok(Some(frame));
            }
        }
    }

    /// Applies one frame whose unmasked payload is `buf[start..end]`: the
    /// frame or message it completes, if any.
    fn take(
        &mut self,
        fin: bool,
        opcode: u8,
        start: usize,
        end: usize,
    ) -> Result<Option<Frame>, ReadError> {
        let payload = &self.buf[start..end];
        match opcode {
            TEXT | BINARY => {
                if self.partial.is_some() {
                    return Err(ReadError::Protocol("a new message inside a fragmented one"));
                }
                let text = opcode == TEXT;
                if fin {
                    return message(text, payload.to_vec()).map(Some);
                }
                self.partial = Some(Box::new(Partial {
                    text,
                    bytes: payload.to_vec(),
                }));
                Ok(None)
            }
            CONTINUATION => {
                let Some(mut partial) = self.partial.take() else {
                    return Err(ReadError::Protocol("a continuation with no message"));
                };
                // Grown by doubling (many small fragments copy little),
                // but never past the limit, which the header check keeps
                // the message within.
                let bytes = &mut partial.bytes;
                let needed = bytes.len() + payload.len();
                if needed > bytes.capacity() {
                    let grown = needed.max(bytes.capacity() * 2).min(self.max_message);
                    bytes.reserve_exact(grown.max(needed) - bytes.len());
                }
                bytes.extend_from_slice(payload);
                if fin {
                    let Partial { text, bytes } = *partial;
                    return message(text, bytes).map(Some);
                }
                self.partial = Some(partial);
                Ok(None)
            }
            CLOSE => match payload {
                [] => Ok(Some(Frame::Close(None))),
                [_] => Err(ReadError::Protocol("a close payload of one byte")),
                [hi, lo, reason @ ..] => {
                    let code = u16::from_be_bytes([*hi, *lo]);
                    // RFC 6455 §7.4: the codes defined for a peer to send,
                    // and those for applications and libraries.
                    if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                        return Err(ReadError::Protocol("a close code no peer may send"));
                    }
                    std::str::from_utf8(reason).map_err(|_| ReadError::Utf8)?;
                    Ok(Some(Frame::Close(Some(code))))
                }
            },
            PING => Ok(Some(Frame::Ping(Bytes::copy_from_slice(payload)))),
            _ => Ok(Some(Frame::Pong)),
        }
    }
}

/// A complete message; text must be UTF-8.
fn message(text: bool, bytes: Vec<u8>) -> Result<Frame, ReadError> {
    if !text {
        return Ok(Frame::Binary(Bytes::from(bytes)));
    }
    std::str::from_utf8(&bytes).map_err(|_| ReadError::Utf8)?;
    Ok(Frame::Text(Bytes::from(bytes)))
}

/// A client frame's header (RFC 6455 §5.2).
#[derive(Debug, PartialEq, Eq)]
struct Head {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Where the payload starts, from the frame's first byte.
    payload_at: usize,
    payload_len: usize,
}

impl Head {
    /// The header at the start of `buf`, or `None` if `buf` ends inside
    /// it. A data frame that would take its message past `max` (a
    /// continuation adds to the `assembled` bytes) is refused here, before
    /// its payload is read.
    fn parse(buf: &[u8], max: usize, assembled: usize) -> Result<Option<Head>, ReadError> {
        let [b0, b1, ..] = *buf else {
            return Ok(None);
        };
        if b0 & 0x70 != 0 {
            return Err(ReadError::Protocol("reserved bits set"));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        if !matches!(opcode, CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG) {
            return Err(ReadError::Protocol("an unknown opcode"));
        }
        if b1 & 0x80 == 0 {
            return Err(ReadError::Protocol("a client frame not masked"));
        }
        let (len, mask_at) = match b1 & 0x7f {
            126 => match buf.get(2..4) {
                Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
                _ => return Ok(None),
            },
            127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                Some(b) => (u64::from_be_bytes(b), 10),
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        if opcode >= CLOSE {
            if !fin {
                return Err(ReadError::Protocol("a fragmented control frame"));
            }
            if len > MAX_CONTROL_PAYLOAD {
                return Err(ReadError::Protocol("a control frame over 125 bytes"));
            }
        } else {
            let room = if opcode == CONTINUATION {
                max.saturating_sub(assembled)
            } else {
                max
            };
            if len > room as u64 {
                return Err(ReadError::TooBig);
            }
        }
        let Some(&[m0, m1, m2, m3]) = buf.get(mask_at..mask_at + 4) else {
            return Ok(None);
        };
        Ok(Some(Head {
            fin,
            opcode,
            mask: [m0, m1, m2, m3],
            payload_at: mask_at + 4,
            // At most `max` or 125, both usize.
            payload_len: len as usize,
        }))
    }
}

/// Unmasks a client payload in place (RFC 6455 §5.3).
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests;
