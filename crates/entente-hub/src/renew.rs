//! Renewal: a new X509-SVID for the principal of a live mTLS connection, requested over that
//! connection, before its certificate expires.
//!
//! The certificate names the connection's principal whatever the CSR asks for. Its serial is
//! recorded in the agent record (created if the principal has none, e.g. an identity the
//! operator issued directly) and on the connection, whose credential expiry moves to the new
//! certificate's `not_after`: the connection, and its sessions, stay up across renewals. The
//! same goes for the principal's other live connections holding the certificate the renewing
//! connection presented, such as a framed session's, which carries no calls
//! ([`Connections::renewed`](crate::connections::Connections::renewed)). A revoked principal,
//! a suspended agent, or a connection closing cannot renew.

use std::time::SystemTime;

use entente_crypto::KeyBundleIn;
use entente_store::AgentRecord;
use entente_types::Principal;
use entente_wire::{KeyBundle, RenewRequest, RenewResponse};

use crate::control::ConnectionControl;
use crate::rpc::{self, RpcError, Services};
use crate::stats;

/// The connection a renewal arrives on.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The connection's ID in [`Connections`](crate::connections::Connections).
    pub(crate) connection: u64,
    pub(crate) principal: Principal,
    pub(crate) control: ConnectionControl,
    /// A permit of each of the connection's unary calls running, as many as it may have
    /// streams: a call whose stream the peer reset runs on to its end (and its record), and
    /// still counts until then.
    pub(crate) calls: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Serves a renewal on the record: refused at once while the audit log is failed; a renewal
/// is recorded as a `Renewal` (the new certificate's SHA-256 and expiry: what links a
/// certificate to its principal) before it is in force, a refusal as an `admin` `renew` with
/// its reason; answered once the record is durable.
pub(crate) async fn recorded<R>(
    services: &Services<R>,
    caller: &Caller,
    request: RenewRequest,
    now: SystemTime,
) -> Result<RenewResponse, RpcError> {
    let auditor = services.authz.auditor();
    if !auditor.is_on() {
        return renew(services, caller, request, now).await;
    }
    auditor.check().map_err(RpcError::Unaudited)?;
    match renew(services, caller, request, now).await {
        Ok(response) => Ok(response),
        Err(e) => {
            let refused = std::future::ready(Err::<RenewResponse, _>(e));
            rpc::audited(
                services,
                caller.principal.as_str(),
                "renew",
                String::new(),
                refused,
            )
            .await
        }
    }
}

/// The key bundle a renewal hands back: the latest stored one, or, once past half its life
/// ([`HubConfig::key_bundle_ttl`](crate::HubConfig::key_bundle_ttl)), the same keys and epoch
/// signed again for a fresh validity and stored in its place, so that an agent that keeps
/// renewing its certificate never outlives its bundle (its peers would refuse it, and its own
/// SDK would refuse to load it). The stored bundle as it is when a new one would end no later
/// (the CA's validity cuts both), and when it no longer verifies under the trust bundle (at
/// the end of its life, if that has passed): the store is not taken on its word. Called under
/// the agents lock; an extension is recorded (`extend-key-bundle`) before it is stored.
async fn refreshed<R>(
    services: &Services<R>,
    principal: &Principal,
    epoch: u64,
    bundle: KeyBundle,
    now: SystemTime,
) -> Result<KeyBundle, RpcError> {
    let now_ms = rpc::unix_ms(now);
    let ttl_ms = u64::try_from(services.key_bundle_ttl.as_millis()).unwrap_or(u64::MAX);
    if bundle.not_after_ms.saturating_sub(now_ms) >= ttl_ms / 2 {
        return Ok(bundle);
    }
    let not_after = now_ms
        .saturating_add(ttl_ms)
        .min(rpc::unix_ms(services.ca.not_after()));
    if not_after <= bundle.not_after_ms {
        return Ok(bundle);
    }
    let ca = services.ca.current();
    let at = now_ms.min(bundle.not_after_ms);
    let Ok(verified) =
        KeyBundleIn::from_wire(bundle.clone()).and_then(|b| b.verify(ca.trust_bundle(), at))
    else {
        return Ok(bundle);
    };
    let mut body = verified.body().clone();
    body.not_before_ms = rpc::unix_ms(now.checked_sub(crate::enroll::CLOCK_SKEW).unwrap_or(now));
    body.not_after_ms = not_after;
    // On the record before it is in force.
    let event = entente_audit::Event::Admin(entente_audit::Admin {
        operation: crate::audit::clear("extend-key-bundle"),
        target: crate::audit::clear(principal.as_str()),
        detail: crate::audit::clear(&format!("epoch {epoch}, valid to {not_after} (Unix ms)")),
    });
    services
        .authz
        .auditor()
        .submit(principal.as_str(), entente_audit::Outcome::Success, event)
        .map_err(RpcError::Unaudited)?;
    let resigned = rpc::blocking(move || {
        ca.sign_key_bundle(body)
            .map_err(|e| RpcError::Ca(e.to_string()))
    })
    .await?;
    services
        .registry
        .put_key_bundle(principal.as_str(), epoch, &entente_wire::encode(&resigned))
        .await?;
    Ok(resigned)
}

