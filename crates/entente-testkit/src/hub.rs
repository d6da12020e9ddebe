//! A running hub on `127.0.0.1:0` over a test CA and a registry in a temporary directory.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use entente_ca::{CaOptions, JoinToken, TrustBundle};
use entente_client::{Client, ClientOptions, Identity};
use entente_hub::{AuditConfig, Hub, HubConfig, HubHandle, HubStats};
use entente_store::EmbeddedStore;
use entente_types::{AgentId, HumanId, Principal, TrustDomain};
use tempfile::TempDir;

use crate::{TRUST_DOMAIN, TestCa};

/// The source name of the policies given to [`TestHubBuilder::policies`] (the first call) and
/// [`TestHub::load_policies`].
pub const TEST_SOURCE: &str = "test.cedar";

/// How long the join tokens of [`TestHub::token`] and [`TestHub::enroll`] live.
pub const TOKEN_TTL: Duration = Duration::from_secs(600);

/// The human a test hub lists as its administrator unless told otherwise
/// ([`TestHubBuilder::without_admin`]): `spiffe://TD/human/admin`, as `entente hub start` does.
pub const ADMIN_NAME: &str = "admin";

/// A real hub on `127.0.0.1:0`: [`Hub::start`] over a [`TestCa`] and an [`EmbeddedStore`] in a
/// temporary directory. Both directories are deleted when the `TestHub` drops (the CA's only
/// when no other hub shares it); dropping also stops the hub, without waiting — prefer
/// [`TestHub::shutdown`].
#[derive(Debug)]
pub struct TestHub {
    hub: HubHandle,
    ca: Arc<TestCa>,
    store: Arc<EmbeddedStore>,
    config: HubConfig,
    _dir: TempDir,
}

/// How to start a [`TestHub`]: [`TestHub::builder`], settings, then
/// [`start`](Self::start).
///
/// ```
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> anyhow::Result<()> {
/// let hub = entente_testkit::TestHub::builder()
///     .policies(r#"permit (principal in Segment::"shop", action, resource in Namespace::"shop");"#)
///     .svid_ttl(Duration::from_secs(30))
///     .config(|c| c.max_subscriptions = 8)
///     .start()
///     .await?;
/// assert_eq!(hub.config().max_subscriptions, 8);
/// assert_eq!(hub.ca().ca().options().svid_ttl, Duration::from_secs(30));
/// hub.shutdown().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct TestHubBuilder {
    ca: Option<Arc<TestCa>>,
    trust_domain: String,
    ca_options: CaOptions,
    config: HubConfig,
    admin: bool,
}

/// Enrolls the agent `segment/name` with `hub` — any running hub, not only a [`TestHub`]'s —
/// as any agent enrolls: a join token ([`token`]), then [`entente_client::enroll`] over the
/// network with fresh keys, the hub verified against its trust bundle.
pub async fn enroll(hub: &HubHandle, segment: &str, name: &str) -> Result<Identity> {
    let token = token(hub, segment, name).await?;
    entente_client::enroll(hub.local_addr(), hub.trust_bundle(), token.as_str())
        .await
        .with_context(|| format!("enrolling `{segment}/{name}`"))
}

/// Enrolls the human `name` with `hub` as a human enrolls: a join token for
/// `spiffe://TD/human/NAME`, then [`entente_client::enroll`] over the network with fresh keys.
/// The hub records its key bundle, so its approvals verify against the registry's.
pub async fn enroll_human(hub: &HubHandle, name: &str) -> Result<Identity> {
    let human = HumanId::new(hub.trust_bundle().trust_domain(), name)
        .with_context(|| format!("`{name}` is not a human name"))?;
    let token = hub
        .create_token(human, TOKEN_TTL)
        .await
        .with_context(|| format!("creating a join token for human `{name}`"))?;
    entente_client::enroll(hub.local_addr(), hub.trust_bundle(), token.as_str())
        .await
        .with_context(|| format!("enrolling human `{name}`"))
}

