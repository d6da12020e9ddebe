//! The hub's data directory: created on the first `entente hub start`, reused afterwards.
//!
//! ```text
//! DIR/
//!   config.toml      listen address and trust domain (edit and restart)
//!   policies/        Cedar policies: the initial set the first start stores (default.cedar)
//!   keystore.key     the key-store key, only if none was given through the environment
//!   keys/            the CA keys (Argon2id/AES-256-GCM key store, files 0600)
//!   ca/root.pem      the root CA certificate
//!   ca/intermediate.pem
//!   ca.pem           the trust bundle agents need (`entente enroll --ca DIR/ca.pem`)
//!   store.redb       agents, key bundles, join tokens, revocations, the running policy set,
//!                    the audit log's HMAC key (wrapped by the key store's `audit-kek`)
//!   audit/           the tamper-evident audit log (docs/AUDIT.md); its checkpoint key is the
//!                    key store's `audit-checkpoint`
//!   streams/         durable channels (`[[durable]]` in config.toml): their entries,
//!                    encrypted under data keys the key store's `data-kek` wraps
//!   admin/           the identity directory of `spiffe://TD/human/admin`
//! ```
//!
//! Policies: the first start writes `policies/default.cedar` and runs `policies/*.cedar` (the
//! hub stores them). Later starts run the set the store holds — the last one loaded with
//! `entente policy load` — and do not read `policies/` again, unless started with
//! `--reload-policies`.
//!
//! The key store is unlocked by `ENTENTE_KEYSTORE_KEY` (64 hex characters) or
//! `ENTENTE_KEYSTORE_PASSPHRASE`; without either, the first start draws a random key and keeps
//! it in `DIR/keystore.key` (0600), which protects the CA keys only as well as the directory
//! itself — production deployments pass the key through the environment or use an HSM. A
//! `keystore.key` found without its `keys/` is refused, never written over or ignored: a store
//! made then would be under a key that is not kept.
//!
//! With `ENTENTE_PKCS11_MODULE`, `ENTENTE_PKCS11_TOKEN` and `ENTENTE_PKCS11_PIN` set, the first
//! start makes every key of the hub — the CA's, the audit checkpoint key, the key-encryption
//! keys — in that PKCS#11 token instead (there is no `keys/` then), and writes the module and
//! token to `config.toml` (`[keystore]`); later starts need `ENTENTE_PKCS11_PIN`.
//! `ENTENTE_CA_KEYSTORE`, `ENTENTE_AUDIT_KEYSTORE` and `ENTENTE_DATA_KEYSTORE` (`local` or
//! `pkcs11`) place each kind of key on its own ([`crate::keystores`]).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aws_lc_rs::rand::SystemRandom;
use entente_ca::{Ca, CaOptions};
use entente_client::Identity;
use entente_crypto::{KeyBundleBody, MessageKeys};
use entente_hub::{
    AuditConfig, CaRollover, ChannelRate, HubConfig, KeyStores, Rate, StreamConfig, StreamSync,
};
use entente_types::ChannelPattern;

