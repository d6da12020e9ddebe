//! Decisions in words, for `entente policy check` and the console.

use std::fmt::Write as _;

use crate::decision::{Decision, Reason};
use crate::policies::PolicySet;
use crate::request::{Action, NO_SEGMENT, Resource, Subject};

/// Renders `decision` with the text and location of each determining policy.
pub(crate) fn explain(
    set: &PolicySet,
    subject: &Subject,
    action: Action,
    resource: &Resource<'_>,
    decision: &Decision,
) -> String {
    let mut out = String::new();
    let verdict = if decision.allowed { "ALLOW" } else { "DENY" };
    let _ = writeln!(
        out,
        "{verdict}: {} `{}` {action} {resource} (policy epoch {})",
        if subject.segment().is_some() {
            "agent"
        } else {
            "human"
        },
        subject.principal().as_str(),
        decision.epoch,
    );
    if decision.cross_segment {
        let theirs = match resource {
            Resource::Channel(_) | Resource::Pattern(_) => set.namespace_owner(resource.name()),
            Resource::Agent(agent) => agent.segment(),
            Resource::Human(_) | Resource::Hub(_) => NO_SEGMENT,
            Resource::Segment(segment) => segment,
        };
        let theirs = if theirs == NO_SEGMENT {
            "no segment".to_owned()
        } else {
            format!("segment `{theirs}`")
        };
        let _ = writeln!(
            out,
            "  across segments: the principal is in segment `{}`, the resource in {theirs}; only permits marked @cross_segment apply",
            subject.segment().unwrap_or_default(),
        );
    }
    let heading = match decision.reason {
        Reason::Permit => "permitted by",
        Reason::Forbid => "forbidden by",
        Reason::ForbidFailed => "denied because these forbid policies failed to evaluate",
        Reason::NoPermit => "no policy permits it (default deny)",
        Reason::BadRequest => "the request could not be evaluated",
    };
    let _ = writeln!(
        out,
        "  {heading}{}",
        if decision.policies.is_empty() {
            ""
        } else {
            ":"
        }
    );
    for id in &decision.policies {
        match set.policy(id.as_str()) {
            Some(info) => {
                let _ = writeln!(
                    out,
                    "    {id} ({}:{}:{}){}",
                    info.source,
                    info.line,
                    info.column,
                    info.grant
                        .as_ref()
                        .map_or_else(String::new, |name| format!(", opened by grant `{name}`")),
                );
                for line in info.text.lines() {
                    let _ = writeln!(out, "      {line}");
                }
            }
            None => {
                let _ = writeln!(out, "    {id}");
            }
        }
    }
    if !decision.allowed && action.is_administrative() {
        let open: Vec<&str> = set.open_permits().map(|p| p.id.as_str()).collect();
        if !open.is_empty() {
            let _ = writeln!(
                out,
                "  not considered: {} (an open action scope never allows `{action}`, an \
                 administrative action: name it, e.g. `action == Action::\"{action}\"`)",
                open.join(", ")
            );
        }
    }
    if !decision.errors.is_empty() {
        let _ = writeln!(out, "  errors:");
        for error in &decision.errors {
            let _ = writeln!(out, "    {}: {}", error.policy, error.message);
        }
    }
    out
}
