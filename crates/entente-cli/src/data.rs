//! The hub's data directory: created on the first `entente hub start`, reused afterwards.
//!
//! ```text
//! DIR/
//!   config.toml      listen address, trust domain, allow rules (edit and restart)
//!   keystore.key     the key-store key, only if none was given through the environment
//!   keys/            the CA keys (Argon2id/AES-256-GCM key store, files 0600)
//!   ca/root.pem      the root CA certificate
//!   ca/intermediate.pem
//!   ca.pem           the trust bundle agents need (`entente enroll --ca DIR/ca.pem`)
//!   store.redb       agents, key bundles, join tokens, revocations
//!   admin/           the identity directory of `spiffe://TD/human/admin`
//! ```
//!
//! The key store is unlocked by `ENTENTE_KEYSTORE_KEY` (64 hex characters) or
//! `ENTENTE_KEYSTORE_PASSPHRASE`; without either, the first start draws a random key and keeps
//! it in `DIR/keystore.key` (0600), which protects the CA keys only as well as the directory
//! itself — production deployments pass the key through the environment or use an HSM.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use entente_ca::{Ca, CaOptions};
use entente_client::Identity;
use entente_crypto::{KeyBundleBody, MessageKeys};
use entente_hub::{AllowList, AllowRule, HubConfig, Who};
use entente_keystore::local::{Argon2Params, LocalKeyStore, Unlock, files};
use entente_store::EmbeddedStore;
use entente_types::{AgentId, ChannelPattern, HumanId, Principal, TrustDomain};
use zeroize::Zeroizing;

/// Where a hub listens unless told otherwise.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:7443";
/// The trust domain of a new data directory unless told otherwise.
pub(crate) const DEFAULT_TRUST_DOMAIN: &str = "entente.local";
/// How long the admin's key bundle is valid.
const ADMIN_BUNDLE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// An opened data directory.
pub(crate) struct DataDir {
    pub(crate) root: PathBuf,
    pub(crate) ca: Arc<Ca>,
    pub(crate) store: Arc<EmbeddedStore>,
    pub(crate) config: ConfigFile,
    /// What the first start created, in words (empty on later starts).
    pub(crate) created: Vec<String>,
}

impl DataDir {
    /// Opens `root`, initializing it on first use. `listen` and `trust_domain` apply to a new
    /// directory; on an existing one, `listen` overrides the config file and a different
    /// `trust_domain` is an error.
    pub(crate) fn open_or_init(
        root: &Path,
        listen: Option<SocketAddr>,
        trust_domain: Option<&str>,
        now: SystemTime,
    ) -> Result<Self> {
        let config_path = root.join(CONFIG);
        if config_path.exists() {
            let mut dir = Self::open(root, now)?;
            if let Some(td) = trust_domain
                && td != dir.config.trust_domain
            {
                bail!(
                    "`{}` belongs to trust domain `{}`, not `{td}`",
                    root.display(),
                    dir.config.trust_domain
                );
            }
            if let Some(listen) = listen {
                dir.config.listen = listen.to_string();
            }
            return Ok(dir);
        }
        Self::init(root, listen, trust_domain, now)
    }

    /// The hub configuration the config file describes.
    pub(crate) fn hub_config(&self) -> Result<HubConfig> {
        self.config.to_hub_config()
    }

    /// The admin identity directory.
    pub(crate) fn admin_dir(&self) -> PathBuf {
        self.root.join(ADMIN)
    }

