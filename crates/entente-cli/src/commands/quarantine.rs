//! `entente quarantine list|release|impose`: the agents the hub quarantined for their risk
//! score, or an administrator did (docs/ANOMALY.md); administrators only.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Subcommand;
use entente_types::TrustDomain;
use entente_wire::{QuarantineRequest, QuarantinedAgent};

use crate::At;
use crate::commands::agent::{connect, run};
use crate::commands::grants::{principal_of, utc};

/// What `entente quarantine` does.
#[derive(Debug, Subcommand)]
pub(crate) enum QuarantineCommand {
    /// List the quarantined agents, with when, their risk score and the evidence.
    List {
        #[command(flatten)]
        at: At,
    },
    /// Lift an agent's quarantine: it may connect and renew again, its risk score from zero.
    Release {
        #[command(flatten)]
        at: At,
        /// The agent: SEGMENT/NAME, human/NAME or a SPIFFE ID.
        principal: String,
        /// Why; recorded in the audit log.
        #[arg(long)]
        reason: String,
    },
    /// Quarantine an agent now: its connections close, and it may not connect, renew or
    /// enroll until released.
    Impose {
        #[command(flatten)]
        at: At,
        /// The agent: SEGMENT/NAME, human/NAME or a SPIFFE ID.
        principal: String,
        /// Why; recorded in the audit log as the evidence.
        #[arg(long)]
        reason: String,
    },
}

pub(crate) fn run_command(command: QuarantineCommand, json: bool) -> Result<ExitCode> {
    let (at, release, impose, reason) = match command {
        QuarantineCommand::List { at } => (at, None, None, String::new()),
        QuarantineCommand::Release {
            at,
            principal,
            reason,
        } => (at, Some(principal), None, reason),
        QuarantineCommand::Impose {
            at,
            principal,
            reason,
        } => (at, None, Some(principal), reason),
    };
    run(async move {
        let client = connect(&at.identity, &at.hub).await?;
        let td = TrustDomain::new(client.principal().trust_domain())?;
        let named = |text: Option<String>| -> Result<String> {
            Ok(match text {
                Some(text) => principal_of(&td, &text)?.to_string(),
                None => String::new(),
            })
        };
        let request = QuarantineRequest {
            release: named(release)?,
            impose: named(impose)?,
            reason,
        };
        let what = if !request.release.is_empty() {
            format!("lifting the quarantine of `{}`", request.release)
        } else if !request.impose.is_empty() {
            format!("quarantining `{}`", request.impose)
        } else {
            "listing the quarantined agents".to_owned()
        };
        let response = client.quarantine(request).await.context(what)?;
        client.close().await;
        if json {
            super::print_json(&serde_json::json!({
                "quarantined": response.quarantined.iter().map(agent_json).collect::<Vec<_>>(),
                "released": response.released.as_ref().map(agent_json),
                "closed_connections": response.closed_connections,
            }));
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(released) = &response.released {
            outln!("released `{}`", released.principal);
        }
        if response.closed_connections > 0 {
            outln!("closed {} connection(s)", response.closed_connections);
        }
        if response.quarantined.is_empty() {
            outln!("no agent is quarantined");
        }
        for agent in &response.quarantined {
            outln!(
                "{}  since {}  risk {}  by {}\n  {}",
                agent.principal,
                utc(agent.since_ms),
                agent.risk,
                agent.by,
                super::clean(&agent.evidence)
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn agent_json(agent: &QuarantinedAgent) -> serde_json::Value {
    serde_json::json!({
        "principal": agent.principal,
        "since_ms": agent.since_ms,
        "risk": agent.risk,
        "evidence": agent.evidence,
        "by": agent.by,
    })
}
