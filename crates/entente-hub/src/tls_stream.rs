//! The hub's side of TLS on a TCP connection, through rustls' unbuffered API, so that the
//! buffers are the hub's own and an idle connection holds none.
//!
//! rustls' buffered connection (what `tokio-rustls` drives) sizes its receive buffer to at
//! least 4 KiB before every read and keeps it for as long as the connection lives: the largest
//! single item of an idle framed session (docs/BENCHMARKS.md, Scale). Here:
//! - the TLS bytes received wait in a buffer made when the socket has something to read, and
//!   freed once everything in it was processed and the socket has nothing more;
//! - decrypted bytes the reader did not take yet wait in a buffer freed once taken;
//! - TLS bytes to send wait in a buffer freed once they are on the wire.
//!
//! [`accept`] reads the ClientHello first with rustls' [`Acceptor`] to choose the
//! configuration by server name (as `tokio-rustls`' `LazyConfigAcceptor` did), then gives the
//! same bytes to an [`UnbufferedServerConnection`] made with it.
//!
//! Reads and writes take turns (the hub splits the stream with `tokio::io::split`). Only reads
//! take bytes from the socket. An alert rustls sends while reading goes at once if the socket
//! takes it, and otherwise before the next write's data; a `KeyUpdate`'s reply, which rustls
//! holds until something is sent, goes with the next write (RFC 8446 sets no time for it).
//! A read that finds the socket empty has processed every whole record received, so a write
//! never leaves decrypted data behind for a reader that is waiting on the socket.
//!
//! A vectored write encrypts each part of at least [`APART`] bytes from where it is (a
//! delivery's body, shared by the sessions it goes to) and gathers the shorter ones between
//! them into one record, so that a large frame is not copied behind its head first.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::ServerConfig;
use rustls::server::{Acceptor, ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;

/// Room made for each read from the socket: a TLS record of the largest size (16 KiB of
/// plaintext, 256 bytes of expansion, the 5-byte header).
const READ_ROOM: usize = 16 * 1024 + 256 + 5;

/// Most TLS bytes held unprocessed: a handshake message of rustls' largest (64 KiB) spread
/// over records, and one more record. A peer that sends more without completing a message is
/// refused.
const MAX_INCOMING: usize = 64 * 1024 + READ_ROOM;

/// Most plaintext encrypted by one write.
const MAX_WRITE: usize = 64 * 1024;

/// Unsent TLS bytes beyond which a write first waits for the socket.
const MAX_UNSENT: usize = 64 * 1024;

/// A part of a vectored write at least this long is encrypted from where it is; shorter
/// neighbours are gathered into one record.
pub(crate) const APART: usize = 4 * 1024;

/// A server-side TLS connection over TCP whose buffers live only while they hold bytes.
pub(crate) struct TlsStream {
    io: TcpStream,
    conn: UnbufferedServerConnection,
    /// TLS bytes received and not yet processed: `incoming[start..end]`.
    incoming: Vec<u8>,
    start: usize,
    end: usize,
    /// Decrypted bytes not yet read: `plaintext[taken..]`.
    plaintext: Vec<u8>,
    taken: usize,
    /// TLS bytes to send: `outgoing[sent..]`.
    outgoing: Vec<u8>,
    sent: usize,
    /// The peer's `close_notify` was processed: reads end once `plaintext` is taken.
    peer_closed: bool,
    /// The socket's read side ended.
    eof: bool,
    /// Our `close_notify` is queued: no more writes.
    closing: bool,
    /// The error rustls met; every later read and write returns it.
    failed: Option<rustls::Error>,
}

/// A handshake that did not complete: why, and the socket if the connection should be closed
/// gracefully so that the client reads the alert sent on it.
pub(crate) struct Refused {
    pub(crate) error: io::Error,
    pub(crate) tcp: Option<TcpStream>,
}

/// What a [`TlsStream::process`] call is to write once application data may be sent.
#[derive(Clone, Copy)]
enum Write<'a> {
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
}

