//! What the hub does with the risk [`crate::anomaly`] scores (docs/ANOMALY.md): throttle, then
//! quarantine; and the quarantine RPC ([`QUARANTINE_PATH`], administrators: `entente
//! quarantine list|release|impose`).
//!
//! [`watch_loop`] closes every agent's window each [`AnomalyConfig::window`] and acts on what
//! changed: a throttle begun or ended is logged (its refusals are audited as rate-limit hits,
//! `anomaly-throttle`); a risk at the quarantine threshold quarantines the agent; and, when a
//! running policy reads `context.risk`, any change of risk bumps the policy epoch so that
//! cached decisions and subscriptions are decided again.
//!
//! A quarantine, by the detector or by an administrator ([`impose`]):
//! - is in force at once: the agent's connections close (`PERMISSION_DENIED`, saying it is
//!   quarantined), its new connections are refused after the handshake, and renewals and
//!   enrollments of it are refused;
//! - is stored (the config key [`QUARANTINE_KEY`], and the agent's record marked suspended),
//!   so that it outlives a restart of the hub;
//! - is recorded in the audit log (a `quarantine` record with the risk and the evidence) and
//!   logged at `warn`.
//!
//! A store that refuses an imposed quarantine leaves it in force on this hub (the caller is
//! told it is not kept); one that refuses a lift leaves the quarantine in force everywhere.
//! Only an administrator lifts it ([`release`]), with a reason, recorded the same way; the
//! agent's risk starts again from zero, its baseline kept.

use std::sync::Arc;
use std::time::SystemTime;

use entente_audit::{Event, Outcome, Quarantine, QuarantineAction};
use entente_types::Principal;
use entente_wire::{
    Limits, QuarantineRequest, QuarantineResponse, QuarantinedAgent, StoredQuarantine,
};
use prost::Message as _;
use tokio::sync::watch;

use crate::anomaly::{Anomaly, AnomalyConfig, Quarantined, Step};
use crate::audit::{self, HUB_ACTOR};
use crate::control::CloseReason;
use crate::registry::Registry;
use crate::renew::Caller;
use crate::rpc::{self, RpcError, Services};
use crate::{HubError, admin, stats};

/// The gRPC path of the quarantine RPC.
pub const QUARANTINE_PATH: &str = "/entente.v1.Admin/Quarantine";

/// The store's config key of the quarantined agents ([`StoredQuarantine`]).
pub const QUARANTINE_KEY: &str = "quarantine";

/// The most agents quarantined at once (what the stored list may hold).
pub const MAX_QUARANTINED: usize = entente_wire::MAX_GRANT_RECORDS;

/// Who a quarantine imposed by the detector is by.
const BY_HUB: &str = "hub";

/// Puts the stored quarantine list in force (at start).
pub(crate) async fn restore(
    anomaly: &Anomaly,
    registry: &Registry,
    limits: &Limits,
) -> Result<(), HubError> {
    let Some(bytes) = registry.config(QUARANTINE_KEY).await? else {
        return Ok(());
    };
    let corrupt = |why: String| HubError::StoredQuarantine(why);
    let stored: StoredQuarantine =
        entente_wire::decode(&bytes, limits).map_err(|e| corrupt(e.to_string()))?;
    for agent in stored.quarantined {
        let principal = Principal::parse(&agent.principal)
            .map_err(|e| corrupt(format!("`{}`: {e}", agent.principal.escape_debug())))?;
        anomaly.impose(Quarantined {
            principal,
            since_ms: agent.since_ms,
            risk: u8::try_from(agent.risk.min(100)).unwrap_or(100),
            evidence: agent.evidence,
            by: agent.by,
        });
    }
    Ok(())
}

/// Closes the windows every [`AnomalyConfig::window`] and acts on what changed, until
/// shutdown.
pub(crate) async fn watch_loop<R: Send + Sync + 'static>(
    services: Arc<Services<R>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let window = services.anomaly.config().window;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + window, window);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.changed() => return,
        }
        let steps = services.anomaly.tick(rpc::unix_ms(SystemTime::now()));
        act(&services, steps).await;
    }
}

