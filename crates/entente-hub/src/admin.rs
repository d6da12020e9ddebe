//! Remote administration: join tokens and revocation over mutual TLS, and how every
//! administrative act (these and the policy RPCs of [`crate::policies`]) is authorized.
//!
//! | act | a principal in [`HubConfig::admins`](crate::HubConfig::admins) | anyone else, as the running policies decide |
//! |---|---|---|
//! | `CreateToken` for `P` | always | `enroll` on `P` (`Agent::"…"`, in its segment, or `Human::"…"`) |
//! | `Revoke` of principal `P` | always | `revoke` on `P`, for every principal named: all or nothing |
//! | `Revoke` of a serial | always | never: a serial names no principal a policy could scope |
//! | `LoadPolicies`, `ShowPolicies`, `CheckPolicy` | always | `admin` on `Hub::"hub"` ([`HUB_NAME`]) |
//!
//! The listed principals are the break-glass: they may do every administrative act whatever
//! the policies say, so that no policy load can lock every administrator out. For the same
//! reason only they may create a join token for, or revoke, a listed principal (a token for
//! `P` is the power to act as `P`). Whoever asks, an administrator cannot revoke itself. A
//! policy decision is made afresh at each call, uncached: a load that withdraws a permit
//! takes effect at the caller's next call. A denial is `PERMISSION_DENIED` naming the
//! deciding policies (or saying that none permits it, and when the request crossed
//! segments); every answer is counted ([`admin_actions`](crate::HubStats::admin_actions),
//! [`admin_refusals`](crate::HubStats::admin_refusals)).
//!
//! Both exchanges go through the same code as the operator's
//! [`HubHandle::create_token`](crate::HubHandle::create_token) and
//! [`HubHandle::revoke`](crate::HubHandle::revoke): [`crate::enroll::create_token`] and
//! [`put_in_force`]. A remote revocation never replaces what was revoked before: under the
//! revocation lock it takes the list in force (the stored one, put in force at start, or a
//! later one put in force by either path), adds the request's entries, has the CA sign the
//! next version, and stores and puts that in force. The store refuses a version not above the
//! one it holds, so a list written meanwhile by another writer of a shared store is never
//! overwritten either (`ABORTED`: retry).
//!
//! The caller's identity is the connection's, as everywhere: nothing in the request names the
//! administrator. The token is in the response only; no error or counter carries it.

use std::time::{Duration, SystemTime};

use entente_audit::{Event, Outcome, Revocation};
use entente_ca::{
    IntermediateRole, RESERVED_SEGMENT, Revocations, TokenError, VerifiedRevocationList,
};
use entente_policy::{Action, Resource};
use entente_store::StoreError;
use entente_types::Principal;
use entente_wire::{
    CreateTokenRequest, CreateTokenResponse, EnrollResponse, KeyBundle, MAX_SERIAL_BYTES,
    RevokeRequest, RevokeResponse,
};
use tokio::sync::MutexGuard;

use crate::audit;
use crate::renew::Caller;
use crate::rpc::{self, RpcError, Services};
use crate::stats;
use crate::{HUB_NAME, HubError};

/// The gRPC path of join-token creation, served over mutual TLS to the listed administrators
/// and to whoever the policies permit `enroll` on the principal.
pub const CREATE_TOKEN_PATH: &str = "/entente.v1.Admin/CreateToken";

/// The gRPC path of revocation, served over mutual TLS to the listed administrators and to
/// whoever the policies permit `revoke` on each principal.
pub const REVOKE_PATH: &str = "/entente.v1.Admin/Revoke";

/// The lifetime of a join token created with `ttl_seconds` 0: 10 minutes.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(10 * 60);

/// The longest lifetime a remote administrator may give a join token: 7 days.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Serves one `CreateToken` request, counting it.
pub(crate) async fn create_token<R>(
    services: &Services<R>,
    caller: &Caller,
    request: CreateTokenRequest,
    now: SystemTime,
) -> Result<CreateTokenResponse, RpcError> {
    counted(
        services,
        create_token_inner(services, caller, request, now).await,
    )
}