/// Where [`TlsStream::process`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Processed {
    /// rustls needs more bytes from the peer to finish the handshake.
    Handshaking,
    /// Every whole record received was processed; application data may be sent, and so many
    /// bytes of the data given were encrypted.
    Traffic(usize),
    /// Both sides sent `close_notify`.
    Closed,
}

/// Completes the TLS handshake on `tcp`; `select` chooses the configuration (and what the
/// caller calls the listener) from the ClientHello's server name.
pub(crate) async fn accept<L>(
    mut tcp: TcpStream,
    select: impl FnOnce(Option<&str>) -> (L, Arc<ServerConfig>),
) -> Result<(L, TlsStream), Refused> {
    // The ClientHello, read by rustls' `Acceptor` from copies of the bytes kept here.
    let mut incoming = Vec::new();
    let mut end = 0;
    let mut acceptor = Acceptor::default();
    let mut fed = 0;
    let accepted = loop {
        while fed < end {
            let mut rest = incoming.get(fed..end).unwrap_or_default();
            match acceptor.read_tls(&mut rest) {
                Ok(0) => break,
                Ok(n) => fed += n,
                Err(error) => return Err(Refused::with(error, tcp)),
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => break accepted,
            Ok(None) => {}
            Err((error, mut alert)) => {
                let mut bytes = Vec::new();
                let _ = alert.write_all(&mut bytes);
                let _ = tcp.write_all(&bytes).await;
                return Err(Refused::with(invalid(error), tcp));
            }
        }
        if end >= MAX_INCOMING {
            return Err(Refused::with(too_large(), tcp));
        }
        incoming.resize(end + READ_ROOM, 0);
        let read = {
            use tokio::io::AsyncReadExt as _;
            tcp.read(incoming.get_mut(end..).unwrap_or_default()).await
        };
        match read {
            Ok(0) => return Err(Refused::gone(closed_early())),
            Ok(n) => end += n,
            Err(error) => return Err(Refused::gone(error)),
        }
    };
    let (listener, config) = select(accepted.client_hello().server_name());
    drop(accepted);
    let conn = match UnbufferedServerConnection::new(config) {
        Ok(conn) => conn,
        Err(error) => return Err(Refused::with(invalid(error), tcp)),
    };
    let mut stream = TlsStream {
        io: tcp,
        conn,
        incoming,
        start: 0,
        end,
        plaintext: Vec::new(),
        taken: 0,
        outgoing: Vec::new(),
        sent: 0,
        peer_closed: false,
        eof: false,
        closing: false,
        failed: None,
    };
    loop {
        let processed = stream.process(Write::Nothing, None);
        // The server's flight (or the alert that refuses the handshake) first.
        let sent = std::future::poll_fn(|cx| stream.poll_send(cx)).await;
        match processed {
            Err(error) => return Err(Refused::with(invalid(error), stream.io)),
            Ok(Processed::Closed) => return Err(Refused::gone(closed_early())),
            Ok(Processed::Traffic(_)) if !stream.conn.is_handshaking() => break,
            Ok(Processed::Traffic(_) | Processed::Handshaking) => {}
        }
        if let Err(error) = sent {
            return Err(Refused::gone(error));
        }
        if stream.peer_closed || stream.eof {
            return Err(Refused::gone(closed_early()));
        }
        if let Err(error) = std::future::poll_fn(|cx| stream.poll_fill(cx)).await {
            return Err(Refused::gone(error));
        }
    }
    Ok((listener, stream))
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("received", &(self.end - self.start))
            .field("stashed", &(self.plaintext.len() - self.taken))
            .field("unsent", &(self.outgoing.len() - self.sent))
            .field("peer_closed", &self.peer_closed)
            .field("closing", &self.closing)
            .finish_non_exhaustive()
    }
}

impl Refused {
    fn with(error: io::Error, tcp: TcpStream) -> Self {
        Self {
            error,
            tcp: Some(tcp),
        }
    }

    fn gone(error: io::Error) -> Self {
        Self { error, tcp: None }
    }
}