/// A one-time join token for the agent `segment/name` of `hub`'s trust domain, valid for
/// [`TOKEN_TTL`], made and stored as the hub's operator or a remote administrator makes it.
pub async fn token(hub: &HubHandle, segment: &str, name: &str) -> Result<JoinToken> {
    let agent = AgentId::new(hub.trust_bundle().trust_domain(), segment, name)
        .with_context(|| format!("`{segment}/{name}` is not an agent name"))?;
    hub.create_token(agent, TOKEN_TTL)
        .await
        .with_context(|| format!("creating a join token for `{segment}/{name}`"))
}

// === impl TestHub ===

impl TestHub {
    /// Starts a hub with the defaults: a new CA for [`TRUST_DOMAIN`], [`HubConfig::default`]
    /// (no policies but the base ones: nothing allowed but each principal's own namespaces
    /// and direct messages within a segment) and [`ADMIN_NAME`] as administrator.
    pub async fn start() -> Result<Self> {
        Self::builder().start().await
    }

    /// A builder, to set policies, the CA or any of the hub's settings.
    pub fn builder() -> TestHubBuilder {
        TestHubBuilder {
            ca: None,
            trust_domain: TRUST_DOMAIN.to_owned(),
            ca_options: CaOptions::default(),
            config: HubConfig::default(),
            admin: true,
        }
    }

    /// The address the hub listens on.
    pub fn addr(&self) -> SocketAddr {
        self.hub.local_addr()
    }

    /// The trust bundle: what agents get out of band to verify the hub.
    pub fn trust(&self) -> &TrustBundle {
        self.ca.trust()
    }

