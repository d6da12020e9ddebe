//! The administrators' policy RPCs: load a new policy set, show the running one, and check
//! how it decides one request. Authorized like CreateToken and Revoke ([`crate::admin`]): a
//! principal in [`HubConfig::admins`](crate::HubConfig::admins) always, anyone else if the
//! running policies permit it `admin` on the hub itself, `Hub::"hub"`
//! ([`admin::authorize_on_hub`]); each answer is counted. The decision is made at each call,
//! so a load that withdraws the caller's own permit takes effect at its next call.
//!
//! LoadPolicies goes through the same code as the operator's
//! [`HubHandle::load_policies`](crate::HubHandle::load_policies): validate with the base
//! policies, store, put in force, bump the epoch; all or nothing. A refused set is
//! `INVALID_ARGUMENT` whose message lists each problem on its own line, `file:line:col: …`.
//!
//! CheckPolicy answers as the hub decides: the structural rules first (own `_direct` and
//! `_reply` namespaces, reply grants), then the running policies, with the facts a session of
//! the principal has now: its active grants and its risk score (no roles).

use std::time::SystemTime;

use entente_policy::{Action, BASE_POLICIES, Resource, Subject, UnknownAction};
use entente_types::namespace::{self, DIRECT_PREFIX, REPLY_PREFIX};
use entente_types::{AgentId, Channel, ChannelPattern, HumanId, Principal};
use entente_wire::{
    CheckPolicyRequest, CheckPolicyResponse, LoadPoliciesRequest, LoadPoliciesResponse,
    MAX_EXPLANATION_BYTES, PolicySource, PolicySummary, ShowPoliciesRequest, ShowPoliciesResponse,
};

use crate::HUB_NAME;
use crate::admin;
use crate::authz::{BASE_SOURCE, LoadPoliciesError};
use crate::renew::Caller;
use crate::rpc::{self, RpcError, Services};

/// The gRPC path of loading a policy set, served over mutual TLS to administrators (listed,
/// or permitted `admin` on `Hub::"hub"`).
pub const LOAD_POLICIES_PATH: &str = "/entente.v1.Admin/LoadPolicies";

/// The gRPC path of showing the running policy set, served over mutual TLS to administrators
/// (listed, or permitted `admin` on `Hub::"hub"`).
pub const SHOW_POLICIES_PATH: &str = "/entente.v1.Admin/ShowPolicies";

/// The gRPC path of checking a policy decision, served over mutual TLS to administrators
/// (listed, or permitted `admin` on `Hub::"hub"`).
pub const CHECK_POLICY_PATH: &str = "/entente.v1.Admin/CheckPolicy";

/// Most problems a refused load lists; the rest are counted.
const MAX_LISTED_PROBLEMS: usize = 64;

/// Longest problem line in a refused load's message.
const MAX_PROBLEM_BYTES: usize = 512;

/// Serves one `LoadPolicies` request, counting it.
pub(crate) async fn load<R>(
    services: &Services<R>,
    caller: &Caller,
    request: LoadPoliciesRequest,
) -> Result<LoadPoliciesResponse, RpcError> {
    admin::counted(services, load_inner(services, caller, request).await)
}

/// Serves one `ShowPolicies` request, counting it.
pub(crate) fn show<R>(
    services: &Services<R>,
    caller: &Caller,
    _request: ShowPoliciesRequest,
) -> Result<ShowPoliciesResponse, RpcError> {
    admin::counted(services, show_inner(services, caller))
}

/// Serves one `CheckPolicy` request, counting it.
pub(crate) fn check<R>(
    services: &Services<R>,
    caller: &Caller,
    request: CheckPolicyRequest,
    now: SystemTime,
) -> Result<CheckPolicyResponse, RpcError> {
    admin::counted(services, check_inner(services, caller, request, now))
}

/// The status message of a refused load: a summary line, then one problem per line (at most
/// [`MAX_LISTED_PROBLEMS`], each cut to [`MAX_PROBLEM_BYTES`]).
pub(crate) fn problems_message(problems: &[String]) -> String {
    let mut message = format!(
        "invalid policies, the running set is unchanged: {} problem(s)",
        problems.len()
    );
    for problem in problems.iter().take(MAX_LISTED_PROBLEMS) {
        message.push('\n');
        message.push_str(cut(problem, MAX_PROBLEM_BYTES));
    }
    if problems.len() > MAX_LISTED_PROBLEMS {
        message.push_str(&format!(
            "\n… and {} more",
            problems.len() - MAX_LISTED_PROBLEMS
        ));
    }
    message
}