impl TlsStream {
    /// The TCP connection.
    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.io
    }

    /// The certificate chain the client presented (or, on a resumed session, the chain of the
    /// session its ticket came from).
    pub(crate) fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// The application protocol agreed by ALPN.
    pub(crate) fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// Bytes of buffers held now (received, decrypted and unsent), for tests.
    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.incoming.capacity() + self.plaintext.capacity() + self.outgoing.capacity()
    }

    /// Runs rustls over the records received until it needs more from the peer: decrypted
    /// data goes to `sink` while the stash is empty and `sink` has room, then to the stash;
    /// TLS messages to send go to `outgoing`; once application data may be sent, `write` is
    /// encrypted into `outgoing`.
    fn process(
        &mut self,
        write: Write<'_>,
        mut sink: Option<&mut ReadBuf<'_>>,
    ) -> Result<Processed, rustls::Error> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        loop {
            let status = self.conn.process_tls_records(
                self.incoming
                    .get_mut(self.start..self.end)
                    .unwrap_or_default(),
            );
            let mut discard = status.discard;
            let mut failure = None;
            let mut outcome = None;
            match status.state {
                Err(error) => failure = Some(error),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while let Some(record) = traffic.next_record() {
                        let record = match record {
                            Ok(record) => record,
                            Err(error) => {
                                failure = Some(error);
                                break;
                            }
                        };
                        discard = discard.saturating_add(record.discard);
                        let mut payload = record.payload;
                        if self.taken == self.plaintext.len()
                            && let Some(sink) = sink.as_deref_mut()
                        {
                            let n = sink.remaining().min(payload.len());
                            let (now, later) = payload.split_at(n);
                            sink.put_slice(now);
                            payload = later;
                        }
                        self.plaintext.extend_from_slice(payload);
                    }
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_tls(&mut encode, &mut self.outgoing);
                }
                // What was encoded is in `outgoing`, ahead of anything encrypted later: the
                // callers send it in order.
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                Ok(ConnectionState::BlockedHandshake) => outcome = Some(Processed::Handshaking),
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    let at = self.outgoing.len();
                    let written = match write {
                        Write::Nothing => Ok(0),
                        Write::Data(data) => {
                            let data = data.get(..MAX_WRITE).unwrap_or(data);
                            // 16 KiB records, 22 bytes of each for its header, type and tag
                            // (TLS 1.3); rustls says if it needs more.
                            let mut room = data.len() + (data.len() / (16 * 1024) + 1) * 32;
                            loop {
                                self.outgoing.resize(at + room, 0);
                                let space = self.outgoing.get_mut(at..).unwrap_or_default();
                                match traffic.encrypt(data, space) {
                                    Ok(n) => break Ok((n, data.len())),
                                    Err(EncryptError::InsufficientSize(
                                        InsufficientSizeError { required_size },
                                    )) if required_size > room => room = required_size,
                                    Err(_) => break Err(rustls::Error::EncryptError),
                                }
                            }
                            .map(|(n, taken)| {
                                self.outgoing.truncate(at + n);
                                taken
                            })
                        }
                        Write::CloseNotify => {
                            let mut space = [0u8; 64];
                            match traffic.queue_close_notify(&mut space) {
                                Ok(n) => {
                                    self.outgoing
                                        .extend_from_slice(space.get(..n).unwrap_or_default());
                                    Ok(0)
                                }
                                Err(_) => Err(rustls::Error::EncryptError),
                            }
                        }
                    };
                    match written {
                        Ok(n) => outcome = Some(Processed::Traffic(n)),
                        Err(error) => {
                            self.outgoing.truncate(at);
                            failure = Some(error);
                        }
                    }
                }
                Ok(ConnectionState::PeerClosed) => self.peer_closed = true,
                Ok(ConnectionState::Closed) => {
                    self.peer_closed = true;
                    outcome = Some(Processed::Closed);
                }
                // Early data is not accepted (the configurations allow none).
                Ok(_) => {
                    failure = Some(rustls::Error::General(
                        "unexpected TLS connection state".into(),
                    ));
                }
            }
            self.discard(discard);
            if let Some(error) = failure {
                self.fail(error.clone());
                return Err(error);
            }
            if let Some(outcome) = outcome {
                return Ok(outcome);
            }
        }
    }

    /// Records `error` and encodes the alert rustls queued for it.
    fn fail(&mut self, error: rustls::Error) {
        self.failed = Some(error);
        loop {
            let status = self.conn.process_tls_records(
                self.incoming
                    .get_mut(self.start..self.end)
                    .unwrap_or_default(),
            );
            let discard = status.discard;
            let more = match status.state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_tls(&mut encode, &mut self.outgoing);
                    true
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    true
                }
                _ => false,
            };
            self.discard(discard);
            if !more {
                break;
            }
        }
    }

    fn discard(&mut self, n: usize) {
        self.start = self.start.saturating_add(n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads what the socket has into `incoming`; `eof` is set at its end. Frees `incoming`
    /// when it holds nothing and the socket has nothing either.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.io.poll_read_ready(cx)?.is_pending() {
                if self.start == self.end {
                    self.incoming = Vec::new();
                }
                return Poll::Pending;
            }
            if self.start > 0 {
                self.incoming.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end >= MAX_INCOMING {
                return Poll::Ready(Err(too_large()));
            }
            if self.incoming.len() < self.end + READ_ROOM {
                self.incoming.resize(self.end + READ_ROOM, 0);
            }
            match self
                .io
                .try_read(self.incoming.get_mut(self.end..).unwrap_or_default())
            {
                Ok(0) => {
                    self.eof = true;
                    return Poll::Ready(Ok(()));
                }
                Ok(n) => {
                    self.end += n;
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Sends `outgoing`, then frees it.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = self.outgoing.get(self.sent..).filter(|r| !r.is_empty()) {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.outgoing = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Sends what of `outgoing` the socket takes now, without waiting.
    fn send_now(&mut self) -> io::Result<()> {
        while let Some(rest) = self.outgoing.get(self.sent..).filter(|r| !r.is_empty()) {
            match self.io.try_write(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.outgoing = Vec::new();
        self.sent = 0;
        Ok(())
    }

    /// Copies stashed plaintext into `buf`; frees the stash once it is all taken.
    fn take_stash(&mut self, buf: &mut ReadBuf<'_>) {
        let rest = self.plaintext.get(self.taken..).unwrap_or_default();
        let n = buf.remaining().min(rest.len());
        buf.put_slice(rest.get(..n).unwrap_or_default());
        self.taken += n;
        if self.taken == self.plaintext.len() {
            self.plaintext = Vec::new();
            self.taken = 0;
        }
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.taken < this.plaintext.len() {
                this.take_stash(buf);
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            let processed = this.process(Write::Nothing, Some(&mut *buf));
            // A KeyUpdate's reply or an alert, if the socket takes it now; else it goes
            // before the next write's data.
            let sent = this.send_now();
            let processed = processed.map_err(invalid)?;
            sent?;
            if buf.filled().len() > before || this.taken < this.plaintext.len() {
                if this.taken < this.plaintext.len() && buf.remaining() > 0 {
                    this.take_stash(buf);
                }
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed || processed == Processed::Closed {
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection without sending TLS close_notify",
                )));
            }
            ready!(this.poll_fill(cx))?;
        }
    }
}

impl TlsStream {
    /// Whether a write may go on: the connection is not being closed, and what is unsent is
    /// below [`MAX_UNSENT`] (else it is sent first).
    fn poll_write_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.closing {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS connection is being closed",
            )));
        }
        if self.outgoing.len() - self.sent >= MAX_UNSENT {
            ready!(self.poll_send(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Encrypts what of `data` one write takes (at most [`MAX_WRITE`]) into `outgoing`, and
    /// says how much that was.
    fn encrypt(&mut self, data: &[u8]) -> io::Result<usize> {
        match self.process(Write::Data(data), None) {
            Ok(Processed::Traffic(n)) => Ok(n),
            Ok(Processed::Closed) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS connection is closed",
            )),
            Ok(Processed::Handshaking) => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the TLS handshake is not complete",
            )),
            Err(error) => {
                let _ = self.send_now();
                Err(invalid(error))
            }
        }
    }

    /// After `written` bytes were encrypted: sent now if the socket takes them, else by the
    /// next write or flush.
    fn written(&mut self, cx: &mut Context<'_>, written: usize) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Err(e)) = self.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(written))
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(this.poll_write_room(cx))?;
        let written = this.encrypt(buf)?;
        this.written(cx, written)
    }

    /// Encrypts the parts in order, up to [`MAX_WRITE`] bytes of them: a part of at least
    /// [`APART`] bytes from where it is, shorter neighbours gathered into one record (a frame's
    /// head and the small frames around it).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut parts = bufs
            .iter()
            .map(|b| &**b)
            .filter(|b| !b.is_empty())
            .peekable();
        if parts.peek().is_none() {
            return Poll::Ready(Ok(0));
        }
        ready!(this.poll_write_room(cx))?;
        let mut written = 0;
        let mut gathered = Vec::new();
        while let Some(part) = parts.next() {
            let room = MAX_WRITE - written;
            let part = part.get(..room).unwrap_or(part);
            let data = if part.len() >= APART
                || parts
                    .peek()
                    .is_none_or(|next| next.len() >= APART || part.len() + next.len() > room)
            {
                part
            } else {
                gathered.clear();
                gathered.extend_from_slice(part);
                while let Some(next) =
                    parts.next_if(|next| next.len() < APART && gathered.len() + next.len() <= room)
                {
                    gathered.extend_from_slice(next);
                }
                gathered.as_slice()
            };
            match this.encrypt(data) {
                Ok(n) => {
                    written += n;
                    if n < data.len() || written >= MAX_WRITE {
                        break;
                    }
                }
                // What was encrypted is written; the error comes again at the next write.
                Err(_) if written > 0 => break,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        this.written(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.closing = true;
            if this.failed.is_none() {
                let _ = this.process(Write::CloseNotify, None);
            }
        }
        ready!(this.poll_send(cx))?;
        match ready!(Pin::new(&mut this.io).poll_shutdown(cx)) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            result => Poll::Ready(result),
        }
    }
}

