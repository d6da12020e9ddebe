//! The session's connection failing under the SDK, through a TCP proxy in front of a real hub
//! on 127.0.0.1:0: a hub gone silent (the proxy stops forwarding without closing) is noticed
//! by HTTP/2 keepalive pings; a connection reset while the session's reader waits on a full
//! subscription is reported as the failure it is, not as a close by the client.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use entente_client::{Client, ErrorKind, SessionTransport};
use support::{TestHub, WAIT, message, next, options};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    /// Stop forwarding and keep every connection open: a peer gone silent.
    Freeze,
    /// Reset every connection (TCP RST to the client).
    Reset,
}

/// A TCP proxy to the hub, every connection through it under one [`Mode`].
struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(hub: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = watch::Sender::new(Mode::Forward);
        let modes = mode.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = TcpStream::connect(hub).await.unwrap();
                tokio::spawn(pipe(client, upstream, modes.subscribe()));
            }
        });
        Self { addr, mode, task }
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards between `client` and `hub` until the mode changes, then freezes or resets.
async fn pipe(client: TcpStream, hub: TcpStream, mut mode: watch::Receiver<Mode>) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_hub, mut to_hub) = hub.into_split();
    let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        tokio::select! {
            changed = async { mode.wait_for(|m| *m != Mode::Forward).await.is_ok() } => {
                if !changed {
                    return;
                }
                break;
            }
            read = from_client.read(&mut up) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to_hub.write_all(&up[..n]).await.is_err() {
                        return;
                    }
                }
            },
            read = from_hub.read(&mut down) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to_client.write_all(&down[..n]).await.is_err() {
                        return;
                    }
                }
            },
        }
    }
    let now = *mode.borrow();
    match now {
        Mode::Reset => {
            let client = from_client.reunite(to_client).unwrap();
            socket2::SockRef::from(&client)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(client);
        }
        // Everything stays open, and nothing moves.
        Mode::Freeze | Mode::Forward => {
            let _open = (from_client, to_client, from_hub, to_hub);
            std::future::pending::<()>().await;
        }
    }
}

/// An HTTP/2 session whose hub goes silent without closing (its host still up) ends once a
/// keepalive ping goes unanswered, rather than waiting forever.
#[tokio::test]
async fn an_http2_session_notices_a_hub_gone_silent() {
    let hub = TestHub::start().await;
    let alice = hub.agent("shop", "alice").await;
    let proxy = Proxy::start(hub.hub.local_addr()).await;
    let alice_options = options()
        .session_transport(SessionTransport::Http2)
        .keepalive(Some(Duration::from_millis(500)))
        .keepalive_timeout(Duration::from_secs(2));
    let alice = Client::connect(alice.identity, proxy.addr, alice_options)
        .await
        .unwrap();
    let mut orders = alice.subscribe("orders.eu").await.unwrap();

    proxy.set(Mode::Freeze);
    match next(&mut orders).await {
        Some(Err(e)) => assert_eq!(e.kind(), ErrorKind::Closed, "{e}"),
        other => panic!("expected the session's end, got {other:?}"),
    }
    assert!(alice.is_closed());
}

/// The connection is reset while the session's reader waits for room in a subscription nobody
/// reads: the writer finds the connection gone first. The session ends as failed — its
/// publishes and subscriptions get the error — not as closed by this client.
#[tokio::test]
async fn a_connection_failure_the_writer_finds_first_is_not_a_close_by_the_client() {
    let hub = TestHub::start().await;
    let (alice, bob) = (
        hub.agent("shop", "alice").await,
        hub.agent("shop", "bob").await,
    );
    let recipients = [alice.bundle.clone()];
    let bob_wire = bob.bundle.to_wire().clone();
    let proxy = Proxy::start(hub.hub.local_addr()).await;
    let alice = Client::connect(alice.identity, proxy.addr, options().subscription_queue(1))
        .await
        .unwrap();
    alice.trust_key_bundle(bob_wire).unwrap();
    let bob = hub.connect(bob.identity).await;
    let mut orders = alice.subscribe("orders.eu").await.unwrap();

    // The first fills the subscription's queue; the reader waits for room for the second.
    for payload in ["one", "two"] {
        bob.publish_to("orders.eu", payload, &recipients)
            .await
            .unwrap();
    }
    let blocked = async {
        while alice.stats().received < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(WAIT, blocked)
        .await
        .expect("the second message never reached the reader");

    proxy.set(Mode::Reset);
    // Publishing finds the connection gone.
    let failed = async {
        loop {
            match alice.enqueue_to("orders.us", "mine", &[]).await {
                Ok(_ack) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(e) => break e,
            }
        }
    };
    let e = tokio::time::timeout(WAIT, failed)
        .await
        .expect("the writer never found the connection gone");
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    // Once the session is over, its end says why.
    let ended = async {
        while !alice.is_closed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(WAIT, ended)
        .await
        .expect("the session never ended");
    let e = alice
        .publish_to("orders.us", "late", &[])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    assert!(!e.to_string().contains("by this client"), "{e}");
    assert!(
        e.to_string().contains("connection to the hub failed"),
        "{e}"
    );

    // The subscription has what it held, then the error.
    assert_eq!(message(&mut orders).await.payload, b"one");
    match next(&mut orders).await {
        Some(Err(e)) => {
            assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
            assert!(!e.to_string().contains("by this client"), "{e}");
        }
        other => panic!("expected the session's failure, got {other:?}"),
    }
    assert!(next(&mut orders).await.is_none());
}