// === LoadPolicies ===

async fn load_inner<R>(
    services: &Services<R>,
    caller: &Caller,
    request: LoadPoliciesRequest,
) -> Result<LoadPoliciesResponse, RpcError> {
    admin::authorize_on_hub(services, caller, SystemTime::now(), "loading policies")?;
    let sources = request
        .sources
        .into_iter()
        .map(|source| (source.name, source.text))
        .collect();
    let (epoch, policies) = services
        .authz
        .load(&services.registry, sources)
        .await
        .map_err(|e| match e {
            LoadPoliciesError::Store(e) => RpcError::Store(e),
            other => RpcError::InvalidPolicies(other.problems()),
        })?;
    tracing::info!(epoch, policies, by = %caller.principal, "policies loaded");
    Ok(LoadPoliciesResponse {
        epoch,
        policies: u32::try_from(policies).unwrap_or(u32::MAX),
    })
}

// === ShowPolicies ===

fn show_inner<R>(
    services: &Services<R>,
    caller: &Caller,
) -> Result<ShowPoliciesResponse, RpcError> {
    admin::authorize_on_hub(
        services,
        caller,
        SystemTime::now(),
        "showing the running policies",
    )?;
    let running = services.authz.running();
    let base = PolicySource {
        name: BASE_SOURCE.to_owned(),
        text: BASE_POLICIES.to_owned(),
    };
    let sources = std::iter::once(base)
        .chain(
            running
                .sources
                .into_iter()
                .map(|(name, text)| PolicySource { name, text }),
        )
        .collect();
    let policies = running
        .set
        .policies()
        .iter()
        .map(|policy| PolicySummary {
            id: policy.id.to_string(),
            source: policy.source.clone(),
            line: policy.line,
            column: policy.column,
            forbid: policy.effect == entente_policy::Effect::Forbid,
            cross_segment: policy.cross_segment,
        })
        .collect();
    let response = ShowPoliciesResponse {
        epoch: running.epoch,
        sources,
        policies,
    };
    if !rpc::fits(&response, &services.limits) {
        return Err(RpcError::TooMany(
            "the running policy set does not fit in one answer".into(),
        ));
    }
    Ok(response)
}

// === CheckPolicy ===

/// The resource of a check, parsed.
enum Target {
    Channel(Channel),
    Pattern(ChannelPattern),
    Agent(AgentId),
    Human(HumanId),
    Segment(String),
    Hub,
}

fn check_inner<R>(
    services: &Services<R>,
    caller: &Caller,
    request: CheckPolicyRequest,
    now: SystemTime,
) -> Result<CheckPolicyResponse, RpcError> {
    admin::authorize_on_hub(services, caller, now, "checking a policy decision")?;
    let trust_domain = services.ca.trust_domain();
    let principal = Principal::parse(&request.principal)
        .map_err(|e| RpcError::BadRequest(format!("`principal`: {e}")))?;
    if principal.trust_domain() != trust_domain.as_str() {
        return Err(RpcError::BadRequest(format!(
            "`principal`: `{principal}` is not in this hub's trust domain `{trust_domain}`"
        )));
    }
    let action: Action = request
        .action
        .parse()
        .map_err(|e: UnknownAction| RpcError::BadRequest(format!("`action`: {e}")))?;
    let target = target(
        trust_domain,
        action,
        &request.resource_type,
        &request.resource,
    )?;
    let resource = match &target {
        Target::Channel(channel) => Resource::Channel(channel),
        Target::Pattern(pattern) => Resource::Pattern(pattern),
        Target::Agent(agent) => Resource::Agent(agent),
        Target::Human(human) => Resource::Human(human),
        Target::Segment(segment) => Resource::Segment(segment),
        Target::Hub => Resource::Hub(HUB_NAME),
    };
    let engine = services.authz.engine();
    let epoch = engine.epoch();
    let subject = Subject::new(principal.clone(), Vec::<String>::new());
    if let Some((allowed, rule)) = structural(&principal, action, &target) {
        let verdict = if allowed { "ALLOW" } else { "DENY" };
        let who = if subject.segment().is_some() {
            "agent"
        } else {
            "human"
        };
        let explanation = format!(
            "{verdict}: {who} `{principal}` {action} {resource} (policy epoch {epoch})\n  \
             decided by the hub's structural rule, not by policies: {rule}\n"
        );
        return Ok(CheckPolicyResponse {
            allowed,
            policies: Vec::new(),
            reason: format!("structural rule: {rule}"),
            cross_segment: false,
            epoch,
            explanation,
        });
    }
    // The epoch first, then a set at least as new: as the engine labels its decisions.
    let set = engine.policies();
    let now_ms = rpc::unix_ms(now);
    let facts = services.authz.facts_for(&principal, now_ms);
    let mut decision = set.decide(&subject, action, &resource, &facts, now_ms);
    decision.epoch = epoch;
    let explanation = set.explain_decision(&subject, action, &resource, &decision);
    Ok(CheckPolicyResponse {
        allowed: decision.allowed,
        policies: decision.policies.iter().map(ToString::to_string).collect(),
        reason: decision.reason.to_string(),
        cross_segment: decision.cross_segment,
        epoch,
        explanation: cut(&explanation, MAX_EXPLANATION_BYTES).to_owned(),
    })
}