/// Appends the TLS message rustls has to send (a handshake message or an alert) to
/// `outgoing`, with the room rustls asks for; nothing if it cannot be encoded.
fn encode_tls(encode: &mut EncodeTlsData<'_, ServerConnectionData>, outgoing: &mut Vec<u8>) {
    let at = outgoing.len();
    let mut room = 512;
    loop {
        outgoing.resize(at + room, 0);
        let space = outgoing.get_mut(at..).unwrap_or_default();
        match encode.encode(space) {
            Ok(n) => {
                outgoing.truncate(at + n);
                return;
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size }))
                if required_size > room =>
            {
                room = required_size;
            }
            Err(_) => {
                outgoing.truncate(at);
                return;
            }
        }
    }
}

fn invalid(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

fn too_large() -> io::Error {
    invalid("TLS message too large")
}

fn closed_early() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the connection closed during the TLS handshake",
    )
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]

    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose,
    };
    use rustls::ClientConfig;
    use rustls::server::WebPkiClientVerifier;
    use rustls_pki_types::{PrivateKeyDer, ServerName};
    use tokio::io::AsyncReadExt as _;
    use tokio::net::TcpListener;

    use super::*;

    const ALPN: &[u8] = b"entente/1";

    struct Pki {
        mtls: Arc<ServerConfig>,
        enroll: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        anonymous: Arc<ClientConfig>,
        stranger: Arc<ClientConfig>,
    }

    type Issuer = CertifiedIssuer<'static, KeyPair>;

    fn ca() -> Issuer {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    fn leaf(ca: &Issuer, names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let names = names
            .iter()
            .map(|name| (*name).to_owned())
            .collect::<Vec<_>>();
        let params = CertificateParams::new(names).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, ca).unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
    }

    fn pki() -> Pki {
        let provider = crate::tls::provider();
        let (ca, other) = (ca(), ca());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let roots = Arc::new(roots);
        let server = |verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>| {
            let builder = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap();
            let builder = match verifier {
                Some(verifier) => builder.with_client_cert_verifier(verifier),
                None => builder.with_no_client_auth(),
            };
            let (chain, key) = leaf(&ca, &["hub.test", "enroll.test"]);
            let mut config = builder.with_single_cert(chain, key).unwrap();
            config.alpn_protocols = vec![ALPN.to_vec()];
            Arc::new(config)
        };
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .unwrap();
        let client = |issuer: Option<&Issuer>| {
            let builder = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots.clone());
            let mut config = match issuer {
                Some(issuer) => {
                    let (chain, key) = leaf(issuer, &["agent.test"]);
                    builder.with_client_auth_cert(chain, key).unwrap()
                }
                None => builder.with_no_client_auth(),
            };
            config.alpn_protocols = vec![ALPN.to_vec()];
            Arc::new(config)
        };
        Pki {
            mtls: server(Some(verifier)),
            enroll: server(None),
            client: client(Some(&ca)),
            anonymous: client(None),
            stranger: client(Some(&other)),
        }
    }

    /// Accepts one connection on `listener` with the configuration its server name selects.
    async fn serve(
        listener: &TcpListener,
        pki: &Pki,
    ) -> Result<(&'static str, TlsStream), Refused> {
        let (tcp, _) = listener.accept().await.unwrap();
        let (mtls, enroll) = (pki.mtls.clone(), pki.enroll.clone());
        accept(tcp, move |name| match name {
            Some("enroll.test") => ("enroll", enroll),
            _ => ("mtls", mtls),
        })
        .await
    }

    async fn connect(
        addr: std::net::SocketAddr,
        config: &Arc<ClientConfig>,
        name: &'static str,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        tokio_rustls::TlsConnector::from(config.clone())
            .connect(ServerName::try_from(name).unwrap(), tcp)
            .await
    }

    async fn pair(
        pki: &Pki,
        config: &Arc<ClientConfig>,
        name: &'static str,
    ) -> (
        (&'static str, TlsStream),
        tokio_rustls::client::TlsStream<TcpStream>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (served, client) = tokio::join!(serve(&listener, pki), connect(addr, config, name));
        let served = served.map_err(|refused| refused.error).unwrap();
        (served, client.unwrap())
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Whether a read finds nothing to read now.
    async fn read_is_pending(stream: &mut TlsStream) -> bool {
        std::future::poll_fn(|cx| {
            let mut byte = [0u8; 1];
            let mut buf = ReadBuf::new(&mut byte);
            Poll::Ready(Pin::new(&mut *stream).poll_read(cx, &mut buf).is_pending())
        })
        .await
    }

    #[tokio::test]
    async fn data_crosses_both_ways_in_records_of_every_size() {
        let pki = pki();
        let ((listener, mut server), mut client) = pair(&pki, &pki.client, "hub.test").await;
        assert_eq!(listener, "mtls");
        assert_eq!(server.alpn_protocol(), Some(ALPN));
        assert_eq!(server.peer_certificates().map(<[_]>::len), Some(1));

        let up = pattern(300 * 1024 + 17, 1);
        let down = pattern(200 * 1024 + 5, 7);
        let sending = async {
            for chunk in up.chunks(7 * 1024 + 3) {
                client.write_all(chunk).await.unwrap();
            }
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        };
        let serving = async {
            // Small reads: most of each record waits in the stash.
            let mut got = Vec::new();
            let mut buf = [0u8; 1000];
            loop {
                let n = server.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            for (i, chunk) in down.chunks(70 * 1024).enumerate() {
                if i % 2 == 0 {
                    server.write_all(chunk).await.unwrap();
                } else {
                    let (a, b) = chunk.split_at(9);
                    let slices = [io::IoSlice::new(a), io::IoSlice::new(b)];
                    let mut written = 0;
                    while written < chunk.len() {
                        let rest = &chunk[written..];
                        written += if written == 0 {
                            server.write_vectored(&slices).await.unwrap()
                        } else {
                            server.write(rest).await.unwrap()
                        };
                    }
                }
            }
            server.shutdown().await.unwrap();
            got
        };
        let (back, got) = tokio::join!(sending, serving);
        assert_eq!(got, up);
        assert_eq!(back, down);
    }

    #[tokio::test]
    async fn vectored_writes_of_small_and_large_parts_arrive_whole_and_in_order() {
        let pki = pki();
        let ((_, mut server), mut client) = pair(&pki, &pki.client, "hub.test").await;
        // Heads and small frames around large bodies, parts longer than one write takes, and
        // small parts that do not all fit what is left of a write.
        let sizes = [
            9, 5000, 3, 12, 70_000, 1, 2, 100_000, 4095, 4096, 7, 60_000, 4000, 4000, 30, 0, 65_536,
        ];
        let parts: Vec<Vec<u8>> = sizes
            .iter()
            .zip(0u8..)
            .map(|(len, seed)| pattern(*len, seed))
            .collect();
        let whole = parts.concat();
        let reading = async {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        };
        let writing = async {
            let (mut part, mut offset) = (0, 0);
            while part < parts.len() {
                let mut slices = vec![io::IoSlice::new(&parts[part][offset..])];
                slices.extend(parts[part + 1..].iter().map(|p| io::IoSlice::new(p)));
                let mut n = server.write_vectored(&slices).await.unwrap();
                assert!(
                    n > 0 && n <= MAX_WRITE,
                    "a write takes some and at most {MAX_WRITE}: {n}"
                );
                while n > 0 || parts.get(part).is_some_and(|p| p.len() == offset) {
                    let left = parts[part].len() - offset;
                    if n >= left {
                        n -= left;
                        part += 1;
                        offset = 0;
                    } else {
                        offset += n;
                        n = 0;
                    }
                }
            }
            server.shutdown().await.unwrap();
        };
        let (got, ()) = tokio::join!(reading, writing);
        assert_eq!(got.len(), whole.len());
        assert!(got == whole, "the bytes arrive in order");
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffer() {
        let pki = pki();
        let ((_, mut server), mut client) = pair(&pki, &pki.client, "hub.test").await;
        client.write_all(&pattern(40 * 1024, 3)).await.unwrap();
        client.flush().await.unwrap();
        let mut got = vec![0u8; 40 * 1024];
        server.read_exact(&mut got).await.unwrap();
        server.write_all(&pattern(50 * 1024, 4)).await.unwrap();
        server.flush().await.unwrap();
        let mut back = vec![0u8; 50 * 1024];
        client.read_exact(&mut back).await.unwrap();

        assert!(read_is_pending(&mut server).await);
        assert_eq!(server.buffered(), 0, "{server:?}");
        // And it still works.
        client.write_all(b"again").await.unwrap();
        client.flush().await.unwrap();
        let mut again = [0u8; 5];
        server.read_exact(&mut again).await.unwrap();
        assert_eq!(&again, b"again");
    }

    #[tokio::test]
    async fn a_key_update_from_the_client_is_answered_before_the_next_data() {
        let pki = pki();
        let ((_, mut server), mut client) = pair(&pki, &pki.client, "hub.test").await;
        for round in 0..3u8 {
            client.get_mut().1.refresh_traffic_keys().unwrap();
            client.write_all(&[round; 100]).await.unwrap();
            client.flush().await.unwrap();
            let mut got = [0u8; 100];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(got, [round; 100]);
            server.write_all(&[round + 10; 100]).await.unwrap();
            server.flush().await.unwrap();
            let mut back = [0u8; 100];
            client.read_exact(&mut back).await.unwrap();
            assert_eq!(back, [round + 10; 100]);
        }
    }

    #[tokio::test]
    async fn the_server_name_chooses_the_configuration() {
        let pki = pki();
        let ((listener, server), _client) = pair(&pki, &pki.anonymous, "enroll.test").await;
        assert_eq!(listener, "enroll");
        assert!(server.peer_certificates().is_none());
    }

    #[tokio::test]
    async fn a_certificate_of_another_ca_is_refused_with_an_alert_the_client_reads() {
        let pki = pki();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = async {
            // TLS 1.3: the client learns the verdict on its certificate at its first read.
            let mut client = connect(addr, &pki.stranger, "hub.test").await?;
            let mut buf = [0u8; 1];
            client.read(&mut buf).await
        };
        let (served, read) = tokio::join!(
            async {
                let refused = serve(&listener, &pki).await.err().unwrap();
                if let Some(mut tcp) = refused.tcp {
                    tcp.shutdown().await.unwrap();
                }
                refused.error
            },
            client
        );
        assert!(served.to_string().contains("certificate"), "{served}");
        let error = read.unwrap_err().to_string();
        assert!(error.contains("alert"), "{error}");
    }

    #[tokio::test]
    async fn reads_end_at_close_notify_and_fail_at_an_end_without_it() {
        let pki = pki();
        let ((_, mut server), mut client) = pair(&pki, &pki.client, "hub.test").await;
        client.write_all(b"bye").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");

        // A FIN without close_notify (what the client had not read stays unread: the
        // socket is shut down, not closed, so that no reset overtakes the FIN).
        let ((_, mut server), client) = pair(&pki, &pki.client, "hub.test").await;
        let (mut tcp, _) = client.into_inner();
        tcp.shutdown().await.unwrap();
        let error = server.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn writes_after_a_shutdown_fail_and_both_sides_end_cleanly() {
        let pki = pki();
        let ((_, mut server), mut client) = pair(&pki, &pki.client, "hub.test").await;
        server.write_all(b"last").await.unwrap();
        server.shutdown().await.unwrap();
        // Nothing goes out after close_notify, plain or vectored, and nothing is lost before.
        let error = server.write(b"more").await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
        let parts = [io::IoSlice::new(b"head"), io::IoSlice::new(&[7; 5000])];
        let error = server.write_vectored(&parts).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
        // Empty writes write nothing, even now.
        assert_eq!(server.write_vectored(&[]).await.unwrap(), 0);
        // A second shutdown is harmless.
        server.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last");

        // The client closes too: the server reads the client's last bytes, then a clean end.
        client.write_all(b"bye").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
        assert_eq!(server.read(&mut [0u8; 8]).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_client_hello_larger_than_the_bound_is_refused() {
        let pki = pki();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Handshake records of 16 KiB each, the first announcing a ClientHello of 16 MiB.
        let writer = tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            for i in 0..16 {
                let mut record = vec![0x16, 0x03, 0x01, 0x40, 0x00];
                let mut body = vec![0u8; 0x4000];
                if i == 0 {
                    body[..4].copy_from_slice(&[0x01, 0xff, 0xff, 0xff]);
                }
                record.extend_from_slice(&body);
                if tcp.write_all(&record).await.is_err() {
                    break;
                }
            }
            tcp
        });
        let refused = serve(&listener, &pki).await.err().unwrap();
        assert_eq!(refused.error.kind(), io::ErrorKind::InvalidData);
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn the_bytes_held_unprocessed_are_bounded() {
        let pki = pki();
        let ((_, mut server), mut client) = pair(&pki, &pki.client, "hub.test").await;
        // As if a peer had sent the most the hub holds without completing a message.
        server.incoming = vec![0; MAX_INCOMING];
        server.end = MAX_INCOMING;
        client.write_all(b"more").await.unwrap();
        client.flush().await.unwrap();
        let error = std::future::poll_fn(|cx| server.poll_fill(cx))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("too large"), "{error}");
    }

    #[tokio::test]
    async fn what_is_not_tls_is_refused() {
        let pki = pki();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for garbage in [
            &b"GET / HTTP/1.1\r\nHost: hub\r\n\r\n"[..],
            &[0x16, 0x03, 0x01, 0xff, 0xff, 0x01][..],
            &[0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00][..],
        ] {
            let client = async {
                let mut tcp = TcpStream::connect(addr).await.unwrap();
                tcp.write_all(garbage).await.unwrap();
                tcp.shutdown().await.unwrap();
                let mut rest = Vec::new();
                let _ = tcp.read_to_end(&mut rest).await;
            };
            // The refused socket is dropped at once, so that the client's read ends.
            let served = async {
                serve(&listener, &pki)
                    .await
                    .map(|_| ())
                    .map_err(|r| r.error)
            };
            let (served, ()) = tokio::join!(served, client);
            assert!(served.is_err(), "{garbage:?} was accepted");
        }
    }
}
