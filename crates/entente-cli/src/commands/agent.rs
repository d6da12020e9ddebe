//! Commands of agents and administrators talking to a running hub: `token create`, `enroll`,
//! `send`, `listen`, `revoke`.

use std::{
    io::Read as _,
    path::Path,
    process::ExitCode,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, anyhow, bail};
use entente_ca::TrustBundle;
use entente_client::{Client, ClientOptions, Identity};
use entente_types::{AgentId, HumanId, Principal, TrustDomain};
use futures_util::StreamExt as _;

/// `entente token create`: prints the token alone on standard output. For an agent
/// (`--agent SEGMENT/NAME`) or a human (`--human NAME`).
pub(crate) fn token_create(
    identity: &Path,
    hub: &str,
    agent: Option<&str>,
    human: Option<&str>,
    ttl: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    let ttl = ttl.map(parse_duration).transpose()?;
    if ttl.is_some_and(|ttl| ttl.as_secs() == 0) {
        // Zero would ask the hub for its default, the longest-lived token: never on a typo.
        bail!("`--ttl` must be at least 1s");
    }
    let ttl = ttl.unwrap_or_default();
    run(async {
        let client = connect(identity, hub).await?;
        let td = TrustDomain::new(client.principal().trust_domain())?;
        let (principal, (token, expires_at_ms)) = match (agent, human) {
            (Some(agent), None) => {
                let agent = agent_id(&td, agent)?;
                let token = client.create_token(&agent, ttl).await?;
                (Principal::from(agent), token)
            }
            (None, Some(human)) => {
                let human = HumanId::new(&td, human)
                    .with_context(|| format!("`{human}` is not a human name"))?;
                let token = client.create_human_token(&human, ttl).await?;
                (Principal::from(human), token)
            }
            _ => bail!("give `--agent SEGMENT/NAME` or `--human NAME`"),
        };
        client.close().await;
        if json {
            let key = if matches!(principal, Principal::Human(_)) {
                "human"
            } else {
                "agent"
            };
            super::print_json(
                &serde_json::json!({ "token": token, key: principal.to_string(), "expires_at_ms": expires_at_ms }),
            );
        } else {
            outln!("{token}");
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The environment variable a join token is taken from when no file is named.
pub(crate) const JOIN_TOKEN_VAR: &str = "ENTENTE_JOIN_TOKEN";

/// The most bytes read for a join token (one is 68).
const MAX_TOKEN_INPUT: u64 = 1024;

/// The most bytes of a message read from standard input.
const MAX_MESSAGE_INPUT: u64 = 16 << 20;

/// The join token: from `file` (`-`: standard input), else from [`JOIN_TOKEN_VAR`]. Never an
/// argument: other users of the machine can read a process's arguments.
fn join_token(file: Option<&Path>) -> Result<String> {
    let text = match file {
        Some(path) => {
            let what = if path == Path::new("-") {
                "standard input".to_owned()
            } else {
                format!("`{}`", path.display())
            };
            let mut text = String::new();
            let read = if path == Path::new("-") {
                std::io::stdin()
                    .take(MAX_TOKEN_INPUT + 1)
                    .read_to_string(&mut text)
            } else {
                std::fs::File::open(path)
                    .and_then(|f| f.take(MAX_TOKEN_INPUT + 1).read_to_string(&mut text))
            };
            read.with_context(|| format!("reading the join token from {what}"))?;
            if text.len() as u64 > MAX_TOKEN_INPUT {
                bail!("{what} holds more than a join token ({MAX_TOKEN_INPUT} bytes at most)");
            }
            text
        }
        None => std::env::var(JOIN_TOKEN_VAR).map_err(|_| {
            anyhow!(
                "no join token: give it in a file (`--token-file PATH`), on standard input \
                 (`--token-file -`) or in {JOIN_TOKEN_VAR}"
            )
        })?,
    };
    let token = text.trim();
    if token.is_empty() {
        bail!("the join token is empty");
    }
    Ok(token.to_owned())
}

/// A message given as an argument, or (none, or `-`) read from standard input, bounded.
pub(crate) fn message_bytes(message: Option<&str>) -> Result<Vec<u8>> {
    if let Some(message) = message.filter(|m| *m != "-") {
        return Ok(message.as_bytes().to_vec());
    }
    let mut bytes = Vec::new();
    std::io::stdin()
        .take(MAX_MESSAGE_INPUT + 1)
        .read_to_end(&mut bytes)
        .context("reading the message from standard input")?;
    if bytes.len() as u64 > MAX_MESSAGE_INPUT {
        bail!("the message on standard input is over {MAX_MESSAGE_INPUT} bytes");
    }
    Ok(bytes)
}

/// `entente enroll`: creates keys, enrolls, writes the identity directory.
pub(crate) fn enroll(
    hub: &str,
    ca: &Path,
    token_file: Option<&Path>,
    out: &Path,
    json: bool,
) -> Result<ExitCode> {
    let token = join_token(token_file)?;
    if out.join("identity.json").exists() {
        bail!(
            "`{}` already holds an identity; choose another directory",
            out.display()
        );
    }
    // Where the identity goes is made and checked before the token is spent.
    entente_keystore::local::files::create_private_dir_all(out)
        .and_then(|()| entente_keystore::local::files::check_dir(out))
        .map_err(anyhow::Error::from)
        .and_then(|()| tempfile::tempfile_in(out).map(drop).map_err(Into::into))
        .with_context(|| format!("the identity directory `{}`", out.display()))?;
    let pem = std::fs::read_to_string(ca)
        .with_context(|| format!("reading the trust bundle `{}`", ca.display()))?;
    let trust = TrustBundle::from_pem(&pem)
        .with_context(|| format!("`{}` is not a trust bundle", ca.display()))?;
    run(async {
        let identity = entente_client::enroll(hub, &trust, &token).await?;
        identity.save(out)?;
        if json {
            super::print_json(
                &serde_json::json!({ "principal": identity.principal().to_string(), "identity": out.display().to_string() }),
            );
        } else {
            outln!(
                "enrolled `{}`; identity written to {}",
                identity.principal(),
                out.display()
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `entente send`: seals, signs and publishes one message.
pub(crate) fn send(
    identity: &Path,
    hub: &str,
    channel: &str,
    message: Option<&str>,
    purpose: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    let message = message_bytes(message)?;
    let bytes = message.len();
    run(async {
        let client = connect(identity, hub).await?;
        let held = match purpose {
            Some(purpose) => client
                .publish_with_purpose(channel, message, purpose)
                .await
                .with_context(|| format!("sending to `{channel}`"))?,
            None => {
                client
                    .publish(channel, message)
                    .await
                    .with_context(|| format!("sending to `{channel}`"))?;
                None
            }
        };
        client.close().await;
        if let Some(held) = held {
            if json {
                super::print_json(&serde_json::json!({
                    "held": held.message_id,
                    "channel": channel,
                    "expires_at_ms": held.expires_at_ms,
                }));
            } else {
                outln!(
                    "held for approval on `{channel}`: {} (until {}); see `entente held`",
                    held.message_id,
                    crate::commands::grants::utc(held.expires_at_ms)
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        if json {
            super::print_json(&serde_json::json!({ "sent": channel, "bytes": bytes }));
        } else {
            outln!("sent to `{channel}`");
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `entente listen`: prints verified messages as they arrive.
pub(crate) fn listen(
    identity: &Path,
    hub: &str,
    channel: &str,
    count: Option<u64>,
    durable: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    run(async {
        let client = connect(identity, hub).await?;
        let mut subscription = match durable {
            Some(name) => client.subscribe_durable(channel, name).await,
            None => client.subscribe(channel).await,
        }
        .with_context(|| format!("subscribing to `{channel}`"))?;
        if !json {
            match durable {
                Some(name) => noteln!(
                    "listening on `{channel}` as `{}`, durable consumer `{name}`",
                    client.principal()
                ),
                None => noteln!("listening on `{channel}` as `{}`", client.principal()),
            }
        }
        let mut seen = 0u64;
        while count.is_none_or(|n| seen < n) {
            let Some(item) = subscription.next().await else {
                bail!("the subscription ended");
            };
            match item {
                Ok(message) => {
                    seen += 1;
                    let line = if json {
                        let mut fields = serde_json::Map::new();
                        fields.insert("sender".into(), message.sender.to_string().into());
                        fields.insert("channel".into(), message.channel.to_string().into());
                        fields.insert("message_id".into(), message.message_id.to_string().into());
                        fields.insert(
                            "sequence".into(),
                            message.durable.map(|d| d.sequence).into(),
                        );
                        fields.insert("attempt".into(), message.durable.map(|d| d.attempt).into());
                        super::json_line(&super::with_payload(fields, &message.payload))
                    } else {
                        // One line per message: the payload can't add one of its own.
                        format!(
                            "{} on {}: {}",
                            message.sender,
                            message.channel,
                            super::clean(&String::from_utf8_lossy(&message.payload))
                        )
                    };
                    match super::write_out(format_args!("{line}\n")) {
                        Ok(()) => {}
                        // Whoever read the output is gone (`| head -1`): the end, not an
                        // error; the message is not acknowledged, so a durable consumer gets
                        // it again.
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                            client.close().await;
                            return Ok(ExitCode::SUCCESS);
                        }
                        Err(e) => return Err(anyhow!(e).context("writing the message")),
                    }
                    client
                        .ack(&message)
                        .await
                        .context("acknowledging the message")?;
                }
                Err(err) if err.kind() == entente_client::ErrorKind::Rejected => {
                    noteln!("rejected a message: {err}");
                }
                Err(err) => return Err(err.into()),
            }
        }
        // A round trip after the last acknowledgement, so that the hub has it before we go.
        let _ = subscription.unsubscribe().await;
        client.close().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// `entente revoke`: revokes an agent; its live connections end at once.
pub(crate) fn revoke(identity: &Path, hub: &str, agent: &str, json: bool) -> Result<ExitCode> {
    let principal = Principal::parse(agent)
        .with_context(|| format!("`{agent}` is not an agent or human ID"))?;
    run(async {
        let client = connect(identity, hub).await?;
        let closed = client.revoke(std::slice::from_ref(&principal), &[]).await?;
        client.close().await;
        if json {
            super::print_json(
                &serde_json::json!({ "revoked": principal.to_string(), "closed_connections": closed }),
            );
        } else {
            outln!("revoked `{principal}`; {closed} live connection(s) closed");
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub(crate) async fn connect(identity: &Path, hub: &str) -> Result<Client> {
    let identity = Identity::load(identity, SystemTime::now())
        .with_context(|| format!("loading the identity in `{}`", identity.display()))?;
    Client::connect(identity, hub.to_owned(), ClientOptions::default())
        .await
        .with_context(|| format!("connecting to the hub at `{hub}`"))
}

pub(crate) fn run(future: impl std::future::Future<Output = Result<ExitCode>>) -> Result<ExitCode> {
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(future)
}

/// `SEGMENT/NAME` or a full agent ID.
pub(crate) fn agent_id(td: &TrustDomain, text: &str) -> Result<AgentId> {
    if text.starts_with("spiffe://") {
        return Ok(AgentId::parse(text)?);
    }
    let (segment, name) = text
        .split_once('/')
        .ok_or_else(|| anyhow!("`{text}` is not SEGMENT/NAME"))?;
    Ok(AgentId::new(td, segment, name)?)
}

/// `90s`, `15m`, `2h`, `7d`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration> {
    let bad = || anyhow!("`{text}` is not a duration like 90s, 15m, 2h or 7d");
    let split = text.len().checked_sub(1).ok_or_else(bad)?;
    let (number, unit) = text.split_at_checked(split).ok_or_else(bad)?;
    let n: u64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    .ok_or_else(bad)?;
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn durations_parse_or_fail_clearly() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        for bad in ["", "m", "15", "15x", "-1m", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn agents_are_segment_slash_name_or_full_ids() {
        let td = TrustDomain::new("acme.internal").unwrap();
        assert_eq!(
            agent_id(&td, "ops/alpha").unwrap().to_string(),
            "spiffe://acme.internal/agent/ops/alpha"
        );
        assert!(agent_id(&td, "spiffe://acme.internal/agent/ops/alpha").is_ok());
        assert!(agent_id(&td, "alpha").is_err());
    }
}
