//! Closing a connection from anywhere: revocation, slow consumers, expiry, shutdown.
//!
//! Each connection has one [`ConnectionControl`]. Whoever closes it first sets the
//! [`CloseReason`]; the connection's sessions end their streams with the matching status, and
//! the connection task sends GOAWAY and drops the connection after a short grace period.

use std::sync::Arc;

use tokio::sync::watch;
use tonic::Status;

/// Why a connection was closed by the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// Its certificate or principal was revoked.
    Revoked,
    /// Its outbound queue stayed full past the slow-consumer timeout.
    SlowConsumer,
    /// Its certificate expired.
    CertificateExpired,
    /// The hub is shutting down.
    Shutdown,
}

/// The close signal of one connection; cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnectionControl {
    tx: Arc<watch::Sender<Option<CloseReason>>>,
}

// === impl CloseReason ===

impl CloseReason {
    /// The gRPC status the connection's streams end with.
    pub fn status(self) -> Status {
        match self {
            CloseReason::Revoked => Status::permission_denied("credential revoked"),
            CloseReason::SlowConsumer => {
                Status::resource_exhausted("slow consumer: the outbound queue stayed full")
            }
            CloseReason::CertificateExpired => Status::unauthenticated("certificate expired"),
            CloseReason::Shutdown => Status::unavailable("hub shutting down"),
        }
    }
}

// === impl ConnectionControl ===

impl ConnectionControl {
    /// An open connection's control.
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(None)),
        }
    }

    /// Closes the connection for `reason`. Returns `false` if it was already closed (the first
    /// reason stays).
    pub fn close(&self, reason: CloseReason) -> bool {
        self.tx.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        })
    }

    /// Why the connection was closed, if it was.
    pub fn reason(&self) -> Option<CloseReason> {
        *self.tx.borrow()
    }

    /// Whether the connection was closed.
    pub fn is_closed(&self) -> bool {
        self.reason().is_some()
    }

    /// A receiver of the close reason, which changes once from `None` to the reason.
    pub fn watch(&self) -> watch::Receiver<Option<CloseReason>> {
        self.tx.subscribe()
    }
}

impl Default for ConnectionControl {
    fn default() -> Self {
        Self::new()
    }
}

/// Resolves when the connection watched by `rx` is closed, with the reason. Never resolves if
/// every control was dropped without closing.
pub(crate) async fn closed(rx: &mut watch::Receiver<Option<CloseReason>>) -> CloseReason {
    // Copy the reason out so that no borrow of the watch is held while pending.
    let reason = match rx.wait_for(Option::is_some).await {
        Ok(reason) => *reason,
        Err(_) => None,
    };
    match reason {
        Some(reason) => reason,
        None => std::future::pending().await,
    }
}
