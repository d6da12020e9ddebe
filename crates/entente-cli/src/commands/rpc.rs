//! Request/reply from the command line: `request` asks one principal and prints its reply;
//! `serve` answers each request with the output of a shell command.

use std::{path::Path, process::ExitCode, process::Stdio, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};
use entente_client::{ErrorKind, Principal};
use entente_types::TrustDomain;
use futures_util::StreamExt as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};

use super::agent::{agent_id, connect, parse_duration, run};

/// How long `request` waits for the reply unless told.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `request` may be told to wait: a day.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Most bytes of a command's standard output sent as a reply (a payload's limit).
pub(crate) const MAX_OUTPUT: usize = 1 << 20;
/// How long one command may run: under the hub's 60-second limit on a reply.
const EXEC_TIMEOUT: Duration = Duration::from_secs(50);
/// Most bytes of a command's standard error kept for the log line.
const MAX_STDERR: usize = 4096;

/// `entente request`: sends one request and prints the reply's payload.
pub(crate) fn request(
    identity: &Path,
    hub: &str,
    target: &str,
    message: Option<&str>,
    timeout: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    let timeout = timeout
        .map(parse_duration)
        .transpose()?
        .unwrap_or(DEFAULT_TIMEOUT);
    if timeout.is_zero() {
        bail!("`--timeout` must be at least 1s");
    }
    if timeout > MAX_TIMEOUT {
        bail!("`--timeout` must be at most 1d (24h)");
    }
    let message = super::agent::message_bytes(message)?;
    run(async {
        let client = connect(identity, hub).await?;
        let td = TrustDomain::new(client.principal().trust_domain())?;
        let target = principal(&td, target)?;
        let reply = match client.request(&target, message, timeout).await {
            Ok(reply) => reply,
            Err(e) if e.kind() == ErrorKind::Timeout => {
                bail!("no reply from `{target}` within {}s", timeout.as_secs())
            }
            Err(e) => return Err(anyhow!(e).context(format!("asking `{target}`"))),
        };
        client.close().await;
        if json {
            let mut fields = serde_json::Map::new();
            fields.insert("sender".into(), reply.sender.to_string().into());
            fields.insert("message_id".into(), reply.message_id.to_string().into());
            super::print_json(&super::with_payload(fields, &reply.payload));
        } else {
            match write_reply(&reply.payload) {
                // Whoever read the output is gone (`| head -1`): the end, as for every output.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                written => written.context("writing the reply")?,
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `entente serve`: answers each request on `channel` (`direct`: the identity's own direct
/// channel) with `exec`'s standard output, run by `sh -c` with the request on standard input.
pub(crate) fn serve(
    identity: &Path,
    hub: &str,
    channel: &str,
    exec: &str,
    count: Option<u64>,
    json: bool,
) -> Result<ExitCode> {
    run(async {
        let client = connect(identity, hub).await?;
        let requests = if channel == "direct" {
            client.serve_direct().await
        } else {
            client.serve(channel).await
        };
        let mut requests = requests.with_context(|| format!("serving `{channel}`"))?;
        if !json {
            noteln!(
                "serving `{}` as `{}`",
                requests.pattern(),
                client.principal()
            );
        }
        // Requests handled, and of those the ones not answered with the command's output.
        let (mut served, mut unserved) = (0u64, 0u64);
        while count.is_none_or(|n| served < n) {
            let Some(item) = requests.next().await else {
                bail!("the subscription ended");
            };
            let request = match item {
                Ok(request) => request,
                Err(err) if err.kind() == ErrorKind::Rejected => {
                    noteln!("rejected a message: {err}");
                    continue;
                }
                Err(err) => return Err(err.into()),
            };
            let sender = request.message.sender.clone();
            if request.responder.reply_to().is_none() {
                noteln!("`{sender}` sent a message without reply_to; not answered");
                continue;
            }
            let (answer, failed) = match execute(exec, &request.message.payload).await {
                Ok(output) => (output, false),
                Err(e) => {
                    // The detail (its standard error, paths, what it printed) stays here: the
                    // requester is another principal, told only that it failed.
                    noteln!("`{exec}` failed for a request from `{sender}`: {e:#}");
                    (b"error: the command failed".to_vec(), true)
                }
            };
            let bytes = answer.len();
            // A request counts once handled, answered or not (the requester may be gone).
            served += 1;
            unserved += u64::from(failed);
            match request.responder.reply(answer).await {
                Ok(()) => {}
                Err(err) if err.kind() == ErrorKind::Closed => return Err(err.into()),
                Err(err) => {
                    noteln!("could not answer `{sender}`: {err}");
                    unserved += u64::from(!failed);
                    continue;
                }
            }
            // A responder goes on serving when nobody reads what it says.
            if json {
                super::announce_json(
                    &serde_json::json!({ "answered": sender.to_string(), "bytes": bytes, "failed": failed }),
                );
            } else {
                announceln!("answered `{sender}` ({bytes} bytes)");
            }
        }
        client.close().await;
        // Served as asked only if every request got the command's output.
        if unserved > 0 {
            noteln!("{unserved} of {served} request(s) did not get the command's output (above)");
            return Ok(ExitCode::FAILURE);
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Runs `command` with `sh -c`, `input` on standard input; its standard output if it exits 0
/// within the time limit with at most [`MAX_OUTPUT`] bytes.
async fn execute(command: &str, input: &[u8]) -> Result<Vec<u8>> {
    let mut child = tokio::process::Command::new("sh");
    for secret in crate::keystores::SECRET_ENVS {
        child.env_remove(secret);
    }
    let mut child = child
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting `sh`")?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        bail!("the command's standard streams are missing");
    };
    let input = input.to_vec();
    let feed = async move {
        // A command that does not read its input is fine: ignore a broken pipe.
        let _ = stdin.write_all(&input).await;
        drop(stdin);
    };
    let work = async {
        let ((), out, err, status) = tokio::join!(
            feed,
            read_bounded(stdout, MAX_OUTPUT),
            read_bounded(stderr, MAX_STDERR),
            child.wait()
        );
        Ok::<_, anyhow::Error>((out?, err?, status?))
    };
    let (out, err, status) = tokio::time::timeout(EXEC_TIMEOUT, work)
        .await
        .map_err(|_| anyhow!("it ran longer than {}s", EXEC_TIMEOUT.as_secs()))??;
    let (out, truncated) = out;
    if !status.success() {
        let said = String::from_utf8_lossy(&err.0);
        let said = said
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        if said.is_empty() {
            bail!("it exited with {status}");
        }
        // The command's text, in a line of the server's log: it can't start another.
        bail!("it exited with {status}: {}", super::clean(said));
    }
    if truncated {
        bail!("its output exceeds {MAX_OUTPUT} bytes");
    }
    Ok(out)
}

/// Reads up to `max` bytes; `true` if there was more (the rest is drained and discarded, so
/// that the command is not blocked writing it).
async fn read_bounded(mut from: impl AsyncRead + Unpin, max: usize) -> Result<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    (&mut from).take(limit).read_to_end(&mut out).await?;
    let truncated = out.len() > max;
    if truncated {
        out.truncate(max);
        tokio::io::copy(&mut from, &mut tokio::io::sink()).await?;
    }
    Ok((out, truncated))
}

/// `SEGMENT/NAME`, or a full agent or human ID.
fn principal(td: &TrustDomain, text: &str) -> Result<Principal> {
    if text.starts_with("spiffe://") {
        return Principal::parse(text)
            .with_context(|| format!("`{text}` is not an agent or human ID"));
    }
    Ok(Principal::from(agent_id(td, text)?))
}

/// Writes a reply to standard output: its exact bytes into a file or a pipe; on a terminal,
/// line by line with control and invisible characters escaped (a peer's bytes can't drive
/// the terminal or disguise what is shown).
fn write_reply(payload: &[u8]) -> std::io::Result<()> {
    use std::io::{IsTerminal as _, Write as _};
    let mut out = std::io::stdout().lock();
    if out.is_terminal() {
        for line in String::from_utf8_lossy(payload).lines() {
            writeln!(out, "{}", super::clean(line))?;
        }
    } else {
        out.write_all(payload)?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn block<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn commands_answer_with_their_output_or_fail_clearly() {
        assert_eq!(block(execute("tr a-z A-Z", b"hello")).unwrap(), b"HELLO");
        assert_eq!(block(execute("echo hi", b"ignored")).unwrap(), b"hi\n");
        let err = block(execute("echo broken >&2; exit 3", b"")).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("broken"), "{text}");
        assert!(text.contains('3'), "{text}");
        // Its last line is escaped: it can't drive the terminal or reorder the log's line.
        let err = block(execute(
            r"printf 'x\033[2Ky\342\200\256z\n' >&2; exit 1",
            b"",
        ));
        let text = format!("{:#}", err.unwrap_err());
        assert!(text.ends_with(r": x\u{1b}[2Ky\u{202e}z"), "{text:?}");
        let err = block(execute("head -c 1048577 /dev/zero", b"")).unwrap_err();
        assert!(format!("{err:#}").contains("exceeds"), "{err:#}");
    }

    #[test]
    fn targets_are_segment_slash_name_or_full_ids() {
        let td = TrustDomain::new("acme.internal").unwrap();
        assert_eq!(
            principal(&td, "ops/alpha").unwrap().to_string(),
            "spiffe://acme.internal/agent/ops/alpha"
        );
        assert_eq!(
            principal(&td, "spiffe://acme.internal/human/admin")
                .unwrap()
                .to_string(),
            "spiffe://acme.internal/human/admin"
        );
        assert!(principal(&td, "alpha").is_err());
    }
}
