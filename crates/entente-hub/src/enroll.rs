//! Join tokens and enrollment: an agent or a human without a certificate presents a one-time
//! join token, a CSR and its message public keys, and receives an X509-SVID and a CA-signed key
//! bundle.
//!
//! Order of work, so that a refusal spends the token only when it must:
//!
//! 1. Checks that need no token: the token's format, the key lengths, the CSR (as the CA will
//!    check it, [`crate::csr`]). A refusal here leaves the token unspent.
//! 2. The token is redeemed, atomically and once ([`entente_store::Store::redeem_token`]).
//! 3. Everything after — the agent is revoked or suspended, the CA fails, the store fails — is
//!    refused with the token **spent**: it stays used, and the status says to ask the operator
//!    for a new token. Nothing is half-enrolled in a way that matters: the certificate and key
//!    bundle reach the agent only in the response, after both records are stored.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use entente_audit::{Admin, Enrollment, Event, Outcome};
use entente_ca::{JoinToken, JoinTokens, RESERVED_SEGMENT, TokenError};
use entente_crypto::KeyBundleBody;
use entente_store::{AgentRecord, StoreError, TokenRecord};
use entente_types::Principal;
use entente_wire::{EnrollRequest, EnrollResponse};

use crate::HubError;
use crate::audit::{self, Auditor};
use crate::rpc::{self, Refusal as _, RpcError, Services};
use crate::stats;

/// How far a key bundle's validity is backdated, for clock skew.
pub(crate) const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// A join token just created, with its expiry.
pub(crate) struct IssuedToken {
    pub(crate) token: JoinToken,
    pub(crate) expires: SystemTime,
}

