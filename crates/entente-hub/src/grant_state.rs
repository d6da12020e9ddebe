//! The hub's grant book: time-bound grants and just-in-time requests
//! ([`entente_policy::GrantBook`]), held in memory, stored before it is put in force, and
//! expired on time by a background task.
//!
//! **One writer at a time.** Every change — a grant given, a request made, an approval or a
//! rejection recorded, an expiry — runs under one lock: the book is cloned, the change applied
//! to the clone, the clone stored (`Store::put_grants` at the book's new revision), and only
//! then swapped in, after which the policy epoch is bumped if the active grants changed. If
//! the change is refused or the store fails, nothing changes: the book in force, the stored
//! book and the epoch stay as they were (fail closed).
//!
//! **Readers** (sessions refreshing their facts, the RPCs) take the book in force, an `Arc`,
//! without waiting for a writer's store. A session reads the policy epoch first and the book
//! second, so a session that sees an epoch bumped for a grant change also sees that change.
//!
//! **Expiry** ([`expire_loop`]): a task sleeps until the book's next change
//! ([`GrantBook::next_change_ms`]), or at most [`MAX_SLEEP`], and is woken by every change.
//! It then expires the book: ended grants are removed and the epoch bumped, so sessions
//! decide their subscriptions again and end those a grant had opened. No grant counts once
//! it has ended in any case ([`GrantBook::active_for`] never returns one); if the store
//! fails, the epoch is bumped all the same, so that no subscription outlives its grant, and
//! the store is tried again after [`RETRY`].

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use entente_audit::{Event, FieldMac, Grant as AuditGrant, GrantStage, Outcome};
use entente_policy::{ActiveGrant, Expired, GrantBook, GrantError, GrantLimits, PolicySet};
use entente_store::StoreError;
use entente_types::Principal;
use tokio::sync::{Notify, watch};

use crate::HubError;
use crate::audit::{self, Auditor};
use crate::authz::Authz;
use crate::registry::Registry;
use crate::stats;

/// The longest the expiry task sleeps without looking at the book.
pub(crate) const MAX_SLEEP: Duration = Duration::from_secs(60);

/// How long the expiry task waits before storing again after the store failed.
pub(crate) const RETRY: Duration = Duration::from_secs(1);

/// The grant book in force and the lock its writers take.
#[derive(Debug)]
pub(crate) struct GrantState {
    book: RwLock<Arc<GrantBook>>,
    /// Serializes changes: clone, apply, store, swap, bump.
    changing: tokio::sync::Mutex<()>,
    /// Wakes the expiry task after a change.
    wake: Notify,
}

