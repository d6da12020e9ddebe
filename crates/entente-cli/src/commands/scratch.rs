//! A hub on a fresh temporary data directory and a loopback port: what `demo` and `bench` run
//! on. The directory, with everything the hub wrote, is deleted when the [`ScratchHub`] drops.

use std::{net::SocketAddr, path::Path, time::Duration, time::SystemTime};

use anyhow::{Context as _, Result};
use entente_ca::{JoinToken, TrustBundle};
use entente_hub::{Hub, HubConfig, HubHandle, Rate};
use entente_types::{AgentId, TrustDomain};

use crate::data::DataDir;

/// How long the join tokens of a scratch hub live.
const TOKEN_TTL: Duration = Duration::from_secs(600);

pub(crate) struct ScratchHub {
    /// The running hub.
    pub(crate) hub: HubHandle,
    /// Its data directory.
    pub(crate) data: DataDir,
    /// What an agent receives out of band: the trust bundle, read from the hub's `ca.pem`.
    pub(crate) trust: TrustBundle,
    trust_domain: TrustDomain,
    dir: tempfile::TempDir,
}

impl ScratchHub {
    /// A hub for measurement: as [`start_configured`](Self::start_configured), with the rate
    /// limits set far above what this hub can route, so that they are checked on every
    /// publish but never refuse one, and the anomaly detector counting every publish but never
    /// throttling or quarantining (a benchmark changing its workload is not an attack).
    pub(crate) async fn start_for_bench(
        trust_domain: &str,
        configure: impl FnOnce(&mut HubConfig),
    ) -> Result<Self> {
        Self::start_configured(trust_domain, |config| {
            let rate = |per_second| Rate {
                per_second,
                burst: u32::MAX,
            };
            config.rate_limits.agent_messages = Some(rate(1_000_000_000));
            config.rate_limits.agent_bytes = Some(rate(Rate::MAX_PER_SECOND));
            config.anomaly.throttle_at = None;
            config.anomaly.quarantine_at = None;
            configure(config);
        })
        .await
    }

    /// Initializes a data directory for `trust_domain` and starts a hub on `127.0.0.1:0`, with
    /// `configure` applied to the hub's configuration.
    pub(crate) async fn start_configured(
        trust_domain: &str,
        configure: impl FnOnce(&mut HubConfig),
    ) -> Result<Self> {
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let hub_dir = dir.path().join("hub");
        let listen = "127.0.0.1:0".parse().ok();
        let data = DataDir::scratch(&hub_dir, listen, trust_domain, SystemTime::now())?;
        let mut config = data.hub_config(false)?;
        configure(&mut config);
        let hub = Hub::start(config, data.ca.clone(), data.store.clone())
            .await
            .context("starting the hub")?;
        let trust = TrustBundle::from_pem(
            &std::fs::read_to_string(hub_dir.join("ca.pem")).context("reading ca.pem")?,
        )?;
        Ok(Self {
            hub,
            data,
            trust,
            trust_domain: TrustDomain::new(trust_domain)?,
            dir,
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.hub.local_addr()
    }

    /// The temporary directory: the hub's data is in `hub/` below it, the rest is free.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A one-time join token for the agent `segment/name`.
    pub(crate) async fn token(&self, segment: &str, name: &str) -> Result<(AgentId, JoinToken)> {
        let agent = AgentId::new(&self.trust_domain, segment, name)?;
        let token = self.hub.create_token(agent.clone(), TOKEN_TTL).await?;
        Ok((agent, token))
    }

    pub(crate) async fn shutdown(self) -> Result<()> {
        self.hub.shutdown().await.context("stopping the hub")
    }
}