/// Creates a join token for `principal` (an agent or a human), valid for `ttl` from `now`, and
/// stores its hash. The one path of token creation, for the operator's handle and for remote
/// administrators.
///
/// Refuses the reserved segment ([`RESERVED_SEGMENT`]), a principal of another trust domain,
/// and a zero or unrepresentable lifetime; and a token past the bound on tokens stored
/// ([`HubConfig::max_join_tokens`](crate::HubConfig::max_join_tokens)) once the expired ones
/// are gone ([`StoreError::Full`]). Expired tokens are purged from the store first, at most
/// once a minute (each purge reads every token), and whenever the store is full.
pub(crate) async fn create_token<R>(
    services: &Services<R>,
    principal: Principal,
    ttl: Duration,
    now: SystemTime,
) -> Result<IssuedToken, HubError> {
    if principal.trust_domain() != services.ca.trust_domain().as_str() {
        return Err(HubError::ForeignAgent(principal.to_string()));
    }
    if ttl.is_zero() {
        return Err(HubError::Token(TokenError::InvalidTtl));
    }
    // `JoinTokens` refuses the reserved segment and generates the secret; only the record
    // (the hash) is kept, in the store.
    let (token, info) = JoinTokens::new().create(principal, ttl, now)?;
    let record = TokenRecord {
        hash: info.hash,
        agent: info.principal.to_string(),
        created_ms: rpc::unix_ms(info.created),
        expires_ms: rpc::unix_ms(info.expires),
        used: false,
    };
    let now_ms = rpc::unix_ms(now);
    let due = services.next_token_purge_ms.load(Ordering::Relaxed);
    if now_ms >= due
        && services
            .next_token_purge_ms
            .compare_exchange(
                due,
                now_ms.saturating_add(60_000),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
    {
        services.registry.purge_tokens(now_ms).await?;
    }
    services
        .registry
        .put_token(&record, services.max_join_tokens)
        .await?;
    Ok(IssuedToken {
        token,
        expires: info.expires,
    })
}

/// A token's ID in the audit log: the first 16 hex digits of its SHA-256 (names the token,
/// reveals nothing).
pub(crate) fn token_id(hash: &[u8; 32]) -> String {
    hash.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Serves one `Enroll` request, counting it.
pub(crate) async fn enroll<R>(
    services: &Services<R>,
    request: EnrollRequest,
    now: SystemTime,
) -> Result<EnrollResponse, RpcError> {
    let auditor = services.authz.auditor();
    auditor.check().map_err(RpcError::Unaudited)?;
    let mut spent = None;
    let result = enroll_inner(services, request, now, &mut spent).await;
    match &result {
        Ok(_) => stats::bump(&services.stats.enrollments),
        Err(_) => stats::bump(&services.stats.enroll_refusals),
    }
    if !auditor.is_on() {
        return result.map(|(response, _)| response);
    }
    // Recorded before the agent gets its credentials: what can't be recorded is refused.
    let (actor, outcome, event) = match (&result, spent) {
        (Ok((response, enrolled)), _) => {
            let leaf = response.certificate_chain.first().map(Vec::as_slice);
            let event = Event::Enrollment(Enrollment {
                principal: audit::clear(&enrolled.principal),
                segment: audit::clear(&enrolled.segment),
                token_id: audit::clear(&enrolled.token_id),
                certificate: audit::certificate_hash(leaf.unwrap_or_default()),
                not_after_ms: leaf.map_or(0, audit::not_after_ms),
            });
            (enrolled.principal.clone(), Outcome::Success, event)
        }
        // Refused once the token was spent: whoever it was made for is the one who enrolled
        // (the token is their credential), recorded as such, with the token's ID, always on
        // its own (each costs a valid token).
        (Err(e), Some(spent)) => {
            let event = Event::Admin(Admin {
                operation: audit::clear("enroll"),
                target: audit::clear(&spent.principal),
                detail: audit::clear(&format!("token {}: {e}", spent.token_id)),
            });
            (spent.principal, e.outcome(), event)
        }
        (Err(e), None) => {
            // Anyone can send these: past a few a second they are recorded together (the
            // hub's own failures always alone).
            if e.outcome() == Outcome::Denied
                && !services
                    .enroll_refusals
                    .record_alone(auditor, Instant::now())
            {
                return result.map(|(response, _)| response);
            }
            let event = Event::Admin(Admin {
                operation: audit::clear("enroll"),
                target: audit::clear(""),
                detail: audit::clear(&e.to_string()),
            });
            (audit::ANONYMOUS.to_owned(), e.outcome(), event)
        }
    };
    auditor
        .record(&actor, outcome, event)
        .await
        .map_err(RpcError::Unaudited)?;
    result.map(|(response, _)| response)
}

/// Refused enrollments recorded one by one in each second, at most; the rest of the second's
/// are recorded together once it is over, or when the hub shuts down first (a `limit` record,
/// `enroll-refusals`, with their count). Enrollment needs no credential: without this, anyone
/// reaching the hub could fill its disk with records, and fail its log closed.
pub(crate) const RECORDED_REFUSALS_PER_SECOND: u32 = 16;

/// The refused enrollments of the current second, for the audit log.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    window: Mutex<RefusalWindow>,
}

#[derive(Debug, Default)]
struct RefusalWindow {
    /// When the current second began.
    start: Option<Instant>,
    /// Refusals recorded one by one in it.
    recorded: u32,
    /// Refusals past those, not recorded yet.
    held_back: Arc<AtomicU64>,
}

impl Refusals {
    /// Whether the refusal at `now` is recorded on its own. If not, it is counted, and the
    /// first one held back in a second arms the record of them all at its end.
    pub(crate) fn record_alone(&self, auditor: &Auditor, now: Instant) -> bool {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let start = match window.start {
            Some(start) if now.duration_since(start) < Duration::from_secs(1) => start,
            _ => {
                window.start = Some(now);
                window.recorded = 0;
                window.held_back = Arc::default();
                now
            }
        };
        if window.recorded < RECORDED_REFUSALS_PER_SECOND {
            window.recorded += 1;
            return true;
        }
        let held_back = Arc::clone(&window.held_back);
        if held_back.fetch_add(1, Ordering::Relaxed) == 0 {
            // The task does not keep the log open: at a shutdown, `flush` records the count.
            let auditor = auditor.downgrade();
            let end = tokio::time::Instant::from_std(start + Duration::from_secs(1));
            tokio::spawn(async move {
                tokio::time::sleep_until(end).await;
                if let Some(auditor) = auditor.upgrade() {
                    record_held_back(&auditor, &held_back);
                }
            });
        }
        false
    }

    /// Records the refusals held back and not recorded yet (at a shutdown, before the log
    /// closes).
    pub(crate) fn flush(&self, auditor: &Auditor) {
        let held_back = Arc::clone(
            &self
                .window
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .held_back,
        );
        record_held_back(auditor, &held_back);
    }
}

/// One record of the refusals counted in `held_back`, if any (one counted after this arms a
/// record of its own).
fn record_held_back(auditor: &Auditor, held_back: &AtomicU64) {
    let count = held_back.swap(0, Ordering::Relaxed);
    if count == 0 {
        return;
    }
    let event = Event::Limit(entente_audit::LimitHit {
        principal: audit::clear(audit::ANONYMOUS),
        limit: audit::clear("enroll-refusals"),
        scope: audit::clear(""),
        count,
        retry_after_ms: 0,
    });
    // A failed log refuses everything after it anyway.
    let _ = auditor.submit(audit::ANONYMOUS, Outcome::Denied, event);
}

/// Who enrolled, or spent a token on an enrollment then refused, for the audit record.
struct Enrolled {
    principal: String,
    segment: String,
    /// The first 16 hex digits of the token's SHA-256: names the token, reveals nothing.
    token_id: String,
}

/// Enrolls, setting `spent` to who the token was for once it is spent.
async fn enroll_inner<R>(
    services: &Services<R>,
    request: EnrollRequest,
    now: SystemTime,
    spent: &mut Option<Enrolled>,
) -> Result<(EnrollResponse, Enrolled), RpcError> {
    // 1. Everything that can be checked without spending the token.
    let token = JoinToken::parse(&request.token).map_err(|_| RpcError::MalformedToken)?;
    let keys = MessageKeys {
        ed25519: key(&request.ed25519_public, "ed25519_public")?,
        x25519: key(&request.x25519_public, "x25519_public")?,
    };
    crate::csr::precheck(&request.csr).map_err(|e| RpcError::BadCsr(e.to_string()))?;

    // 2. Spend the token.
    let redeemed = services
        .registry
        .redeem_token(&token.hash(), rpc::unix_ms(now))
        .await
        .map_err(|e| match e {
            StoreError::TokenUnknown => RpcError::UnknownToken,
            StoreError::TokenUsed => RpcError::UsedToken,
            StoreError::TokenExpired => RpcError::ExpiredToken,
            other => RpcError::Store(other),
        })?;

    // 3. The token is spent: whatever fails now, it stays used.
    let enrolled = Enrolled {
        segment: Principal::parse(&redeemed.agent)
            .ok()
            .and_then(|p| match p {
                Principal::Agent(agent) => Some(agent.segment().to_owned()),
                Principal::Human(_) => None,
            })
            .unwrap_or_default(),
        principal: redeemed.agent,
        token_id: token_id(&token.hash()),
    };
    let response = issue(services, &enrolled.principal, request.csr, keys, now).await;
    match response {
        Ok(response) => Ok((response, enrolled)),
        Err(e) => {
            *spent = Some(enrolled);
            Err(e.after_redeem())
        }
    }
}

/// The message public keys of an enrolling agent.
struct MessageKeys {
    ed25519: [u8; 32],
    x25519: [u8; 32],
}

/// Issues the credentials of the agent or human a redeemed token names, and records them.
async fn issue<R>(
    services: &Services<R>,
    agent: &str,
    csr: Vec<u8>,
    keys: MessageKeys,
    now: SystemTime,
) -> Result<EnrollResponse, RpcError> {
    let principal = Principal::parse(agent).map_err(|_| RpcError::NotEnrollable)?;
    let segment = match &principal {
        Principal::Agent(agent) if agent.segment() == RESERVED_SEGMENT => {
            return Err(RpcError::NotEnrollable);
        }
        Principal::Agent(agent) => Some(agent.segment().to_owned()),
        Principal::Human(_) => None,
    };
    if principal.trust_domain() != services.ca.trust_domain().as_str() {
        return Err(RpcError::NotEnrollable);
    }
    if services
        .revocations
        .current()
        .is_some_and(|list| list.is_principal_revoked(&principal))
    {
        return Err(RpcError::Revoked);
    }

    if services.anomaly.quarantined(&principal).is_some() {
        return Err(RpcError::Quarantined);
    }
    let _agents = services.agents.lock().await;
    let existing = services.registry.agent(principal.as_str()).await?;
    if existing.as_ref().is_some_and(|a| a.suspended) {
        return Err(RpcError::Suspended);
    }
    let latest = services
        .registry
        .latest_key_bundle(principal.as_str())
        .await?
        .map_or(0, |(epoch, _)| epoch);
    let epoch = existing
        .as_ref()
        .map_or(0, |a| a.key_epoch)
        .max(latest)
        .checked_add(1)
        .ok_or_else(|| RpcError::Ca("key epochs exhausted".into()))?;

    let now_ms = rpc::unix_ms(now);
    let ca_not_after = services.ca.not_after();
    let body = KeyBundleBody {
        principal: principal.clone(),
        ed25519_public: keys.ed25519,
        x25519_public: keys.x25519,
        epoch,
        not_before_ms: rpc::unix_ms(now.checked_sub(CLOCK_SKEW).unwrap_or(now)),
        not_after_ms: rpc::unix_ms(
            now.checked_add(services.key_bundle_ttl)
                .unwrap_or(ca_not_after)
                .min(ca_not_after),
        ),
    };
    let (svid, bundle) = {
        let (ca, principal) = (services.ca.current(), principal.clone());
        rpc::blocking(move || {
            let svid = ca
                .issue_svid(&csr, &principal, now)
                .map_err(rpc::issue_error)?;
            let bundle = ca
                .sign_key_bundle(body)
                .map_err(|e| RpcError::Ca(e.to_string()))?;
            Ok((svid, bundle))
        })
        .await?
    };

    services
        .registry
        .put_key_bundle(principal.as_str(), epoch, &entente_wire::encode(&bundle))
        .await?;
    let (serials, renewals) = existing
        .map(|a| (a.certificate_serials, a.renewed_from))
        .unwrap_or_default();
    let mut record = AgentRecord {
        principal: principal.to_string(),
        segment,
        enrolled_at_ms: now_ms,
        certificate_serials: serials,
        key_epoch: epoch,
        suspended: false,
        renewed_from: renewals,
    };
    rpc::record_serial(&mut record, svid.serial.clone(), None);
    services.registry.put_agent(&record).await?;

    Ok(EnrollResponse {
        certificate_chain: svid.chain_der.iter().map(|c| c.to_vec()).collect(),
        key_bundle: Some(bundle),
        trust_bundle_pem: services.ca.trust_pem(),
        revocations: services
            .revocations
            .current()
            .map(|list| list.to_wire().clone()),
    })
}

/// A 32-byte public key.
fn key(bytes: &[u8], field: &'static str) -> Result<[u8; 32], RpcError> {
    bytes.try_into().map_err(|_| RpcError::BadKey(field))
}
