//! Framed sessions (PROTOCOL.md §9.1): a mutual-TLS connection whose ALPN protocol is
//! [`ALPN`] carries one session as length-prefixed protobuf frames, with neither HTTP/2 nor
//! gRPC under it. The frames, their bounds, and the session's rules are those of an HTTP/2
//! session; what differs is what a connection costs: no HTTP/2 codec (whose buffers are 28 KiB
//! per connection from its start, docs/BENCHMARKS.md, Scale), and buffers that are given
//! back while the session is idle.
//!
//! [`FrameReader`] and [`encode_frame`] are the whole framing, for either side.

use std::marker::PhantomData;

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use entente_wire::{Bounded, ClientFrame, Limits, ServerFrame, WireError, server_frame};
use futures_util::{FutureExt as _, StreamExt as _};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::sync::oneshot;
use tonic::Status;

use crate::codec::{Outbound, deliver_len, encode_deliver, encode_deliver_head};

/// The ALPN protocol of a framed session connection.
pub const ALPN: &[u8] = b"entente/1";

/// Bytes of a frame's length prefix (big-endian).
pub const PREFIX_BYTES: usize = 4;

/// The least a read asks for: enough for the small frames (subscriptions, acknowledgements)
/// in one read. An idle session holds no read buffer: it waits for bytes with an array of this
/// size on the stack of the poll, and makes a buffer when they come.
const READ_MIN: usize = 512;

/// The most a read asks for at once: a frame's buffer grows as its bytes arrive, not to the
/// length its prefix announces (a peer announcing large frames and sending nothing holds no
/// more than this).
const READ_STEP: usize = 64 * 1024;

/// Frames gathered into one write (as tonic gathers before handing them to HTTP/2).
const WRITE_GATHER: usize = 32 * 1024;

/// A `Deliver` body of at least this many bytes is written from where it is (the body the
/// router shares between subscribers) rather than copied behind its frame's head: the size
/// from which the hub's TLS stream encrypts a part apart, since the copy would cost more than
/// the small TLS record the head then takes alone.
const BODY_APART: usize = crate::tls_stream::APART;

/// Most parts handed to one vectored write.
const WRITE_PARTS: usize = 16;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed.
    #[error("reading the connection: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix announces more than the limit.
    #[error("a frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// [`Limits::max_frame_bytes`].
        max: usize,
    },
    /// The connection ended inside a frame.
    #[error("the connection ended inside a frame")]
    Truncated,
    /// The frame does not decode under the limits.
    #[error(transparent)]
    Malformed(#[from] WireError),
}

impl FrameError {
    /// The status a session ends with when its frame fails like this: the statuses an HTTP/2
    /// session ends with for the same frame.
    pub fn status(&self) -> Status {
        match self {
            Self::Io(_) => Status::unavailable(self.to_string()),
            Self::TooLarge { .. } => Status::out_of_range(self.to_string()),
            Self::Truncated | Self::Malformed(_) => Status::invalid_argument(self.to_string()),
        }
    }
}

/// Reads length-prefixed frames of type `D` from `R`, each decoded under [`Limits`] before
/// anything is allocated for it. Cancel-safe: what a cancelled read got stays buffered.
#[derive(Debug)]
pub struct FrameReader<R, D> {
    io: R,
    buf: BytesMut,
    limits: Limits,
    _type: PhantomData<fn() -> D>,
}