use crate::commands::agent::parse_duration;
use crate::keystores::{self, KeystoreTable, Stores, Tables};
use entente_keystore::local::files;
use entente_store::EmbeddedStore;
use entente_types::{HumanId, Principal, TrustDomain};
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
    /// The key stores of the CA, audit and data keys.
    pub(crate) key_stores: Stores,
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
        let configured = config_path
            .try_exists()
            .with_context(|| format!("reading `{}`", config_path.display()))?;
        if configured {
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
        // No configuration, but what a hub made is there (its registry, its CA, its keys): the
        // configuration was lost (or a first start stopped before writing it). Starting anew
        // would write a new CA, admin identity and policies over the old ones (with the keys in
        // a token the environment does not name now, a new local key store beside them).
        let found: Vec<&str> = HUB_FILES
            .iter()
            .copied()
            .filter(|name| std::fs::symlink_metadata(root.join(name)).is_ok())
            .collect();
        if !found.is_empty() {
            bail!(
                "`{}` holds a hub's files ({}) but no `{CONFIG}`: restore `{}` from a backup \
                 (it names the trust domain and the key stores), or, if a first start was \
                 stopped before writing it, remove those files; nothing was changed",
                root.display(),
                found.join(", "),
                config_path.display()
            );
        }
        Self::init(root, listen, trust_domain, now, true)
    }

    /// Initializes a throwaway data directory `root` (the demo's, a benchmark's): its keys in
    /// a local store under a random key, whatever key stores the environment names.
    pub(crate) fn scratch(
        root: &Path,
        listen: Option<SocketAddr>,
        trust_domain: &str,
        now: SystemTime,
    ) -> Result<Self> {
        Self::init(root, listen, Some(trust_domain), now, false)
    }

    /// The hub configuration the config file describes, with `policies/*.cedar` as the
    /// initial policy set (run only when the store holds none, or with `reload_policies`).
    pub(crate) fn hub_config(&self, reload_policies: bool) -> Result<HubConfig> {
        let mut config = self.config.to_hub_config()?;
        config.policies = self.policy_files()?;
        config.audit = Some(AuditConfig::new(self.audit_dir()));
        config.streams = self
            .config
            .durable
            .iter()
            .map(DurableChannel::to_stream)
            .collect::<Result<_>>()?;
        config.streams_dir = Some(self.root.join(STREAMS));
        config.replace_stored_policies = reload_policies;
        config.key_stores = KeyStores {
            audit: Some(self.key_stores.audit.clone()),
            data: Some(self.key_stores.data.clone()),
        };
        Ok(config)
    }

    /// The audit log's directory.
    pub(crate) fn audit_dir(&self) -> PathBuf {
        self.root.join(AUDIT)
    }

    /// The policy directory.
    pub(crate) fn policies_dir(&self) -> PathBuf {
        self.root.join(POLICIES)
    }

    /// `policies/*.cedar`, sorted by name, as `(file name, text)`; none if the directory is
    /// missing.
    pub(crate) fn policy_files(&self) -> Result<Vec<(String, String)>> {
        let dir = self.policies_dir();
        if !dir.exists() {
            return Ok(Vec::new());
        }
        // What others may write is not a policy: the directory and each file are refused if
        // group or others may write them (they may read them: policies are no secret), or if
        // another user than this one (or root) owns them ([`read_shared`]).
        files::check_dir(&dir)?;
        let mut files = Vec::new();
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading `{}`", dir.display()))?
        {
            let path = entry?.path();
            if is_policy_name(&path) {
                // A policy file that can't be looked at (a link to nothing, a target this user
                // may not read) is an error, not a file left out: the hub would run, and store,
                // a set without it. A directory is no policy file.
                let meta = std::fs::metadata(&path)
                    .with_context(|| format!("reading policy file `{}`", path.display()))?;
                if !meta.is_file() {
                    continue;
                }
                let name = file_name(&path)?;
                let text = read_shared(&path, MAX_POLICY_FILE_BYTES)?;
                let text = String::from_utf8(text)
                    .map_err(|_| anyhow!("`{}` is not UTF-8", path.display()))?;
                files.push((name, text));
            }
        }
        files.sort();
        Ok(files)
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
        keys_from_env: bool,
    ) -> Result<Self> {
        let td = TrustDomain::new(trust_domain.unwrap_or(DEFAULT_TRUST_DOMAIN))
            .context("invalid trust domain")?;
        files::create_private_dir_all(root)?;
        // An existing directory is kept as it is: one others may write to is refused (they
        // could replace what the hub reads).
        files::check_dir(root)?;
        let mut created = Vec::new();
        let (stores, tables) = keystores::init(root, &mut created, keys_from_env)?;
        let ca = Ca::init(stores.ca.clone(), &td, CaOptions::default(), now)?;
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
        let mut config = ConfigFile::new(
            listen.map_or_else(|| DEFAULT_LISTEN.to_owned(), |l| l.to_string()),
            &td,
        );
        config.keystore = tables.ca;
        config.audit_keystore = tables.audit;
        config.data_keystore = tables.data;
        files::replace(root, CONFIG, config.render()?.as_bytes(), &rng)?;
        created.push(format!("{CONFIG}: listen address and trust domain"));
        let policies = root.join(POLICIES);
        files::create_private_dir_all(&policies)?;
        // Policies written before the first start are the hub's initial set, kept as they
        // are: the stock set is written only into a directory holding none.
        let own = std::fs::read_dir(&policies)
            .with_context(|| format!("reading `{}`", policies.display()))?
            .filter_map(Result::ok)
            .filter(|e| is_policy_name(&e.path()))
            .count();
        if own == 0 {
            files::replace(
                &policies,
                DEFAULT_POLICIES,
                default_policy_text(&td).as_bytes(),
                &rng,
            )?;
            created.push(format!(
                "{POLICIES}/{DEFAULT_POLICIES}: Cedar policies, the hub's initial set: agents of segment `demo` may use `demo.>`; `{admin}` may grant and approve; grant `demo-read` opens `demo.>` to segment `ops`"
            ));
        } else {
            created.push(format!(
                "{POLICIES}/: the {own} policy file(s) found there kept as the hub's initial set"
            ));
        }
        Ok(Self {
            root: root.to_owned(),
            ca: Arc::new(ca),
            store: Arc::new(store),
            config,
            key_stores: stores,
            created,
        })
    }

    fn open(root: &Path, now: SystemTime) -> Result<Self> {
        files::check_dir(root)?;
        let config_path = root.join(CONFIG);
        let text = String::from_utf8(files::read_private(&config_path)?)?;
        if has_allow_rules(&text) {
            bail!(
                "`{}` has [[allow]] rules, which Entente no longer reads: write them as Cedar \
                 policies in `{}/*.cedar` (docs/POLICY.md), remove the [[allow]] tables, start \
                 the hub and run `entente policy load`",
                config_path.display(),
                root.join(POLICIES).display()
            );
        }
        let config = ConfigFile::parse(&text)
            .with_context(|| format!("reading `{}`", config_path.display()))?;
        let stores = keystores::open(root, &config.tables())?;
        let ca_dir = root.join(CA_DIR);
        let root_pem = String::from_utf8(files::read_private(&ca_dir.join(ROOT_PEM))?)?;
        let intermediate_pem =
            String::from_utf8(files::read_private(&ca_dir.join(INTERMEDIATE_PEM))?)?;
        let store = EmbeddedStore::open(root.join(STORE))?;
        // After an intermediate rollover, the store holds the intermediates in use.
        let rollover = store.config_now(entente_hub::CA_ROLLOVER_KEY)?;
        let ca = entente_hub::load_ca(
            stores.ca.clone(),
            &root_pem,
            &intermediate_pem,
            CaOptions::default(),
            rollover.as_deref(),
        )?;
        if ca.trust_domain().as_str() != config.trust_domain {
            bail!(
                "the CA is for trust domain `{}` but the config says `{}`",
                ca.trust_domain(),
                config.trust_domain
            );
        }
        // Keep `ca.pem` the bundle in force: after a rollover, the one agents should enroll
        // with lists the new intermediate (its root, all that enrollment needs, never changes).
        let trust = ca.trust_bundle().to_pem();
        if std::fs::read_to_string(root.join(TRUST_PEM))
            .ok()
            .as_deref()
            != Some(trust.as_str())
        {
            files::replace(root, TRUST_PEM, trust.as_bytes(), &SystemRandom::new())?;
        }
        // The admin's certificate is short-lived: refreshed at each start, and while the hub
        // runs (`entente hub start`).
        refresh_admin(&root.join(ADMIN), &ca, now)?;
        Ok(Self {
            root: root.to_owned(),
            ca: Arc::new(ca),
            store: Arc::new(store),
            config,
            key_stores: stores,
            created: Vec::new(),
        })
    }
}

/// Renews the admin identity in `dir` if it has less than half its life left, or issues it
/// anew if it does not load: its certificate is short-lived (`svid_ttl`), and nothing else
/// renews it. A renewal keeps the message keys it holds ([`renew_local`]), written as a
/// client's own renewal is, so that a client running as the admin meanwhile (`entente
/// listen`) keeps keys that match the directory. Whether it was renewed or issued.
pub(crate) fn refresh_admin(dir: &Path, ca: &Ca, now: SystemTime) -> Result<bool> {
    let half_life = ca.options().svid_ttl / 2;
    if Identity::load(dir, now + half_life).is_ok() {
        return Ok(false);
    }
    let renewed = Identity::load(dir, now)
        .ok()
        .and_then(|current| renew_local(ca, &current, now).ok());
    match renewed {
        Some(renewed) => renewed.save_renewal(dir)?,
        None => {
            let admin = Principal::from(HumanId::new(ca.trust_domain(), "admin")?);
            issue_local_identity(ca, admin, now)?.save(dir)?;
        }
    }
    Ok(true)
}

/// `identity` renewed with the CA's keys at hand: a new certificate and TLS key, the CA's
/// trust bundle (after a rollover, the new intermediate), and its key bundle — the same keys
/// and epoch — signed again for [`ADMIN_BUNDLE_TTL`]. Either refused fails the renewal.
fn renew_local(ca: &Ca, identity: &Identity, now: SystemTime) -> Result<Identity> {
    let tls = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::default().serialize_request(&tls)?;
    let svid = ca.issue_svid(csr.der(), identity.principal(), now)?;
    let keys = identity.message_keys();
    let epoch = identity.key_bundle().epoch();
    let bundle = admin_bundle(ca, identity.principal(), keys, epoch, now)?;
    let trust = ca.trust_bundle().to_pem();
    let renewed = identity.renewed_with(
        svid.chain_der,
        Zeroizing::new(tls.serialize_der()),
        &trust,
        Some(bundle),
        now,
    )?;
    if let Some(refused) = renewed.trust_refused.or(renewed.key_bundle_refused) {
        bail!("the renewal's trust bundle or key bundle was refused: {refused}");
    }
    Ok(renewed.identity)
}