    fn init(
        root: &Path,
        listen: Option<SocketAddr>,
        trust_domain: Option<&str>,
        now: SystemTime,
    ) -> Result<Self> {
        let td = TrustDomain::new(trust_domain.unwrap_or(DEFAULT_TRUST_DOMAIN))
            .context("invalid trust domain")?;
        files::create_private_dir_all(root)?;
        let mut created = Vec::new();
        let unlock = match Unlock::from_env()? {
            Some(unlock) => unlock,
            None => {
                let mut key = Zeroizing::new([0u8; 32]);
                SystemRandom::new()
                    .fill(&mut *key)
                    .map_err(|_| anyhow!("the system random source failed"))?;
                let text = Zeroizing::new(hex::encode(*key));
                files::write_new(root, KEYSTORE_KEY, text.as_bytes(), &SystemRandom::new())?;
                created.push(format!(
                    "{KEYSTORE_KEY}: a random key-store key (set ENTENTE_KEYSTORE_KEY or ENTENTE_KEYSTORE_PASSPHRASE instead for production)"
                ));
                Unlock::Key(key)
            }
        };
        let keystore = LocalKeyStore::create(&root.join(KEYS), &unlock, Argon2Params::default())?;
        created.push(format!("{KEYS}/: the CA keys, encrypted at rest"));
        let ca = Ca::init(Arc::new(keystore), &td, CaOptions::default(), now)?;
        let pem = ca.to_pem();
        let ca_dir = root.join(CA_DIR);
        files::create_private_dir_all(&ca_dir)?;
        let rng = SystemRandom::new();
        files::replace(&ca_dir, ROOT_PEM, pem.root.as_bytes(), &rng)?;
        files::replace(&ca_dir, INTERMEDIATE_PEM, pem.intermediate.as_bytes(), &rng)?;
        files::replace(root, TRUST_PEM, ca.trust_bundle().to_pem().as_bytes(), &rng)?;
        created.push(format!(
            "{CA_DIR}/: a root and an intermediate CA for trust domain `{td}`"
        ));
        created.push(format!("{TRUST_PEM}: the trust bundle agents enroll with"));
        let store = EmbeddedStore::open(root.join(STORE))?;
        created.push(format!("{STORE}: the registry"));
        let admin = HumanId::new(&td, "admin")?;
        issue_local_identity(&ca, Principal::from(admin.clone()), now)?.save(&root.join(ADMIN))?;
        created.push(format!("{ADMIN}/: the identity of `{admin}`"));
        let config = ConfigFile::new(
            listen.map_or_else(|| DEFAULT_LISTEN.to_owned(), |l| l.to_string()),
            &td,
        )?;
        files::replace(root, CONFIG, config.render()?.as_bytes(), &rng)?;
        created.push(format!(
            "{CONFIG}: listen address, trust domain and allow rules"
        ));
        Ok(Self {
            root: root.to_owned(),
            ca: Arc::new(ca),
            store: Arc::new(store),
            config,
            created,
        })
    }

    fn open(root: &Path, now: SystemTime) -> Result<Self> {
        let config = ConfigFile::parse(&String::from_utf8(files::read_private(
            &root.join(CONFIG),
        )?)?)
        .with_context(|| format!("reading `{}`", root.join(CONFIG).display()))?;
        let unlock = match Unlock::from_env()? {
            Some(unlock) => unlock,
            None => {
                let path = root.join(KEYSTORE_KEY);
                let text = Zeroizing::new(files::read_private(&path).with_context(|| {
                    format!(
                        "no key-store key: set ENTENTE_KEYSTORE_KEY or ENTENTE_KEYSTORE_PASSPHRASE, or restore `{}`",
                        path.display()
                    )
                })?);
                let mut key = Zeroizing::new([0u8; 32]);
                hex::decode_to_slice(text.trim_ascii(), &mut *key)
                    .map_err(|_| anyhow!("`{}` is not a 64-character hex key", path.display()))?;
                Unlock::Key(key)
            }
        };
        let keystore = LocalKeyStore::open(&root.join(KEYS), &unlock)?;
        let ca_dir = root.join(CA_DIR);
        let root_pem = String::from_utf8(files::read_private(&ca_dir.join(ROOT_PEM))?)?;
        let intermediate_pem =
            String::from_utf8(files::read_private(&ca_dir.join(INTERMEDIATE_PEM))?)?;
        let ca = Ca::load(
            Arc::new(keystore),
            &root_pem,
            &intermediate_pem,
            CaOptions::default(),
        )?;
        if ca.trust_domain().as_str() != config.trust_domain {
            bail!(
                "the CA is for trust domain `{}` but the config says `{}`",
                ca.trust_domain(),
                config.trust_domain
            );
        }
        let store = EmbeddedStore::open(root.join(STORE))?;
        // The admin's certificate is short-lived: refresh it at each start if it is past half
        // its life or unusable.
        let admin_dir = root.join(ADMIN);
        let fresh = Identity::load(&admin_dir, now + CaOptions::default().svid_ttl / 2).is_ok();
        if !fresh {
            let admin = Principal::from(HumanId::new(ca.trust_domain(), "admin")?);
            issue_local_identity(&ca, admin, now)?.save(&admin_dir)?;
        }
        Ok(Self {
            root: root.to_owned(),
            ca: Arc::new(ca),
            store: Arc::new(store),
            config,
            created: Vec::new(),
        })
    }
}