    /// The hub's trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        self.ca.trust_domain()
    }

    /// The name clients expect in the hub's certificate (TLS SNI), `hub.TD`.
    pub fn server_name(&self) -> String {
        entente_hub::hub_server_name(self.trust_domain())
    }

    /// The CA that issued the hub's certificate and issues its agents'.
    pub fn ca(&self) -> &Arc<TestCa> {
        &self.ca
    }

    /// The hub's registry: join tokens, agents, key bundles, the revocation list.
    pub fn store(&self) -> &Arc<EmbeddedStore> {
        &self.store
    }

    /// The running hub, as its operator holds it.
    pub fn hub(&self) -> &HubHandle {
        &self.hub
    }

    /// Every record of the hub's audit log, oldest first, once what was submitted so far is
    /// durable (the hub must keep one: [`TestHubBuilder::audited`]).
    pub async fn audit_records(&self) -> Result<Vec<entente_audit::Record>> {
        let mut all = Vec::new();
        loop {
            let (records, count) = self
                .hub
                .audit_records(all.len() as u64, u64::MAX)
                .await?
                .context("the hub keeps no audit log")?;
            let read = records.len();
            all.extend(records);
            if read == 0 || all.len() as u64 >= count {
                return Ok(all);
            }
        }
    }

    /// The configuration the hub was started with.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// The hub's counters.
    pub fn stats(&self) -> HubStats {
        self.hub.stats()
    }

    /// The agent `segment/name` of the hub's trust domain.
    pub fn agent_id(&self, segment: &str, name: &str) -> Result<AgentId> {
        self.ca.agent_id(segment, name)
    }

    /// A one-time join token for the agent `segment/name`, valid for [`TOKEN_TTL`] ([`token`]).
    pub async fn token(&self, segment: &str, name: &str) -> Result<JoinToken> {
        token(&self.hub, segment, name).await
    }

    /// Enrolls the agent `segment/name` as any agent enrolls ([`enroll`]). The hub records the
    /// agent and its key bundle, so its directory serves the bundle.
    pub async fn enroll(&self, segment: &str, name: &str) -> Result<Identity> {
        enroll(&self.hub, segment, name).await
    }

    /// Enrolls the human `name` (`spiffe://TD/human/NAME`) as a human enrolls
    /// ([`enroll_human`]).
    pub async fn enroll_human(&self, name: &str) -> Result<Identity> {
        enroll_human(&self.hub, name).await
    }

    /// An identity for the agent `segment/name` issued directly by the CA, now: its
    /// certificate gets it through the handshake, but the hub's registry has never seen it
    /// (its directory does not know its key bundle).
    pub fn identity_without_enrollment(&self, segment: &str, name: &str) -> Result<Identity> {
        self.ca.identity(&self.ca.principal(segment, name)?)
    }

    /// The administrator [`ADMIN_NAME`] (listed in the hub's `admins` unless the builder said
    /// [`without_admin`](TestHubBuilder::without_admin)).
    pub fn admin_principal(&self) -> Result<Principal> {
        self.ca.human(ADMIN_NAME)
    }

    /// A fresh identity for the administrator [`ADMIN_NAME`], issued directly by the CA as
    /// `entente hub start` issues its own; connect it to call the admin RPCs
    /// ([`Client::create_token`], [`Client::revoke`]).
    pub fn admin(&self) -> Result<Identity> {
        self.ca.identity(&self.admin_principal()?)
    }

    /// Connects `identity` to the hub with the default [`ClientOptions`].
    pub async fn connect(&self, identity: Identity) -> Result<Client> {
        self.connect_with(identity, ClientOptions::new()).await
    }

    /// Enrolls the agent `segment/name` and connects it.
    pub async fn connect_agent(&self, segment: &str, name: &str) -> Result<Client> {
        self.connect(self.enroll(segment, name).await?).await
    }

    /// Enrolls the human `name` and connects it.
    pub async fn connect_human(&self, name: &str) -> Result<Client> {
        self.connect(self.enroll_human(name).await?).await
    }

    /// Connects `identity` to the hub with `options`.
    pub async fn connect_with(&self, identity: Identity, options: ClientOptions) -> Result<Client> {
        let principal = identity.principal().clone();
        Client::connect(identity, self.addr(), options)
            .await
            .with_context(|| format!("connecting `{principal}` to the hub"))
    }

    /// Revokes every certificate of `principal`, live: the hub closes its connections and
    /// refuses its handshakes. Returns how many connections were closed (0 if it was revoked
    /// already).
    pub async fn revoke(&self, principal: &Principal) -> Result<usize> {
        self.ca.revoke(&self.hub, principal).await
    }

    /// Revokes the certificate of `identity` (by serial number), live; other certificates of
    /// its principal stay valid. Returns how many connections were closed.
    pub async fn revoke_certificate(&self, identity: &Identity) -> Result<usize> {
        self.ca.revoke_certificate(&self.hub, identity).await
    }

    /// Replaces the hub's running policy set with `policies` (Cedar, one source named
    /// `test.cedar`) and the base policies, as an administrator's `LoadPolicies` does; returns
    /// the new policy epoch. Sessions end the subscriptions the new set no longer allows.
    pub async fn load_policies(&self, policies: &str) -> Result<u64> {
        self.hub
            .load_policies(vec![(TEST_SOURCE.to_owned(), policies.to_owned())])
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.problems().join("\n")))
            .context("loading policies")
    }

    /// Shuts the hub down and starts it again on a new port with the same CA, registry and
    /// configuration: what a hub keeps across restarts (agents, key bundles, the revocation
    /// list, the policy set last loaded) is there, connections and sessions are not.
    pub async fn restart(self) -> Result<Self> {
        let Self {
            hub,
            ca,
            store,
            config,
            _dir,
        } = self;
        hub.shutdown().await.context("stopping the hub")?;
        let hub = Hub::start(config.clone(), ca.ca().clone(), store.clone())
            .await
            .context("restarting the hub")?;
        Ok(Self {
            hub,
            ca,
            store,
            config,
            _dir,
        })
    }

    /// Stops accepting, closes every connection (`UNAVAILABLE`) and waits for them to end;
    /// an error if the audit log or a durable channel had failed
    /// ([`HubError::Shutdown`](entente_hub::HubError::Shutdown)).
    pub async fn shutdown(self) -> Result<()> {
        self.hub.shutdown().await.context("stopping the hub")
    }
}