/// The admin's key bundle for `keys` at `epoch`, valid for [`ADMIN_BUNDLE_TTL`] from `now`.
fn admin_bundle(
    ca: &Ca,
    principal: &Principal,
    keys: &MessageKeys,
    epoch: u64,
    now: SystemTime,
) -> Result<entente_wire::KeyBundle> {
    let now_ms = unix_ms(now);
    Ok(ca.sign_key_bundle(KeyBundleBody {
        principal: principal.clone(),
        ed25519_public: keys.ed25519_public(),
        x25519_public: keys.x25519_public(),
        epoch,
        not_before_ms: now_ms.saturating_sub(60_000),
        not_after_ms: now_ms.saturating_add(ADMIN_BUNDLE_TTL.as_millis() as u64),
    })?)
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
    let bundle = admin_bundle(ca, &principal, &keys, 1, now)?;
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
    /// Where the hub's keys live: no table for the local store in `keys/`, or a PKCS#11
    /// token (set by the first start when `ENTENTE_PKCS11_MODULE`, `ENTENTE_PKCS11_TOKEN` and
    /// `ENTENTE_PKCS11_PIN` are given; later starts need the PIN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) keystore: Option<KeystoreTable>,
    /// Where the audit checkpoint keys live when not with the CA keys (`crate::keystores`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) audit_keystore: Option<KeystoreTable>,
    /// Where the data keys' wrapping key lives when not with the CA keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) data_keystore: Option<KeystoreTable>,
    /// Durable channels (docs/DURABLE.md), kept in `streams/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) durable: Vec<DurableChannel>,
    /// The intermediate CA rollover (docs/KEYS.md); defaults when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ca_rollover: Option<CaRolloverTable>,
    /// Rate and connection limits (docs/THREAT_MODEL.md); defaults when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) limits: Option<LimitsTable>,
    /// The Prometheus metrics endpoint; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) metrics: Option<MetricsTable>,
    /// Anomaly detection, throttling and quarantine (docs/ANOMALY.md); defaults when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) anomaly: Option<AnomalyTable>,
    /// Pushing metrics to an OpenTelemetry collector; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) otlp: Option<OtlpTable>,
}

/// The `[otlp]` table of `config.toml`: the hub pushes its metrics to an OpenTelemetry
/// collector with OTLP/HTTP. Headers (an API key, say) come from the environment, never from
/// the file: `OTEL_EXPORTER_OTLP_HEADERS`, as `name=value,name=value`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OtlpTable {
    /// The collector's OTLP/HTTP address, e.g. `http://127.0.0.1:4318` (metrics go to
    /// `/v1/metrics` under it).
    pub(crate) endpoint: String,
    /// How often to export, in milliseconds (10 000; at least 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) interval_ms: Option<u64>,
    /// For an `https` endpoint: a PEM file of the certificates the collector's must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ca: Option<String>,
}

/// The PEM file of trusted certificates at `path`, if set, as the hub takes it (it parses
/// them when it starts), read as policy files are ([`read_shared`]): whoever may write it
/// chooses whom the hub trusts with what it sends there (API keys, quarantine notices), so one
/// group or others may write, or another user owns, is refused. A relative path is taken from
/// the directory the hub is started in. A file that can't be read is an error naming
/// `setting`.
fn read_roots(setting: &str, path: Option<&str>) -> Result<Option<Vec<u8>>> {
    path.map(|path| {
        read_shared(Path::new(path), MAX_ROOTS_FILE_BYTES).with_context(|| setting.to_owned())
    })
    .transpose()
}

/// Reads a file the hub trusts but need not keep secret (a policy, a CA bundle), at most
/// `limit` bytes. It may be a symbolic link: what it leads to is checked as opened, and read
/// from the same opening. Refused if it is not a regular file, if group or others may write
/// it (0644 at most), if another user than this one (or root) owns it, or if it is larger
/// than `limit`: whoever else could write it could change what the hub trusts.
pub(crate) fn read_shared(path: &Path, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt as _;
    let reading = || format!("reading `{}`", path.display());
    let file = std::fs::File::open(path).with_context(reading)?;
    let meta = file.metadata().with_context(reading)?;
    if !meta.is_file() {
        bail!("`{}` is not a regular file", path.display());
    }
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        bail!(
            "`{}` has mode {:04o}: group or others may write it (0644 at most)",
            path.display(),
            mode & 0o7777
        );
    }
    files::check_owner(path, &meta)?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .with_context(reading)?;
    if bytes.len() as u64 > limit {
        bail!("`{}` is larger than {limit} bytes", path.display());
    }
    Ok(bytes)
}

/// The environment variable the `[otlp]` headers come from (OpenTelemetry's own).
pub(crate) const OTLP_HEADERS_ENV: &str = "OTEL_EXPORTER_OTLP_HEADERS";

impl OtlpTable {
    /// The export the table describes, with the headers of `headers` (the value of
    /// [`OTLP_HEADERS_ENV`], if set).
    fn to_export(&self, headers: Option<&str>) -> Result<entente_hub::OtlpExport> {
        let roots_pem = read_roots("`[otlp]` `ca`", self.ca.as_deref())?;
        Ok(entente_hub::OtlpExport {
            endpoint: self.endpoint.clone(),
            roots_pem,
            headers: headers.map(otlp_headers).transpose()?.unwrap_or_default(),
            interval: self
                .interval_ms
                .map_or(entente_hub::OTLP_DEFAULT_INTERVAL, Duration::from_millis),
        })
    }
}

/// `name=value,name=value` (values percent-decoded, as OpenTelemetry's variable has them).
/// An error names the entry by position only: values are secrets.
fn otlp_headers(text: &str) -> Result<Vec<(String, String)>> {
    text.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .enumerate()
        .map(|(i, entry)| {
            let (name, value) = entry.split_once('=').with_context(|| {
                format!("`{OTLP_HEADERS_ENV}`: entry {} is not `name=value`", i + 1)
            })?;
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .map_err(|_| {
                    anyhow::anyhow!(
                        "`{OTLP_HEADERS_ENV}`: the value of entry {} is not UTF-8 once decoded",
                        i + 1
                    )
                })?;
            Ok((name.trim().to_owned(), value.into_owned()))
        })
        .collect()
}

/// The `[anomaly]` table of `config.toml`. Each field left out keeps the hub's default.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AnomalyTable {
    /// How long a window of counted traffic is, in milliseconds (10 000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) window_ms: Option<u64>,
    /// Active windows each agent's baseline learns from before deviations count (30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) warmup_windows: Option<u32>,
    /// The risk score (1–100) at which an agent is throttled (60); 0 is never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) throttle_at: Option<u8>,
    /// The risk score (1–100) at which an agent is quarantined (85); 0 is never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) quarantine_at: Option<u8>,
    /// Messages and frames per second a throttled agent may send (10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) throttled_per_second: Option<u32>,
    /// The burst of that rate (twice the rate by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) throttled_burst: Option<u32>,
    /// Where each quarantine imposed or lifted is POSTed as JSON: `http://…` or `https://…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) webhook: Option<String>,
    /// For an `https` webhook: a PEM file of the certificates its server's must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) webhook_ca: Option<String>,
}

