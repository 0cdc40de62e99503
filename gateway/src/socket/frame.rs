//! The writer's side of the socket: server frames (`codec::frame`)
//! written straight to it, with no write buffer kept between writes; a
//! frame the socket takes only in part keeps its rest here until it is
//! written.

use std::io;
use std::task::Poll;

use tokio::io::AsyncWrite;
use tokio_tungstenite::tungstenite::Message;

use crate::codec::frame::FrameBytes;

/// The socket's writing side, and what is left of a frame the socket took
/// only part of.
pub(super) struct Out<W> {
    pub(super) io: W,
    /// The unwritten end of a frame: of a write cut off half-way (by a
    /// close, the token's expiry or the write-stall bound), or of a frame
    /// a dispatcher began
    /// (`handle/queue.rs`). The next write, or [`finish`], sends it first:
    /// nothing may come between the bytes of one frame. Boxed, and made
    /// only when the socket did not take a frame at once: every idle
    /// connection carries this field.
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
    use bytes::Bytes;

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