/// Serves one `Revoke` request, counting it.
pub(crate) async fn revoke<R>(
    services: &Services<R>,
    caller: &Caller,
    request: RevokeRequest,
    now: SystemTime,
) -> Result<RevokeResponse, RpcError> {
    counted(services, revoke_inner(services, caller, request, now).await)
}

/// Stores `list` and puts it in force, then closes every live connection it revokes; returns
/// how many were closed, and bumps the policy epoch. The one path of every revocation, local
/// or remote. `_revoking` is the
/// guard of [`Services::revoking`]: store, then put in force, one list at a time.
///
/// A list whose version is not above the one in force or stored is refused
/// ([`HubError::StaleRevocations`]); if the store fails, nothing changes.
pub(crate) async fn put_in_force<R>(
    services: &Services<R>,
    _revoking: &MutexGuard<'_, ()>,
    list: VerifiedRevocationList,
    actor: &str,
) -> Result<usize, HubError> {
    let before = services.revocations.current();
    if let Some(held) = &before
        && list.version() <= held.version()
    {
        return Err(HubError::StaleRevocations {
            held: held.version(),
            got: list.version(),
        });
    }
    services
        .registry
        .put_revocations(list.version(), &list.encode())
        .await
        .map_err(|e| match e {
            StoreError::StaleVersion { stored, offered } => HubError::StaleRevocations {
                held: stored,
                got: offered,
            },
            other => HubError::Store(other),
        })?;
    let list = services.revocations.replace(list)?;
    let closed = services.connections.close_revoked(&list);
    tracing::info!(
        version = list.version(),
        closed,
        actor,
        "revocation list in force"
    );
    // What decisions may depend on changed: no cached decision outlives it.
    services.authz.bump();
    record_revocations(services, before.as_deref(), &list, actor);
    Ok(closed)
}

/// Submits a revocation record of each principal and certificate serial `list` revokes that
/// `before` did not (a serial as `serial:<hex>`); the caller waits for them to be durable.
/// In force whatever the audit log says: a failed log fails the caller's wait.
fn record_revocations<R>(
    services: &Services<R>,
    before: Option<&VerifiedRevocationList>,
    list: &VerifiedRevocationList,
    actor: &str,
) {
    let wire = list.to_wire();
    // A set, not the list: a revocation in a list of tens of thousands compares each once.
    let known: std::collections::HashSet<&String> = before
        .map(|b| b.to_wire().principals.iter().collect())
        .unwrap_or_default();
    let principals = wire
        .principals
        .iter()
        .filter(|p| !known.contains(p))
        .cloned();
    let serials = wire
        .serials
        .iter()
        .filter(|s| before.is_none_or(|b| !b.is_serial_revoked(s)))
        .map(|s| serial_name(s));
    let auditor = services.authz.auditor();
    for revoked in principals.chain(serials) {
        let event = Event::Revocation(Revocation {
            principal: audit::clear(&revoked),
            list_version: list.version(),
            reason: audit::clear(""),
        });
        let _ = auditor.submit(actor, Outcome::Success, event);
    }
}