/// Why a change of the grant book was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GrantChangeError {
    /// The book refused it.
    #[error("{0}")]
    Refused(#[from] GrantError),
    /// The changed book could not be stored.
    #[error("storing the grant book: {0}")]
    Store(#[from] StoreError),
}

// === impl GrantState ===

impl GrantState {
    /// The book the store holds, or an empty one. A stored book that does not decode is a
    /// start error, never a silent fallback to an empty book.
    pub(crate) async fn load(registry: &Registry, limits: GrantLimits) -> Result<Self, HubError> {
        let book = match registry.grants().await? {
            Some((_, bytes)) => GrantBook::decode(&bytes, limits)
                .map_err(|e| HubError::StoredGrants(e.to_string()))?,
            None => GrantBook::new(limits),
        };
        Ok(Self::with_book(book))
    }

    /// A state holding `book`, not stored.
    pub(crate) fn with_book(book: GrantBook) -> Self {
        Self {
            book: RwLock::new(Arc::new(book)),
            changing: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
        }
    }

    /// The book in force.
    pub(crate) fn book(&self) -> Arc<GrantBook> {
        Arc::clone(&self.book.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The grants `principal` holds at `now_ms`: the `Facts::grants` of its decisions.
    pub(crate) fn active_for(&self, principal: &Principal, now_ms: u64) -> Vec<ActiveGrant> {
        self.book
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .active_for(principal, now_ms)
    }

    /// Applies `apply` to a clone of the book with the running `policies`, stores the result
    /// and swaps it in; calls `bump` (under the lock, after the swap) if the grants changed.
    /// All or nothing: if `apply` refuses or the store fails, nothing changes. A change that
    /// leaves the book's revision as it was is not stored.
    pub(crate) async fn change<T>(
        &self,
        registry: &Registry,
        policies: &PolicySet,
        bump: impl FnOnce(),
        apply: impl FnOnce(&mut GrantBook, &PolicySet) -> Result<T, GrantError>,
    ) -> Result<T, GrantChangeError> {
        let _changing = self.changing.lock().await;
        let current = self.book();
        let mut next = GrantBook::clone(&current);
        let value = apply(&mut next, policies)?;
        if next.revision() == current.revision() {
            return Ok(value);
        }
        registry.put_grants(next.revision(), &next.encode()).await?;
        let grants_changed = !same_grants(&current, &next);
        *self.book.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        if grants_changed {
            bump();
        }
        self.wake.notify_one();
        Ok(value)
    }
}

/// Whether two books hold the same grant records.
fn same_grants(a: &GrantBook, b: &GrantBook) -> bool {
    a.grants().map(|g| g.id).eq(b.grants().map(|g| g.id))
}

// === the expiry task ===

/// Bumps the policy epoch if a grant of the book ended by `now_ms` that was not announced yet
/// (`announced_ms`: grants ending at or before it were): cached decisions and the sessions'
/// subscriptions are decided again without it, whatever becomes of storing the book.
fn announce_ended(authz: &Authz, now_ms: u64, announced_ms: &mut u64) {
    let last = authz
        .grants()
        .book()
        .grants()
        .map(|g| g.not_after_ms)
        .filter(|&end| end <= now_ms && end > *announced_ms)
        .max();
    if let Some(last) = last {
        *announced_ms = last;
        authz.bump();
    }
}

/// Expires the book of `authz` on time until `shutdown` is set (module docs).
pub(crate) async fn expire_loop(
    authz: Arc<Authz>,
    registry: Registry,
    mut shutdown: watch::Receiver<bool>,
) {
    // Grants ending at or before this time have been announced with an epoch bump.
    let mut announced_ms = 0;
    loop {
        let now = crate::rpc::unix_ms(std::time::SystemTime::now());
        let wait = match authz.grants().book().next_change_ms() {
            Some(at) => Duration::from_millis(at.saturating_sub(now)).min(MAX_SLEEP),
            None => MAX_SLEEP,
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = authz.grants().wake.notified() => continue,
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let now = crate::rpc::unix_ms(std::time::SystemTime::now());
        // The ended grants count no more from now: sessions hear of it at once, not once the
        // book is stored (after the changes ahead of this one, and a store that may be slow).
        announce_ended(&authz, now, &mut announced_ms);
        let expired = authz
            .grants()
            .change(
                &registry,
                &authz.engine().policies(),
                // Bumped already: what this removes ended by `now`, announced above.
                || {},
                |book, _| Ok(book.expire(now)),
            )
            .await;
        match expired {
            Ok(expired) => {
                record_expired(authz.auditor(), &expired);
                let ended = expired.grants.len() as u64;
                stats::add(&authz.stats().grants_expired, ended);
                if let Some(last) = expired.grants.iter().map(|g| g.not_after_ms).max() {
                    announced_ms = announced_ms.max(last);
                }
            }
            Err(_) => {
                stats::bump(&authz.stats().grant_store_failures);
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
        }
    }
}

/// Records the grants that ended and the requests that lapsed (a failed log shows in the
/// next act's check).
fn record_expired(auditor: &Auditor, expired: &Expired) {
    let grants = expired.grants.iter().map(|g| {
        grant_event(
            g.id.to_string(),
            GrantStage::Expired,
            g.principal.as_str(),
            &g.name,
            g.not_after_ms,
            None,
        )
    });
    let requests = expired.requests.iter().map(|r| {
        grant_event(
            r.id.to_string(),
            GrantStage::Expired,
            r.requester.as_str(),
            &r.name,
            r.expires_at_ms,
            None,
        )
    });
    for event in grants.chain(requests) {
        let _ = auditor.submit(audit::HUB_ACTOR, Outcome::Success, event);
    }
}

/// The audit record of a grant (or a just-in-time request) at `stage`. A grant is named: its
/// name is the record's `action`; the policies that read `context.grants` say what it allows.
/// `reason` is the HMAC of the reason given ([`Auditor::mac`]).
pub(crate) fn grant_event(
    id: String,
    stage: GrantStage,
    principal: &str,
    name: &str,
    not_after_ms: u64,
    reason: Option<FieldMac>,
) -> Event {
    Event::Grant(AuditGrant {
        grant_id: audit::clear(&id),
        stage,
        principal: audit::clear(principal),
        action: audit::clear(name),
        resource: audit::clear(""),
        not_after_ms,
        reason,
    })
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use entente_policy::{GrantEnd, NewGrant, NewRequest};
    use entente_store::EmbeddedStore;
    use entente_types::ChannelPattern;

    use super::*;
    use crate::authz::SessionAuthz;

    const NOW: u64 = 1_760_000_000_000;

    fn principal(s: &str) -> Principal {
        Principal::parse(&format!("spiffe://example.org/{s}")).unwrap()
    }

    fn policies() -> PolicySet {
        PolicySet::parse(
            "g.cedar",
            r#"@grant("read") permit (principal, action == Action::"subscribe", resource in Namespace::"demo")
               when { context.grants.contains("read") };"#,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn sessions_read_their_grants_again_after_a_grant_change_and_only_then() {
        let authz = Authz::with_policies(
            r#"@grant("read") permit (principal, action == Action::"subscribe", resource in Namespace::"demo")
               when { context.grants.contains("read") };"#,
            Arc::default(),
        );
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path().join("registry.redb")).unwrap();
        let registry = Registry::new(Arc::new(store));
        let eve = principal("agent/demo/eve");
        let mut session = SessionAuthz::new(&eve);
        let demo = ChannelPattern::parse("demo.>").unwrap();
        assert!(session.subscribe(&authz, &demo, NOW).is_err());

        let epoch = authz.engine().epoch();
        let grant = NewGrant {
            name: "read".into(),
            principal: eve.clone(),
            granter: principal("human/admin"),
            end: GrantEnd::After(1_000),
            reason: "INC-1".into(),
        };
        authz
            .change_grants(&registry, |book, policies| book.grant(policies, grant, NOW))
            .await
            .unwrap();
        assert_eq!(authz.engine().epoch(), epoch + 1);
        assert!(session.subscribe(&authz, &demo, NOW + 1).is_ok());

        // A request changes the book, not the grants: stored, no bump.
        let request = NewRequest {
            requester: eve.clone(),
            name: "read".into(),
            duration_ms: 1_000,
            reason: "INC-2".into(),
            credentials: Vec::new(),
        };
        authz
            .change_grants(&registry, |book, policies| {
                book.request(policies, request, NOW)
            })
            .await
            .unwrap();
        assert_eq!(authz.engine().epoch(), epoch + 1);
        assert_eq!(authz.grants().book().revision(), 2);

        // At its end the grant opens nothing, whoever acts (or nobody).
        assert!(session.subscribe(&authz, &demo, NOW + 1_000).is_err());
        // A refused change changes nothing.
        let err = authz
            .change_grants(&registry, |book, policies| {
                book.grant(
                    policies,
                    NewGrant {
                        name: "write".into(),
                        principal: eve.clone(),
                        granter: principal("human/admin"),
                        end: GrantEnd::After(1_000),
                        reason: "x".into(),
                    },
                    NOW,
                )
            })
            .await
            .unwrap_err();
        assert!(matches!(err, GrantChangeError::Refused(_)), "{err}");
        assert_eq!(authz.grants().book().revision(), 2);
        assert_eq!(authz.engine().epoch(), epoch + 1);
    }

    #[test]
    fn same_grants_compares_the_records() {
        let policies = policies();
        let a = GrantBook::default();
        let mut b = a.clone();
        assert!(same_grants(&a, &b));
        b.grant(
            &policies,
            NewGrant {
                name: "read".into(),
                principal: principal("agent/ops/eve"),
                granter: principal("human/admin"),
                end: GrantEnd::After(1_000),
                reason: "INC-1".into(),
            },
            NOW,
        )
        .unwrap();
        assert!(!same_grants(&a, &b));
        assert_eq!(
            GrantState::with_book(b)
                .active_for(&principal("agent/ops/eve"), NOW)
                .len(),
            1
        );
    }
}