/// Issues a complete identity for `principal` with the CA's keys at hand (the hub's own admin).
pub(crate) fn issue_local_identity(
    ca: &Ca,
    principal: Principal,
    now: SystemTime,
) -> Result<Identity> {
    let tls = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::default().serialize_request(&tls)?;
    let svid = ca.issue_svid(csr.der(), &principal, now)?;
    let keys = MessageKeys::generate()?;
    let now_ms = unix_ms(now);
    let bundle = ca.sign_key_bundle(KeyBundleBody {
        principal: principal.clone(),
        ed25519_public: keys.ed25519_public(),
        x25519_public: keys.x25519_public(),
        epoch: 1,
        not_before_ms: now_ms.saturating_sub(60_000),
        not_after_ms: now_ms.saturating_add(ADMIN_BUNDLE_TTL.as_millis() as u64),
    })?;
    Ok(Identity::new(
        principal,
        svid.chain_der,
        Zeroizing::new(tls.serialize_der()),
        keys,
        bundle,
        ca.trust_bundle().clone(),
        now,
    )?)
}

// === config file ===

/// `DIR/config.toml`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    /// Address and port to listen on.
    pub(crate) listen: String,
    /// The trust domain (fixed when the directory is created).
    pub(crate) trust_domain: String,
    /// Allow rules; none means nothing is allowed.
    #[serde(default)]
    pub(crate) allow: Vec<RuleFile>,
}

/// One `[[allow]]` table: exactly one of `agent`, `segment`, `any`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) segment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) any: Option<bool>,
    #[serde(default)]
    pub(crate) publish: Vec<String>,
    #[serde(default)]
    pub(crate) subscribe: Vec<String>,
}

impl ConfigFile {
    fn new(listen: String, td: &TrustDomain) -> Result<Self> {
        Ok(Self {
            listen,
            trust_domain: td.to_string(),
            allow: vec![RuleFile {
                agent: None,
                segment: Some("demo".to_owned()),
                any: None,
                publish: vec!["demo.>".to_owned()],
                subscribe: vec!["demo.>".to_owned()],
            }],
        })
    }

    pub(crate) fn parse(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text)?;
        config.to_hub_config()?;
        Ok(config)
    }

    fn render(&self) -> Result<String> {
        Ok(format!(
            "# Entente hub configuration. Edit, then restart the hub.\n\
             #\n\
             # Authorization is default deny. Each [[allow]] table grants channel patterns to\n\
             # one agent (agent = \"spiffe://TD/agent/SEGMENT/NAME\"), to every agent of a\n\
             # segment (segment = \"NAME\"), or to everyone (any = true). Cross-segment traffic\n\
             # needs a rule. Every principal may always use its own _direct and _reply channels.\n\
             # The starter rule lets agents of segment `demo` talk on `demo.>`.\n\n{}",
            toml::to_string(self)?
        ))
    }

    fn to_hub_config(&self) -> Result<HubConfig> {
        let listen: SocketAddr = self
            .listen
            .parse()
            .with_context(|| format!("`listen`: `{}` is not an address:port", self.listen))?;
        let td = TrustDomain::new(&self.trust_domain).context("`trust_domain`")?;
        let mut allow = AllowList::new();
        for (i, rule) in self.allow.iter().enumerate() {
            allow = allow.with(
                rule.to_rule(&td)
                    .with_context(|| format!("[[allow]] #{}", i + 1))?,
            );
        }
        // The data directory's admin identity administers this hub remotely.
        let admin = Principal::from(HumanId::new(&td, "admin")?);
        Ok(HubConfig {
            listen,
            allow,
            admins: vec![admin],
            ..HubConfig::default()
        })
    }
}

