//! The key stores of a data directory: where the CA keys, the audit checkpoint keys and the
//! data keys' wrapping key live (docs/KEYS.md §1). Each kind is in the local store
//! (`DIR/keys`) or in a PKCS#11 token, chosen at the first start and kept in `config.toml`:
//!
//! - `[keystore]`: the CA keys' store (absent: the local store);
//! - `[audit_keystore]`, `[data_keystore]`: the audit and data keys' store when it is not the
//!   CA keys' (absent: the same as the CA keys').
//!
//! At the first start, `ENTENTE_CA_KEYSTORE`, `ENTENTE_AUDIT_KEYSTORE` and
//! `ENTENTE_DATA_KEYSTORE` (`local` or `pkcs11`) choose; each defaults to `pkcs11` when
//! `ENTENTE_PKCS11_MODULE`, `ENTENTE_PKCS11_TOKEN` and `ENTENTE_PKCS11_PIN` are set, else
//! `local`. Later starts read `config.toml` and need the PIN of any token it names. A token is
//! opened once per process, whatever the kinds it holds.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow, bail};
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use entente_keystore::KeyStore;
use entente_keystore::local::{Argon2Params, LocalKeyStore, Unlock, files};
use entente_keystore::pkcs11::{self, Pkcs11Config, Pkcs11KeyStore};
use zeroize::Zeroizing;

/// The environment variable choosing the CA keys' store at the first start.
pub(crate) const CA_ENV: &str = "ENTENTE_CA_KEYSTORE";
/// The environment variable choosing the audit keys' store at the first start.
pub(crate) const AUDIT_ENV: &str = "ENTENTE_AUDIT_KEYSTORE";
/// The environment variable choosing the data keys' store at the first start.
pub(crate) const DATA_ENV: &str = "ENTENTE_DATA_KEYSTORE";

const LOCAL: &str = "local";
const PKCS11: &str = "pkcs11";
/// The local store's directory in the data directory.
pub(crate) const KEYS: &str = "keys";
/// The local store's key, when none comes through the environment.
pub(crate) const KEYSTORE_KEY: &str = "keystore.key";

/// The environment variables that hold secrets (the key store's key or passphrase, the token's
/// PIN, the OpenTelemetry export's headers, a join token): never passed on to a command the
/// CLI runs.
pub(crate) const SECRET_ENVS: [&str; 5] = [
    entente_keystore::local::KEY_ENV,
    entente_keystore::local::PASSPHRASE_ENV,
    entente_keystore::pkcs11::PIN_ENV,
    crate::data::OTLP_HEADERS_ENV,
    crate::commands::agent::JOIN_TOKEN_VAR,
];

/// A `[keystore]`-like table of `config.toml`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeystoreTable {
    /// `pkcs11` or `local`.
    pub(crate) backend: String,
    /// The PKCS#11 module (e.g. SoftHSM2's `libsofthsm2.so`, or the HSM vendor's).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) module: String,
    /// The token's label.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) token: String,
}

/// The tables `config.toml` keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Tables {
    pub(crate) ca: Option<KeystoreTable>,
    pub(crate) audit: Option<KeystoreTable>,
    pub(crate) data: Option<KeystoreTable>,
}

/// The opened stores, one per kind (the same store for kinds that share one).
#[derive(Debug, Clone)]
pub(crate) struct Stores {
    pub(crate) ca: Arc<dyn KeyStore>,
    pub(crate) audit: Arc<dyn KeyStore>,
    pub(crate) data: Arc<dyn KeyStore>,
    /// Whether the local store is unlocked by the key kept beside it (`DIR/keystore.key`):
    /// then whoever has a copy of the directory has the keys too.
    pub(crate) key_beside: bool,
}

/// Where a kind of key goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    Local,
    Token { module: String, token: String },
}

