//! `entente hub start`: run a hub on a data directory, initializing it on first use.

use std::{net::SocketAddr, path::Path, process::ExitCode, time::SystemTime};

use anyhow::{Context as _, Result, bail};
use entente_hub::{Hub, HubError, HubHandle, PolicyOrigin};

use crate::data::DataDir;

/// Sends the hub's log events (`tracing`) to standard error at `level` and above: as text,
/// or with `json` as one JSON object per line (`timestamp`, `level`, `target`, and `fields`
/// with the `message` and the event's own fields). `off` shows none. Only Entente's own
/// events go down to `level`; the libraries' (HTTP/2, TLS) show from `warn` at most.
pub(crate) fn init_logs(json: bool, level: &str) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt as _;

    let level = match level {
        "off" => return,
        "error" => LevelFilter::ERROR,
        "warn" => LevelFilter::WARN,
        "debug" => LevelFilter::DEBUG,
        _ => LevelFilter::INFO,
    };
    let filter = Targets::new()
        .with_target("entente", level)
        .with_default(level.min(LevelFilter::WARN));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let registry = tracing_subscriber::registry().with(filter);
    // Another subscriber already set (none is, in the binary) keeps its place.
    let _ = if json {
        tracing::subscriber::set_global_default(registry.with(layer.json()))
    } else {
        tracing::subscriber::set_global_default(registry.with(layer))
    };
}

pub(crate) fn start(
    dir: &Path,
    listen: Option<SocketAddr>,
    trust_domain: Option<&str>,
    reload_policies: bool,
    json: bool,
) -> Result<ExitCode> {
    let data = DataDir::open_or_init(dir, listen, trust_domain, SystemTime::now())?;
    let config = data.hub_config(reload_policies)?;
    if data.key_stores.key_beside {
        tracing::warn!(
            "the local key store is unlocked by `keystore.key` in the data directory: a copy of \
             the directory (a backup, a snapshot) holds the keys too; set ENTENTE_KEYSTORE_KEY \
             or ENTENTE_KEYSTORE_PASSPHRASE instead (docs/KEYS.md)"
        );
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let policies_dir = data.policies_dir();
        let hub = match Hub::start(config, data.ca.clone(), data.store.clone()).await {
            Ok(hub) => hub,
            Err(HubError::StoredPolicies(why)) => bail!(
                "the policy set in the store does not load: {why}; fix the files in `{}` and \
                 start with `--reload-policies` to run them instead",
                policies_dir.display()
            ),
            Err(HubError::InitialPolicies(why)) => bail!(
                "the policies in `{}` do not load: {why}",
                policies_dir.display()
            ),
            Err(e) => return Err(e).context("starting the hub"),
        };
        // Listen for the stop signals before announcing the hub: a supervisor may signal as
        // soon as it reads the first line.
        let stop = stop_signal().context("listening for stop signals")?;
        let addr = hub.local_addr();
        let running = hub.policies();
        let origin = match hub.policy_origin() {
            PolicyOrigin::Stored => "stored",
            _ => "files",
        };
        let names: Vec<&str> = running.sources.iter().map(|(n, _)| n.as_str()).collect();
        if json {
            super::announce_json(&serde_json::json!({
                "listening": addr.to_string(),
                "metrics": hub.metrics_addr().map(|a| format!("http://{a}/metrics")),
                "trust_domain": data.config.trust_domain,
                "data": data.root.display().to_string(),
                "created": data.created,
                "admin": data.admin_dir().display().to_string(),
                "ca": data.root.join("ca.pem").display().to_string(),
                "policies": {
                    "origin": origin,
                    "sources": names,
                    "policies": running.set.len(),
                    "epoch": running.epoch,
                },
            }));
        } else {
            if !data.created.is_empty() {
                announceln!("initialized {}:", data.root.display());
                for line in &data.created {
                    announceln!("  {line}");
                }
            }
            let sources = if names.is_empty() {
                "no sources: only the base policies".to_owned()
            } else {
                names.join(", ")
            };
            match hub.policy_origin() {
                PolicyOrigin::Stored => announceln!(
                    "policies: the stored set ({sources}; {} policies with the base ones), \
                     policy epoch {}; `{}` is not read again: change the running set with \
                     `entente policy load`",
                    running.set.len(),
                    running.epoch,
                    policies_dir.display()
                ),
                _ => announceln!(
                    "policies: `{}` ({sources}; {} policies with the base ones), now stored, \
                     policy epoch {}",
                    policies_dir.display(),
                    running.set.len(),
                    running.epoch
                ),
            }
            if let Some(metrics) = hub.metrics_addr() {
                announceln!("metrics: http://{metrics}/metrics");
            }
            announceln!(
                "hub listening on {addr} for trust domain `{}` (Ctrl-C or SIGTERM to stop)",
                data.config.trust_domain
            );
        }
        // Until stopped, the admin identity is kept fresh: an operator may need it at any time
        // (to revoke, to quarantine), an hour after the start as well as a minute.
        let admin_dir = data.admin_dir();
        tokio::select! {
            () = stop => {}
            () = keep_admin_fresh(&hub, &admin_dir, data.ca.options().svid_ttl) => {}
        }
        // A failed audit log or durable channel is an exit status, not only a line in a log.
        hub.shutdown().await.context("stopping the hub")?;
        if !json {
            announceln!("hub stopped");
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Renews the admin identity in `dir` (issues it anew if it no longer loads) whenever it has
/// less than half of `svid_ttl` left, with the CA the hub uses (after a rollover, the new
/// intermediate), checking twelve times per `svid_ttl`; never returns. A failure is logged
/// and tried again at the next check.
async fn keep_admin_fresh(hub: &HubHandle, dir: &Path, svid_ttl: std::time::Duration) {
    let every = (svid_ttl / 12).max(std::time::Duration::from_secs(1));
    let mut checks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        checks.tick().await;
        let (ca, dir) = (hub.ca(), dir.to_owned());
        let refreshed = tokio::task::spawn_blocking(move || {
            crate::data::refresh_admin(&dir, &ca, SystemTime::now())
        })
        .await;
        match refreshed {
            Ok(Ok(true)) => tracing::info!("admin identity renewed"),
            Ok(Ok(false)) => {}
            Ok(Err(error)) => tracing::warn!(
                error = format!("{error:#}"),
                "could not issue the admin identity anew; trying again at the next check"
            ),
            Err(error) => tracing::warn!(%error, "the admin identity's renewal stopped"),
        }
    }
}

/// Registers for SIGINT and SIGTERM at once; the future resolves on the first of them.
fn stop_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
