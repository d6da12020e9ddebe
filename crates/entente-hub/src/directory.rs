//! The directory: CA-signed key bundles, by principal or by channel.
//!
//! - `principals`: the latest key bundle of each (malformed IDs refused; duplicates answered
//!   once; unknown principals, principals of another trust domain, and expired bundles
//!   omitted). Key bundles are public keys signed by the CA, so any connected principal may
//!   look any up.
//! - `channel`: the policies must allow the caller to publish to the channel — `direct` on a
//!   `_direct` channel, `publish` on any other (or hold its publishes for approval), or
//!   `request` on either (else
//!   `PERMISSION_DENIED`; a `_reply` channel's members are never listed); the answer is the latest bundle of every principal holding a
//!   subscription whose pattern matches the channel ([`Router::subscribers`]), besides the
//!   caller — the members a sender seals to, with itself.
//!
//! Exactly one of the two is given. Revoked principals are omitted either way. At most
//! [`Limits::max_recipients`](entente_wire::Limits) principals are asked for or answered (one
//! fewer for a channel, leaving room for the caller among a sender key's recipients), and
//! the answer must fit in one frame (else `RESOURCE_EXHAUSTED`: nothing is cut silently).
//! Receivers verify every bundle against their trust bundle; the hub's word is not enough.

use std::collections::HashSet;
use std::time::SystemTime;

use entente_policy::{Action, Resource, Subject};
use entente_types::{Channel, Principal, namespace};
use entente_wire::{DirectoryRequest, DirectoryResponse, KeyBundle};

use crate::authz;
use crate::renew::Caller;
use crate::router::Router;
use crate::rpc::{self, RpcError, Services};
use crate::stats;

/// Serves one `Directory` request for `caller`: not on a connection closing (revoked,
/// quarantined), nor while the audit log can't record (`UNAVAILABLE`).
pub(crate) async fn directory<R: Router>(
    services: &Services<R>,
    caller: &Caller,
    request: DirectoryRequest,
    now: SystemTime,
) -> Result<DirectoryResponse, RpcError> {
    rpc::open(caller)?;
    services
        .authz
        .auditor()
        .check()
        .map_err(RpcError::Unaudited)?;
    let caller = &caller.principal;
    let max = services.limits.max_recipients;
    let principals = match (request.principals.is_empty(), request.channel.is_empty()) {
        (false, true) => {
            let principals = named(services, request.principals)?;
            if principals.len() > max {
                return Err(RpcError::TooMany(format!(
                    "more than {max} principals; ask for fewer"
                )));
            }
            principals
        }
        (true, false) => {
            // The members besides the caller, who seals to them and to itself: a sender key
            // names at most `max` recipients, the sender one of them.
            let mut members = members(services, caller, &request.channel, now).await?;
            members.retain(|member| member != caller);
            let others = max.saturating_sub(1);
            if members.len() > others {
                return Err(RpcError::TooMany(format!(
                    "`{}` has more than {others} members besides you: a sender key names at \
                     most {max} recipients, you among them",
                    request.channel
                )));
            }
            members
        }
        _ => {
            return Err(RpcError::BadRequest(
                "give either principals or a channel".into(),
            ));
        }
    };

    let revocations = services.revocations.current();
    let now_ms = rpc::unix_ms(now);
    let mut bundles = Vec::with_capacity(principals.len());
    for principal in principals {
        if revocations
            .as_ref()
            .is_some_and(|list| list.is_principal_revoked(&principal))
        {
            continue;
        }
        let Some((_, bytes)) = services
            .registry
            .latest_key_bundle(principal.as_str())
            .await?
        else {
            continue;
        };
        let bundle: KeyBundle = entente_wire::decode(&bytes, &services.limits)
            .map_err(|e| RpcError::Corrupt(format!("key bundle of `{principal}`: {e}")))?;
        if bundle.not_after_ms >= now_ms {
            bundles.push(bundle);
        }
    }
    let response = DirectoryResponse { bundles };
    if !rpc::fits(&response, &services.limits) {
        return Err(RpcError::TooMany(
            "the key bundles do not fit in one answer; ask for fewer".into(),
        ));
    }
    Ok(response)
}

/// The principals named in a request, parsed and deduplicated, in the order given; those of
/// another trust domain are left out.
fn named<R>(services: &Services<R>, names: Vec<String>) -> Result<Vec<Principal>, RpcError> {
    let trust_domain = services.ca.trust_domain().as_str();
    let mut seen = HashSet::with_capacity(names.len());
    let mut principals = Vec::with_capacity(names.len());
    for name in names {
        let principal =
            Principal::parse(&name).map_err(|e| RpcError::BadRequest(format!("principal: {e}")))?;
        if principal.trust_domain() == trust_domain && seen.insert(name) {
            principals.push(principal);
        }
    }
    Ok(principals)
}

/// The principals subscribed to `channel`, if `caller` may publish to it (or send requests on
/// it). A `_reply` channel is never looked up: reply grants name their one recipient.
async fn members<R: Router>(
    services: &Services<R>,
    caller: &Principal,
    channel: &str,
    now: SystemTime,
) -> Result<Vec<Principal>, RpcError> {
    let channel =
        Channel::parse(channel).map_err(|e| RpcError::BadRequest(format!("channel: {e}")))?;
    if channel.tokens().next() == Some(namespace::REPLY_PREFIX) {
        stats::bump(&services.stats.denials);
        return Err(RpcError::Denied(format!(
            "the members of `{channel}` are not listed: a reply goes to its requester alone"
        )));
    }
    let subject = Subject::new(caller.clone(), Vec::<String>::new());
    let resource = Resource::Channel(&channel);
    let now_ms = rpc::unix_ms(now);
    let decide = |action| match action {
        Action::Publish => services
            .authz
            .decide_publish_or_hold(&subject, &channel, now_ms)
            .map(drop),
        _ => services.authz.decide(&subject, action, &resource, now_ms),
    };
    let allowed = match decide(authz::transport_action(&channel)) {
        Ok(()) => Ok(()),
        Err(transport) => decide(Action::Request).map_err(|_| transport),
    };
    if let Err(denied) = allowed {
        if denied.by_policy() {
            stats::bump(&services.stats.denials);
        }
        return Err(denied.rpc(format_args!("publishing to `{channel}`")));
    }
    let mut members = services.router.subscribers(&channel).await;
    // Durable consumers are members even while offline: what is sealed now is stored for
    // them, if their owner may still subscribe to the channel and is not quarantined (its
    // keys may be a thief's: what is published meanwhile is not sealed to it). Decided as a
    // session of the owner's would, from a cache (per epoch, recorded when made).
    let live: HashSet<Principal> = members.iter().cloned().collect();
    for owner in services.streams.members(&channel) {
        if live.contains(&owner) || services.anomaly.quarantined(&owner).is_some() {
            continue;
        }
        if services
            .authz
            .member_may_subscribe(&owner, &channel, now_ms)
        {
            members.push(owner);
        }
    }
    Ok(members)
}