/// Parses the resource of a check and checks that `action` applies to it.
fn target(
    trust_domain: &entente_types::TrustDomain,
    action: Action,
    kind: &str,
    name: &str,
) -> Result<Target, RpcError> {
    let bad = |message: String| RpcError::BadRequest(message);
    // The Cedar type names (`Channel`, `Hub`, …) are accepted too.
    let target = match kind.to_ascii_lowercase().as_str() {
        "channel" if action == Action::Subscribe => Target::Pattern(
            ChannelPattern::parse(name)
                .map_err(|e| bad(format!("`resource`: not a channel pattern: {e}")))?,
        ),
        "channel" => Target::Channel(
            Channel::parse(name).map_err(|e| bad(format!("`resource`: not a channel: {e}")))?,
        ),
        "agent" => Target::Agent(
            AgentId::parse(name).map_err(|e| bad(format!("`resource`: not an agent ID: {e}")))?,
        ),
        "human" => Target::Human(
            HumanId::parse(name).map_err(|e| bad(format!("`resource`: not a human ID: {e}")))?,
        ),
        "segment" => {
            // A segment name is what an agent ID allows in that place.
            AgentId::new(trust_domain, name, "x")
                .map_err(|e| bad(format!("`resource`: not a segment name: {e}")))?;
            Target::Segment(name.to_owned())
        }
        "hub" if name == HUB_NAME => Target::Hub,
        "hub" => {
            let shown: String = name.chars().take(32).collect();
            return Err(bad(format!(
                "`resource`: the hub is `{HUB_NAME}`, not `{}`",
                shown.escape_debug()
            )));
        }
        _ => {
            let shown: String = kind.chars().take(32).collect();
            return Err(bad(format!(
                "`resource_type` is channel, agent, human, segment or hub, not `{}`",
                shown.escape_debug()
            )));
        }
    };
    let applies = matches!(
        (action, &target),
        (
            Action::Publish | Action::Subscribe | Action::Direct | Action::Request | Action::Reply,
            Target::Channel(_) | Target::Pattern(_),
        ) | (
            Action::Enroll,
            Target::Agent(_) | Target::Human(_) | Target::Segment(_)
        ) | (
            Action::Grant | Action::Revoke,
            Target::Agent(_) | Target::Human(_) | Target::Segment(_),
        ) | (
            Action::Approve,
            Target::Agent(_) | Target::Human(_) | Target::Channel(_)
        ) | (
            Action::Admin,
            Target::Agent(_)
                | Target::Human(_)
                | Target::Segment(_)
                | Target::Channel(_)
                | Target::Hub
        )
    );
    if !applies {
        return Err(bad(format!("`{action}` does not apply to a {kind}")));
    }
    Ok(target)
}