impl AnomalyTable {
    /// Sets what the table sets in `config`; the hub checks the result when it starts.
    fn apply(&self, config: &mut HubConfig) -> Result<()> {
        if let Some(url) = &self.webhook {
            let roots_pem = read_roots("`[anomaly]` `webhook_ca`", self.webhook_ca.as_deref())?;
            config.quarantine_webhook = Some(entente_hub::Webhook {
                url: url.clone(),
                roots_pem,
            });
        } else if self.webhook_ca.is_some() {
            bail!("`[anomaly]` `webhook_ca` needs `webhook`");
        }
        let anomaly = &mut config.anomaly;
        if let Some(ms) = self.window_ms {
            anomaly.window = Duration::from_millis(ms);
        }
        if let Some(windows) = self.warmup_windows {
            anomaly.warmup = windows;
        }
        let risk = |at: u8| (at > 0).then_some(at);
        if let Some(at) = self.throttle_at {
            anomaly.throttle_at = risk(at);
        }
        if let Some(at) = self.quarantine_at {
            anomaly.quarantine_at = risk(at);
        }
        if let Some(per_second) = self.throttled_per_second {
            anomaly.throttled = Rate {
                per_second,
                burst: self.throttled_burst.unwrap_or(per_second.saturating_mul(2)),
            };
        } else if let Some(burst) = self.throttled_burst {
            anomaly.throttled.burst = burst;
        }
        Ok(())
    }
}

/// The `[metrics]` table of `config.toml`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetricsTable {
    /// Address and port to serve `GET /metrics` on, plain HTTP (`127.0.0.1:9464`): keep it on
    /// loopback or behind a scraper that authenticates.
    pub(crate) listen: String,
}

/// The `[limits]` table of `config.toml`. Each field left out keeps the hub's default.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsTable {
    /// Messages each agent may publish per second, over all its connections (100 000);
    /// 0 is no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) agent_messages_per_second: Option<u32>,
    /// The burst of that limit (twice the rate by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) agent_messages_burst: Option<u32>,
    /// Bytes of ciphertext each agent may publish per second (64 MiB); 0 is no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) agent_bytes_per_second: Option<u32>,
    /// The burst of that limit (twice the rate by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) agent_bytes_burst: Option<u32>,
    /// Subscribe and unsubscribe frames each agent may send per second (1 000); 0 is no
    /// limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) agent_subscriptions_per_second: Option<u32>,
    /// The burst of that limit (twice the rate by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) agent_subscriptions_burst: Option<u32>,
    /// Unary calls (directory lookups, renewals, grants, administration) each agent may make
    /// per second (1 000); 0 is no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) agent_calls_per_second: Option<u32>,
    /// The burst of that limit (twice the rate by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) agent_calls_burst: Option<u32>,
    /// Most connections the hub serves at once (20 000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_connections: Option<usize>,
    /// Most connections of one agent at once (256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_connections_per_agent: Option<usize>,
    /// Most connections not yet authenticated (in their TLS handshake, or enrolling) at once
    /// (1 024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_unauthenticated: Option<usize>,
    /// Most of those from one source, an IPv4 address or an IPv6 /64 (128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_unauthenticated_per_source: Option<usize>,
    /// Channel classes, each limited in messages per second from all agents together; a
    /// channel counts against the first class that matches it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) channel: Vec<ChannelLimitTable>,
}

/// One `[[limits.channel]]` table of `config.toml`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChannelLimitTable {
    /// The channel class: a pattern (`tasks.>`).
    pub(crate) channels: String,
    /// Messages per second into the class.
    pub(crate) per_second: u32,
    /// The burst (the rate by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) burst: Option<u32>,
}

impl LimitsTable {
    /// Sets what the table sets in `config`.
    fn apply(&self, config: &mut HubConfig) -> Result<()> {
        let rate = |per_second: Option<u32>, burst: Option<u32>, default: Option<Rate>, what| {
            Ok::<_, anyhow::Error>(match per_second {
                None if burst.is_some() => {
                    return Err(anyhow!(
                        "`[limits]` `{what}_burst` needs `{what}_per_second`"
                    ));
                }
                None => default,
                Some(0) => None,
                Some(per_second) => Some(Rate {
                    per_second,
                    burst: burst.unwrap_or(per_second.saturating_mul(2)),
                }),
            })
        };
        let limits = &mut config.rate_limits;
        limits.agent_messages = rate(
            self.agent_messages_per_second,
            self.agent_messages_burst,
            limits.agent_messages,
            "agent_messages",
        )?;
        limits.agent_bytes = rate(
            self.agent_bytes_per_second,
            self.agent_bytes_burst,
            limits.agent_bytes,
            "agent_bytes",
        )?;
        limits.agent_subscriptions = rate(
            self.agent_subscriptions_per_second,
            self.agent_subscriptions_burst,
            limits.agent_subscriptions,
            "agent_subscriptions",
        )?;
        limits.agent_calls = rate(
            self.agent_calls_per_second,
            self.agent_calls_burst,
            limits.agent_calls,
            "agent_calls",
        )?;
        for class in &self.channel {
            let pattern = ChannelPattern::parse(&class.channels).with_context(|| {
                format!("`[[limits.channel]]` `channels`: `{}`", class.channels)
            })?;
            if class.per_second == 0 || class.burst == Some(0) {
                return Err(anyhow!(
                    "`[[limits.channel]]` `{}`: `per_second` and `burst` must be at least 1",
                    class.channels
                ));
            }
            limits.channels.push(ChannelRate {
                pattern,
                rate: Rate {
                    per_second: class.per_second,
                    burst: class.burst.unwrap_or(class.per_second),
                },
            });
        }
        if let Some(max) = self.max_connections {
            config.max_connections = max;
        }
        if let Some(max) = self.max_connections_per_agent {
            config.max_connections_per_agent = max;
        }
        if let Some(max) = self.max_unauthenticated {
            config.max_unauthenticated = max;
        }
        if let Some(max) = self.max_unauthenticated_per_source {
            config.max_unauthenticated_per_source = max;
        }
        Ok(())
    }
}

/// The `[ca_rollover]` table of `config.toml`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CaRolloverTable {
    /// How long each phase lasts (`1d`, the default); at least the certificate lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) overlap: Option<String>,
    /// Stage a new intermediate when the active one has less than this left (`30d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) lead: Option<String>,
    /// Whether the hub stages new intermediates by itself (default `true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) automatic: Option<bool>,
}

impl CaRolloverTable {
    fn to_rollover(&self) -> Result<CaRollover> {
        let mut rollover = CaRollover::default();
        if let Some(overlap) = &self.overlap {
            rollover.overlap = parse_duration(overlap).context("`[ca_rollover]` `overlap`")?;
        }
        if let Some(lead) = &self.lead {
            rollover.lead = parse_duration(lead).context("`[ca_rollover]` `lead`")?;
        }
        if let Some(automatic) = self.automatic {
            rollover.automatic = automatic;
        }
        Ok(rollover)
    }
}