/// Serves one `Renew` request, counting it.
pub(crate) async fn renew<R>(
    services: &Services<R>,
    caller: &Caller,
    request: RenewRequest,
    now: SystemTime,
) -> Result<RenewResponse, RpcError> {
    let result = renew_inner(services, caller, request, now).await;
    match &result {
        Ok(_) => stats::bump(&services.stats.renewals),
        Err(_) => stats::bump(&services.stats.renew_refusals),
    }
    result
}

async fn renew_inner<R>(
    services: &Services<R>,
    caller: &Caller,
    request: RenewRequest,
    now: SystemTime,
) -> Result<RenewResponse, RpcError> {
    if let Some(reason) = caller.control.reason() {
        return Err(RpcError::Closed(reason));
    }
    // The connection's timer, on a clock that stops while the host sleeps, may not have
    // closed it yet: a certificate past its end by the wall clock renews nothing.
    if caller.control.expires_at().is_some_and(|end| end <= now) {
        return Err(RpcError::Closed(
            crate::control::CloseReason::CertificateExpired,
        ));
    }
    let principal = &caller.principal;
    if services
        .revocations
        .current()
        .is_some_and(|list| list.is_principal_revoked(principal))
    {
        return Err(RpcError::Revoked);
    }
    if services.anomaly.quarantined(principal).is_some() {
        return Err(RpcError::Quarantined);
    }
    if services
        .registry
        .agent(principal.as_str())
        .await?
        .is_some_and(|a| a.suspended)
    {
        return Err(RpcError::Suspended);
    }
    let svid = {
        let (ca, principal) = (services.ca.current(), principal.clone());
        rpc::blocking(move || {
            ca.issue_svid(&request.csr, &principal, now)
                .map_err(rpc::issue_error)
        })
        .await?
    };
    // On the record before it is in force (its serial stored, the connection's expiry moved):
    // a renewal that can't be recorded is not made.
    let auditor = services.authz.auditor();
    if auditor.is_on() {
        let leaf = svid.chain_der.first().map_or(&[][..], |c| c.as_ref());
        let event = entente_audit::Event::Renewal(entente_audit::Renewal {
            principal: crate::audit::clear(principal.as_str()),
            certificate: crate::audit::certificate_hash(leaf),
            not_after_ms: crate::audit::not_after_ms(leaf),
        });
        auditor
            .record(principal.as_str(), entente_audit::Outcome::Success, event)
            .await
            .map_err(RpcError::Unaudited)?;
    }

    // Record the serial: read-modify-write under the agents lock (the certificate was issued
    // outside it, so a slow key store does not hold up other renewals and enrollments).
    let key_bundle = {
        let _agents = services.agents.lock().await;
        let existing = services.registry.agent(principal.as_str()).await?;
        if existing.as_ref().is_some_and(|a| a.suspended) {
            return Err(RpcError::Suspended);
        }
        // Read under the lock an enrollment stores a new epoch under: the latest is the one
        // extended, if any is.
        let key_bundle = match services
            .registry
            .latest_key_bundle(principal.as_str())
            .await?
        {
            Some((epoch, bytes)) => {
                let bundle = entente_wire::decode::<KeyBundle>(&bytes, &services.limits)
                    .map_err(|e| RpcError::Corrupt(format!("key bundle of `{principal}`: {e}")))?;
                Some(refreshed(services, principal, epoch, bundle, now).await?)
            }
            None => None,
        };
        let mut record = existing.unwrap_or_else(|| AgentRecord {
            principal: principal.to_string(),
            segment: match principal {
                Principal::Agent(agent) => Some(agent.segment().to_owned()),
                Principal::Human(_) => None,
            },
            enrolled_at_ms: rpc::unix_ms(now),
            certificate_serials: Vec::new(),
            key_epoch: 0,
            suspended: false,
            renewed_from: Vec::new(),
        });
        // Renewed from the certificate the connection presented: a revocation of that serial
        // reaches this one too (`admin::revoke`).
        let presented = services.connections.presented_serial(caller.connection);
        rpc::record_serial(&mut record, svid.serial.clone(), presented);
        services.registry.put_agent(&record).await?;
        key_bundle
    };

    services
        .connections
        .renewed(caller.connection, svid.serial, svid.not_after)
        .map_err(RpcError::Closed)?;
    Ok(RenewResponse {
        certificate_chain: svid.chain_der.iter().map(|c| c.to_vec()).collect(),
        trust_bundle_pem: services.ca.trust_pem(),
        key_bundle,
    })
}
