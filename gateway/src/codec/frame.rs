//! A server's WebSocket frame as bytes on their way to the socket (RFC 6455
//! §5.2: a header of 2 to 10 bytes, then the unmasked payload). The
//! payload is the event's bytes, encoded once for every recipient, so a
//! frame goes to the kernel with its header in one `writev`, with no copy;
//! how much of it is written is kept with it, so a write the socket takes
//! only in part goes on where it stopped. Written by the connection's
//! writer task (`socket::frame`) or, between its writes, by a dispatcher
//! (`handle/queue.rs`).

use std::io;
use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// Longest header of an unmasked frame (RFC 6455 §5.2): two bytes, and
/// eight more for a payload length over 65,535.
const MAX_HEADER: usize = 10;

/// One server frame on its way to the socket: its header, its payload
/// (shared with every other recipient of the same event, not copied), and
/// how much of the two is written.
pub(crate) struct FrameBytes {
    header: [u8; MAX_HEADER],
    header_len: usize,
    payload: Bytes,
    written: usize,
}

impl FrameBytes {
    /// The frame of `message`: final (the writer sends every message as one
    /// frame), unmasked (a server's frames are, RFC 6455 §5.1).
    pub(crate) fn new(message: Message) -> Self {
        let (opcode, payload) = match message {
            Message::Text(t) => (OpCode::Data(Data::Text), Bytes::from(t)),
            Message::Binary(b) => (OpCode::Data(Data::Binary), b),
            Message::Ping(p) => (OpCode::Control(Control::Ping), p),
            Message::Pong(p) => (OpCode::Control(Control::Pong), p),
            Message::Close(c) => {
                let mut p = Vec::new();
                if let Some(c) = c {
                    p.extend_from_slice(&u16::from(c.code).to_be_bytes());
                    p.extend_from_slice(c.reason.as_bytes());
                }
                (OpCode::Control(Control::Close), Bytes::from(p))
            }
            // A frame made elsewhere, header and all.
            Message::Frame(f) => {
                let mut whole = Vec::with_capacity(f.len());
                let _ = f.format(&mut whole);
                return FrameBytes {
                    header: [0; MAX_HEADER],
                    header_len: 0,
                    payload: Bytes::from(whole),
                    written: 0,
                };
            }
        };
        let mut header = [0; MAX_HEADER];
        header[0] = 0x80 | u8::from(opcode);
        let len = payload.len();
        let header_len = match (u8::try_from(len), u16::try_from(len)) {
            (Ok(n), _) if n < 126 => {
                header[1] = n;
                2
            }
            (_, Ok(n)) => {
                header[1] = 126;
                header[2..4].copy_from_slice(&n.to_be_bytes());
                4
            }
            _ => {
                header[1] = 127;
                header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
                10
            }
        };
        FrameBytes {
            header,
            header_len,
            payload,
            written: 0,
        }
    }

    /// Writes what is left without waiting, from any task (a frame is
    /// written by its connection's writer or, between the writer's writes,
    /// by a dispatcher: see `handle/queue.rs`). True once the whole frame
    /// is written; false when the socket took only part of it or none, the
    /// progress kept.
    pub(crate) fn try_write(&mut self, io: &TcpStream) -> io::Result<bool> {
        while !self.done() {
            match io.try_write_vectored(&self.unwritten()) {
                Ok(n) => self.advance(n)?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Writes what is left, recording progress as it goes; ready once the
    /// whole frame is written.
    pub(crate) fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !self.done() {
            let n =
                std::task::ready!(Pin::new(&mut *io).poll_write_vectored(cx, &self.unwritten()))?;
            self.advance(n)?;
        }
        Poll::Ready(Ok(()))
    }

    /// Whether the whole frame is written.
    fn done(&self) -> bool {
        self.written == self.header_len + self.payload.len()
    }

    /// What is left to write: the header's rest, then the payload's.
    fn unwritten(&self) -> [io::IoSlice<'_>; 2] {
        let h = self.written.min(self.header_len);
        [
            io::IoSlice::new(&self.header[h..self.header_len]),
            io::IoSlice::new(&self.payload[self.written - h..]),
        ]
    }

    /// Records `n` more bytes written; none at all is an error (the socket
    /// would never take more).
    fn advance(&mut self, n: usize) -> io::Result<()> {
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.written += n;
        Ok(())
    }
}