/// The hub's structural rules, when one decides: whether allowed, and the rule in words.
fn structural(principal: &Principal, action: Action, target: &Target) -> Option<(bool, String)> {
    match (action, target) {
        (Action::Subscribe, Target::Pattern(pattern)) => {
            let first = pattern.tokens().next().unwrap_or_default();
            (first == DIRECT_PREFIX || first == REPLY_PREFIX).then(|| {
                (
                    namespace::is_own_pattern(principal, pattern),
                    "a principal may always subscribe to its own `_direct` channel and \
                     `_reply` namespace, and nobody else may"
                        .to_owned(),
                )
            })
        }
        (
            Action::Publish | Action::Direct | Action::Request | Action::Reply,
            Target::Channel(channel),
        ) if channel.tokens().next() == Some(REPLY_PREFIX) => Some((
            false,
            "only a reply grant opens a `_reply` channel: routing a request grants its \
             recipients one reply each"
                .to_owned(),
        )),
        _ => None,
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use entente_types::TrustDomain;

    use super::*;

    #[test]
    fn refused_loads_list_each_problem_on_its_own_line_within_bounds() {
        let problems: Vec<String> = (0..100)
            .map(|i| format!("p.cedar:{i}:1: problem {i}"))
            .collect();
        let message = problems_message(&problems);
        let lines: Vec<&str> = message.lines().collect();
        assert!(lines[0].contains("100 problem(s)"), "{}", lines[0]);
        assert_eq!(lines[1], "p.cedar:0:1: problem 0");
        assert_eq!(lines.len(), 1 + MAX_LISTED_PROBLEMS + 1);
        assert!(lines.last().unwrap().contains("36 more"));
        let long = vec!["é".repeat(1000)];
        let message = problems_message(&long);
        assert!(message.lines().nth(1).unwrap().len() <= MAX_PROBLEM_BYTES);
    }

    #[test]
    fn check_targets_parse_and_must_fit_the_action() {
        let td = TrustDomain::new("example.org").unwrap();
        assert!(matches!(
            target(&td, Action::Subscribe, "channel", "orders.*").unwrap(),
            Target::Pattern(_)
        ));
        assert!(matches!(
            target(&td, Action::Publish, "channel", "orders.eu").unwrap(),
            Target::Channel(_)
        ));
        assert!(target(&td, Action::Publish, "channel", "orders.*").is_err());
        assert!(matches!(
            target(&td, Action::Enroll, "segment", "ops").unwrap(),
            Target::Segment(_)
        ));
        assert!(target(&td, Action::Enroll, "segment", "Ops!").is_err());
        assert!(matches!(
            target(
                &td,
                Action::Grant,
                "agent",
                "spiffe://example.org/agent/ops/a"
            )
            .unwrap(),
            Target::Agent(_)
        ));
        assert!(target(&td, Action::Publish, "segment", "ops").is_err());
        assert!(target(&td, Action::Publish, "queue", "x").is_err());
        // The hub itself: `admin` only, by its one name; the Cedar type name works too.
        for kind in ["hub", "Hub"] {
            assert!(matches!(
                target(&td, Action::Admin, kind, HUB_NAME).unwrap(),
                Target::Hub
            ));
        }
        assert!(matches!(
            target(&td, Action::Admin, "Segment", "ops").unwrap(),
            Target::Segment(_)
        ));
        assert!(target(&td, Action::Admin, "hub", "other").is_err());
        assert!(target(&td, Action::Enroll, "hub", HUB_NAME).is_err());
        assert!(target(&td, Action::Publish, "hub", HUB_NAME).is_err());
        // `enroll` applies to humans, whom CreateToken enrolls too.
        assert!(matches!(
            target(
                &td,
                Action::Enroll,
                "human",
                "spiffe://example.org/human/ann"
            )
            .unwrap(),
            Target::Human(_)
        ));
    }

    #[test]
    fn structural_rules_decide_own_namespaces_and_replies() {
        let alice = Principal::parse("spiffe://example.org/agent/shop/alice").unwrap();
        let own = Target::Pattern(ChannelPattern::parse("_reply.shop.alice.>").unwrap());
        let other = Target::Pattern(ChannelPattern::parse("_direct.shop.bob").unwrap());
        assert!(structural(&alice, Action::Subscribe, &own).unwrap().0);
        assert!(!structural(&alice, Action::Subscribe, &other).unwrap().0);
        let reply = Target::Channel(Channel::parse("_reply.shop.bob.x").unwrap());
        assert!(!structural(&alice, Action::Publish, &reply).unwrap().0);
        let plain = Target::Channel(Channel::parse("orders.eu").unwrap());
        assert!(structural(&alice, Action::Publish, &plain).is_none());
    }
}
