//! `entente grant`, `grants`, `revoke-grant`, `request-grant`, `approvals`, `approve`,
//! `reject`, `held`:
//! time-bound grants, just-in-time elevation and messages held for approval, through the
//! hub's grant and hold RPCs. Who may do what is the
//! hub's policies' business (docs/POLICY.md, "Grants in the hub"); these commands act as the
//! identity they are given.

use std::{process::ExitCode, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};
use entente_client::{ApprovalOutcome, GrantInfo, GrantRequestInfo, HeldMessage, MessageId};
use entente_policy::{format_duration, parse_duration};
use entente_types::{HumanId, Principal, TrustDomain};

use crate::At;
use crate::commands::agent::{agent_id, connect, run};

/// `entente grant PRINCIPAL NAME --for DURATION --reason REASON`.
pub(crate) fn grant(
    at: &At,
    principal: &str,
    name: &str,
    duration: &str,
    reason: &str,
    json: bool,
) -> Result<ExitCode> {
    let duration = duration_of(duration)?;
    run(async {
        let client = connect(&at.identity, &at.hub).await?;
        let td = TrustDomain::new(client.principal().trust_domain())?;
        let principal = principal_of(&td, principal)?;
        let grant = client
            .grant(&principal, name, duration, reason)
            .await
            .with_context(|| format!("granting `{name}` to `{principal}`"))?;
        client.close().await;
        if json {
            super::print_json(&grant_json(&grant));
        } else {
            outln!(
                "granted `{}` to `{}` for {}, until {}: {}",
                grant.name,
                grant.principal,
                format_duration(grant.not_after_ms.saturating_sub(grant.not_before_ms)),
                utc(grant.not_after_ms),
                grant.id
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `entente grants`: the active grants and the requests the caller may see.
pub(crate) fn grants(at: &At, principal: Option<&str>, json: bool) -> Result<ExitCode> {
    run(async {
        let client = connect(&at.identity, &at.hub).await?;
        let listed = match principal {
            Some(text) => {
                let td = TrustDomain::new(client.principal().trust_domain())?;
                client.grants_of(&principal_of(&td, text)?).await
            }
            None => client.grants().await,
        }
        .context("listing the grants")?;
        client.close().await;
        if json {
            let grants: Vec<_> = listed.grants.iter().map(grant_json).collect();
            let requests: Vec<_> = listed.requests.iter().map(request_json).collect();
            super::print_json(
                &serde_json::json!({ "grants": grants, "requests": requests, "now_ms": listed.now_ms }),
            );
            return Ok(ExitCode::SUCCESS);
        }
        let now = listed.now_ms;
        if listed.grants.is_empty() {
            outln!("no active grants");
        } else {
            outln!("active grants ({}):", listed.grants.len());
            for g in &listed.grants {
                outln!("  {}", grant_line(g, now));
            }
        }
        if !listed.requests.is_empty() {
            outln!("requests ({}):", listed.requests.len());
            for r in &listed.requests {
                outln!("  {}", request_line(r, now));
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `entente request-grant NAME --for DURATION --reason REASON`.
pub(crate) fn request_grant(
    at: &At,
    name: &str,
    duration: &str,
    reason: &str,
    json: bool,
) -> Result<ExitCode> {
    let duration = duration_of(duration)?;
    run(async {
        let client = connect(&at.identity, &at.hub).await?;
        let request = client
            .request_grant(name, duration, reason)
            .await
            .with_context(|| format!("requesting `{name}`"))?;
        client.close().await;
        if json {
            super::print_json(&request_json(&request));
        } else {
            outln!(
                "requested `{}` for {} as {}: it needs {} approval(s) and lapses at {}; an \
                 approver runs `entente approve {}`",
                request.name,
                format_duration(request.duration_ms),
                request.id,
                request.required,
                utc(request.expires_at_ms),
                request.id
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `entente approvals`: the pending requests the caller may decide — not its own, not those it
/// approved already.
pub(crate) fn approvals(at: &At, json: bool) -> Result<ExitCode> {
    run(async {
        let client = connect(&at.identity, &at.hub).await?;
        let listed = client.grants().await.context("listing the requests")?;
        let held = client.held().await.context("listing held messages")?;
        client.close().await;
        let me = client.principal().as_str();
        let to_decide: Vec<&HeldMessage> = held
            .iter()
            .filter(|h| h.state == "pending" && h.sender != me)
            .filter(|h| !h.approvals.iter().any(|a| a.approver == me))
            .collect();
        let now = listed.now_ms;
        let open: Vec<&GrantRequestInfo> = listed
            .requests
            .iter()
            .filter(|r| r.state == "pending" && r.requester != me)
            .filter(|r| {
                !r.approvals
                    .iter()
                    .any(|a| a.approver == me && a.verdict == "approve")
            })
            .collect();
        if json {
            let requests: Vec<_> = open.iter().map(|r| request_json(r)).collect();
            let held: Vec<_> = to_decide.iter().map(|h| held_json(h)).collect();
            super::print_json(
                &serde_json::json!({ "requests": requests, "held": held, "now_ms": now }),
            );
            return Ok(ExitCode::SUCCESS);
        }
        if open.is_empty() {
            outln!("no pending requests to decide");
        } else {
            outln!("pending requests ({}):", open.len());
            for r in open {
                outln!("  {}", request_line(r, now));
            }
        }
        if to_decide.is_empty() {
            outln!("no held messages to decide");
        } else {
            outln!("held messages ({}):", to_decide.len());
            for h in to_decide {
                outln!("  {}", held_line(h));
            }
        }
        outln!("decide with `entente approve ID` or `entente reject ID`");
        Ok(ExitCode::SUCCESS)
    })
}

/// `entente approve ID` (`approve`) or `entente reject ID`: signs a statement over the request
/// as the hub shows it, with the identity's message key.
pub(crate) fn decide(at: &At, id: &str, approve: bool, json: bool) -> Result<ExitCode> {
    if !id.starts_with("r-") && MessageId::parse(id).is_err() {
        bail!(
            "`{id}` is neither a request ID (`r-<n>`) nor a held message's ID (a UUID): see `entente approvals`"
        );
    }
    run(async {
        let client = connect(&at.identity, &at.hub).await?;
        let outcome = if approve {
            client.approve(id).await
        } else {
            client.reject(id).await
        }
        .with_context(|| format!("{} `{id}`", if approve { "approving" } else { "rejecting" }))?;
        client.close().await;
        match (&outcome, json) {
            (ApprovalOutcome::Granted(grant), true) => super::print_json(
                &serde_json::json!({ "request": id, "outcome": "granted", "grant": grant_json(grant) }),
            ),
            (ApprovalOutcome::Granted(grant), false) => outln!(
                "approved {id}: `{}` holds `{}` until {} ({})",
                grant.principal,
                grant.name,
                utc(grant.not_after_ms),
                grant.id
            ),
            (
                ApprovalOutcome::Pending {
                    approvals,
                    required,
                },
                true,
            ) => super::print_json(
                &serde_json::json!({ "request": id, "outcome": "pending", "approvals": approvals, "required": required }),
            ),
            (
                ApprovalOutcome::Pending {
                    approvals,
                    required,
                },
                false,
            ) => outln!(
                "approved {id}: {approvals} of {required} approvals; it waits for {} more",
                required.saturating_sub(*approvals)
            ),
            (ApprovalOutcome::Released { approvals }, true) => super::print_json(
                &serde_json::json!({ "held": id, "outcome": "released", "approvals": approvals }),
            ),
            (ApprovalOutcome::Released { approvals }, false) => {
                outln!("approved {id}: released to its channel after {approvals} approvals")
            }
            (_, true) => {
                super::print_json(&serde_json::json!({ "request": id, "outcome": "rejected" }))
            }
            // An approval that ended in a rejection (the policies no longer allow what it
            // approved): not what was asked, so not a success.
            (_, false) if approve => outln!(
                "approving {id} rejected it: the policies no longer allow it (see `entente approvals`)"
            ),
            (_, false) if id.starts_with("r-") => outln!("rejected {id}: the request is closed"),
            (_, false) => outln!("rejected {id}: the message will not be delivered"),
        }
        let rejected = !matches!(
            outcome,
            ApprovalOutcome::Pending { .. }
                | ApprovalOutcome::Granted(_)
                | ApprovalOutcome::Released { .. }
        );
        Ok(if approve && rejected {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    })
}

/// `entente revoke-grant ID --reason R`: ends a grant now.
pub(crate) fn revoke_grant(at: &At, id: &str, reason: &str, json: bool) -> Result<ExitCode> {
    run(async {
        let client = connect(&at.identity, &at.hub).await?;
        let grant = client
            .revoke_grant(id, reason)
            .await
            .with_context(|| format!("ending grant `{id}`"))?;
        client.close().await;
        if json {
            super::print_json(&serde_json::json!({ "ended": grant_json(&grant) }));
        } else {
            outln!(
                "ended {}: `{}` no longer holds `{}`",
                grant.id,
                grant.principal,
                grant.name
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `entente held`: the held messages the caller may see, with their state.
pub(crate) fn held(at: &At, json: bool) -> Result<ExitCode> {
    run(async {
        let client = connect(&at.identity, &at.hub).await?;
        let held = client.held().await.context("listing held messages")?;
        client.close().await;
        if json {
            let held: Vec<_> = held.iter().map(held_json).collect();
            super::print_json(&serde_json::json!({ "held": held }));
        } else if held.is_empty() {
            outln!("no held messages");
        } else {
            for h in &held {
                outln!("{}", held_line(h));
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

// === helpers ===

/// One held message in a line: ID, state and approvals, channel, sender, size, purpose.
fn held_line(h: &HeldMessage) -> String {
    let approvals = h
        .approvals
        .iter()
        .filter(|a| a.verdict == "approve")
        .count();
    let reason = if h.reason.is_empty() {
        String::new()
    } else {
        format!(" ({})", super::clean(&h.reason))
    };
    format!(
        "{}  {}{reason} {approvals} approval(s)  on `{}` by {}  {} bytes  until {}: {}",
        h.message_id,
        h.state,
        h.channel,
        h.sender,
        h.size,
        utc(h.expires_at_ms),
        super::clean(&h.purpose)
    )
}

fn held_json(h: &HeldMessage) -> serde_json::Value {
    let approvals: Vec<_> = h
        .approvals
        .iter()
        .map(|a| serde_json::json!({ "approver": a.approver, "verdict": a.verdict, "signed_at_ms": a.signed_at_ms }))
        .collect();
    serde_json::json!({
        "id": h.message_id,
        "state": h.state,
        "reason": h.reason,
        "channel": h.channel,
        "sender": h.sender,
        "size": h.size,
        "purpose": h.purpose,
        "published_at_ms": h.published_at_ms,
        "expires_at_ms": h.expires_at_ms,
        "approvals": approvals,
    })
}

/// `SEGMENT/NAME` for an agent, `human/NAME` for a human, or a full SPIFFE ID. (An agent of a
/// segment named `human` is written with its full ID.)
pub(crate) fn principal_of(td: &TrustDomain, text: &str) -> Result<Principal> {
    if text.starts_with("spiffe://") {
        return Principal::parse(text).with_context(|| format!("`{text}` is not a principal"));
    }
    if let Some(name) = text.strip_prefix("human/") {
        return Ok(Principal::from(HumanId::new(td, name).with_context(
            || format!("`{text}` is not a human: write human/NAME"),
        )?));
    }
    Ok(Principal::from(agent_id(td, text).with_context(|| {
        format!("`{text}` is not a principal: write SEGMENT/NAME, human/NAME or a SPIFFE ID")
    })?))
}

/// `15m`, `1h30m`, `3s`, `500ms`.
fn duration_of(text: &str) -> Result<Duration> {
    let ms = parse_duration(text).map_err(|e| anyhow!("`--for`: {e}"))?;
    if ms == 0 {
        bail!("`--for`: a grant lasts longer than zero");
    }
    Ok(Duration::from_millis(ms))
}

/// One request in a line: ID, state and approvals, grant and duration, requester, expiry,
/// reason.
fn request_line(r: &GrantRequestInfo, now_ms: u64) -> String {
    let approvals = r
        .approvals
        .iter()
        .filter(|a| a.verdict == "approve")
        .count();
    let when = if r.state == "pending" {
        format!(
            "expires {} ({} left)",
            utc(r.expires_at_ms),
            format_duration(round_s(r.expires_at_ms.saturating_sub(now_ms)))
        )
    } else if r.grant.is_empty() {
        String::new()
    } else {
        format!("became {}", r.grant)
    };
    format!(
        "{}  {} {approvals}/{}  `{}` for {}  by {}  {when}: {}",
        r.id,
        r.state,
        r.required,
        r.name,
        format_duration(r.duration_ms),
        r.requester,
        super::clean(&r.reason)
    )
}

/// One grant in a line: ID, name, holder, end and time left, who gave it, reason.
fn grant_line(g: &GrantInfo, now_ms: u64) -> String {
    let by = if g.granter.is_empty() {
        format!("approved by {} ({})", g.approvers.join(", "), g.request)
    } else {
        format!("granted by {}", g.granter)
    };
    format!(
        "{}  {}  {}  until {} ({} left)  {by}: {}",
        g.id,
        g.name,
        g.principal,
        utc(g.not_after_ms),
        format_duration(round_s(g.not_after_ms.saturating_sub(now_ms))),
        super::clean(&g.reason)
    )
}

fn grant_json(g: &GrantInfo) -> serde_json::Value {
    serde_json::json!({
        "id": g.id,
        "name": g.name,
        "principal": g.principal,
        "not_before_ms": g.not_before_ms,
        "not_after_ms": g.not_after_ms,
        "reason": g.reason,
        "granter": (!g.granter.is_empty()).then_some(&g.granter),
        "request": (!g.request.is_empty()).then_some(&g.request),
        "approvers": g.approvers,
    })
}

fn request_json(r: &GrantRequestInfo) -> serde_json::Value {
    let approvals: Vec<_> = r
        .approvals
        .iter()
        .map(|a| {
            serde_json::json!({ "approver": a.approver, "verdict": a.verdict, "signed_at_ms": a.signed_at_ms })
        })
        .collect();
    serde_json::json!({
        "id": r.id,
        "requester": r.requester,
        "name": r.name,
        "duration_ms": r.duration_ms,
        "reason": r.reason,
        "created_at_ms": r.created_at_ms,
        "expires_at_ms": r.expires_at_ms,
        "required": r.required,
        "approvals": approvals,
        "state": r.state,
        "grant": (!r.grant.is_empty()).then_some(&r.grant),
    })
}

/// `ms` rounded up to whole seconds, for "left" durations.
fn round_s(ms: u64) -> u64 {
    ms.div_ceil(1000).saturating_mul(1000)
}

/// Unix milliseconds as UTC, `2025-06-01 14:15:00Z`.
pub(crate) fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn principals_are_agents_humans_or_ids() {
        let td = TrustDomain::new("acme.internal").unwrap();
        assert_eq!(
            principal_of(&td, "ops/eve").unwrap().as_str(),
            "spiffe://acme.internal/agent/ops/eve"
        );
        assert_eq!(
            principal_of(&td, "human/ann").unwrap().as_str(),
            "spiffe://acme.internal/human/ann"
        );
        assert!(principal_of(&td, "spiffe://acme.internal/human/ann").is_ok());
        for bad in ["eve", "human/", "human/Ann!", "spiffe://x", "a/b/c"] {
            assert!(principal_of(&td, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_are_the_policy_durations() {
        assert_eq!(duration_of("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(duration_of("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(duration_of("3s").unwrap(), Duration::from_secs(3));
        for bad in ["", "0s", "15", "m15", "1m1h", "-3s"] {
            assert!(duration_of(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_print_as_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(utc(1_748_787_300_500), "2025-06-01 14:15:00Z");
    }

    #[test]
    fn a_grants_reason_is_shown_escaped_in_its_line() {
        let grant = GrantInfo {
            id: "g-1".to_owned(),
            name: "demo-read".to_owned(),
            principal: "spiffe://acme.internal/agent/ops/eve".to_owned(),
            not_before_ms: 0,
            not_after_ms: 60_000,
            reason: "INC-42\n  g-2  admin-all  ops/eve\u{1b}[2K \u{202e}".to_owned(),
            granter: "spiffe://acme.internal/human/ann".to_owned(),
            ..Default::default()
        };
        assert_eq!(
            grant_line(&grant, 0),
            "g-1  demo-read  spiffe://acme.internal/agent/ops/eve  until 1970-01-01 00:01:00Z \
             (1m left)  granted by spiffe://acme.internal/human/ann: \
             INC-42\\n  g-2  admin-all  ops/eve\\u{1b}[2K \\u{202e}"
        );
    }
}
