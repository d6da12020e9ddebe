//! Closing a connection from anywhere: revocation, slow consumers, expiry, shutdown.
//!
//! Each connection has one [`ConnectionControl`]. Whoever closes it first sets the
//! [`CloseReason`]; the connection's sessions end their streams with the matching status, and
//! the connection task sends GOAWAY and drops the connection after a short grace period.
//!
//! The control also carries when the connection's credential expires. It starts as the
//! presented certificate's `not_after`; a renewal over the connection
//! ([`extend_expiry`](ConnectionControl::extend_expiry)) moves it to the renewed certificate's,
//! so the session stays up across renewals. The connection task closes the connection
//! ([`CloseReason::CertificateExpired`]) once the time in force has passed.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use tokio::sync::watch;
use tonic::Status;

/// Why a connection was closed by the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// Its certificate or principal was revoked.
    Revoked,
    /// Its principal was quarantined (docs/ANOMALY.md).
    Quarantined,
    /// Its outbound queue stayed full past the slow-consumer timeout.
    SlowConsumer,
    /// Its certificate expired.
    CertificateExpired,
    /// The hub is shutting down.
    Shutdown,
}

/// The close signal and credential expiry of one connection; cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnectionControl {
    tx: Arc<watch::Sender<Option<CloseReason>>>,
    expiry: Arc<Mutex<Option<SystemTime>>>,
}

/// What a quarantined agent is told, on its open streams and when it connects.
pub(crate) const QUARANTINED: &str = "quarantined: this agent's credential is suspended \
     until an administrator lifts the quarantine (`entente quarantine release`)";

// === impl CloseReason ===

impl CloseReason {
    /// The gRPC status the connection's streams end with.
    pub fn status(self) -> Status {
        match self {
            CloseReason::Revoked => Status::permission_denied("credential revoked"),
            CloseReason::Quarantined => Status::permission_denied(QUARANTINED),
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
    /// An open connection's control, without a credential expiry.
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(None)),
            expiry: Arc::new(Mutex::new(None)),
        }
    }

    /// An open connection's control whose credential expires at `not_after`.
    pub fn expiring_at(not_after: SystemTime) -> Self {
        let control = Self::new();
        *control.lock_expiry() = Some(not_after);
        control
    }

    /// When the connection's credential expires, if it does.
    pub fn expires_at(&self) -> Option<SystemTime> {
        *self.lock_expiry()
    }

    /// Moves the credential expiry to `not_after` if that is later than the time in force
    /// (a renewal never shortens the life of the connection it was made on). A control without
    /// an expiry keeps none. Returns the expiry in force afterwards.
    pub fn extend_expiry(&self, not_after: SystemTime) -> Option<SystemTime> {
        let mut expiry = self.lock_expiry();
        if let Some(current) = expiry.as_mut()
            && not_after > *current
        {
            *current = not_after;
        }
        *expiry
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

    fn lock_expiry(&self) -> std::sync::MutexGuard<'_, Option<SystemTime>> {
        self.expiry.lock().unwrap_or_else(PoisonError::into_inner)
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

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use std::time::Duration;

    use super::*;

    #[test]
    fn expiry_only_moves_later() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let control = ConnectionControl::expiring_at(t0);
        let clone = control.clone();
        assert_eq!(
            clone.extend_expiry(t0 + Duration::from_secs(5)),
            Some(t0 + Duration::from_secs(5))
        );
        assert_eq!(control.extend_expiry(t0), Some(t0 + Duration::from_secs(5)));
        assert_eq!(control.expires_at(), Some(t0 + Duration::from_secs(5)));
        assert_eq!(ConnectionControl::new().extend_expiry(t0), None);
    }

    #[test]
    fn the_first_close_reason_stays() {
        let control = ConnectionControl::new();
        assert!(control.close(CloseReason::Revoked));
        assert!(!control.close(CloseReason::Shutdown));
        assert_eq!(control.reason(), Some(CloseReason::Revoked));
    }
}