// === impl TestHubBuilder ===

impl TestHubBuilder {
    /// Runs the hub with `ca` instead of a new CA: several hubs of one CA, or a CA the test
    /// also issues from directly. The builder's trust domain and CA options are then unused.
    pub fn ca(mut self, ca: Arc<TestCa>) -> Self {
        self.ca = Some(ca);
        self
    }

    /// The trust domain of the new CA. Default [`TRUST_DOMAIN`].
    pub fn trust_domain(mut self, trust_domain: &str) -> Self {
        trust_domain.clone_into(&mut self.trust_domain);
        self
    }

    /// The validity periods of the new CA. Default [`CaOptions::default`].
    pub fn ca_options(mut self, options: CaOptions) -> Self {
        self.ca_options = options;
        self
    }

    /// The lifetime of the certificates the new CA issues — agents', renewals', the hub's
    /// own. Default one hour.
    pub fn svid_ttl(mut self, ttl: Duration) -> Self {
        self.ca_options.svid_ttl = ttl;
        self
    }

    /// Adds Cedar policies to the hub's initial policy set (docs/POLICY.md), as one source
    /// named `test.cedar` (`test-2.cedar`, … for later calls); they are checked at
    /// [`start`](Self::start), which fails naming each problem. The base policies always run
    /// too.
    pub fn policies(mut self, text: &str) -> Self {
        let name = match self.config.policies.len() {
            0 => TEST_SOURCE.to_owned(),
            n => format!("test-{}.cedar", n + 1),
        };
        self.config.policies.push((name, text.to_owned()));
        self
    }

    /// Changes the hub's configuration: anything of [`HubConfig`]. Policies added by
    /// [`policies`](Self::policies) before are in `config.policies`; the `listen` address
    /// should stay on the loopback.
    pub fn config(mut self, change: impl FnOnce(&mut HubConfig)) -> Self {
        change(&mut self.config);
        self
    }

    /// Keeps the hub's audit log in `dir`, sealed every 50 ms so that a test soon reads what
    /// was recorded ([`HubHandle::audit_records`]).
    pub fn audited(self, dir: &Path) -> Self {
        let audit = AuditConfig {
            seal_interval: Duration::from_millis(50),
            ..AuditConfig::new(dir.to_owned())
        };
        self.config(move |c| c.audit = Some(audit))
    }

    /// Lists no administrator of its own: `admins` is what [`config`](Self::config) sets
    /// (empty by default), and [`TestHub::admin`] is refused by the admin RPCs.
    pub fn without_admin(mut self) -> Self {
        self.admin = false;
        self
    }

    /// Creates what is missing (the CA, a registry in a temporary directory) and starts the
    /// hub.
    pub async fn start(self) -> Result<TestHub> {
        let Self {
            ca,
            trust_domain,
            ca_options,
            mut config,
            admin,
        } = self;
        let ca = match ca {
            Some(ca) => ca,
            None => Arc::new(TestCa::with_trust_domain(&trust_domain, ca_options)?),
        };
        if admin {
            let admin = ca.human(ADMIN_NAME)?;
            if !config.admins.contains(&admin) {
                config.admins.push(admin);
            }
        }
        let dir = tempfile::tempdir().context("creating the hub's temporary directory")?;
        let store = Arc::new(
            EmbeddedStore::open(dir.path().join("registry.redb"))
                .context("opening the hub's registry")?,
        );
        let hub = Hub::start(config.clone(), ca.ca().clone(), store.clone())
            .await
            .context("starting the hub")?;
        Ok(TestHub {
            hub,
            ca,
            store,
            config,
            _dir: dir,
        })
    }
}