/// Acts on the steps of one tick.
async fn act<R>(services: &Services<R>, steps: Vec<Step>) {
    keep_unkept(services).await;
    let config: &AnomalyConfig = services.anomaly.config();
    let mut risk_changed = false;
    for step in steps {
        risk_changed |= step.risk != step.risk_before;
        match step.throttled {
            Some(true) => {
                stats::bump(&services.stats.throttled_agents);
                tracing::warn!(
                    principal = %step.principal,
                    risk = step.risk,
                    evidence = %step.evidence,
                    rate = config.throttled.per_second,
                    "agent throttled"
                );
            }
            Some(false) => {
                tracing::info!(principal = %step.principal, risk = step.risk, "throttle lifted");
            }
            None => {}
        }
        if step.quarantine && services.admins.contains(&step.principal) {
            // A listed administrator stays throttled: quarantined, nobody may be left to lift
            // a quarantine (only they may quarantine one another).
            tracing::warn!(
                principal = %step.principal,
                risk = step.risk,
                evidence = %step.evidence,
                "a listed administrator reached the quarantine threshold: throttled, not quarantined"
            );
        } else if step.quarantine && services.anomaly.quarantined(&step.principal).is_none() {
            let quarantined = Quarantined {
                principal: step.principal,
                since_ms: rpc::unix_ms(SystemTime::now()),
                risk: step.risk,
                evidence: step.evidence,
                by: BY_HUB.to_owned(),
            };
            // A failure is logged inside; the quarantine is in force whatever the store says.
            let _ = impose(services, quarantined, HUB_ACTOR).await;
        }
    }
    if risk_changed && services.authz.reads_risk() {
        services.authz.bump();
    }
}

/// Quarantines an agent: in force at once, then stored, recorded and logged. Returns how many
/// of its connections were closed, or `None` if it was quarantined already. An error (the
/// store, the audit log) leaves the quarantine in force on this hub.
pub(crate) async fn impose<R>(
    services: &Services<R>,
    quarantined: Quarantined,
    actor: &str,
) -> Result<Option<usize>, RpcError> {
    let mut unkept = services.anomaly.storing.lock().await;
    let principal = quarantined.principal.clone();
    if services.anomaly.quarantined(&principal).is_none()
        && services.anomaly.quarantine_count() >= MAX_QUARANTINED
    {
        tracing::error!(%principal, "not quarantined: the quarantine list is full");
        return Err(RpcError::TooMany(format!(
            "{MAX_QUARANTINED} agents are quarantined, the most the hub keeps: release some first"
        )));
    }
    if services.anomaly.quarantined(&principal).is_none() && !room_for(services, &quarantined) {
        tracing::error!(%principal, "not quarantined: the quarantine list is full");
        return Err(RpcError::TooMany(
            "the quarantine list would outgrow what the hub reads back at start (or sends in \
             one answer): release some first"
                .into(),
        ));
    }
    if !services.anomaly.impose(quarantined.clone()) {
        // In force already: kept again, should an earlier attempt have failed to keep it.
        store(services, None).await?;
        suspend(services, &principal, true).await?;
        unkept.retain(|p| *p != principal);
        return Ok(None);
    }
    let closed = services
        .connections
        .close_principal(&principal, CloseReason::Quarantined);
    stats::add(&services.stats.quarantined_disconnects, closed as u64);
    stats::bump(&services.stats.quarantines);
    tracing::warn!(
        %principal,
        risk = quarantined.risk,
        evidence = ?quarantined.evidence,
        by = %quarantined.by,
        closed_connections = closed,
        "agent quarantined"
    );
    let stored = store(services, None).await;
    let suspended = suspend(services, &principal, true).await;
    let event = Event::Quarantine(Quarantine {
        principal: audit::clear(principal.as_str()),
        action: QuarantineAction::Imposed,
        risk: u32::from(quarantined.risk),
        evidence: audit::clear(&quarantined.evidence),
    });
    let recorded = services
        .authz
        .auditor()
        .record(actor, Outcome::Success, event)
        .await
        .map_err(RpcError::Unaudited);
    notify(services, &quarantined, "imposed");
    for result in [&stored, &suspended, &recorded] {
        if let Err(e) = result {
            tracing::error!(%principal, error = %e, "quarantine in force here but not kept");
        }
    }
    if (stored.is_err() || suspended.is_err()) && !unkept.contains(&principal) {
        unkept.push(principal.clone());
    }
    stored.and(suspended).and(recorded).map(|()| Some(closed))
}