impl RuleFile {
    fn to_rule(&self, td: &TrustDomain) -> Result<AllowRule> {
        let who = match (&self.agent, &self.segment, self.any) {
            (Some(agent), None, None) => {
                let id = AgentId::parse(agent)?;
                if id.trust_domain() != td.as_str() {
                    bail!("agent `{agent}` is not of trust domain `{td}`");
                }
                Who::Agent(id)
            }
            (None, Some(segment), None) => {
                // Validate the segment as agent IDs do.
                AgentId::new(td, segment, "x")?;
                Who::Segment(segment.clone())
            }
            (None, None, Some(true)) => Who::Any,
            _ => bail!("give exactly one of `agent`, `segment` or `any = true`"),
        };
        let patterns = |list: &[String]| -> Result<Vec<ChannelPattern>> {
            list.iter()
                .map(|p| ChannelPattern::parse(p).with_context(|| format!("pattern `{p}`")))
                .collect()
        };
        Ok(AllowRule {
            who,
            publish: patterns(&self.publish)?,
            subscribe: patterns(&self.subscribe)?,
        })
    }
}

const CONFIG: &str = "config.toml";
const KEYSTORE_KEY: &str = "keystore.key";
const KEYS: &str = "keys";
const CA_DIR: &str = "ca";
const ROOT_PEM: &str = "root.pem";
const INTERMEDIATE_PEM: &str = "intermediate.pem";
const TRUST_PEM: &str = "ca.pem";
const STORE: &str = "store.redb";
const ADMIN: &str = "admin";

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("acme.internal").unwrap()
    }

    #[test]
    fn the_default_config_round_trips_and_grants_only_the_demo_segment() {
        let config = ConfigFile::new(DEFAULT_LISTEN.to_owned(), &td()).unwrap();
        let text = config.render().unwrap();
        assert!(text.starts_with("# Entente hub configuration"));
        let parsed = ConfigFile::parse(&text).unwrap();
        assert_eq!(parsed, config);
        let hub = parsed.to_hub_config().unwrap();
        let demo = Principal::parse("spiffe://acme.internal/agent/demo/a").unwrap();
        let ops = Principal::parse("spiffe://acme.internal/agent/ops/a").unwrap();
        let channel = "demo.greetings".parse().unwrap();
        assert!(matches!(
            hub.allow.may_publish(&demo, &channel),
            entente_hub::allow::Decision::Allow
        ));
        assert!(!matches!(
            hub.allow.may_publish(&ops, &channel),
            entente_hub::allow::Decision::Allow
        ));
    }

    #[test]
    fn bad_config_files_are_refused_with_the_reason() {
        let cases = [
            (
                "listen = \"nowhere\"\ntrust_domain = \"acme.internal\"\n",
                "listen",
            ),
            (
                "listen = \"127.0.0.1:1\"\ntrust_domain = \"Acme\"\n",
                "trust_domain",
            ),
            (
                "listen = \"127.0.0.1:1\"\ntrust_domain = \"acme.internal\"\ncolour = 1\n",
                "colour",
            ),
            (
                "listen = \"127.0.0.1:1\"\ntrust_domain = \"acme.internal\"\n[[allow]]\nsegment = \"a\"\nany = true\n",
                "exactly one",
            ),
            (
                "listen = \"127.0.0.1:1\"\ntrust_domain = \"acme.internal\"\n[[allow]]\nsegment = \"a\"\npublish = [\"a.>.b\"]\n",
                "pattern",
            ),
            (
                "listen = \"127.0.0.1:1\"\ntrust_domain = \"acme.internal\"\n[[allow]]\nagent = \"spiffe://other.org/agent/a/b\"\n",
                "trust domain",
            ),
        ];
        for (text, needle) in cases {
            let err = format!("{:#}", ConfigFile::parse(text).unwrap_err());
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
