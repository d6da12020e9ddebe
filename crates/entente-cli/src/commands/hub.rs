//! `entente hub start`: run a hub on a data directory, initializing it on first use.

use std::{net::SocketAddr, path::Path, process::ExitCode, time::SystemTime};

use anyhow::{Context as _, Result};
use entente_hub::Hub;

use crate::data::DataDir;

pub(crate) fn start(
    dir: &Path,
    listen: Option<SocketAddr>,
    trust_domain: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    let data = DataDir::open_or_init(dir, listen, trust_domain, SystemTime::now())?;
    let config = data.hub_config()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let hub = Hub::start(config, data.ca.clone(), data.store.clone())
            .await
            .context("starting the hub")?;
        // Listen for the stop signals before announcing the hub: a supervisor may signal as
        // soon as it reads the first line.
        let stop = stop_signal().context("listening for stop signals")?;
        let addr = hub.local_addr();
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "listening": addr.to_string(),
                    "trust_domain": data.config.trust_domain,
                    "data": data.root.display().to_string(),
                    "created": data.created,
                    "admin": data.admin_dir().display().to_string(),
                    "ca": data.root.join("ca.pem").display().to_string(),
                })
            );
        } else {
            if !data.created.is_empty() {
                println!("initialized {}:", data.root.display());
                for line in &data.created {
                    println!("  {line}");
                }
            }
            println!(
                "hub listening on {addr} for trust domain `{}` (Ctrl-C or SIGTERM to stop)",
                data.config.trust_domain
            );
        }
        stop.await;
        hub.shutdown().await;
        if !json {
            println!("hub stopped");
        }
        Ok(ExitCode::SUCCESS)
    })
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
