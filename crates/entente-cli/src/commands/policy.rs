//! `entente policy load|show|check`: the running hub's Cedar policies, through the
//! administrators' RPCs.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result, anyhow, bail};
use entente_client::ErrorKind;
use entente_types::{HumanId, TrustDomain};
use entente_wire::ShowPoliciesResponse;

use crate::At;
use crate::commands::agent::{agent_id, connect, run};
use crate::commands::grants::principal_of;
use crate::commands::{clean, clean_lines};
use crate::data::file_name;

/// The exit code of `policy check` when the hub would deny (as the Cedar CLI's `authorize`).
const DENIED: u8 = 2;

/// `entente policy load FILE...`: replaces the running set; each file's name is its source
/// name.
pub(crate) fn load(at: &At, files: &[PathBuf], json: bool) -> Result<ExitCode> {
    let mut sources: Vec<(String, String)> = Vec::with_capacity(files.len());
    for path in files {
        let name = file_name(path)?;
        if sources.iter().any(|(other, _)| *other == name) {
            bail!("two files are named `{name}`: a policy source's name is its file name");
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading `{}`", path.display()))?;
        sources.push((name, text));
    }
    run(async {
        let client = connect(&at.identity, &at.hub).await?;
        let loaded = client.load_policies(&sources).await;
        client.close().await;
        let names: Vec<&str> = sources.iter().map(|(name, _)| name.as_str()).collect();
        match loaded {
            Ok((epoch, policies)) => {
                if json {
                    super::print_json(
                        &serde_json::json!({ "epoch": epoch, "policies": policies, "sources": names }),
                    );
                } else {
                    outln!(
                        "loaded {} file(s) ({}): {policies} policies run with the base ones; policy epoch {epoch}",
                        names.len(),
                        names.join(", ")
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) if e.kind() == ErrorKind::InvalidInput && !e.details().is_empty() => {
                // A refusal keeps its exit status whatever becomes of standard output.
                if json {
                    super::announce_json(
                        &serde_json::json!({ "error": e.to_string(), "problems": e.details() }),
                    );
                } else {
                    for line in refused_lines(&e.to_string(), e.details()) {
                        eprintln!("{line}");
                    }
                }
                Ok(ExitCode::FAILURE)
            }
            Err(e) => Err(anyhow::Error::new(e).context("loading the policies")),
        }
    })
}

/// `entente policy show`: the running sources, their policies and the epoch.
pub(crate) fn show(at: &At, json: bool) -> Result<ExitCode> {
    run(async {
        let client = connect(&at.identity, &at.hub).await?;
        let shown = client.policies().await.context("showing the policies")?;
        client.close().await;
        if json {
            let sources: Vec<_> = shown
                .sources
                .iter()
                .map(|s| serde_json::json!({ "name": s.name, "text": s.text }))
                .collect();
            let policies: Vec<_> = shown
                .policies
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "id": p.id,
                        "effect": if p.forbid { "forbid" } else { "permit" },
                        "cross_segment": p.cross_segment,
                        "source": p.source,
                        "line": p.line,
                        "column": p.column,
                    })
                })
                .collect();
            super::print_json(
                &serde_json::json!({ "epoch": shown.epoch, "sources": sources, "policies": policies }),
            );
            return Ok(ExitCode::SUCCESS);
        }
        for line in shown_lines(&shown) {
            outln!("{line}");
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `policy show`'s text: the epoch, then each source's name and its policies, one a line,
/// with the names and IDs their authors chose escaped ([`clean`]).
fn shown_lines(shown: &ShowPoliciesResponse) -> Vec<String> {
    let mut lines = vec![format!(
        "policy epoch {}: {} policies from {} source(s)",
        shown.epoch,
        shown.policies.len(),
        shown.sources.len()
    )];
    let width = shown
        .policies
        .iter()
        .map(|p| clean(&p.id).chars().count())
        .max()
        .unwrap_or(0);
    for source in &shown.sources {
        lines.push(clean(&source.name));
        for policy in shown.policies.iter().filter(|p| p.source == source.name) {
            let effect = if policy.forbid { "forbid" } else { "permit" };
            let cross = if policy.cross_segment {
                " @cross_segment"
            } else {
                ""
            };
            lines.push(format!(
                "  {:width$}  {effect}{cross}  {}:{}:{}",
                clean(&policy.id),
                clean(&policy.source),
                policy.line,
                policy.column
            ));
        }
    }
    lines
}

/// `policy load`'s lines on standard error when the hub refuses the policies: the error, then
/// each problem, indented; each escaped ([`clean`]), as a problem may quote the files.
fn refused_lines(error: &str, problems: &[String]) -> Vec<String> {
    let mut lines = vec![format!("error: {}", clean(error))];
    lines.extend(problems.iter().map(|p| format!("  {}", clean(p))));
    lines
}

/// `entente policy check`: how the hub would decide; exits 0 if allowed, 2 if denied.
pub(crate) fn check(
    at: &At,
    principal: &str,
    action: &str,
    resource: &str,
    json: bool,
) -> Result<ExitCode> {
    run(async {
        let client = connect(&at.identity, &at.hub).await?;
        let td = TrustDomain::new(client.principal().trust_domain())?;
        let principal = principal_of(&td, principal)?;
        let (kind, name) = resource_of(&td, resource)?;
        let answer = client
            .check_policy(&principal, action, kind, &name)
            .await
            .context("checking the decision")?;
        client.close().await;
        // The exit status is the verdict: a reader gone does not make a denial a success.
        if json {
            super::announce_json(&serde_json::json!({
                "allowed": answer.allowed,
                "policies": answer.policies,
                "reason": answer.reason,
                "cross_segment": answer.cross_segment,
                "epoch": answer.epoch,
                "explanation": answer.explanation,
            }));
        } else {
            super::announce(format_args!("{}", clean_lines(&answer.explanation)));
        }
        Ok(if answer.allowed {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(DENIED)
        })
    })
}

/// `channel:NAME`, `agent:ID` (or `agent:SEGMENT/NAME`), `human:NAME` (or `human:ID`),
/// `segment:NAME`, `hub:hub` (the hub itself, resource of `admin` for its policy RPCs), or a
/// bare channel name or pattern: the resource type and name the hub expects.
fn resource_of(td: &TrustDomain, text: &str) -> Result<(&'static str, String)> {
    let (kind, name) = match text.split_once(':') {
        Some(("channel", name)) => ("channel", name.to_owned()),
        Some(("agent", name)) => ("agent", agent_id(td, name)?.to_string()),
        Some(("human", name)) if name.starts_with("spiffe://") => ("human", name.to_owned()),
        Some(("human", name)) => ("human", HumanId::new(td, name)?.to_string()),
        Some(("segment", name)) => ("segment", name.to_owned()),
        Some(("hub", name)) => ("hub", name.to_owned()),
        Some((other, _)) if !other.contains('.') => {
            return Err(anyhow!(
                "`{text}`: the resource is `channel:NAME`, `agent:ID`, `human:NAME`, `segment:NAME`, `hub:hub` or a channel name, not `{other}:…`"
            ));
        }
        _ => ("channel", text.to_owned()),
    };
    if name.is_empty() {
        bail!("`{text}` names no resource");
    }
    Ok((kind, name))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn resources_are_typed_by_prefix_or_channels() {
        let td = TrustDomain::new("acme.internal").unwrap();
        assert_eq!(
            resource_of(&td, "orders.eu").unwrap(),
            ("channel", "orders.eu".to_owned())
        );
        assert_eq!(
            resource_of(&td, "channel:orders.*").unwrap(),
            ("channel", "orders.*".to_owned())
        );
        assert_eq!(
            resource_of(&td, "agent:ops/eve").unwrap(),
            ("agent", "spiffe://acme.internal/agent/ops/eve".to_owned())
        );
        assert_eq!(
            resource_of(&td, "segment:ops").unwrap(),
            ("segment", "ops".to_owned())
        );
        // A human's direct channel has a `:` in a later token: still a channel.
        assert_eq!(
            resource_of(&td, "_direct.human:ops").unwrap(),
            ("channel", "_direct.human:ops".to_owned())
        );
        assert_eq!(
            resource_of(&td, "human:ann").unwrap(),
            ("human", "spiffe://acme.internal/human/ann".to_owned())
        );
        assert_eq!(
            resource_of(&td, "hub:hub").unwrap(),
            ("hub", "hub".to_owned())
        );
        assert!(resource_of(&td, "queue:x").is_err());
        assert!(resource_of(&td, "segment:").is_err());
        assert!(resource_of(&td, "hub:").is_err());
    }

    #[test]
    fn principals_are_ids_or_segment_slash_name() {
        let td = TrustDomain::new("acme.internal").unwrap();
        assert_eq!(
            principal_of(&td, "ops/eve").unwrap().to_string(),
            "spiffe://acme.internal/agent/ops/eve"
        );
        assert!(principal_of(&td, "spiffe://acme.internal/human/admin").is_ok());
        assert!(principal_of(&td, "eve").is_err());
    }

    #[test]
    fn names_and_ids_their_authors_chose_are_shown_escaped() {
        // A hub that let them through: a source name that starts a line of its own, an ID
        // that clears the terminal's line and one that reorders it.
        let name = "a.cedar\nforged.cedar";
        let policy = |id: &str| entente_wire::PolicySummary {
            id: id.to_owned(),
            source: name.to_owned(),
            line: 1,
            column: 1,
            ..Default::default()
        };
        let shown = ShowPoliciesResponse {
            epoch: 3,
            sources: vec![entente_wire::PolicySource {
                name: name.to_owned(),
                text: String::new(),
            }],
            policies: vec![policy("ok\u{1b}[2K"), policy("x\u{202e}y")],
        };
        let lines = shown_lines(&shown);
        assert_eq!(
            lines,
            [
                "policy epoch 3: 2 policies from 1 source(s)",
                "a.cedar\\nforged.cedar",
                "  ok\\u{1b}[2K  permit  a.cedar\\nforged.cedar:1:1",
                "  x\\u{202e}y   permit  a.cedar\\nforged.cedar:1:1",
            ]
        );
    }

    #[test]
    fn a_refused_load_prints_its_problems_escaped_one_a_line() {
        let lines = refused_lines(
            "the hub refused the policies\nforged",
            &["p.cedar:1:1: unexpected token `\u{1b}]0;x\u{7}`".to_owned()],
        );
        assert_eq!(
            lines,
            [
                "error: the hub refused the policies\\nforged",
                "  p.cedar:1:1: unexpected token `\\u{1b}]0;x\\u{7}`",
            ]
        );
    }
}