/// One `[[durable]]` table of `config.toml`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DurableChannel {
    /// The stream's name: `a-z`, `0-9`, `-`, `_`.
    pub(crate) name: String,
    /// The channels it keeps: a pattern (`orders.>`).
    pub(crate) channels: String,
    /// Most messages kept (default 1 000 000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_messages: Option<u64>,
    /// Most bytes kept (default 1 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_bytes: Option<u64>,
    /// How long a message is kept at most (`7d`, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_age: Option<String>,
    /// How long a delivery may stay unacknowledged (`30s`, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ack_wait: Option<String>,
    /// Deliveries before the dead-letter log (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_deliver: Option<u32>,
    /// When entries reach the disk: `always` (the default) or an interval (`2m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sync: Option<String>,
}

impl DurableChannel {
    fn to_stream(&self) -> Result<StreamConfig> {
        let what = || format!("`[[durable]]` `{}`", self.name);
        let channels = ChannelPattern::parse(&self.channels)
            .with_context(|| format!("{}: `channels`", what()))?;
        let mut stream = StreamConfig::new(self.name.clone(), channels);
        if let Some(n) = self.max_messages {
            stream.max_messages = n;
        }
        if let Some(n) = self.max_bytes {
            stream.max_bytes = n;
        }
        if let Some(age) = &self.max_age {
            stream.max_age =
                parse_duration(age).with_context(|| format!("{}: `max_age`", what()))?;
        }
        if let Some(wait) = &self.ack_wait {
            stream.ack_wait =
                parse_duration(wait).with_context(|| format!("{}: `ack_wait`", what()))?;
        }
        if let Some(n) = self.max_deliver {
            stream.max_deliver = n;
        }
        stream.sync = match self.sync.as_deref() {
            None | Some("always") => StreamSync::Always,
            Some(every) => StreamSync::Every(
                parse_duration(every)
                    .with_context(|| format!("{}: `sync` is `always` or an interval", what()))?,
            ),
        };
        if stream.sync == StreamSync::Every(std::time::Duration::ZERO) {
            bail!(
                "{}: `sync` is `always` or an interval above zero (`0s` would \
                 acknowledge before the disk has the entries)",
                what()
            );
        }
        Ok(stream)
    }
}

impl ConfigFile {
    fn new(listen: String, td: &TrustDomain) -> Self {
        Self {
            listen,
            trust_domain: td.to_string(),
            keystore: None,
            audit_keystore: None,
            data_keystore: None,
            durable: Vec::new(),
            ca_rollover: None,
            limits: None,
            metrics: None,
            anomaly: None,
            otlp: None,
        }
    }

    pub(crate) fn parse(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text)?;
        config.to_hub_config()?;
        for durable in &config.durable {
            durable.to_stream()?;
        }
        Ok(config)
    }

    fn render(&self) -> Result<String> {
        Ok(format!(
            "# Entente hub configuration. Edit, then restart the hub.\n\
             #\n\
             # Authorization is Cedar policies, default deny: see policies/ and docs/POLICY.md.\n\
             # The hub keeps the running set in its registry; change it with\n\
             # `entente policy load`.\n\
             #\n\
             # Durable channels (docs/DURABLE.md) keep what is published until every durable\n\
             # consumer has acknowledged it, for example:\n\
             #   [[durable]]\n\
             #   name = \"orders\"\n\
             #   channels = \"orders.>\"\n\
             #   max_messages = 1000000\n\
             #   ack_wait = \"30s\"\n\n{}",
            toml::to_string(self)?
        ))
    }

    /// The key store tables.
    fn tables(&self) -> Tables {
        Tables {
            ca: self.keystore.clone(),
            audit: self.audit_keystore.clone(),
            data: self.data_keystore.clone(),
        }
    }

    fn to_hub_config(&self) -> Result<HubConfig> {
        let listen: SocketAddr = self
            .listen
            .parse()
            .with_context(|| format!("`listen`: `{}` is not an address:port", self.listen))?;
        let td = TrustDomain::new(&self.trust_domain).context("`trust_domain`")?;
        // The data directory's admin identity administers this hub remotely.
        let admin = Principal::from(HumanId::new(&td, "admin")?);
        let mut config = HubConfig {
            listen,
            admins: vec![admin],
            ca_rollover: self
                .ca_rollover
                .as_ref()
                .map(CaRolloverTable::to_rollover)
                .transpose()?
                .unwrap_or_default(),
            ..HubConfig::default()
        };
        if let Some(limits) = &self.limits {
            limits.apply(&mut config)?;
        }
        if let Some(anomaly) = &self.anomaly {
            anomaly.apply(&mut config)?;
        }
        if let Some(metrics) = &self.metrics {
            let addr: SocketAddr = metrics.listen.parse().with_context(|| {
                format!(
                    "`[metrics]` `listen`: `{}` is not an address:port",
                    metrics.listen
                )
            })?;
            config.metrics_listen = Some(addr);
        }
        if let Some(otlp) = &self.otlp {
            let headers = std::env::var(OTLP_HEADERS_ENV).ok();
            config.otlp = Some(otlp.to_export(headers.as_deref())?);
        }
        Ok(config)
    }
}

/// Whether a config file still holds `[[allow]]` tables (the allow list Cedar replaced).
fn has_allow_rules(text: &str) -> bool {
    toml::from_str::<toml::Table>(text).is_ok_and(|table| table.contains_key("allow"))
}

/// The file name of `path`, as a policy source name.
pub(crate) fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("`{}` has no usable file name", path.display()))
}

/// What the first start writes to `policies/default.cedar` for trust domain `td`: the starter
/// rule of the old `config.toml`, in Cedar, the administrator's right to grant and approve,
/// and a grant that segment `ops` may ask for just in time.
pub(crate) fn default_policy_text(td: &TrustDomain) -> String {
    DEFAULT_POLICY_TEMPLATE.replace("{TD}", td.as_str())
}

/// [`default_policy_text`] with `{TD}` for the trust domain.
const DEFAULT_POLICY_TEMPLATE: &str = r#"// Entente policies, in Cedar (https://www.cedarpolicy.com); docs/POLICY.md explains the
// schema, segments, grants and how to write them.
//
// Everything is denied unless a permit matches and no forbid does. The hub always adds its
// base policies (agents may send direct messages and requests to agents of their own
// segment) and its structural rules: every principal may subscribe to its own _direct and
// _reply channels, and a reply needs the hub's reply grant.
//
// The first `entente hub start` ran this file (and every *.cedar file here) and stored the
// set. Later starts run the stored set. After editing, load the files into the running hub:
//
//   entente policy load --identity DATA/admin --hub ADDR DATA/policies/*.cedar
//
// and ask how a request is decided with `entente policy check`.

// Agents of segment `demo` may publish, subscribe and send requests on `demo.>` (every
// channel under `demo.`).
@id("demo-traffic")
permit (
  principal in Segment::"demo",
  action in [Action::"publish", Action::"subscribe", Action::"request"],
  resource in Namespace::"demo"
);