/// Opens each store once.
struct Opener<'a> {
    root: &'a Path,
    local: Option<Arc<dyn KeyStore>>,
    tokens: Vec<(Place, Arc<dyn KeyStore>)>,
    /// A PIN for tokens, from the environment or the first start's configuration.
    pin: Option<Zeroizing<String>>,
    /// Whether a missing local store may be created (for the first start of a kind).
    create_local: bool,
    /// Whether a new local store's key may come from the environment.
    from_env: bool,
    created: &'a mut Vec<String>,
    /// Whether the local store was unlocked by (or made under) `DIR/keystore.key`.
    key_beside: bool,
}

// === first start ===

/// Chooses and opens the stores of a new data directory (see the module docs), creating the
/// local store if a kind goes there; returns them with the tables for `config.toml`. Without
/// `from_env` (a throwaway hub: the demo, benchmarks), every key goes to a local store under
/// a random key, whatever the environment names: nothing lands in an operator's token.
pub(crate) fn init(
    root: &Path,
    created: &mut Vec<String>,
    from_env: bool,
) -> Result<(Stores, Tables)> {
    let pkcs11 = if from_env {
        Pkcs11Config::from_env()?
    } else {
        None
    };
    let default = if pkcs11.is_some() { PKCS11 } else { LOCAL };
    let token = pkcs11.as_ref().map(|config| Place::Token {
        module: config.module.display().to_string(),
        token: config.token_label.clone(),
    });
    let choose = |env: &str| -> Result<Place> {
        let chosen = std::env::var(env)
            .ok()
            .filter(|_| from_env)
            .unwrap_or_else(|| default.to_owned());
        match chosen.as_str() {
            LOCAL => Ok(Place::Local),
            PKCS11 => token.clone().ok_or_else(|| {
                anyhow!(
                    "{env} is `pkcs11`: set {}, {} and {} to the token",
                    pkcs11::MODULE_ENV,
                    pkcs11::TOKEN_ENV,
                    pkcs11::PIN_ENV
                )
            }),
            other => bail!(
                "{env} is `{}`: it is `local` or `pkcs11`",
                other.escape_debug()
            ),
        }
    };
    let (ca, audit, data) = (choose(CA_ENV)?, choose(AUDIT_ENV)?, choose(DATA_ENV)?);
    let mut opener = Opener {
        root,
        local: None,
        tokens: Vec::new(),
        pin: pkcs11.as_ref().map(|config| config.pin.clone()),
        create_local: true,
        from_env,
        created,
        key_beside: false,
    };
    let mut stores = Stores {
        ca: opener.open(&ca)?,
        audit: opener.open(&audit)?,
        data: opener.open(&data)?,
        key_beside: false,
    };
    stores.key_beside = opener.key_beside;
    for (place, what) in [
        (&ca, "the CA keys"),
        (&audit, "the audit checkpoint keys"),
        (&data, "the data keys' wrapping key"),
    ] {
        opener.created.push(match place {
            Place::Local => format!("{what} in the local key store `{KEYS}/`"),
            Place::Token { token, .. } => {
                format!("{what} in the PKCS#11 token `{token}` (they never leave it)")
            }
        });
    }
    let table = |place: &Place| match place {
        Place::Local => KeystoreTable {
            backend: LOCAL.to_owned(),
            module: String::new(),
            token: String::new(),
        },
        Place::Token { module, token } => KeystoreTable {
            backend: PKCS11.to_owned(),
            module: module.clone(),
            token: token.clone(),
        },
    };
    let tables = Tables {
        ca: (ca != Place::Local).then(|| table(&ca)),
        audit: (audit != ca).then(|| table(&audit)),
        data: (data != ca).then(|| table(&data)),
    };
    Ok((stores, tables))
}

// === later starts ===

