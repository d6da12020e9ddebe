//! The table of live mutual-TLS connections: who each one is, the certificates it holds, and
//! its control, so that revocation, renewal and shutdown can reach it.
//!
//! A connection holds the serial of the certificate it presented and of every certificate
//! renewed for it (the presented one and the newest [`MAX_RENEWED_SERIALS`]): renewed over it,
//! or over another connection of its principal that presented a certificate it holds; and the
//! serials of the intermediates its presented chain went through. It is closed when its
//! principal or any of those serials is revoked (an intermediate revoked because its key
//! leaked ends what was authenticated through it), save an intermediate retired by a rollover
//! ([`Connections::forget_issuer`]).

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

/// Where a session reads the certificates its connection acts with ([`Connections::credentials`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct Credentials(Option<(Arc<Connections>, u64)>);

impl Credentials {
    /// Those of connection `id`.
    pub(crate) fn of(connections: Arc<Connections>, id: u64) -> Self {
        Self(Some((connections, id)))
    }

    /// The connection's credentials now (none for a session without a registered connection).
    pub(crate) fn now(&self) -> Vec<Vec<u8>> {
        self.0
            .as_ref()
            .map(|(connections, id)| connections.credentials(*id))
            .unwrap_or_default()
    }
}

/// What the hub knows of a live mTLS connection.
#[derive(Debug)]
struct LiveConnection {
    principal: Principal,
    /// The presented certificate's serial, then those renewed over the connection.
    serials: Vec<Vec<u8>>,
    /// The serials of the intermediates the presented chain went through.
    issuers: Vec<Vec<u8>>,
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
        issuers: Vec<Vec<u8>>,
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
                issuers,
                control: control.clone(),
            };
            live.insert(id, connection);
        }
        self.recheck_current(id);
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

    /// The certificates connection `id` acts with, as a held message or an approval records
    /// them: the serial it presented and the last ones renewed over it (at most
    /// [`entente_wire::MAX_APPROVAL_RECORDS`]; a serial revoked takes those renewed from it
    /// along). Not its intermediates': an intermediate rollover revokes the one it retires,
    /// which would void every hold and approval made through it in its last hour. Empty for a
    /// connection not registered.
    pub(crate) fn credentials(&self, id: u64) -> Vec<Vec<u8>> {
        let live = self.lock();
        let Some(c) = live.get(&id) else {
            return Vec::new();
        };
        let room = entente_wire::MAX_APPROVAL_RECORDS.saturating_sub(1);
        let renewed = c.serials.get(1..).unwrap_or_default();
        c.serials
            .first()
            .into_iter()
            .chain(renewed.iter().skip(renewed.len().saturating_sub(room)))
            .cloned()
            .collect()
    }

    /// The serial of the certificate connection `id` presented at its handshake.
    pub(crate) fn presented_serial(&self, id: u64) -> Option<Vec<u8>> {
        self.lock()
            .get(&id)
            .and_then(|c| c.serials.first().cloned())
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

    /// The serials of the intermediates the live connections of `principal` were made
    /// through.
    pub(crate) fn issuers_of(&self, principal: &Principal) -> Vec<Vec<u8>> {
        self.lock()
            .values()
            .filter(|c| &c.principal == principal)
            .flat_map(|c| c.issuers.iter().cloned())
            .collect()
    }

    /// Forgets intermediate `serial` as the issuer of the presented chains of live
    /// connections renewed since, before a rollover retires (and revokes) it. By then every
    /// certificate it signed has expired, so a live connection has renewed under the active
    /// intermediate since: a routine retirement closes nothing; one that never renewed is
    /// closed. (A serial revoked through `Revoke` is not forgotten: it closes every
    /// connection made through it.)
    pub(crate) fn forget_issuer(&self, serial: &[u8]) {
        for connection in self.lock().values_mut() {
            if connection.serials.len() > 1 {
                connection.issuers.retain(|s| s.as_slice() != serial);
            }
        }
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

    /// Records a certificate renewed over connection `id`: its serial joins the serials of
    /// every live connection of the same principal that holds the certificate connection `id`
    /// presented — `id` itself, and the agent's other connections carrying the same credential
    /// (a framed session, whose connection carries no calls, is renewed over the agent's
    /// HTTP/2 connection) — and their credential expiry moves to `not_after`. Then re-checks
    /// them against the list in force. Returns why connection `id` is closed, if it is (or
    /// gone: [`CloseReason::Shutdown`]).
    pub(crate) fn renewed(
        &self,
        id: u64,
        serial: Vec<u8>,
        not_after: SystemTime,
    ) -> Result<(), CloseReason> {
        let renewed: Vec<u64> = {
            let mut live = self.lock();
            let caller = live.get(&id).ok_or(CloseReason::Shutdown)?;
            let (principal, presented) =
                (caller.principal.clone(), caller.serials.first().cloned());
            let mut renewed = Vec::new();
            for (other, connection) in live.iter_mut() {
                let holds = *other == id
                    || (connection.principal == principal
                        && presented
                            .as_ref()
                            .is_some_and(|p| connection.serials.contains(p)));
                if holds {
                    connection.add_serial(serial.clone());
                    connection.control.extend_expiry(not_after);
                    renewed.push(*other);
                }
            }
            renewed
        };
        if let Some(list) = self.revocations.current() {
            for other in renewed {
                self.recheck(other, &list);
            }
        }
        let live = self.lock();
        let control = &live.get(&id).ok_or(CloseReason::Shutdown)?.control;
        control.reason().map_or(Ok(()), Err)
    }

    /// Closes connection `id` if the list in force revokes it.
    fn recheck_current(&self, id: u64) {
        if let Some(list) = self.revocations.current() {
            self.recheck(id, &list);
        }
    }

    /// Closes connection `id` if `list` revokes it.
    fn recheck(&self, id: u64, list: &VerifiedRevocationList) {
        let live = self.lock();
        if let Some(connection) = live.get(&id)
            && connection.is_revoked(list)
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
    /// Adds a renewed certificate's serial, keeping the presented certificate's (the first)
    /// and the newest [`MAX_RENEWED_SERIALS`] renewed ones.
    fn add_serial(&mut self, serial: Vec<u8>) {
        self.serials.push(serial);
        let excess = self.serials.len().saturating_sub(MAX_RENEWED_SERIALS + 1);
        if excess > 0 {
            self.serials.drain(1..=excess);
        }
    }

    fn is_revoked(&self, list: &VerifiedRevocationList) -> bool {
        list.is_principal_revoked(&self.principal)
            || self
                .serials
                .iter()
                .chain(&self.issuers)
                .any(|s| list.is_serial_revoked(s))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use super::*;

    fn principal(name: &str) -> Principal {
        Principal::parse(&format!("spiffe://example.org/agent/shop/{name}")).unwrap()
    }

    #[test]
    fn a_renewal_extends_every_connection_holding_the_presented_certificate_and_no_other() {
        let connections = Connections::new(
            Arc::new(RevocationState::default()),
            Arc::new(Stats::default()),
            Caps {
                total: 10,
                per_agent: 10,
            },
        );
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let open = |id: u64, who: &str, serial: &[u8]| {
            let control = ConnectionControl::expiring_at(t0);
            let registered = connections.register(
                id,
                principal(who),
                serial.to_vec(),
                Vec::new(),
                control.clone(),
            );
            assert_eq!(registered, Ok(true));
            control
        };
        // Alice's HTTP/2 connection (1) and framed session (2) with certificate A; a later
        // connection of hers with certificate B (3); Bob's connection presenting A's serial
        // (4: a serial is the CA's, but the principal must match too).
        let calls = open(1, "alice", b"A");
        let framed = open(2, "alice", b"A");
        let other = open(3, "alice", b"B");
        let bob = open(4, "bob", b"A");

        let t1 = t0 + Duration::from_secs(3600);
        connections.renewed(1, b"A2".to_vec(), t1).unwrap();
        assert_eq!(calls.expires_at(), Some(t1));
        assert_eq!(framed.expires_at(), Some(t1));
        assert_eq!(other.expires_at(), Some(t0));
        assert_eq!(bob.expires_at(), Some(t0));

        // The next renewal over a new connection presenting A2 reaches the framed session,
        // which holds A2 now.
        let again = open(5, "alice", b"A2");
        let t2 = t1 + Duration::from_secs(3600);
        connections.renewed(5, b"A3".to_vec(), t2).unwrap();
        assert_eq!(again.expires_at(), Some(t2));
        assert_eq!(framed.expires_at(), Some(t2));
        assert_eq!(calls.expires_at(), Some(t2));
        assert_eq!(other.expires_at(), Some(t0));
        assert_eq!(
            connections.serials_of(&principal("alice")).len(),
            3 + 3 + 1 + 2
        );

        assert_eq!(
            connections.renewed(9, b"X".to_vec(), t2),
            Err(CloseReason::Shutdown)
        );
    }
}