// The hub's administrator may give grants to anyone (`entente grant`) and end them early
// (`entente revoke-grant`), approve or reject anyone's just-in-time requests and held
// messages (`entente approve`, `entente reject`), and see every grant and request
// (`entente grants`, `entente approvals`). The hub itself refuses anyone granting to itself
// or approving its own request or message, whatever a policy says.
@id("admin-grants-and-approves")
permit (
  principal == Human::"spiffe://{TD}/human/admin",
  action in [Action::"grant", Action::"revoke", Action::"approve", Action::"admin"],
  resource
);

// A grant, consumed: while an agent of segment `ops` holds grant `demo-read`, it may
// subscribe to `demo.>` (another segment's channels, hence @cross_segment). One approval
// gives it, for at most an hour. As the ops agent:
//
//   entente request-grant demo-read --for 15m --reason "INC-42: read the orders" \
//       --identity OPS_AGENT --hub ADDR
//
// then, as the administrator: `entente approvals`, `entente approve r-1`.
@id("demo-read")
@grant("demo-read")
@approvals("1")
@max_duration("1h")
@cross_segment
permit (
  principal in Segment::"ops",
  action == Action::"subscribe",
  resource in Namespace::"demo"
)
when { context.grants.contains("demo-read") };

// A high-stakes channel: what an agent publishes on `demo.payments` or under it is held in
// the hub, still sealed, until a principal other than its sender approves it (the
// administrator may: `entente approvals`, `entente approve ID`), or one rejects it. The sender
// states why:
//
//   entente send demo.payments.out "pay invoice 42" --purpose "invoice 42, due today" \
//       --identity AGENT --hub ADDR
//
// Raise the count (`context.approvals >= 2`) or name approvers (`context.approvers`) as the
// stakes require.
@id("demo-payments-need-approval")
@hold
forbid (principal, action == Action::"publish", resource)
when { resource == Channel::"demo.payments" || resource in Namespace::"demo.payments" }
unless { context.approvals >= 1 };
"#;

const CONFIG: &str = "config.toml";
const CA_DIR: &str = "ca";
const ROOT_PEM: &str = "root.pem";
const INTERMEDIATE_PEM: &str = "intermediate.pem";
const TRUST_PEM: &str = "ca.pem";
const STORE: &str = "store.redb";
const ADMIN: &str = "admin";
const POLICIES: &str = "policies";
const AUDIT: &str = "audit";
const STREAMS: &str = "streams";
const DEFAULT_POLICIES: &str = "default.cedar";
/// What a hub's first start makes beside `config.toml` (`policies/` aside: its files may be
/// written before the first start); any of them found without it means a hub is there.
const HUB_FILES: [&str; 8] = [
    STORE,
    CA_DIR,
    TRUST_PEM,
    ADMIN,
    keystores::KEYS,
    keystores::KEYSTORE_KEY,
    AUDIT,
    STREAMS,
];
/// The longest policy file read: the longest policy source the hub takes.
const MAX_POLICY_FILE_BYTES: u64 = entente_wire::MAX_POLICY_TEXT_BYTES as u64;
/// The longest CA bundle read for `[otlp]` `ca` or `[anomaly]` `webhook_ca` (a system's whole
/// bundle is about 200 KiB).
const MAX_ROOTS_FILE_BYTES: u64 = 4 << 20;