impl<R: AsyncRead + Unpin, D: Bounded> FrameReader<R, D> {
    /// Frames of `io`, under `limits`.
    pub fn new(io: R, limits: Limits) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            limits,
            _type: PhantomData,
        }
    }

    /// The next frame; `None` when the peer closed the connection between two frames.
    ///
    /// # Errors
    ///
    /// [`FrameError`]: the connection failed or ended inside a frame, or a frame is larger
    /// than [`Limits::max_frame_bytes`] or does not decode.
    pub async fn next(&mut self) -> Result<Option<D>, FrameError> {
        loop {
            let want = match self.complete()? {
                Ok(len) => {
                    let frame = self
                        .buf
                        .get(PREFIX_BYTES..PREFIX_BYTES + len)
                        .unwrap_or(&[]);
                    let decoded = entente_wire::decode::<D>(frame, &self.limits);
                    self.buf.advance(PREFIX_BYTES + len);
                    // Nothing more buffered: the buffer is given back, so that an idle
                    // session holds none (the allocator makes a new one cheaply when the
                    // next frame comes).
                    if self.buf.is_empty() {
                        self.buf = BytesMut::new();
                    }
                    return Ok(Some(decoded?));
                }
                Err(want) => want,
            };
            let read = if self.buf.capacity() == 0 {
                // No buffer: wait for the first bytes without holding one (the array lives
                // only while the read is polled, not in this future).
                let (io, buf) = (&mut self.io, &mut self.buf);
                std::future::poll_fn(|cx| {
                    let mut first = [0u8; READ_MIN];
                    let mut read = ReadBuf::new(&mut first);
                    std::task::ready!(std::pin::Pin::new(&mut *io).poll_read(cx, &mut read))?;
                    let got = read.filled();
                    buf.reserve(want.clamp(READ_MIN, READ_STEP).max(got.len()));
                    buf.extend_from_slice(got);
                    std::task::Poll::Ready(Ok::<_, std::io::Error>(got.len()))
                })
                .await?
            } else {
                self.buf.reserve(want.clamp(READ_MIN, READ_STEP));
                self.io.read_buf(&mut self.buf).await?
            };
            if read == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
        }
    }

    /// `Ok(len)` when a whole frame of `len` bytes is buffered, `Err(more)` with how many more
    /// bytes it takes otherwise.
    fn complete(&self) -> Result<Result<usize, usize>, FrameError> {
        let Some(prefix) = self.buf.first_chunk::<PREFIX_BYTES>() else {
            return Ok(Err(PREFIX_BYTES - self.buf.len()));
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        let max = self.limits.max_frame_bytes;
        if len > max {
            return Err(FrameError::TooLarge { len, max });
        }
        let have = self.buf.len() - PREFIX_BYTES;
        Ok(if have >= len {
            Ok(len)
        } else {
            Err(len - have)
        })
    }
}

/// A buffer frames are encoded into.
///
/// `Vec<u8>` takes protobuf's varints several times faster than `BytesMut`, through which each
/// varint byte is an out-of-line copy (~190 against ~55 ns per envelope of a batch): a writer
/// that needs no `Bytes` of its frames encodes into a `Vec`.
pub trait FrameBuf: BufMut {
    /// Makes room for `additional` more bytes.
    fn reserve_for(&mut self, additional: usize);
}

impl FrameBuf for BytesMut {
    fn reserve_for(&mut self, additional: usize) {
        self.reserve(additional);
    }
}

impl FrameBuf for Vec<u8> {
    fn reserve_for(&mut self, additional: usize) {
        self.reserve(additional);
    }
}

/// Appends `frame` to `dst` with its length prefix.
pub fn encode_frame(frame: &impl Message, dst: &mut impl FrameBuf) {
    let len = frame.encoded_len();
    dst.reserve_for(PREFIX_BYTES + len);
    dst.put_u32(frame_len(len));
    // The buffer was reserved for it: encoding cannot run out of room.
    let _ = frame.encode(dst);
}

