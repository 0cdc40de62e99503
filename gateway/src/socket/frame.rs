//! A server's WebSocket frames, written straight to the socket's writing
//! half (RFC 6455 §5.2: a header of 2 to 10 bytes, then the unmasked
//! payload). The payload is the event's bytes, encoded once for every
//! recipient, so a frame goes to the kernel with its header in one
//! `writev`, with no copy and no write buffer kept between writes; a frame
//! the socket takes only in part keeps its rest here until it is written.

use std::io;
use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use tokio::io::AsyncWrite;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// The socket's writing half, and what is left of a frame the socket took
/// only part of.
pub(super) struct Out<W> {
    pub(super) io: W,
    /// The unwritten end of a frame. A write cut off half-way (by a close
    /// or the token's expiry) leaves it here, and the next write, or
    /// [`finish`], sends it first: nothing may come between the bytes of
    /// one frame. Boxed, and made only when the socket did not take a frame
    /// at once: every idle connection carries this field.
    pub(super) rest: Option<Box<FrameBytes>>,
}

impl<W: AsyncWrite + Unpin> Out<W> {
    pub(super) fn new(io: W) -> Self {
        Out { io, rest: None }
    }

    /// Writes one message as one frame. Almost always the socket takes it
    /// whole on the first try, in one `writev` of header and payload, and
    /// nothing is allocated; otherwise the rest waits in [`Out::rest`].
    pub(super) async fn send(&mut self, message: Message) -> io::Result<()> {
        self.send_rest().await?;
        let mut frame = FrameBytes::new(message);
        let first = std::future::poll_fn(|cx| Poll::Ready(frame.poll_write(&mut self.io, cx)));
        match first.await {
            Poll::Ready(done) => done,
            Poll::Pending => {
                self.rest = Some(Box::new(frame));
                self.send_rest().await
            }
        }
    }

    /// Writes the rest of a frame cut off earlier, if any. Progress is kept
    /// in [`Out::rest`] as it is made, so a call cut off at any point loses
    /// none.
    pub(super) async fn send_rest(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            if let Some(rest) = self.rest.as_mut() {
                std::task::ready!(rest.poll_write(&mut self.io, cx))?;
                self.rest = None;
            }
            Poll::Ready(Ok(()))
        })
        .await
    }
}

/// Longest header of an unmasked frame (RFC 6455 §5.2): two bytes, and
/// eight more for a payload length over 65,535.
const MAX_HEADER: usize = 10;

/// One server frame on its way to the socket: its header, its payload
/// (shared with every other recipient of the same event, not copied), and
/// how much of the two is written.
pub(super) struct FrameBytes {
    header: [u8; MAX_HEADER],
    header_len: usize,
    payload: Bytes,
    written: usize,
}

impl FrameBytes {
    /// The frame of `message`: final (the writer sends every message as one
    /// frame), unmasked (a server's frames are, RFC 6455 §5.1).
    fn new(message: Message) -> Self {
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

    /// Writes what is left, recording progress as it goes; ready once the
    /// whole frame is written.
    fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.written < self.header_len + self.payload.len() {
            let h = self.written.min(self.header_len);
            let p = self.written - h;
            let bufs = [
                io::IoSlice::new(&self.header[h..self.header_len]),
                io::IoSlice::new(&self.payload[p..]),
            ];
            let n = std::task::ready!(Pin::new(&mut *io).poll_write_vectored(cx, &bufs))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// Test helpers, for this module's tests and the writer's.
#[cfg(test)]
pub(super) mod testing {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    use crate::close;

    /// Reads what a client makes of the bytes on `io`'s other end, up to
    /// and including the close frame.
    pub(crate) fn client(io: tokio::io::DuplexStream) -> tokio::task::JoinHandle<Vec<Message>> {
        use futures_util::StreamExt;
        use tokio_tungstenite::WebSocketStream;
        use tokio_tungstenite::tungstenite::protocol::Role;
        tokio::spawn(async move {
            let mut client = WebSocketStream::from_raw_socket(io, Role::Client, None).await;
            let mut got = Vec::new();
            while let Some(m) = client.next().await {
                let m = m.expect("a well-formed frame");
                let end = matches!(m, Message::Close(_));
                got.push(m);
                if end {
                    break;
                }
            }
            got
        })
    }

    pub(crate) fn close_frame(code: u16) -> Message {
        Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: close::reason(code).into(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{client, close_frame};
    use super::*;
    use crate::close;

    /// Every kind of message, with payloads of each of the three length
    /// encodings, reads back as sent through a WebSocket client.
    #[tokio::test]
    async fn every_message_reads_back_as_sent() {
        let (server_io, client_io) = tokio::io::duplex(1 << 20);
        let reader = client(client_io);
        let sent = vec![
            Message::Text("hi".into()),
            Message::Text("é".repeat(100).into()),
            Message::Text("x".repeat(125).into()),
            Message::Binary(Bytes::from(vec![7; 126])),
            Message::Binary(Bytes::from(vec![8; 65_535])),
            Message::Text("y".repeat(65_536).into()),
            Message::Ping(Bytes::from_static(b"p")),
            Message::Pong(Bytes::new()),
            close_frame(close::DRAINING),
        ];
        let mut out = Out::new(server_io);
        for m in sent.clone() {
            out.send(m).await.expect("written");
        }
        let got = reader.await.expect("client");
        assert_eq!(
            got.len(),
            sent.len(),
            "{:?}",
            got.iter().map(Message::len).collect::<Vec<_>>()
        );
        for (i, (g, s)) in got.iter().zip(&sent).enumerate() {
            assert!(
                g == s,
                "message {i}: {} bytes read, {} sent",
                g.len(),
                s.len()
            );
        }
    }
}