/// Lifts `principal`'s quarantine (by `actor`, for `reason`): stored, recorded and logged.
pub(crate) async fn release<R>(
    services: &Services<R>,
    principal: &Principal,
    reason: &str,
    actor: &str,
) -> Result<Quarantined, RpcError> {
    let mut unkept = services.anomaly.storing.lock().await;
    if services.anomaly.quarantined(principal).is_none() {
        return Err(RpcError::Precondition(format!(
            "`{principal}` is not quarantined"
        )));
    }
    // Its record unsuspended, then the list stored without it, before it is lifted: a store
    // that refuses either leaves the quarantine in force (and a retry completes it).
    suspend(services, principal, false).await?;
    store(services, Some(principal)).await?;
    unkept.retain(|p| p != principal);
    let lifted = services
        .anomaly
        .release(principal)
        .ok_or_else(|| RpcError::Precondition(format!("`{principal}` is not quarantined")))?;
    tracing::info!(%principal, by = actor, "quarantine lifted");
    notify(
        services,
        &Quarantined {
            principal: principal.clone(),
            since_ms: rpc::unix_ms(SystemTime::now()),
            risk: 0,
            evidence: reason.to_owned(),
            by: actor.to_owned(),
        },
        "lifted",
    );
    let event = Event::Quarantine(Quarantine {
        principal: audit::clear(principal.as_str()),
        action: QuarantineAction::Lifted,
        risk: 0,
        evidence: audit::clear(reason),
    });
    services
        .authz
        .auditor()
        .record(actor, Outcome::Success, event)
        .await
        .map_err(RpcError::Unaudited)?;
    if services.authz.reads_risk() {
        services.authz.bump();
    }
    Ok(lifted)
}

/// Serves one `Quarantine` request.
pub(crate) async fn quarantine<R>(
    services: &Services<R>,
    caller: &Caller,
    request: QuarantineRequest,
    now: SystemTime,
) -> Result<QuarantineResponse, RpcError> {
    let what = match (request.release.is_empty(), request.impose.is_empty()) {
        (true, true) => "listing quarantined agents",
        (false, true) => "lifting a quarantine",
        (true, false) => "quarantining an agent",
        (false, false) => {
            return Err(RpcError::BadRequest(
                "give `release` or `impose`, not both".into(),
            ));
        }
    };
    admin::authorize_on_hub(services, caller, now, what)?;
    let reason = request.reason.trim();
    let named = |text: &str| {
        Principal::parse(text)
            .map_err(|e| RpcError::BadRequest(format!("`{}`: {e}", text.escape_debug())))
    };
    if (!request.release.is_empty() || !request.impose.is_empty()) && reason.is_empty() {
        return Err(RpcError::BadRequest(
            "say why: `reason` is required to lift or impose a quarantine".into(),
        ));
    }
    // Shown to operators and approvers as evidence: it can't disguise what it says.
    if reason.chars().any(entente_types::text::is_deceptive) {
        return Err(RpcError::BadRequest(
            "`reason` holds control or invisible formatting characters".into(),
        ));
    }
    let actor = caller.principal.as_str();
    let mut response = QuarantineResponse::default();
    if !request.release.is_empty() {
        let principal = named(&request.release)?;
        // Only a listed administrator quarantines another (below): only one lifts it. A
        // listed administrator's powers no policy gives back (its stolen key, say).
        if !admin::listed(services, caller) && services.admins.contains(&principal) {
            return Err(RpcError::Denied(format!(
                "lifting the quarantine of `{principal}` is denied: it is an administrator the \
                 hub's configuration lists, whose quarantine only another listed administrator \
                 may lift"
            )));
        }
        response.released = Some(to_wire(
            &release(services, &principal, reason, actor).await?,
        ));
    }
    if !request.impose.is_empty() {
        let principal = named(&request.impose)?;
        if principal == caller.principal {
            return Err(RpcError::Precondition(
                "an administrator cannot quarantine itself: another administrator must".into(),
            ));
        }
        let trust_domain = services.ca.trust_domain();
        if principal.trust_domain() != trust_domain.as_str() {
            return Err(RpcError::BadRequest(format!(
                "`{principal}` is not in this hub's trust domain `{trust_domain}`"
            )));
        }
        // As for revocations: a listed administrator's powers no policy gives or takes, and
        // made-up names would fill the list (and the stored list, which the hub reads at
        // start).
        if !admin::listed(services, caller) {
            if services.admins.contains(&principal) {
                return Err(RpcError::Denied(format!(
                    "quarantining `{principal}` is denied: it is an administrator the hub's \
                     configuration lists, whom only another listed administrator may quarantine"
                )));
            }
            if !admin::known(services, &principal).await? {
                return Err(RpcError::Denied(format!(
                    "`{principal}` is unknown to the hub (never enrolled, not connected): \
                     quarantining it is reserved to the administrators the hub's configuration \
                     lists"
                )));
            }
        }
        let quarantined = Quarantined {
            risk: services.anomaly.risk(&principal),
            principal: principal.clone(),
            since_ms: rpc::unix_ms(now),
            evidence: reason.to_owned(),
            by: actor.to_owned(),
        };
        let closed = impose(services, quarantined, actor).await?.ok_or_else(|| {
            RpcError::Precondition(format!("`{principal}` is quarantined already"))
        })?;
        response.closed_connections = u32::try_from(closed).unwrap_or(u32::MAX);
    }
    response.quarantined = services
        .anomaly
        .quarantine_list()
        .iter()
        .map(to_wire)
        .collect();
    Ok(response)
}