/// Opens the stores `tables` name (see the module docs).
pub(crate) fn open(root: &Path, tables: &Tables) -> Result<Stores> {
    let mut created = Vec::new();
    let mut opener = Opener {
        root,
        local: None,
        tokens: Vec::new(),
        pin: None,
        create_local: false,
        from_env: true,
        created: &mut created,
        key_beside: false,
    };
    let ca = place_of(tables.ca.as_ref(), "keystore")?.unwrap_or(Place::Local);
    let ca_store = opener.open(&ca)?;
    // The audit and data keys' local store may be made by their first use.
    opener.create_local = true;
    let mut other = |table: Option<&KeystoreTable>, name: &str| -> Result<Arc<dyn KeyStore>> {
        match place_of(table, name)? {
            None => Ok(ca_store.clone()),
            Some(place) if place == ca => Ok(ca_store.clone()),
            Some(place) => opener.open(&place),
        }
    };
    let audit = other(tables.audit.as_ref(), "audit_keystore")?;
    let data = other(tables.data.as_ref(), "data_keystore")?;
    Ok(Stores {
        ca: ca_store.clone(),
        audit,
        data,
        key_beside: opener.key_beside,
    })
}

fn place_of(table: Option<&KeystoreTable>, name: &str) -> Result<Option<Place>> {
    let Some(table) = table else {
        return Ok(None);
    };
    match table.backend.as_str() {
        LOCAL => Ok(Some(Place::Local)),
        PKCS11 if !table.module.is_empty() && !table.token.is_empty() => Ok(Some(Place::Token {
            module: table.module.clone(),
            token: table.token.clone(),
        })),
        PKCS11 => bail!("`[{name}]` names backend `pkcs11` without its `module` and `token`"),
        other => bail!(
            "`[{name}] backend` is `{}`; this build knows `{LOCAL}` and `{PKCS11}`",
            other.escape_debug()
        ),
    }
}

/// The token's PIN from the value of `ENTENTE_PKCS11_PIN` at a later start. Unset or empty is
/// refused here, before the token is asked: each failed login uses up one of its tries, and
/// `ENTENTE_PKCS11_PIN=$PIN` with `PIN` unset, under a service that restarts the hub, would
/// otherwise try once per start until the token locks the PIN. Messages never hold the value.
fn pin_of(value: Option<std::ffi::OsString>, token: &str) -> Result<Zeroizing<String>> {
    let env = pkcs11::PIN_ENV;
    let token = token.escape_debug();
    let Some(value) = value else {
        bail!("keys of the hub are in the PKCS#11 token `{token}`: set {env} to its user PIN");
    };
    if value.is_empty() {
        bail!(
            "{env} is set but empty: keys of the hub are in the PKCS#11 token `{token}`, and no \
             login is tried with an empty PIN (a failed login uses up one of the token's tries); \
             set {env} to its user PIN"
        );
    }
    let value = Zeroizing::new(value.into_encoded_bytes());
    let pin = std::str::from_utf8(&value).map_err(|_| anyhow!("{env} is not valid UTF-8"))?;
    Ok(Zeroizing::new(pin.to_owned()))
}

// === impl Opener ===