/// Whether `path` names a policy file: `*.cedar`, not hidden (an editor's lock or backup file,
/// `.#default.cedar`, is none).
fn is_policy_name(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "cedar")
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.'))
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("acme.internal").unwrap()
    }

    #[test]
    fn the_admin_identity_is_issued_anew_past_half_its_life() {
        let tmp = tempfile::tempdir().unwrap();
        let t0 = SystemTime::now();
        let data = DataDir::scratch(&tmp.path().join("hub"), None, "acme.internal", t0).unwrap();
        let dir = data.admin_dir();
        let first = Identity::load(&dir, t0).unwrap();
        assert!(!refresh_admin(&dir, &data.ca, t0).unwrap());
        let later = t0 + data.ca.options().svid_ttl * 2 / 3;
        assert!(refresh_admin(&dir, &data.ca, later).unwrap());
        let renewed = Identity::load(&dir, later).unwrap();
        assert!(renewed.not_after() > first.not_after());
        // Renewed, not replaced: the message keys a client running as the admin holds still
        // match the directory.
        assert_eq!(
            renewed.message_keys().ed25519_public(),
            first.message_keys().ed25519_public()
        );
        assert!(!refresh_admin(&dir, &data.ca, later).unwrap());
        // After a rollover, the renewal takes the new intermediate in, keeping the keys.
        let rolled = data.ca.stage_intermediate(later).unwrap();
        let rolled = rolled.activate_staged().unwrap();
        let after = later + data.ca.options().svid_ttl * 2 / 3;
        assert!(refresh_admin(&dir, &rolled, after).unwrap());
        let renewed = Identity::load(&dir, after).unwrap();
        assert_eq!(renewed.trust().to_pem(), rolled.trust_bundle().to_pem());
        assert_eq!(
            renewed.message_keys().ed25519_public(),
            first.message_keys().ed25519_public()
        );
        assert!(renewed.key_bundle().body().not_after_ms > first.key_bundle().body().not_after_ms);
        // Expired, it is issued anew.
        let much_later = t0 + data.ca.options().svid_ttl * 3;
        assert!(refresh_admin(&dir, &data.ca, much_later).unwrap());
        Identity::load(&dir, much_later).unwrap();
    }

    #[test]
    fn the_default_config_round_trips() {
        let config = ConfigFile::new(DEFAULT_LISTEN.to_owned(), &td());
        let text = config.render().unwrap();
        assert!(text.starts_with("# Entente hub configuration"));
        let parsed = ConfigFile::parse(&text).unwrap();
        assert_eq!(parsed, config);
        let hub = parsed.to_hub_config().unwrap();
        assert_eq!(
            hub.admins,
            [Principal::parse("spiffe://acme.internal/human/admin").unwrap()]
        );
        assert!(!has_allow_rules(&text));
    }

    #[test]
    fn the_default_policies_let_the_demo_segment_use_demo_and_nobody_else() {
        use entente_policy::{Action, Facts, PolicySet, Resource, Subject};
        let set = PolicySet::builder()
            .source("base", entente_policy::BASE_POLICIES)
            .source(DEFAULT_POLICIES, default_policy_text(&td()))
            .build()
            .unwrap();
        let subject = |id: &str| Subject::new(Principal::parse(id).unwrap(), Vec::<String>::new());
        let demo = subject("spiffe://acme.internal/agent/demo/a");
        let ops = subject("spiffe://acme.internal/agent/ops/a");
        let channel = "demo.greetings".parse().unwrap();
        let pattern = "demo.>".parse().unwrap();
        let bob = "_direct.demo.bob".parse().unwrap();
        let decide = |who: &Subject, action, resource| {
            set.decide(who, action, &resource, &Facts::default(), 0)
                .allowed
        };
        assert!(decide(&demo, Action::Publish, Resource::Channel(&channel)));
        assert!(decide(
            &demo,
            Action::Subscribe,
            Resource::Pattern(&pattern)
        ));
        assert!(decide(&demo, Action::Request, Resource::Channel(&bob)));
        assert!(!decide(&ops, Action::Publish, Resource::Channel(&channel)));
        assert!(!decide(
            &ops,
            Action::Subscribe,
            Resource::Pattern(&pattern)
        ));
        assert!(!decide(&ops, Action::Request, Resource::Channel(&bob)));
    }

    #[test]
    fn the_default_policies_let_the_admin_grant_and_define_demo_read() {
        use entente_policy::{
            Action, ActiveGrant, Facts, PolicySet, Resource, Subject, format_duration,
        };
        let text = default_policy_text(&td());
        assert!(text.contains("Human::\"spiffe://acme.internal/human/admin\""));
        assert!(!text.contains("{TD}"));
        let set = PolicySet::builder()
            .source("base", entente_policy::BASE_POLICIES)
            .source(DEFAULT_POLICIES, text)
            .build()
            .unwrap();
        let subject = |id: &str| Subject::new(Principal::parse(id).unwrap(), Vec::<String>::new());
        let admin = subject("spiffe://acme.internal/human/admin");
        let ann = subject("spiffe://acme.internal/human/ann");
        let eve_id = Principal::parse("spiffe://acme.internal/agent/ops/eve").unwrap();
        let eve = subject(eve_id.as_str());
        let target = Resource::principal(&eve_id);
        for action in [Action::Grant, Action::Approve, Action::Admin] {
            let allowed = |who: &Subject| {
                set.decide(who, action, &target, &Facts::default(), 0)
                    .allowed
            };
            assert!(allowed(&admin), "{action}");
            assert!(!allowed(&ann), "{action}");
            assert!(!allowed(&eve), "{action}");
        }
        // Grant `demo-read`: one approval, at most an hour; it opens `demo.>` to ops.
        let demo_read = set.grant_definition("demo-read").unwrap();
        assert_eq!(demo_read.approvals, 1);
        assert_eq!(format_duration(demo_read.max_duration_ms), "1h");
        let pattern = "demo.>".parse().unwrap();
        let holding = Facts {
            grants: vec![ActiveGrant {
                id: "demo-read".into(),
                not_after_ms: 10_000,
            }],
            ..Facts::default()
        };
        let subscribe = |facts: &Facts, now_ms| {
            set.decide(
                &eve,
                Action::Subscribe,
                &Resource::Pattern(&pattern),
                facts,
                now_ms,
            )
            .allowed
        };
        assert!(subscribe(&holding, 0));
        assert!(!subscribe(&holding, 10_000), "an ended grant opens nothing");
        assert!(!subscribe(&Facts::default(), 0));
    }

    #[test]
    fn allow_rules_are_noticed() {
        let old = "listen = \"127.0.0.1:1\"\ntrust_domain = \"acme.internal\"\n[[allow]]\nsegment = \"demo\"\npublish = [\"demo.>\"]\n";
        assert!(has_allow_rules(old));
        assert!(ConfigFile::parse(old).is_err());
    }

    #[test]
    fn the_limits_table_sets_the_hubs_limits_and_keeps_defaults_for_the_rest() {
        let head = "listen = \"127.0.0.1:1\"\ntrust_domain = \"acme.internal\"\n";
        let text = format!(
            "{head}[limits]\nagent_messages_per_second = 500\nagent_bytes_per_second = 0\n\
             agent_subscriptions_per_second = 20\nagent_subscriptions_burst = 30\n\
             agent_calls_per_second = 7\nmax_connections_per_agent = 4\nmax_unauthenticated = 9\n\
             max_unauthenticated_per_source = 3\n[[limits.channel]]\nchannels = \"bulk.>\"\n\
             per_second = 10\n"
        );
        let hub = ConfigFile::parse(&text).unwrap().to_hub_config().unwrap();
        let limits = &hub.rate_limits;
        assert_eq!(
            limits.agent_messages,
            Some(Rate {
                per_second: 500,
                burst: 1000
            })
        );
        assert_eq!(limits.agent_bytes, None);
        assert_eq!(
            limits.agent_subscriptions,
            Some(Rate {
                per_second: 20,
                burst: 30
            })
        );
        assert_eq!(
            limits.agent_calls,
            Some(Rate {
                per_second: 7,
                burst: 14
            })
        );
        let [class] = limits.channels.as_slice() else {
            panic!("one class: {:?}", limits.channels);
        };
        assert_eq!(class.pattern.as_str(), "bulk.>");
        assert_eq!(
            class.rate,
            Rate {
                per_second: 10,
                burst: 10
            }
        );
        assert_eq!(hub.max_connections_per_agent, 4);
        assert_eq!(
            (hub.max_unauthenticated, hub.max_unauthenticated_per_source),
            (9, 3)
        );
        // `[anomaly]`: 0 turns a threshold off.
        let text = format!(
            "{head}[anomaly]\nwindow_ms = 500\nwarmup_windows = 3\nthrottle_at = 0\n\
             quarantine_at = 70\nthrottled_per_second = 5\n"
        );
        let anomaly = ConfigFile::parse(&text)
            .unwrap()
            .to_hub_config()
            .unwrap()
            .anomaly;
        assert_eq!(anomaly.window, Duration::from_millis(500));
        assert_eq!(anomaly.warmup, 3);
        assert_eq!(anomaly.throttle_at, None);
        assert_eq!(anomaly.quarantine_at, Some(70));
        assert_eq!(
            anomaly.throttled,
            Rate {
                per_second: 5,
                burst: 10
            }
        );
        assert_eq!(hub.max_connections, HubConfig::default().max_connections);
        assert_eq!(hub.metrics_listen, None);
        let text = format!("{head}[metrics]\nlisten = \"127.0.0.1:9464\"\n");
        let hub = ConfigFile::parse(&text).unwrap().to_hub_config().unwrap();
        assert_eq!(hub.metrics_listen, "127.0.0.1:9464".parse().ok());
        assert_eq!(hub.otlp, None);
        // `[otlp]`, its headers from the environment's value.
        let text =
            format!("{head}[otlp]\nendpoint = \"http://127.0.0.1:4318\"\ninterval_ms = 500\n");
        let table = ConfigFile::parse(&text).unwrap().otlp.unwrap();
        let otlp = table
            .to_export(Some("authorization=Bearer%20s3cret, x-tenant = acme"))
            .unwrap();
        assert_eq!(otlp.endpoint, "http://127.0.0.1:4318");
        assert_eq!(otlp.interval, Duration::from_millis(500));
        assert_eq!(
            otlp.headers,
            vec![
                ("authorization".to_owned(), "Bearer s3cret".to_owned()),
                ("x-tenant".to_owned(), "acme".to_owned())
            ]
        );
        assert!(table.to_export(None).unwrap().headers.is_empty());
        let e = table.to_export(Some("a=b,s3cret")).unwrap_err().to_string();
        assert!(e.contains("entry 2") && !e.contains("s3cret"), "{e}");
        // A value that is not UTF-8 once percent-decoded: refused, by position, unshown.
        let e = table
            .to_export(Some("a=b, c=d, token=s3cret%ff%fe"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("entry 3") && e.contains("not UTF-8") && !e.contains("s3cret"),
            "{e}"
        );

        for (table, needle) in [
            (
                "[limits]\nagent_messages_burst = 5\n",
                "agent_messages_per_second",
            ),
            (
                "[[limits.channel]]\nchannels = \"a..b\"\nper_second = 1\n",
                "a..b",
            ),
            (
                "[[limits.channel]]\nchannels = \"a\"\nper_second = 0\n",
                "at least 1",
            ),
            ("[limits]\nagent_rate = 5\n", "agent_rate"),
            ("[metrics]\nlisten = \"localhost\"\n", "[metrics]"),
            (
                "[otlp]\nendpoint = \"https://127.0.0.1:4318\"\nca = \"no-such-dir/roots.pem\"\n",
                "`[otlp]` `ca`: reading `no-such-dir/roots.pem`",
            ),
            (
                "[anomaly]\nwebhook = \"https://127.0.0.1:1/hook\"\nwebhook_ca = \"no-such-dir/roots.pem\"\n",
                "`[anomaly]` `webhook_ca`: reading `no-such-dir/roots.pem`",
            ),
        ] {
            let err = ConfigFile::parse(&format!("{head}{table}"))
                .and_then(|c| c.to_hub_config())
                .map(|_| ())
                .unwrap_err();
            let err = format!("{err:#}");
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    /// The CA files of `[otlp]` and `[anomaly]` are read as policy files are: whoever else may
    /// write one could add a root of their own and be sent the OTLP headers (API keys) or the
    /// quarantine notices.
    #[test]
    fn ca_files_others_may_write_or_own_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;

        let tmp = tempfile::tempdir().unwrap();
        let pem = tmp.path().join("roots.pem");
        let text = b"-----BEGIN CERTIFICATE-----\n";
        std::fs::write(&pem, text).unwrap();
        let chmod = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let head = "listen = \"127.0.0.1:1\"\ntrust_domain = \"acme.internal\"\n";
        // Both settings, naming `path`: the hub configuration, or the error in one line.
        let configs = |path: &Path| {
            let path = path.display();
            [
                format!("[otlp]\nendpoint = \"https://127.0.0.1:4318\"\nca = \"{path}\"\n"),
                format!(
                    "[anomaly]\nwebhook = \"https://127.0.0.1:1/hook\"\nwebhook_ca = \"{path}\"\n"
                ),
            ]
            .map(|table| {
                ConfigFile::parse(&format!("{head}{table}"))
                    .and_then(|c| c.to_hub_config())
                    .map_err(|e| format!("{e:#}"))
            })
        };

        // The owner's, 0644 at most: read.
        chmod(&pem, 0o644);
        let [otlp, anomaly] = configs(&pem);
        let otlp = otlp.unwrap().otlp.unwrap();
        assert_eq!(otlp.roots_pem.as_deref(), Some(&text[..]));
        let webhook = anomaly.unwrap().quarantine_webhook.unwrap();
        assert_eq!(webhook.roots_pem.as_deref(), Some(&text[..]));

        // Group or others may write it, itself or through a link: refused.
        let link = tmp.path().join("link.pem");
        std::os::unix::fs::symlink(&pem, &link).unwrap();
        for (mode, path) in [(0o664, &pem), (0o646, &pem), (0o666, &link)] {
            chmod(&pem, mode);
            for (setting, result) in ["`[otlp]` `ca`", "`[anomaly]` `webhook_ca`"]
                .into_iter()
                .zip(configs(path))
            {
                let err = result.err().unwrap();
                assert!(
                    err.starts_with(&format!(
                        "{setting}: `{}` has mode {mode:04o}: group or others may write it",
                        path.display()
                    )),
                    "{err}"
                );
            }
        }

        // Not a regular file, or larger than any CA bundle: refused.
        chmod(&pem, 0o644);
        for (path, needle) in [
            (tmp.path().to_owned(), "is not a regular file"),
            (tmp.path().join("big.pem"), "is larger than 4194304 bytes"),
        ] {
            if path.ends_with("big.pem") {
                std::fs::write(&path, vec![b'#'; (4 << 20) + 1]).unwrap();
                chmod(&path, 0o644);
            }
            for result in configs(&path) {
                let err = result.err().unwrap();
                assert!(err.contains(needle), "{needle}: {err}");
            }
        }

        // Another user's: refused (only root can give a file away to make the case).
        if std::os::unix::fs::chown(&pem, Some(54_321), None).is_err() {
            eprintln!("not run as root: ownership checks not exercised");
            return;
        }
        for result in configs(&pem) {
            let err = result.err().unwrap();
            assert!(err.contains("is owned by user 54321"), "{err}");
        }
    }

    /// Policies written before a first start are the hub's initial set, kept as they are: the
    /// stock set is written only into a directory holding none. A `.cedar` entry that can't be
    /// read (a link to nothing) is an error, not a file left out of the set.
    #[test]
    fn policies_written_before_the_first_start_are_kept_and_one_unreadable_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("hub");
        let policies = root.join(POLICIES);
        files::create_private_dir_all(&policies).unwrap();
        let strict = "forbid (principal, action, resource);\n";
        std::fs::write(policies.join("strict.cedar"), strict).unwrap();
        let data = DataDir::scratch(&root, None, "acme.internal", SystemTime::now()).unwrap();
        assert!(!policies.join(DEFAULT_POLICIES).exists());
        assert_eq!(
            data.policy_files().unwrap(),
            [("strict.cedar".to_owned(), strict.to_owned())]
        );
        assert!(
            data.created
                .iter()
                .any(|c| c.contains("1 policy file(s) found there kept"))
        );
        std::os::unix::fs::symlink(tmp.path().join("gone.cedar"), policies.join("linked.cedar"))
            .unwrap();
        let err = format!("{:#}", data.policy_files().unwrap_err());
        assert!(err.contains("linked.cedar"), "{err}");
        std::fs::remove_file(policies.join("linked.cedar")).unwrap();
        // An editor's lock file (a link to nothing, hidden) and a directory are no policies.
        std::os::unix::fs::symlink("nowhere", policies.join(".#strict.cedar")).unwrap();
        std::fs::create_dir(policies.join("old.cedar")).unwrap();
        assert_eq!(data.policy_files().unwrap().len(), 1);
        // A directory without one gets the stock set.
        let fresh = tmp.path().join("fresh");
        DataDir::scratch(&fresh, None, "acme.internal", SystemTime::now()).unwrap();
        assert!(fresh.join(POLICIES).join(DEFAULT_POLICIES).exists());
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
                "listen = \"127.0.0.1:1\"\ntrust_domain = \"acme.internal\"\n[[durable]]\n\
                 name = \"orders\"\nchannels = \"orders.>\"\nsync = \"0s\"\n",
                "an interval above zero",
            ),
        ];
        for (text, needle) in cases {
            let err = format!("{:#}", ConfigFile::parse(text).unwrap_err());
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