/// A length that fits the prefix (callers bound frames far below `u32::MAX`).
fn frame_len(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Appends an outbound frame with its length prefix to `dst`, or, for a `Deliver` whose body
/// is large, its head to `dst` and then `dst` and the body to `parts`; `Err` with the status
/// to end the session with if it is larger than `max` bytes. Returns the frame's length with
/// its prefix.
fn encode_outbound(
    frame: Outbound,
    max: usize,
    dst: &mut BytesMut,
    parts: &mut VecDeque<Bytes>,
) -> Result<usize, Status> {
    let len = match &frame {
        Outbound::Frame(frame) => frame.encoded_len(),
        Outbound::Deliver {
            subscription_id,
            body,
            ..
        } => deliver_len(*subscription_id, body.len()),
    };
    if len > max {
        return Err(Status::out_of_range(format!(
            "a frame of {len} bytes exceeds the limit of {max}"
        )));
    }
    match frame {
        Outbound::Frame(frame) => encode_frame(&frame, dst),
        Outbound::Deliver {
            subscription_id,
            body,
            ..
        } if body.len() >= BODY_APART => {
            dst.put_u32(frame_len(len));
            encode_deliver_head(subscription_id, body.len(), dst);
            parts.push_back(dst.split().freeze());
            parts.push_back(body);
        }
        Outbound::Deliver {
            subscription_id,
            body,
            ..
        } => {
            dst.reserve(PREFIX_BYTES + len);
            dst.put_u32(frame_len(len));
            encode_deliver(subscription_id, &body, dst);
        }
    }
    Ok(PREFIX_BYTES + len)
}

/// Writes `parts` in order, with vectored writes (a TLS stream encrypts each large part from
/// where it is); they are empty once it returns `Ok`.
async fn write_parts<W: AsyncWrite + Unpin>(
    io: &mut W,
    parts: &mut VecDeque<Bytes>,
) -> std::io::Result<()> {
    while !parts.is_empty() {
        // The slices live on the stack of each poll, not in this future: the connection's
        // task holds the future's state for as long as the connection lives, idle or not.
        let mut n = std::future::poll_fn(|cx| {
            let mut slices = [IoSlice::new(&[]); WRITE_PARTS];
            for (slice, part) in slices.iter_mut().zip(parts.iter()) {
                *slice = IoSlice::new(part);
            }
            let count = parts.len().min(WRITE_PARTS);
            std::pin::Pin::new(&mut *io)
                .poll_write_vectored(cx, slices.get(..count).unwrap_or_default())
        })
        .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let Some(front) = parts.front_mut() else {
                break;
            };
            if n >= front.len() {
                n -= front.len();
                parts.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
        while parts.front().is_some_and(Bytes::is_empty) {
            parts.pop_front();
        }
    }
    Ok(())
}

/// The last frame of a session that ends with `status`.
fn session_end(status: &Status) -> ServerFrame {
    let message = crate::session::bounded(status.message().to_owned());
    ServerFrame {
        kind: Some(server_frame::Kind::SessionEnd(entente_wire::SessionEnd {
            // A gRPC code is a small non-negative number.
            code: u32::try_from(i32::from(status.code())).unwrap_or(2),
            message,
        })),
    }
}

/// Refuses a framed session connection: its `SessionEnd` frame says why, then the connection
/// is closed.
pub(crate) async fn refuse<W: AsyncWrite + Unpin>(mut io: W, status: &Status) {
    let mut buf = BytesMut::new();
    encode_frame(&session_end(status), &mut buf);
    if io.write_all(&buf).await.is_ok() {
        let _ = io.shutdown().await;
    }
}

/// A framed session's inbound frames, as the session reads them: they end when the peer
/// closes the connection (`CANCELLED`, the session is over) or when the connection's writer
/// is gone.
#[derive(Debug)]
pub(crate) struct Inbound<R> {
    frames: FrameReader<R, ClientFrame>,
    /// Resolves when the writer has stopped (the connection is over).
    writer: oneshot::Receiver<()>,
    over: bool,
}

impl<R> Inbound<R> {
    pub(crate) fn new(frames: FrameReader<R, ClientFrame>, writer: oneshot::Receiver<()>) -> Self {
        Self {
            frames,
            writer,
            over: false,
        }
    }
}

impl<R: AsyncRead + Unpin + Send> crate::session::Inbound for Inbound<R> {
    async fn message(&mut self) -> Result<Option<ClientFrame>, Status> {
        if self.over {
            return Err(Status::cancelled("the connection is closed"));
        }
        let read = tokio::select! {
            read = self.frames.next() => read,
            _ = &mut self.writer => Ok(None),
        };
        match read {
            Ok(Some(frame)) => Ok(Some(frame)),
            // A framed client ends its session by closing the connection: nothing more goes
            // to it either.
            Ok(None) => {
                self.over = true;
                Err(Status::cancelled("the connection is closed"))
            }
            Err(error) => {
                self.over = true;
                Err(error.status())
            }
        }
    }
}

/// Writes the empty frame that accepts the session, then the session's outbound frames to
/// `io` until they end, then its [`SessionEnd`] frame if it ended with a status, then closes
/// the TLS connection. Frames waiting together go out
/// in one write; the write buffer is given back whenever nothing waits. Dropping `writer`
/// (on return) tells the session's [`Inbound`] that the connection is over.
///
/// [`SessionEnd`]: entente_wire::SessionEnd
pub(crate) async fn write_session<W: AsyncWrite + Unpin>(
    mut io: W,
    mut frames: crate::server::OutboundStream,
    limits: Limits,
    writer: oneshot::Sender<()>,
) {
    let max = limits.max_frame_bytes;
    // The session is accepted: a client waiting to know (the SDK does, so that a refusal is
    // the connect's error) knows.
    if io.write_all(&[0; PREFIX_BYTES]).await.is_err() || io.flush().await.is_err() {
        return;
    }
    // Small frames and the heads of large deliveries are gathered in `buf`; what is ready to
    // write, in order, is in `parts`.
    let mut buf = BytesMut::new();
    let mut parts = VecDeque::new();
    let mut over = false;
    while !over {
        let mut next = match frames.next().now_or_never() {
            Some(next) => next,
            None => {
                // Idle: hold no buffer while waiting.
                buf = BytesMut::new();
                parts = VecDeque::new();
                frames.next().await
            }
        };
        let mut gathered = 0;
        loop {
            let ended = match next {
                None => {
                    over = true;
                    None
                }
                Some(Ok(frame)) => match encode_outbound(frame, max, &mut buf, &mut parts) {
                    Ok(len) => {
                        gathered += len;
                        None
                    }
                    Err(status) => Some(status),
                },
                Some(Err(status)) => Some(status),
            };
            if let Some(status) = ended {
                encode_frame(&session_end(&status), &mut buf);
                over = true;
            }
            if over || gathered >= WRITE_GATHER {
                break;
            }
            match frames.next().now_or_never() {
                Some(more) => next = more,
                None => break,
            }
        }
        if !buf.is_empty() {
            parts.push_back(buf.split().freeze());
        }
        if write_parts(&mut io, &mut parts).await.is_err() || io.flush().await.is_err() {
            return;
        }
    }
    let _ = io.shutdown().await;
    drop(writer);
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use entente_wire::{Ack, Subscribe, client_frame};
    use proptest::strategy::Strategy as _;

    use super::*;

    fn subscribe(id: u64) -> ClientFrame {
        ClientFrame {
            kind: Some(client_frame::Kind::Subscribe(Subscribe {
                subscription_id: id,
                pattern: "a.b".into(),
                durable: String::new(),
            })),
        }
    }

    fn reader(
        bytes: Vec<u8>,
        limits: Limits,
    ) -> FrameReader<std::io::Cursor<Vec<u8>>, ClientFrame> {
        FrameReader::new(std::io::Cursor::new(bytes), limits)
    }

    #[tokio::test]
    async fn frames_round_trip_and_end_at_a_clean_close() {
        let mut bytes = BytesMut::new();
        for id in 1..=3 {
            encode_frame(&subscribe(id), &mut bytes);
        }
        let mut frames = reader(bytes.to_vec(), Limits::default());
        for id in 1..=3 {
            assert_eq!(frames.next().await.unwrap(), Some(subscribe(id)));
        }
        assert!(frames.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_large_frame_arriving_in_pieces_is_read_whole() {
        let big = ClientFrame {
            kind: Some(client_frame::Kind::Publish(entente_wire::Publish {
                request_id: 9,
                purpose: "p".repeat(1000),
                ..entente_wire::Publish::default()
            })),
        };
        let mut bytes = BytesMut::new();
        encode_frame(&big, &mut bytes);
        encode_frame(&subscribe(1), &mut bytes);
        // A pipe of 100 bytes: every read gets a piece.
        let (mut client, server) = tokio::io::duplex(100);
        let writer = tokio::spawn(async move {
            client.write_all(&bytes).await.unwrap();
        });
        let mut frames = FrameReader::<_, ClientFrame>::new(server, Limits::default());
        assert_eq!(frames.next().await.unwrap(), Some(big));
        assert_eq!(frames.next().await.unwrap(), Some(subscribe(1)));
        writer.await.unwrap();
        assert!(frames.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_reader_between_frames_holds_no_buffer() {
        let (mut client, server) = tokio::io::duplex(4096);
        let mut frames = FrameReader::<_, ClientFrame>::new(server, Limits::default());
        for id in 1..=3 {
            let mut bytes = BytesMut::new();
            encode_frame(&subscribe(id), &mut bytes);
            // One frame and the first bytes of the next in one write, then the rest.
            let split = if id == 2 { 3 } else { bytes.len() };
            client.write_all(&bytes[..split]).await.unwrap();
            let rest = bytes[split..].to_vec();
            let writing = async {
                tokio::task::yield_now().await;
                client.write_all(&rest).await.unwrap();
            };
            let (read, ()) = tokio::join!(frames.next(), writing);
            assert_eq!(read.unwrap(), Some(subscribe(id)));
            assert_eq!(frames.buf.capacity(), 0, "frame {id}");
        }
        drop(client);
        assert!(frames.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_is_refused_before_it_is_read() {
        let limits = Limits {
            max_frame_bytes: 64,
            ..Limits::default()
        };
        let mut bytes = 65u32.to_be_bytes().to_vec();
        bytes.extend([0u8; 8]);
        let error = reader(bytes, limits).next().await.unwrap_err();
        assert!(matches!(error, FrameError::TooLarge { len: 65, max: 64 }));
        assert_eq!(error.status().code(), tonic::Code::OutOfRange);
        // The largest allowed length is read.
        let mut bytes = BytesMut::new();
        encode_frame(&subscribe(1), &mut bytes);
        let len = bytes.len() - PREFIX_BYTES;
        let limits = Limits {
            max_frame_bytes: len,
            ..Limits::default()
        };
        assert!(
            reader(bytes.to_vec(), limits)
                .next()
                .await
                .unwrap()
                .is_some()
        );
    }

    #[tokio::test]
    async fn truncated_and_malformed_frames_are_errors() {
        let mut bytes = BytesMut::new();
        encode_frame(&subscribe(1), &mut bytes);
        for cut in [1, PREFIX_BYTES, bytes.len() - 1] {
            let error = reader(bytes[..cut].to_vec(), Limits::default())
                .next()
                .await
                .unwrap_err();
            assert!(matches!(error, FrameError::Truncated), "{cut}: {error}");
            assert_eq!(error.status().code(), tonic::Code::InvalidArgument);
        }
        let mut garbage = 3u32.to_be_bytes().to_vec();
        garbage.extend([0xff, 0xff, 0xff]);
        let error = reader(garbage, Limits::default()).next().await.unwrap_err();
        assert!(matches!(error, FrameError::Malformed(_)), "{error}");
        assert_eq!(error.status().code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn the_writer_gathers_frames_and_ends_with_the_status() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let ack = |id| {
            Outbound::Frame(ServerFrame {
                kind: Some(server_frame::Kind::Ack(Ack {
                    request_id: id,
                    ..Ack::default()
                })),
            })
        };
        // A body this large is written from where it is, apart from its frame's head.
        let batch = entente_wire::SignedBatch {
            channel: "a.b".into(),
            envelopes: vec![entente_wire::Envelope {
                ciphertext: vec![7; 2 * BODY_APART],
                ..entente_wire::Envelope::default()
            }],
            ..entente_wire::SignedBatch::default()
        };
        let mut large = Vec::new();
        prost::encoding::message::encode(3, &batch, &mut large);
        assert!(large.len() >= BODY_APART);
        let frames: Vec<Result<Outbound, Status>> = vec![
            Ok(ack(1)),
            Ok(Outbound::deliver(7, bytes::Bytes::from_static(&[]))),
            Ok(Outbound::deliver(8, large.into())),
            Ok(ack(2)),
            Err(Status::permission_denied("credential revoked")),
        ];
        let (tx, mut gone) = oneshot::channel();
        write_session(
            server,
            Box::pin(futures_util::stream::iter(frames)),
            Limits::default(),
            tx,
        )
        .await;
        assert!(gone.try_recv().is_err(), "the writer's end is signalled");
        let mut read = FrameReader::<_, ServerFrame>::new(client, Limits::default());
        // The empty frame that accepts the session comes first.
        assert_eq!(read.next().await.unwrap(), Some(ServerFrame::default()));
        assert_eq!(read.next().await.unwrap(), Some(ack(1).into_frame()));
        let Some(server_frame::Kind::Deliver(deliver)) = read.next().await.unwrap().unwrap().kind
        else {
            panic!("a delivery")
        };
        assert_eq!(deliver.subscription_id, 7);
        let Some(server_frame::Kind::Deliver(deliver)) = read.next().await.unwrap().unwrap().kind
        else {
            panic!("a delivery")
        };
        assert_eq!((deliver.subscription_id, deliver.batches), (8, vec![batch]));
        assert_eq!(read.next().await.unwrap(), Some(ack(2).into_frame()));
        let Some(server_frame::Kind::SessionEnd(end)) = read.next().await.unwrap().unwrap().kind
        else {
            panic!("the session's end")
        };
        assert_eq!(end.code, 7);
        assert_eq!(end.message, "credential revoked");
        assert!(
            read.next().await.unwrap().is_none(),
            "then the connection closes"
        );
    }

    impl Outbound {
        fn into_frame(self) -> ServerFrame {
            match self {
                Outbound::Frame(frame) => frame,
                Outbound::Deliver { .. } => panic!("a frame"),
            }
        }
    }

    #[test]
    fn a_deliver_frame_s_length_is_exact() {
        for (id, body) in [(0u64, 0usize), (7, 10), (u64::MAX, 200), (1 << 20, 70_000)] {
            let mut buf = BytesMut::new();
            encode_deliver(id, &vec![0u8; body], &mut buf);
            assert_eq!(buf.len(), deliver_len(id, body), "{id} {body}");
        }
    }

    /// Reads the bytes it holds in the pieces they were cut into, one piece (or what fits)
    /// per read, never pending; an empty read once all are read.
    struct Pieces(VecDeque<Vec<u8>>);

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if let Some(front) = self.0.front_mut() {
                let n = front.len().min(buf.remaining());
                buf.put_slice(&front[..n]);
                front.drain(..n);
                if front.is_empty() {
                    self.0.pop_front();
                }
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// What a stream of frames is made of in the property below.
    #[derive(Debug, Clone)]
    enum Item {
        /// A whole frame.
        Frame(u64),
        /// Any bytes.
        Raw(Vec<u8>),
        /// A length prefix alone: small, beyond a read step, or any.
        Prefix(u32),
    }

    /// How reading `bytes` under `max_frame_bytes` ends.
    #[derive(Debug, PartialEq, Eq)]
    enum End {
        Clean,
        TooLarge,
        Truncated,
        Malformed,
    }

    /// The frames a reader of `bytes` must return, and how it must end: the framing of
    /// PROTOCOL.md §9.1 over the whole input at once.
    fn model(bytes: &[u8], limits: &Limits) -> (Vec<ClientFrame>, End) {
        let mut frames = Vec::new();
        let mut rest = bytes;
        loop {
            if rest.is_empty() {
                return (frames, End::Clean);
            }
            let Some((prefix, body)) = rest.split_first_chunk::<PREFIX_BYTES>() else {
                return (frames, End::Truncated);
            };
            let len = u32::from_be_bytes(*prefix) as usize;
            if len > limits.max_frame_bytes {
                return (frames, End::TooLarge);
            }
            let Some((frame, after)) = body.split_at_checked(len) else {
                return (frames, End::Truncated);
            };
            match entente_wire::decode::<ClientFrame>(frame, limits) {
                Ok(frame) => frames.push(frame),
                Err(_) => return (frames, End::Malformed),
            }
            rest = after;
        }
    }

    proptest::proptest! {
        /// Any bytes, cut into any pieces, read as the framing says they read: the same
        /// frames and the same end, whatever the pieces; no buffer kept between frames, and
        /// nothing reserved for what a prefix announces beyond one read step (the buffer
        /// stays within twice what arrived and one read step, its own growth included).
        #[test]
        fn any_bytes_in_any_pieces_read_as_the_framing_says(
            items in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::prelude::any::<u64>().prop_map(Item::Frame),
                    proptest::collection::vec(proptest::prelude::any::<u8>(), 0..24)
                        .prop_map(Item::Raw),
                    proptest::prop_oneof![
                        0u32..64,
                        (READ_STEP as u32)..(8 << 20),
                        proptest::prelude::any::<u32>(),
                    ]
                    .prop_map(Item::Prefix),
                ],
                0..12,
            ),
            cuts in proptest::collection::vec(1usize..48, 0..32),
            small in proptest::option::of(0usize..96),
        ) {
            let limits = Limits {
                max_frame_bytes: small.unwrap_or(Limits::default().max_frame_bytes),
                ..Limits::default()
            };
            let mut bytes = Vec::new();
            for item in items {
                match item {
                    Item::Frame(id) => encode_frame(&subscribe(id), &mut bytes),
                    Item::Raw(raw) => bytes.extend(raw),
                    Item::Prefix(len) => bytes.extend(len.to_be_bytes()),
                }
            }
            let mut pieces = VecDeque::new();
            let mut rest = &bytes[..];
            for cut in cuts {
                if rest.is_empty() {
                    break;
                }
                let (piece, after) = rest.split_at(cut.min(rest.len()));
                pieces.push_back(piece.to_vec());
                rest = after;
            }
            if !rest.is_empty() {
                pieces.push_back(rest.to_vec());
            }

            let (expected, end) = model(&bytes, &limits);
            let mut frames = FrameReader::<_, ClientFrame>::new(Pieces(pieces), limits);
            let mut read = Vec::new();
            let bound = 2 * (bytes.len() + READ_STEP);
            let ended = loop {
                let next = frames.next().now_or_never().expect("never pending");
                proptest::prop_assert!(frames.buf.capacity() <= bound, "{}", frames.buf.capacity());
                match next {
                    Ok(Some(frame)) => {
                        if frames.buf.is_empty() {
                            proptest::prop_assert_eq!(frames.buf.capacity(), 0);
                        }
                        read.push(frame);
                    }
                    Ok(None) => break End::Clean,
                    Err(FrameError::TooLarge { .. }) => break End::TooLarge,
                    Err(FrameError::Truncated) => break End::Truncated,
                    Err(FrameError::Malformed(_)) => break End::Malformed,
                    Err(FrameError::Io(e)) => proptest::prop_assert!(false, "{e}"),
                }
            };
            proptest::prop_assert_eq!(read, expected);
            proptest::prop_assert_eq!(ended, end);
        }
    }
}