/// A serial as the audit log names it: `serial:` and its bytes in hex.
pub(crate) fn serial_name(serial: &[u8]) -> String {
    format!(
        "serial:{}",
        serial
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// What a `Revoke` names, as its `revoke` record's target: the principals, then the serials
/// ([`serial_name`]).
pub(crate) fn revoke_target(request: &RevokeRequest) -> String {
    request
        .principals
        .iter()
        .cloned()
        .chain(request.serials.iter().map(|s| serial_name(s)))
        .collect::<Vec<_>>()
        .join(", ")
}

// === CreateToken ===

async fn create_token_inner<R>(
    services: &Services<R>,
    caller: &Caller,
    request: CreateTokenRequest,
    now: SystemTime,
) -> Result<CreateTokenResponse, RpcError> {
    rpc::open(caller)?;
    let principal = Principal::parse(&request.agent)
        .map_err(|e| RpcError::BadRequest(format!("`agent` is not an agent or human id: {e}")))?;
    let trust_domain = services.ca.trust_domain();
    if principal.trust_domain() != trust_domain.as_str() {
        return Err(RpcError::BadRequest(format!(
            "`agent` is not in this hub's trust domain `{trust_domain}`"
        )));
    }
    if let Principal::Agent(agent) = &principal
        && agent.segment() == RESERVED_SEGMENT
    {
        return Err(reserved_segment());
    }
    let ttl = match request.ttl_seconds {
        0 => DEFAULT_TOKEN_TTL,
        secs if secs > MAX_TOKEN_TTL.as_secs() => {
            return Err(RpcError::BadRequest(format!(
                "`ttl_seconds` must be at most {} (7 days)",
                MAX_TOKEN_TTL.as_secs()
            )));
        }
        secs => Duration::from_secs(secs),
    };
    permit(
        services,
        caller,
        Action::Enroll,
        &principal,
        rpc::unix_ms(now),
        &format!("creating a join token for `{principal}`"),
    )?;
    let issued = crate::enroll::create_token(services, principal, ttl, now)
        .await
        .map_err(token_error)?;
    Ok(CreateTokenResponse {
        token: issued.token.as_str().to_owned(),
        expires_at_ms: rpc::unix_ms(issued.expires),
    })
}

/// What a failure of [`crate::enroll::create_token`] means for the administrator.
fn token_error(error: HubError) -> RpcError {
    match error {
        HubError::Token(TokenError::ReservedSegment(_)) => reserved_segment(),
        HubError::Token(TokenError::InvalidTtl) => {
            RpcError::BadRequest("`ttl_seconds` is out of range".into())
        }
        HubError::ForeignAgent(_) => {
            RpcError::BadRequest("`agent` is not in this hub's trust domain".into())
        }
        HubError::Store(e @ StoreError::Full { .. }) => {
            RpcError::TooMany(format!("{e}: wait for some to expire or be used"))
        }
        HubError::Store(e) => RpcError::Store(e),
        other => RpcError::Ca(other.to_string()),
    }
}

fn reserved_segment() -> RpcError {
    RpcError::BadRequest(format!(
        "segment `{RESERVED_SEGMENT}` is reserved for the hub's own services: no join token \
         enrolls into it"
    ))
}

// === Revoke ===

async fn revoke_inner<R>(
    services: &Services<R>,
    caller: &Caller,
    request: RevokeRequest,
    now: SystemTime,
) -> Result<RevokeResponse, RpcError> {
    rpc::open(caller)?;
    if request.principals.is_empty() && request.serials.is_empty() {
        return Err(RpcError::BadRequest(
            "nothing to revoke: name at least one principal or serial".into(),
        ));
    }
    let principals = request
        .principals
        .iter()
        .map(|p| revocable_principal(services, caller, p))
        .collect::<Result<Vec<_>, _>>()?;
    for serial in &request.serials {
        if serial.is_empty() || serial.len() > MAX_SERIAL_BYTES {
            return Err(RpcError::BadRequest(format!(
                "a certificate serial must be 1 to {MAX_SERIAL_BYTES} bytes, not {}",
                serial.len()
            )));
        }
    }
    let mut serials = request.serials.clone();
    // Renewals are recorded under the agents lock: held from the read of the lineage until the
    // list is in force, a renewal racing this revocation is either read here or recorded after
    // it, when its connection (holding a revoked serial) is refused.
    let _agents = if request.serials.is_empty() {
        None
    } else {
        Some(services.agents.lock().await)
    };
    if !request.serials.is_empty() {
        if !listed(services, caller) {
            return Err(RpcError::Denied(
                "revoking by certificate serial is reserved to the administrators the hub's \
                 configuration lists: a serial names no principal a policy could scope; \
                 revoke the principal instead"
                    .into(),
            ));
        }
        // An intermediate that signs (or is about to) is replaced, not revoked: revoked, it
        // would refuse every certificate the hub issues from then on. A retiring one may be
        // (its key leaked): that ends every connection made through it.
        for intermediate in services.ca.current().intermediates() {
            if intermediate.role != IntermediateRole::Retiring
                && request
                    .serials
                    .contains(&crate::rollover::serial_of(&intermediate.cert)?)
            {
                return Err(RpcError::BadRequest(
                    "a serial is the active or staged intermediate CA's: revoked, it would \
                     refuse every certificate the hub issues; roll it over (`entente keys \
                     rotate intermediate`), then revoke it once it is retiring"
                        .into(),
                ));
            }
        }
        // A serial takes the certificates renewed from it along, generation after generation:
        // a stolen certificate renewed before it was revoked would live on in its renewals.
        let records = services.registry.agents().await?;
        serials.extend(rpc::renewed_from(&records, &request.serials));
        let own = own_serials(services, &caller.principal).await?;
        if serials.iter().any(|s| own.contains(s)) {
            return Err(RpcError::SelfRevocation);
        }
    }
    // All or nothing: every principal is decided before anything is revoked.
    let now_ms = rpc::unix_ms(now);
    for principal in &principals {
        permit(
            services,
            caller,
            Action::Revoke,
            principal,
            now_ms,
            &format!("revoking `{principal}`"),
        )?;
    }
    // The list only grows: a principal revoked can never be taken off it. Whoever the
    // configuration does not list revokes only principals the hub knows — enrolled, or
    // connected now — else made-up names could fill it, and stop every later revocation and
    // the CA's rollover.
    if !listed(services, caller) {
        for principal in &principals {
            if !known(services, principal).await? {
                return Err(RpcError::Denied(format!(
                    "`{principal}` is unknown to the hub (never enrolled, not connected): \
                     revoking it is reserved to the administrators the hub's configuration \
                     lists"
                )));
            }
        }
    }

    let revoking = services.revoking.lock().await;
    let base = services.revocations.current();
    let mut next = match &base {
        Some(list) => revocations_of(list)?,
        None => Revocations::new(),
    };
    let mut changed = false;
    for principal in &principals {
        changed |= next.revoke_principal(principal);
    }
    for serial in &serials {
        changed |= next
            .revoke_serial(serial)
            .map_err(|e| RpcError::BadRequest(e.to_string()))?;
    }
    match base {
        // Everything asked is revoked already: nothing to sign, and whatever the list in force
        // revokes was closed when it came into force.
        Some(list) if !changed => Ok(response(&list, 0)),
        _ => {
            let list = sign(services, &next, now, ROOM_FOR_THE_HUB).await?;
            let closed = put_in_force(services, &revoking, list.clone(), caller.principal.as_str())
                .await
                .map_err(put_error)?;
            Ok(response(&list, closed))
        }
    }
}

/// Revokes one certificate serial on the hub's own account (a retired intermediate's): the
/// next list, signed and put in force like an administrator's revocation.
pub(crate) async fn revoke_serial<R>(
    services: &Services<R>,
    serial: &[u8],
    actor: &str,
    now: SystemTime,
) -> Result<(), RpcError> {
    let revoking = services.revoking.lock().await;
    let base = services.revocations.current();
    let mut next = match &base {
        Some(list) => revocations_of(list)?,
        None => Revocations::new(),
    };
    let changed = next
        .revoke_serial(serial)
        .map_err(|e| RpcError::Corrupt(e.to_string()))?;
    if !changed && base.is_some() {
        return Ok(());
    }
    let list = sign(services, &next, now, 0).await?;
    put_in_force(services, &revoking, list, actor)
        .await
        .map_err(put_error)?;
    Ok(())
}

/// Parses one principal to revoke: an agent or human ID of this trust domain, not of the
/// reserved segment, not the caller.
fn revocable_principal<R>(
    services: &Services<R>,
    caller: &Caller,
    principal: &str,
) -> Result<Principal, RpcError> {
    let parsed = Principal::parse(principal)
        .map_err(|e| RpcError::BadRequest(format!("`principals`: {e}")))?;
    let trust_domain = services.ca.trust_domain();
    if parsed.trust_domain() != trust_domain.as_str() {
        return Err(RpcError::BadRequest(format!(
            "`principals`: `{parsed}` is not in this hub's trust domain `{trust_domain}`"
        )));
    }
    if let Principal::Agent(agent) = &parsed
        && agent.segment() == RESERVED_SEGMENT
    {
        return Err(RpcError::BadRequest(format!(
            "`principals`: segment `{RESERVED_SEGMENT}` is the hub's own and cannot be revoked"
        )));
    }
    if parsed == caller.principal {
        return Err(RpcError::SelfRevocation);
    }
    Ok(parsed)
}

/// The certificate serials the hub knows for `principal`: those of its live connections
/// (presented or renewed, and the intermediates they were made through: revoking one would
/// close them) and those in its agent record.
async fn own_serials<R>(
    services: &Services<R>,
    principal: &Principal,
) -> Result<Vec<Vec<u8>>, RpcError> {
    let mut serials = services.connections.serials_of(principal);
    serials.extend(services.connections.issuers_of(principal));
    if let Some(record) = services.registry.agent(principal.as_str()).await? {
        serials.extend(record.certificate_serials);
    }
    Ok(serials)
}

/// The CA's state that `list` is a signature of, to add to.
fn revocations_of(list: &VerifiedRevocationList) -> Result<Revocations, RpcError> {
    let wire = list.to_wire();
    let principals = wire
        .principals
        .iter()
        .map(|p| Principal::parse(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| RpcError::Corrupt(format!("revocation list principal: {e}")))?;
    Revocations::from_parts(wire.version, wire.serials.iter().cloned(), principals)
        .map_err(|e| RpcError::Corrupt(e.to_string()))
}

/// Signs `next` with the CA, and checks the list as every receiver will: its signature, and
/// that it decodes within the hub's bounds (else the stored list would not load at the next
/// start), alone and in the largest answer that carries it (an enrollment's, else no agent
/// could enroll).
async fn sign<R>(
    services: &Services<R>,
    next: &Revocations,
    now: SystemTime,
    room: usize,
) -> Result<VerifiedRevocationList, RpcError> {
    let signed = {
        let (ca, next) = (services.ca.current(), next.clone());
        rpc::blocking(move || {
            ca.sign_revocations(&next, now)
                .map_err(|e| RpcError::CaSign(e.to_string()))
        })
        .await?
    };
    let too_many =
        || RpcError::TooMany("the revocation list would exceed the hub's decoding bounds".into());
    let encoded = entente_wire::encode(&signed);
    let list = VerifiedRevocationList::decode(
        &encoded,
        &services.limits,
        services.ca.current().trust_bundle(),
        now,
    )
    .map_err(|e| match e {
        entente_ca::RevocationError::Wire(_) => too_many(),
        other => RpcError::CaSign(other.to_string()),
    })?;
    let largest = EnrollResponse {
        certificate_chain: vec![
            vec![0; entente_wire::MAX_CERTIFICATE_BYTES];
            entente_wire::MAX_CHAIN_CERTIFICATES
        ],
        key_bundle: Some(KeyBundle {
            principal: "p".repeat(entente_wire::MAX_ID_BYTES),
            signature: vec![0; entente_wire::MAX_SIGNATURE_BYTES],
            ..KeyBundle::default()
        }),
        trust_bundle_pem: "c".repeat(entente_wire::MAX_TRUST_BUNDLE_BYTES),
        revocations: Some(signed),
    };
    let fits = |largest: &EnrollResponse| {
        let largest = entente_wire::encode(largest);
        largest.len() <= services.limits.max_frame_bytes
            && <EnrollResponse as entente_wire::Bounded>::scan(&largest, &services.limits).is_ok()
    };
    if !fits(&largest) {
        return Err(too_many());
    }
    // With `room` more serials of the longest kind: what the hub must still be able to add
    // on its own (a retired intermediate's serial) once administrators are done.
    if room > 0 {
        let mut probe = largest;
        if let Some(list) = probe.revocations.as_mut() {
            list.serials.extend((0..room as u64).map(|i| {
                let mut serial = vec![0x7f; MAX_SERIAL_BYTES];
                serial.splice(..8, i.to_be_bytes());
                serial
            }));
        }
        if !fits(&probe) {
            return Err(RpcError::TooMany(
                "the revocation list would leave no room for the hub's own revocations (an \
                 intermediate's serial at its rollover)"
                    .into(),
            ));
        }
    }
    Ok(list)
}

/// Entries an administrator's revocation leaves room for, for the hub's own.
const ROOM_FOR_THE_HUB: usize = 8;

/// What a failure of [`put_in_force`] means for the administrator.
fn put_error(error: HubError) -> RpcError {
    match error {
        HubError::StaleRevocations { .. } => RpcError::Conflict,
        HubError::Store(e) => RpcError::Store(e),
        other => RpcError::CaSign(other.to_string()),
    }
}

fn response(list: &VerifiedRevocationList, closed: usize) -> RevokeResponse {
    RevokeResponse {
        revocations: Some(list.to_wire().clone()),
        closed_connections: u32::try_from(closed).unwrap_or(u32::MAX),
    }
}

// === authorization ===

/// Authorizes the caller's administrative act on the hub itself (the policy RPCs): `admin`
/// on `Hub::"hub"` for whoever [`HubConfig::admins`](crate::HubConfig::admins) does not list.
/// `what` names the act in a refusal.
pub(crate) fn authorize_on_hub<R>(
    services: &Services<R>,
    caller: &Caller,
    now: SystemTime,
    what: &str,
) -> Result<(), RpcError> {
    rpc::open(caller)?;
    if listed(services, caller) {
        return Ok(());
    }
    rpc::decide_for(
        services,
        caller,
        Action::Admin,
        &Resource::Hub(HUB_NAME),
        rpc::unix_ms(now),
        what,
    )
}

/// Authorizes the caller to do `action` (`enroll`, `revoke`) on `target`: a listed
/// administrator always; anyone else as the running policies decide, and never on a listed
/// administrator (whose powers no policy gives or takes).
fn permit<R>(
    services: &Services<R>,
    caller: &Caller,
    action: Action,
    target: &Principal,
    now_ms: u64,
    what: &str,
) -> Result<(), RpcError> {
    if listed(services, caller) {
        return Ok(());
    }
    // The policies first: who they deny learns nothing of who the listed administrators are.
    rpc::decide_for(
        services,
        caller,
        action,
        &Resource::principal(target),
        now_ms,
        what,
    )?;
    if services.admins.contains(target) {
        return Err(RpcError::Denied(format!(
            "{what} is denied: `{target}` is an administrator the hub's configuration lists, \
             whom only another listed administrator may enroll or revoke"
        )));
    }
    Ok(())
}

/// Whether the caller is listed in [`HubConfig::admins`](crate::HubConfig::admins): the
/// break-glass administrators.
pub(crate) fn listed<R>(services: &Services<R>, caller: &Caller) -> bool {
    services.admins.contains(&caller.principal)
}

/// Whether the hub knows `principal`: enrolled (it has a record), or connected now.
pub(crate) async fn known<R>(
    services: &Services<R>,
    principal: &Principal,
) -> Result<bool, RpcError> {
    Ok(!services.connections.serials_of(principal).is_empty()
        || services.registry.agent(principal.as_str()).await?.is_some())
}

// === helpers ===

/// Counts an answer as an administrative action or a refusal.
pub(crate) fn counted<T>(
    services: &Services<impl Sized>,
    result: Result<T, RpcError>,
) -> Result<T, RpcError> {
    match &result {
        Ok(_) => stats::bump(&services.stats.admin_actions),
        Err(_) => stats::bump(&services.stats.admin_refusals),
    }
    result
}
