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
                "hub listening on {addr} for trust domain `{}` (Ctrl-C to stop)",
                data.config.trust_domain
            );
        }
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        hub.shutdown().await;
        if !json {
            println!("hub stopped");
        }
        Ok(ExitCode::SUCCESS)
    })
}