/// Whether the list in force with `adding` still fits what the hub reads back at start
/// ([`restore`]) and what a `Quarantine` answer carries (the list, and an agent released).
fn room_for<R>(services: &Services<R>, adding: &Quarantined) -> bool {
    let mut quarantined: Vec<QuarantinedAgent> = services
        .anomaly
        .quarantine_list()
        .iter()
        .map(to_wire)
        .collect();
    let added = to_wire(adding);
    quarantined.push(added.clone());
    let stored = StoredQuarantine { quarantined };
    let fits = rpc::fits(&stored, &services.limits);
    let answer = QuarantineResponse {
        quarantined: stored.quarantined,
        released: Some(added),
        closed_connections: u32::MAX,
    };
    fits && rpc::fits(&answer, &services.limits)
}

/// Stores again the quarantines in force here that the store did not keep (a failure when
/// they were imposed), until it does.
async fn keep_unkept<R>(services: &Services<R>) {
    let mut unkept = services.anomaly.storing.lock().await;
    if unkept.is_empty() {
        return;
    }
    unkept.retain(|p| services.anomaly.quarantined(p).is_some());
    if let Err(e) = store(services, None).await {
        tracing::error!(error = %e, "quarantines in force here still not kept");
        return;
    }
    let mut still = Vec::new();
    for principal in unkept.drain(..) {
        if let Err(e) = suspend(services, &principal, true).await {
            tracing::error!(%principal, error = %e, "quarantine in force here still not kept");
            still.push(principal);
        } else {
            tracing::info!(%principal, "quarantine kept");
        }
    }
    *unkept = still;
}

/// Stores the quarantine list in force, without `lifting` if given.
async fn store<R>(services: &Services<R>, lifting: Option<&Principal>) -> Result<(), RpcError> {
    let stored = StoredQuarantine {
        quarantined: services
            .anomaly
            .quarantine_list()
            .iter()
            .filter(|q| Some(&q.principal) != lifting)
            .map(to_wire)
            .collect(),
    };
    services
        .registry
        .put_config(QUARANTINE_KEY, &stored.encode_to_vec())
        .await?;
    Ok(())
}

/// Marks the agent's record suspended, or not (renewals and enrollments of a suspended agent
/// are refused, by every hub of the store); an agent without a record is left so.
async fn suspend<R>(
    services: &Services<R>,
    principal: &Principal,
    suspended: bool,
) -> Result<(), RpcError> {
    let _agents = services.agents.lock().await;
    let Some(mut record) = services.registry.agent(principal.as_str()).await? else {
        return Ok(());
    };
    if record.suspended != suspended {
        record.suspended = suspended;
        services.registry.put_agent(&record).await?;
    }
    Ok(())
}

/// Announces a quarantine imposed or lifted to the webhook, if there is one.
fn notify<R>(services: &Services<R>, quarantined: &Quarantined, action: &str) {
    let notice = serde_json::json!({
        "event": "quarantine",
        "action": action,
        "principal": quarantined.principal.as_str(),
        "risk": quarantined.risk,
        "evidence": quarantined.evidence,
        "by": quarantined.by,
        "at_ms": quarantined.since_ms,
        "trust_domain": quarantined.principal.trust_domain(),
    });
    services
        .notifier
        .notify(quarantined.principal.as_str(), &notice);
}

fn to_wire(quarantined: &Quarantined) -> QuarantinedAgent {
    QuarantinedAgent {
        principal: quarantined.principal.to_string(),
        since_ms: quarantined.since_ms,
        risk: u32::from(quarantined.risk),
        evidence: quarantined.evidence.clone(),
        by: quarantined.by.clone(),
    }
}