impl Opener<'_> {
    fn open(&mut self, place: &Place) -> Result<Arc<dyn KeyStore>> {
        match place {
            Place::Local => self.local(),
            Place::Token { module, token } => {
                if let Some((_, store)) = self.tokens.iter().find(|(p, _)| p == place) {
                    return Ok(store.clone());
                }
                let pin = match &self.pin {
                    Some(pin) => pin.clone(),
                    None => pin_of(std::env::var_os(pkcs11::PIN_ENV), token)?,
                };
                let store: Arc<dyn KeyStore> = Arc::new(Pkcs11KeyStore::open(Pkcs11Config {
                    module: PathBuf::from(module),
                    token_label: token.clone(),
                    pin,
                })?);
                self.tokens.push((place.clone(), store.clone()));
                Ok(store)
            }
        }
    }

    /// The local store in `DIR/keys`, unlocked by the environment's key or passphrase, or by
    /// the random key kept in `DIR/keystore.key` (drawn when the store is made).
    fn local(&mut self) -> Result<Arc<dyn KeyStore>> {
        if let Some(store) = &self.local {
            return Ok(store.clone());
        }
        let dir = self.root.join(KEYS);
        let store: Arc<dyn KeyStore> = if dir.exists() || !self.create_local {
            Arc::new(LocalKeyStore::open(&dir, &self.unlock_existing()?)?)
        } else {
            let unlock = self.unlock_new()?;
            let store = LocalKeyStore::create(&dir, &unlock, Argon2Params::default())?;
            self.created
                .push(format!("{KEYS}/: the local key store, encrypted at rest"));
            Arc::new(store)
        };
        self.local = Some(store.clone());
        Ok(store)
    }

    fn unlock_existing(&mut self) -> Result<Unlock> {
        if let Some(unlock) = Unlock::from_env()? {
            return Ok(unlock);
        }
        let path = self.root.join(KEYSTORE_KEY);
        let text = Zeroizing::new(files::read_private(&path).with_context(|| {
            format!(
                "no key-store key: set ENTENTE_KEYSTORE_KEY or ENTENTE_KEYSTORE_PASSPHRASE, or \
                 restore `{}`",
                path.display()
            )
        })?);
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim_ascii(), &mut *key)
            .map_err(|_| anyhow!("`{}` is not a 64-character hex key", path.display()))?;
        self.key_beside = true;
        Ok(Unlock::Key(key))
    }

    fn unlock_new(&mut self) -> Result<Unlock> {
        if self.from_env
            && let Some(unlock) = Unlock::from_env()?
        {
            return Ok(unlock);
        }
        let mut key = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(&mut *key)
            .map_err(|_| anyhow!("the system random source failed"))?;
        let text = Zeroizing::new(hex::encode(*key));
        let written = files::write_new(
            self.root,
            KEYSTORE_KEY,
            text.as_bytes(),
            &SystemRandom::new(),
        )?;
        if written == files::Written::AlreadyExists {
            // Never a store under a key that is not kept: the next start could not open it.
            bail!(
                "`{}` exists but the key store `{KEYS}/` beside it does not: restore `{KEYS}/`, \
                 or remove `{KEYSTORE_KEY}` if no key store was ever made under it",
                self.root.join(KEYSTORE_KEY).display()
            );
        }
        self.created.push(format!(
            "{KEYSTORE_KEY}: a random key-store key (set ENTENTE_KEYSTORE_KEY or \
             ENTENTE_KEYSTORE_PASSPHRASE instead for production)"
        ));
        self.key_beside = true;
        Ok(Unlock::Key(key))
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use std::ffi::OsString;

    use super::*;

    #[test]
    fn a_later_start_refuses_an_unset_or_empty_pin_without_showing_it() {
        let err = pin_of(None, "hub").unwrap_err().to_string();
        assert_eq!(
            err,
            "keys of the hub are in the PKCS#11 token `hub`: set ENTENTE_PKCS11_PIN to its user \
             PIN"
        );
        let err = pin_of(Some(OsString::new()), "hub")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "ENTENTE_PKCS11_PIN is set but empty: keys of the hub are in the PKCS#11 token \
             `hub`, and no login is tried with an empty PIN (a failed login uses up one of the \
             token's tries); set ENTENTE_PKCS11_PIN to its user PIN"
        );
        assert_eq!(
            pin_of(Some(OsString::from(" 12 34 ")), "hub")
                .unwrap()
                .as_str(),
            " 12 34 "
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_pin_that_is_not_utf8_is_refused_without_showing_it() {
        use std::os::unix::ffi::OsStringExt;
        let err = pin_of(Some(OsString::from_vec(vec![b'p', 0xff])), "hub")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "ENTENTE_PKCS11_PIN is not valid UTF-8");
    }
}
