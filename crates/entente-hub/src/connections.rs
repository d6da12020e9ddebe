//! The table of live mutual-TLS connections: who each one is, the certificates it holds, and
//! its control, so that revocation, renewal and shutdown can reach it.
//!
//! A connection holds the serial of the certificate it presented and of every certificate
//! renewed over it (the presented one and the newest [`MAX_RENEWED_SERIALS`]). It is closed
//! when its principal or any of those serials is revoked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use entente_ca::VerifiedRevocationList;
use entente_types::Principal;

use crate::control::{CloseReason, ConnectionControl};
use crate::stats::{self, Stats};
use crate::verifier::RevocationState;

/// How many renewed certificates' serials a connection remembers besides its own.
pub(crate) const MAX_RENEWED_SERIALS: usize = 8;

/// The live connections of a hub, by connection ID.
#[derive(Debug)]
pub(crate) struct Connections {
    live: Mutex<HashMap<u64, LiveConnection>>,
    /// How many live connections each principal has. Locked only with `live` held.
    per_agent: Mutex<HashMap<Principal, usize>>,
    caps: Caps,
    revocations: Arc<RevocationState>,
    stats: Arc<Stats>,
}

/// The most connections the hub serves, in all and per principal.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caps {
    pub(crate) total: usize,
    pub(crate) per_agent: usize,
}

/// A connection refused by a connection limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectionLimit {
    /// The hub serves as many connections as it may.
    Hub(usize),
    /// The principal has as many connections as it may.
    Agent(usize),
}

impl ConnectionLimit {
    /// The limit's name in audit records.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Hub(_) => "connections",
            Self::Agent(_) => "connections-per-agent",
        }
    }

    /// What the refused client is told.
    pub(crate) fn reason(self) -> String {
        match self {
            Self::Hub(max) => {
                format!("the hub serves {max} connections, its limit; try again later")
            }
            Self::Agent(max) => format!(
                "this identity already has {max} connections to the hub, its limit; close one"
            ),
        }
    }
}

/// What the hub knows of a live mTLS connection.
#[derive(Debug)]
struct LiveConnection {
    principal: Principal,
    /// The presented certificate's serial, then those renewed over the connection.
    serials: Vec<Vec<u8>>,
    control: ConnectionControl,
}

// === impl Connections ===

impl Connections {
    pub(crate) fn new(revocations: Arc<RevocationState>, stats: Arc<Stats>, caps: Caps) -> Self {
        Self {
            live: Mutex::new(HashMap::new()),
            per_agent: Mutex::new(HashMap::new()),
            caps,
            revocations,
            stats,
        }
    }

    /// Registers a connection unless a connection limit refuses it, then re-checks it
    /// against the list in force, so that a revocation racing with the handshake is never
    /// missed. Returns whether it is open.
    pub(crate) fn register(
        &self,
        id: u64,
        principal: Principal,
        serial: Vec<u8>,
        control: ConnectionControl,
    ) -> Result<bool, ConnectionLimit> {
        {
            let mut live = self.lock();
            let mut per_agent = self
                .per_agent
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if live.len() >= self.caps.total {
                return Err(ConnectionLimit::Hub(self.caps.total));
            }
            let held = per_agent.entry(principal.clone()).or_insert(0);
            if *held >= self.caps.per_agent {
                return Err(ConnectionLimit::Agent(self.caps.per_agent));
            }
            *held += 1;
            let connection = LiveConnection {
                principal,
                serials: vec![serial],
                control: control.clone(),
            };
            live.insert(id, connection);
        }
        self.recheck(id);
        Ok(!control.is_closed())
    }

    pub(crate) fn unregister(&self, id: u64) {
        let mut live = self.lock();
        let Some(gone) = live.remove(&id) else {
            return;
        };
        let mut per_agent = self
            .per_agent
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = per_agent.get_mut(&gone.principal) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                per_agent.remove(&gone.principal);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Closes every connection `list` revokes; returns how many it closed.
    pub(crate) fn close_revoked(&self, list: &VerifiedRevocationList) -> usize {
        let closed = self
            .lock()
            .values()
            .filter(|c| c.is_revoked(list))
            .filter(|c| c.control.close(CloseReason::Revoked))
            .count();
        stats::add(&self.stats.revoked_disconnects, closed as u64);
        closed
    }

    /// The certificate serials held by the live connections of `principal` (presented or
    /// renewed over them).
    pub(crate) fn serials_of(&self, principal: &Principal) -> Vec<Vec<u8>> {
        self.lock()
            .values()
            .filter(|c| &c.principal == principal)
            .flat_map(|c| c.serials.iter().cloned())
            .collect()
    }

    /// Closes every connection of `principal` for `reason`; returns how many it closed.
    pub(crate) fn close_principal(&self, principal: &Principal, reason: CloseReason) -> usize {
        self.lock()
            .values()
            .filter(|c| &c.principal == principal)
            .filter(|c| c.control.close(reason))
            .count()
    }

    /// Closes every connection for `reason`.
    pub(crate) fn close_all(&self, reason: CloseReason) {
        for connection in self.lock().values() {
            connection.control.close(reason);
        }
    }

    /// Records a certificate renewed over connection `id`: its serial joins the connection's,
    /// and the connection's credential expiry moves to `not_after`. Then re-checks the
    /// connection against the list in force. Returns why the connection is closed, if it is
    /// (or gone: [`CloseReason::Shutdown`]).
    pub(crate) fn renewed(
        &self,
        id: u64,
        serial: Vec<u8>,
        not_after: SystemTime,
    ) -> Result<(), CloseReason> {
        {
            let mut live = self.lock();
            let connection = live.get_mut(&id).ok_or(CloseReason::Shutdown)?;
            connection.serials.push(serial);
            let excess = connection
                .serials
                .len()
                .saturating_sub(MAX_RENEWED_SERIALS + 1);
            // Keep the presented certificate's serial (index 0) and the newest renewed ones.
            if excess > 0 {
                connection.serials.drain(1..=excess);
            }
            connection.control.extend_expiry(not_after);
        }
        self.recheck(id);
        let live = self.lock();
        let control = &live.get(&id).ok_or(CloseReason::Shutdown)?.control;
        control.reason().map_or(Ok(()), Err)
    }

    /// Closes connection `id` if the list in force revokes it.
    fn recheck(&self, id: u64) {
        let Some(list) = self.revocations.current() else {
            return;
        };
        let live = self.lock();
        if let Some(connection) = live.get(&id)
            && connection.is_revoked(&list)
            && connection.control.close(CloseReason::Revoked)
        {
            stats::bump(&self.stats.revoked_disconnects);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, LiveConnection>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl LiveConnection ===

impl LiveConnection {
    fn is_revoked(&self, list: &VerifiedRevocationList) -> bool {
        list.is_principal_revoked(&self.principal)
            || self.serials.iter().any(|s| list.is_serial_revoked(s))
    }
}
