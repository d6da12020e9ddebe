//! Data keys: the AES-256-GCM keys the hub encrypts what it keeps at rest with (the entries of
//! durable channels), wrapped by a key-encryption key of the key store, versioned and rotated.
//!
//! Each data key has a version (1, 2, …); the newest active one encrypts. A sealed value names
//! its key's version, so older versions keep decrypting what they sealed until they are
//! retired. Keys are stored only wrapped (AES-256-GCM under the key store's [`DATA_KEK`], with
//! the version in the associated data) in the hub's store, config key `data_keys`; the key
//! store never hands out the key-encryption key, and an HSM keeps it inside.
//!
//! Sealed value: `u32(version) ‖ nonce (12 bytes) ‖ AES-256-GCM(data key, nonce, aad, value)
//! ‖ tag (16 bytes)`, where `aad` is the caller's context (a durable entry's stream and
//! sequence), so that a sealed value moved elsewhere does not open.
//!
//! The key-encryption key rotates too (`DataKeys::rotate_kek`, `entente keys rotate
//! data-kek`): a new one (`data-kek-` and 8 hex digits) is made in the key store, every data
//! key is unwrapped and wrapped again under it, the list is stored naming it, and the old one
//! is deleted. What the data keys sealed is not touched: nothing kept at rest is decrypted.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use entente_keystore::{KeyAlgorithm, KeyName, KeyStore, KeyStoreError};
use zeroize::Zeroizing;

use crate::HubError;
use crate::registry::Registry;

/// The key store's key-encryption key that wraps the data keys.
pub const DATA_KEK: &str = "data-kek";

/// The hub store's config key of the wrapped data keys.
const DATA_KEYS_CONFIG: &str = "data_keys";

/// The stored list's format version, wrapped under [`DATA_KEK`]...
const STORED_VERSION: u8 = 1;
/// ...and naming its key-encryption key.
const STORED_VERSION_KEK: u8 = 2;

/// Bytes a sealed value adds: version, nonce and tag.
pub const SEAL_OVERHEAD: usize = 4 + NONCE_LEN + 16;

/// The most data keys the hub holds: the stored list loads no more, and a rotation that would
/// pass it is refused until older versions are retired (a short rotation interval and a
/// consumer that lags would otherwise store a list the next start can't load).
pub const MAX_DATA_KEYS: usize = 1 << 16;

/// Why a sealed value did not open, or keys could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataKeyError {
    /// The value names a key version this hub does not hold (retired, or never made).
    #[error("no data key of version {0}")]
    UnknownVersion(u32),
    /// The value was altered, or sealed for another context.
    #[error("a sealed value does not open: altered, or sealed for another place")]
    Open,
    /// The value is too short to be sealed.
    #[error("a sealed value is truncated")]
    Truncated,
    /// The key store failed.
    #[error("key store: {0}")]
    KeyStore(#[from] KeyStoreError),
    /// The random source or the cipher failed.
    #[error("crypto: {0}")]
    Crypto(&'static str),
}

/// What `entente keys status` shows of one data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataKeyInfo {
    /// Its version.
    pub version: u32,
    /// When it was made, Unix milliseconds.
    pub created_ms: u64,
    /// Whether it is the one that encrypts now.
    pub current: bool,
}

/// The hub's data keys, unwrapped in memory.
#[derive(Debug)]
pub struct DataKeys {
    keystore: Arc<dyn KeyStore>,
    keys: RwLock<Keys>,
    /// One change of the stored list at a time (rotation, retirement, rewrapping).
    changing: tokio::sync::Mutex<()>,
    rng: SystemRandom,
}

#[derive(Debug, Default)]
struct Keys {
    /// The key-encryption key the stored keys are wrapped with (`None`: [`DATA_KEK`]).
    kek: Option<KeyName>,
    /// Active keys by version.
    by_version: BTreeMap<u32, Key>,
    /// The newest version made (retired ones included).
    latest: u32,
}

struct Key {
    cipher: LessSafeKey,
    wrapped: Vec<u8>,
    created_ms: u64,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("created_ms", &self.created_ms)
            .finish_non_exhaustive()
    }
}

// === impl DataKeys ===

impl DataKeys {
    /// The data keys in the hub's store, unwrapped; with none stored, a first one is made (and
    /// the key-encryption key, if the key store lacks it).
    pub(crate) async fn load(
        keystore: Arc<dyn KeyStore>,
        registry: &Registry,
        now_ms: u64,
    ) -> Result<Self, HubError> {
        let keys = Self {
            keystore,
            keys: RwLock::default(),
            changing: tokio::sync::Mutex::new(()),
            rng: SystemRandom::new(),
        };
        match registry.config(DATA_KEYS_CONFIG).await? {
            Some(bytes) => {
                let stored = decode(&bytes).map_err(|e| HubError::Keys(e.to_owned()))?;
                let kek = match &stored.kek {
                    Some(name) => KeyName::new(name)
                        .map_err(|e| HubError::Keys(format!("the stored data keys: {e}")))?,
                    None => kek_name()?,
                };
                let mut loaded = Keys {
                    kek: stored.kek.is_some().then(|| kek.clone()),
                    ..Keys::default()
                };
                for (version, created_ms, wrapped) in stored.keys {
                    let cipher = keys.unwrap(&kek, version, &wrapped).map_err(|e| {
                        HubError::Keys(format!("unwrapping data key {version}: {e}"))
                    })?;
                    loaded.by_version.insert(
                        version,
                        Key {
                            cipher,
                            wrapped,
                            created_ms,
                        },
                    );
                }
                loaded.latest = stored.latest;
                *keys.write() = loaded;
            }
            None => {
                let kek = kek_name()?;
                if !keys
                    .keystore
                    .contains(&kek)
                    .map_err(|e| HubError::Keys(format!("key store: {e}")))?
                {
                    keys.keystore
                        .generate(&kek, KeyAlgorithm::Aes256Gcm)
                        .map_err(|e| HubError::Keys(format!("key store: {e}")))?;
                }
                keys.rotate(registry, now_ms)
                    .await
                    .map_err(|e| HubError::Keys(format!("making the first data key: {e}")))?;
            }
        }
        Ok(keys)
    }

    /// Makes a new data key, stores it (wrapped) with the others, and encrypts with it from
    /// now on; returns its version. Refused while the hub holds [`MAX_DATA_KEYS`].
    pub(crate) async fn rotate(&self, registry: &Registry, now_ms: u64) -> Result<u32, HubError> {
        let _changing = self.changing.lock().await;
        let version = {
            let keys = self.read();
            if keys.by_version.len() >= MAX_DATA_KEYS {
                return Err(HubError::Keys(format!(
                    "no new data key: the hub holds {MAX_DATA_KEYS}, the most it keeps (and \
                     loads at start); older ones are retired once no entry kept at rest is \
                     sealed under them"
                )));
            }
            keys.latest
                .checked_add(1)
                .ok_or_else(|| HubError::Keys("no new data key: versions are used up".into()))?
        };
        let kek = self.kek()?;
        let mut raw = Zeroizing::new([0u8; 32]);
        self.rng
            .fill(raw.as_mut())
            .map_err(|_| HubError::Keys("the random source failed".into()))?;
        let wrapped = self
            .keystore
            .encrypt(&kek, raw.as_ref(), &wrap_aad(version))
            .map_err(|e| HubError::Keys(format!("wrapping data key {version}: {e}")))?;
        let cipher =
            cipher(raw.as_ref()).map_err(|e| HubError::Keys(format!("data key {version}: {e}")))?;
        let mut next = self.snapshot();
        next.keys.push((version, now_ms, wrapped.clone()));
        next.latest = version;
        registry
            .put_config(DATA_KEYS_CONFIG, &encode(&next))
            .await?;
        let mut keys = self.write();
        keys.by_version.insert(
            version,
            Key {
                cipher,
                wrapped,
                created_ms: now_ms,
            },
        );
        keys.latest = version;
        Ok(version)
    }

    /// Retires every version below `keep_from` (nothing sealed under them is kept any more),
    /// never the current one; returns the versions retired.
    pub(crate) async fn retire_below(
        &self,
        registry: &Registry,
        keep_from: u32,
    ) -> Result<Vec<u32>, HubError> {
        let _changing = self.changing.lock().await;
        let current = self.current_version();
        let retired: Vec<u32> = self
            .read()
            .by_version
            .keys()
            .copied()
            .filter(|&v| v < keep_from && v != current)
            .collect();
        if retired.is_empty() {
            return Ok(retired);
        }
        let mut next = self.snapshot();
        next.keys.retain(|(v, _, _)| !retired.contains(v));
        registry
            .put_config(DATA_KEYS_CONFIG, &encode(&next))
            .await?;
        let mut keys = self.write();
        for v in &retired {
            keys.by_version.remove(v);
        }
        Ok(retired)
    }

    /// Wraps every data key again under a new key-encryption key, made now in the key store;
    /// stores the list naming it, then deletes the old one. Returns the old and the new name,
    /// and whether the old one was deleted (the rotation stands either way). The data keys
    /// themselves, and what they sealed, do not change.
    pub(crate) async fn rotate_kek(
        &self,
        registry: &Registry,
    ) -> Result<(String, String, bool), HubError> {
        let _changing = self.changing.lock().await;
        let old = self.kek()?;
        let mut tag = [0u8; 4];
        self.rng
            .fill(&mut tag)
            .map_err(|_| HubError::Keys("the random source failed".into()))?;
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        let new = KeyName::new(&format!("{DATA_KEK}-{hex}"))
            .map_err(|e| HubError::Keys(format!("key store: {e}")))?;
        // Two key store calls per data key (an HSM's, maybe over the network): off the
        // runtime's threads.
        let (keystore, wrapped) = (Arc::clone(&self.keystore), self.snapshot().keys);
        let (from, to) = (old.clone(), new.clone());
        let keys = blocking(move || {
            keystore
                .generate(&to, KeyAlgorithm::Aes256Gcm)
                .map_err(|e| HubError::Keys(format!("key store: {e}")))?;
            rewrap(keystore.as_ref(), wrapped, &from, &to).inspect_err(|_| {
                // Nothing changed: the new key goes again.
                let _ = keystore.delete(&to);
            })
        })
        .await?;
        let mut stored = self.snapshot();
        stored.kek = Some(new.to_string());
        stored.keys = keys;
        // A failed store may still have written the list naming the new key (a sync that
        // failed after the write): the new key stays, unused if it was not, rather than the
        // data keys be left wrapped under a key that is gone.
        registry
            .put_config(DATA_KEYS_CONFIG, &encode(&stored))
            .await?;
        {
            let mut keys = self.write();
            for (version, _, wrapped) in stored.keys {
                if let Some(key) = keys.by_version.get_mut(&version) {
                    key.wrapped = wrapped;
                }
            }
            keys.kek = Some(new.clone());
        }
        let (keystore, gone) = (Arc::clone(&self.keystore), old.clone());
        let deleted = blocking(move || {
            keystore
                .delete(&gone)
                .map_err(|e| HubError::Keys(e.to_string()))
        })
        .await
        .is_ok();
        Ok((old.to_string(), new.to_string(), deleted))
    }

    /// The name of the key-encryption key in use.
    pub fn wrapping_key_name(&self) -> String {
        self.read()
            .kek
            .as_ref()
            .map_or_else(|| DATA_KEK.to_owned(), ToString::to_string)
    }

    /// The version that encrypts now.
    pub fn current_version(&self) -> u32 {
        let keys = self.read();
        keys.by_version.keys().next_back().copied().unwrap_or(0)
    }

    /// The backend of the key store holding the wrapping key (`local`, `pkcs11`).
    pub fn backend(&self) -> &'static str {
        self.keystore.backend()
    }

    /// The active keys, oldest first.
    pub fn status(&self) -> Vec<DataKeyInfo> {
        let keys = self.read();
        let current = keys.by_version.keys().next_back().copied();
        keys.by_version
            .iter()
            .map(|(&version, key)| DataKeyInfo {
                version,
                created_ms: key.created_ms,
                current: Some(version) == current,
            })
            .collect()
    }

    /// Seals `value` under the current key, bound to `aad`.
    pub fn seal(&self, aad: &[u8], value: &[u8]) -> Result<Vec<u8>, DataKeyError> {
        let keys = self.read();
        let (&version, key) = keys
            .by_version
            .iter()
            .next_back()
            .ok_or(DataKeyError::UnknownVersion(0))?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| DataKeyError::Crypto("the random source failed"))?;
        let mut out = Vec::with_capacity(SEAL_OVERHEAD + value.len());
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(value);
        let mut body = out.split_off(4 + NONCE_LEN);
        key.cipher
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .map_err(|_| DataKeyError::Crypto("sealing failed"))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens a value [`seal`](Self::seal) made, with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, DataKeyError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(DataKeyError::Truncated);
        }
        let (version, rest) = sealed.split_at(4);
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let version = u32::from_be_bytes(version.try_into().map_err(|_| DataKeyError::Truncated)?);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| DataKeyError::Truncated)?;
        let keys = self.read();
        let key = keys
            .by_version
            .get(&version)
            .ok_or(DataKeyError::UnknownVersion(version))?;
        let mut body = body.to_vec();
        let plain = key
            .cipher
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .map_err(|_| DataKeyError::Open)?;
        let len = plain.len();
        body.truncate(len);
        Ok(body)
    }

    /// The version a sealed value names, if it is long enough to name one.
    pub fn version_of(sealed: &[u8]) -> Option<u32> {
        sealed
            .get(..4)
            .and_then(|v| v.try_into().ok())
            .map(u32::from_be_bytes)
    }

    // --- helpers ---

    fn kek(&self) -> Result<KeyName, HubError> {
        match &self.read().kek {
            Some(name) => Ok(name.clone()),
            None => kek_name(),
        }
    }

    /// Every held key's wrapped form under `new`, unwrapped from under `old` (in the key
    /// store; the plain key is wiped after).
    fn unwrap(
        &self,
        kek: &KeyName,
        version: u32,
        wrapped: &[u8],
    ) -> Result<LessSafeKey, DataKeyError> {
        let raw = self.keystore.decrypt(kek, wrapped, &wrap_aad(version))?;
        cipher(&raw)
    }

    fn snapshot(&self) -> Stored {
        let keys = self.read();
        Stored {
            kek: keys.kek.as_ref().map(ToString::to_string),
            latest: keys.latest,
            keys: keys
                .by_version
                .iter()
                .map(|(&v, k)| (v, k.created_ms, k.wrapped.clone()))
                .collect(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Keys> {
        self.keys.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Rotates the data key whenever the current one is older than `every`, until `shutdown`
/// is set, and retires the versions nothing kept needs any more: below `in_use()`, the oldest
/// version a value kept at rest was sealed under (`None`: it can't be told, and nothing is
/// retired). Each round is recorded in the audit log (by `hub`), and none is made while the
/// log is failed. A failure is tried again a minute later; the current key keeps encrypting
/// meanwhile.
pub(crate) async fn rotate_loop(
    keys: Arc<DataKeys>,
    registry: Registry,
    auditor: crate::audit::Auditor,
    every: std::time::Duration,
    in_use: impl Fn(&DataKeys) -> Option<u32> + Send,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    const RETRY: std::time::Duration = std::time::Duration::from_secs(60);
    // After a round that did not rotate the next one comes a minute later, whatever the
    // current key's time (one that rotated but failed to retire waits for the new key's turn).
    let mut retrying = false;
    loop {
        let now = crate::rpc::unix_ms(std::time::SystemTime::now());
        let created = keys
            .status()
            .into_iter()
            .find(|k| k.current)
            .map_or(0, |k| k.created_ms);
        if created > now {
            tracing::warn!(
                created_ms = created,
                now_ms = now,
                "the current data key was made in the future by this clock: it is rotated a \
                 rotation interval from now"
            );
        }
        let due = if retrying {
            std::time::Duration::ZERO
        } else {
            rotation_wait(created, now, every)
        };
        tokio::select! {
            () = tokio::time::sleep(due) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let now = crate::rpc::unix_ms(std::time::SystemTime::now());
        let before = keys.current_version();
        let ok = rotation_round(&keys, &registry, &auditor, &in_use, now).await;
        retrying = !ok && keys.current_version() == before;
        if !ok {
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }
}

/// How long until the key made at `created_ms` is rotated, rotating `every`: never longer
/// than `every` (a key made while the clock ran ahead would otherwise stop the rotations for as
/// long as the clock was wrong).
fn rotation_wait(created_ms: u64, now_ms: u64, every: std::time::Duration) -> std::time::Duration {
    let every_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
    let created = created_ms.min(now_ms);
    std::time::Duration::from_millis(created.saturating_add(every_ms).saturating_sub(now_ms))
}

/// One round of [`rotate_loop`]: rotates, retires what `in_use` allows (also when the
/// rotation failed: retiring is what lets a hub at [`MAX_DATA_KEYS`] rotate again), and
/// records both. Nothing is done while the audit log is failed: a hub whose log is gone does
/// not act at all. Returns whether all went well.
async fn rotation_round(
    keys: &DataKeys,
    registry: &Registry,
    auditor: &crate::audit::Auditor,
    in_use: &impl Fn(&DataKeys) -> Option<u32>,
    now_ms: u64,
) -> bool {
    if auditor.check().is_err() {
        tracing::error!(
            "the audit log failed: the data key is not rotated, nor old ones retired, until it \
             records again"
        );
        return false;
    }
    let rotated = keys.rotate(registry, now_ms).await;
    if let Err(e) = &rotated {
        tracing::error!(error = %e, "the data key was not rotated: tried again in a minute");
    }
    // Retiring is an act of its own: the log may have failed while the key rotated.
    if auditor.check().is_err() {
        tracing::error!(
            rotated = ?rotated.as_ref().ok(),
            "the audit log failed: old data keys are not retired, and a rotation made now is \
             not recorded"
        );
        return false;
    }
    // Read once the new key encrypts: an entry sealed under the old one is kept by then.
    let retired = match in_use(keys) {
        Some(keep_from) => keys.retire_below(registry, keep_from).await.map(Some),
        // Why is logged where it is found.
        None => Ok(None),
    };
    if let Err(e) = &retired {
        tracing::error!(error = %e, "old data keys were not retired: tried again in a minute");
    }
    let ok = rotated.is_ok() && retired.is_ok();
    let detail = format!(
        "{}; {}",
        match &rotated {
            Ok(version) => format!("version {version}"),
            Err(e) => format!("not rotated: {e}"),
        },
        match &retired {
            Ok(Some(retired)) => format!("retired {retired:?}"),
            Ok(None) => "retired none: which versions are in use can't be told now".to_owned(),
            Err(e) => format!("not retired: {e}"),
        }
    );
    let outcome = if ok {
        entente_audit::Outcome::Success
    } else {
        entente_audit::Outcome::Failed
    };
    let event = entente_audit::Event::Admin(entente_audit::Admin {
        operation: crate::audit::clear("rotate-data-key"),
        target: crate::audit::clear(DATA_KEK),
        detail: crate::audit::clear(&detail),
    });
    if auditor
        .submit(crate::audit::HUB_ACTOR, outcome, event)
        .is_err()
    {
        tracing::error!(%detail, "the audit log failed: a data key round is not recorded");
        return false;
    }
    ok
}

// === the stored form ===

/// The wrapped keys as stored: `u8(1) ‖ u32(latest) ‖ u32(n) ‖ n × (u32(version) ‖
/// u64(created_ms) ‖ u32(len) ‖ wrapped)`, wrapped under [`DATA_KEK`]; or, once the
/// key-encryption key has rotated, `u8(2) ‖ u8(len) ‖ kek name ‖` the same from `latest` on.
#[derive(Debug, Default, PartialEq, Eq)]
struct Stored {
    /// The key-encryption key (`None`: [`DATA_KEK`], format 1).
    kek: Option<String>,
    latest: u32,
    keys: Vec<(u32, u64, Vec<u8>)>,
}

fn encode(stored: &Stored) -> Vec<u8> {
    let mut out = match &stored.kek {
        None => vec![STORED_VERSION],
        Some(kek) => {
            let mut out = vec![STORED_VERSION_KEK];
            out.push(u8::try_from(kek.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(kek.as_bytes());
            out
        }
    };
    out.extend_from_slice(&stored.latest.to_be_bytes());
    out.extend_from_slice(
        &u32::try_from(stored.keys.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for (version, created_ms, wrapped) in &stored.keys {
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&created_ms.to_be_bytes());
        out.extend_from_slice(
            &u32::try_from(wrapped.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(wrapped);
    }
    out
}

fn decode(bytes: &[u8]) -> Result<Stored, &'static str> {
    const BAD: &str = "the stored data keys do not decode";
    let mut r = bytes;
    let mut take = |n: usize| -> Result<&[u8], &'static str> {
        let (head, tail) = r.split_at_checked(n).ok_or(BAD)?;
        r = tail;
        Ok(head)
    };
    let kek = match take(1)? {
        [STORED_VERSION] => None,
        [STORED_VERSION_KEK] => {
            let len = take(1)?.first().copied().ok_or(BAD)?;
            let name = std::str::from_utf8(take(usize::from(len))?).map_err(|_| BAD)?;
            Some(name.to_owned())
        }
        _ => return Err("the stored data keys are of an unknown format version"),
    };
    let u32_of = |b: &[u8]| b.try_into().map(u32::from_be_bytes).map_err(|_| BAD);
    let latest = u32_of(take(4)?)?;
    let n = u32_of(take(4)?)?;
    let mut keys = Vec::new();
    if n as usize > MAX_DATA_KEYS {
        return Err("the stored data keys are more than the hub loads");
    }
    for _ in 0..n {
        let version = u32_of(take(4)?)?;
        let created_ms = take(8)?
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| BAD)?;
        let len = u32_of(take(4)?)? as usize;
        if len > 4096 {
            return Err(BAD);
        }
        keys.push((version, created_ms, take(len)?.to_vec()));
    }
    if !r.is_empty() || keys.len() != n as usize {
        return Err(BAD);
    }
    Ok(Stored { kek, latest, keys })
}

/// Every data key of `wrapped` unwrapped under `old` and wrapped again under `new`.
fn rewrap(
    keystore: &dyn KeyStore,
    wrapped: Vec<(u32, u64, Vec<u8>)>,
    old: &KeyName,
    new: &KeyName,
) -> Result<Vec<(u32, u64, Vec<u8>)>, HubError> {
    wrapped
        .into_iter()
        .map(|(version, created_ms, wrapped)| {
            let raw = Zeroizing::new(
                keystore
                    .decrypt(old, &wrapped, &wrap_aad(version))
                    .map_err(|e| HubError::Keys(format!("unwrapping data key {version}: {e}")))?,
            );
            let again = keystore
                .encrypt(new, &raw, &wrap_aad(version))
                .map_err(|e| HubError::Keys(format!("wrapping data key {version}: {e}")))?;
            Ok((version, created_ms, again))
        })
        .collect()
}

/// Runs `work` (key store calls) on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, HubError> + Send + 'static,
) -> Result<T, HubError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| HubError::Keys(format!("key store task failed: {e}")))?
}

fn kek_name() -> Result<KeyName, HubError> {
    KeyName::new(DATA_KEK).map_err(|e| HubError::Keys(format!("key store: {e}")))
}

/// What a data key is wrapped with, besides the key-encryption key: its purpose and version.
fn wrap_aad(version: u32) -> Vec<u8> {
    let mut aad = b"entente/v1/data-key\0".to_vec();
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

fn cipher(raw: &[u8]) -> Result<LessSafeKey, DataKeyError> {
    UnboundKey::new(&AES_256_GCM, raw)
        .map(LessSafeKey::new)
        .map_err(|_| DataKeyError::Crypto("a data key is not 32 bytes"))
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use std::sync::Arc;

    use entente_keystore::local::{Argon2Params, LocalKeyStore, Unlock};
    use entente_store::EmbeddedStore;

    use super::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        keystore: Arc<dyn KeyStore>,
        registry: Registry,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let keystore = LocalKeyStore::create(
            &dir.path().join("keys"),
            &Unlock::passphrase("data key tests"),
            Argon2Params::danger_fast_for_tests(),
        )
        .unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path().join("store.redb")).unwrap());
        Fixture {
            _dir: dir,
            keystore: Arc::new(keystore),
            registry: Registry::new(store),
        }
    }

    #[tokio::test]
    async fn values_seal_under_the_current_key_and_open_only_in_their_place() {
        let f = fixture();
        let keys = DataKeys::load(f.keystore.clone(), &f.registry, 1)
            .await
            .unwrap();
        assert_eq!(keys.current_version(), 1);
        let sealed = keys.seal(b"stream orders #7", b"envelope bytes").unwrap();
        assert_eq!(DataKeys::version_of(&sealed), Some(1));
        assert_eq!(sealed.len(), SEAL_OVERHEAD + 14);
        assert_eq!(
            keys.open(b"stream orders #7", &sealed).unwrap(),
            b"envelope bytes"
        );
        assert!(matches!(
            keys.open(b"stream orders #8", &sealed),
            Err(DataKeyError::Open)
        ));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(keys.open(b"stream orders #7", &bad).is_err(), "byte {i}");
        }
        assert!(matches!(
            keys.open(b"", &sealed[..SEAL_OVERHEAD - 1]),
            Err(DataKeyError::Truncated)
        ));
        // Two seals of one value differ: fresh nonces.
        assert_ne!(
            sealed,
            keys.seal(b"stream orders #7", b"envelope bytes").unwrap()
        );
    }

    #[tokio::test]
    async fn rotation_keeps_old_versions_opening_until_retired_and_survives_a_reload() {
        let f = fixture();
        let keys = DataKeys::load(f.keystore.clone(), &f.registry, 1)
            .await
            .unwrap();
        let old = keys.seal(b"a", b"old").unwrap();
        assert_eq!(keys.rotate(&f.registry, 2).await.unwrap(), 2);
        let new = keys.seal(b"a", b"new").unwrap();
        assert_eq!(DataKeys::version_of(&new), Some(2));

        // Another hub process: the same keys, unwrapped from the store.
        let again = DataKeys::load(f.keystore.clone(), &f.registry, 3)
            .await
            .unwrap();
        assert_eq!(again.current_version(), 2);
        assert_eq!(again.open(b"a", &old).unwrap(), b"old");
        assert_eq!(again.open(b"a", &new).unwrap(), b"new");
        let status = again.status();
        assert_eq!(
            status
                .iter()
                .map(|k| (k.version, k.current))
                .collect::<Vec<_>>(),
            [(1, false), (2, true)]
        );

        // Retiring never takes the current key, and what the old one sealed no longer opens.
        assert_eq!(again.retire_below(&f.registry, 99).await.unwrap(), [1]);
        assert!(matches!(
            again.open(b"a", &old),
            Err(DataKeyError::UnknownVersion(1))
        ));
        assert_eq!(again.open(b"a", &new).unwrap(), b"new");
        let reloaded = DataKeys::load(f.keystore.clone(), &f.registry, 4)
            .await
            .unwrap();
        assert_eq!(reloaded.status().len(), 1);
        // Versions are never reused.
        assert_eq!(reloaded.rotate(&f.registry, 5).await.unwrap(), 3);
    }

    #[test]
    fn a_key_made_in_the_future_is_rotated_an_interval_from_now() {
        let day = std::time::Duration::from_secs(86_400);
        let ms = std::time::Duration::from_millis;
        assert_eq!(rotation_wait(1_000, 61_000, ms(100_000)), ms(40_000));
        assert_eq!(rotation_wait(1_000, 200_000, ms(100_000)), ms(0));
        // Made a year ahead by a wrong clock: a day from now, not a year and a day.
        let year_ms = 365 * 86_400_000;
        assert_eq!(rotation_wait(5_000 + year_ms, 5_000, day), day);
    }

    #[tokio::test]
    async fn the_key_encryption_key_rotates_without_touching_what_the_data_keys_sealed() {
        let f = fixture();
        let keys = DataKeys::load(f.keystore.clone(), &f.registry, 1)
            .await
            .unwrap();
        let first = keys.seal(b"a", b"first").unwrap();
        keys.rotate(&f.registry, 2).await.unwrap();
        let second = keys.seal(b"a", b"second").unwrap();
        assert_eq!(keys.wrapping_key_name(), DATA_KEK);

        let (old, new, deleted) = keys.rotate_kek(&f.registry).await.unwrap();
        assert!(deleted);
        assert_eq!(old, DATA_KEK);
        assert!(new.starts_with("data-kek-"), "{new}");
        assert_eq!(keys.wrapping_key_name(), new);
        // The old key-encryption key is gone; the new one is in the store.
        assert!(!f.keystore.contains(&kek_name().unwrap()).unwrap());
        assert!(f.keystore.contains(&KeyName::new(&new).unwrap()).unwrap());
        // Sealed values are untouched and open, here and in another process.
        assert_eq!(keys.open(b"a", &first).unwrap(), b"first");
        let again = DataKeys::load(f.keystore.clone(), &f.registry, 3)
            .await
            .unwrap();
        assert_eq!(again.wrapping_key_name(), new);
        assert_eq!(again.open(b"a", &first).unwrap(), b"first");
        assert_eq!(again.open(b"a", &second).unwrap(), b"second");
        // New data keys are wrapped under the new key, and it rotates again.
        assert_eq!(again.rotate(&f.registry, 4).await.unwrap(), 3);
        let (_, third, _) = again.rotate_kek(&f.registry).await.unwrap();
        assert_ne!(third, new);
        let last = DataKeys::load(f.keystore.clone(), &f.registry, 5)
            .await
            .unwrap();
        assert_eq!(last.current_version(), 3);
        assert_eq!(last.open(b"a", &second).unwrap(), b"second");
    }

    #[tokio::test]
    async fn keys_do_not_load_under_another_key_encryption_key_or_from_garbage() {
        let f = fixture();
        DataKeys::load(f.keystore.clone(), &f.registry, 1)
            .await
            .unwrap();
        let other = fixture();
        other
            .keystore
            .generate(&kek_name().unwrap(), KeyAlgorithm::Aes256Gcm)
            .unwrap();
        let stored = f.registry.config(DATA_KEYS_CONFIG).await.unwrap().unwrap();
        other
            .registry
            .put_config(DATA_KEYS_CONFIG, &stored)
            .await
            .unwrap();
        let err = DataKeys::load(other.keystore.clone(), &other.registry, 1)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("unwrapping data key 1"), "{err}");
        for garbage in [&b""[..], b"\x02", &stored[..stored.len() - 1]] {
            assert!(decode(garbage).is_err());
        }
        assert_eq!(encode(&decode(&stored).unwrap()), stored);
    }

    /// Data keys at the bound the stored list loads: a rotation past it is refused (it would
    /// store a list the next start can't load), what is stored loads, and once older ones are
    /// retired the hub rotates again: the loop's round retires also when its rotation was
    /// refused.
    #[tokio::test]
    async fn rotation_stops_at_the_bound_the_stored_list_loads_until_keys_are_retired() {
        let f = fixture();
        let keys = DataKeys::load(f.keystore.clone(), &f.registry, 1)
            .await
            .unwrap();
        // Up to the bound at once: as many rotations would each store the whole list.
        let max = u32::try_from(MAX_DATA_KEYS).unwrap();
        let kek = keys.kek().unwrap();
        {
            let mut held = keys.write();
            for version in 2..=max {
                let raw = [version.to_be_bytes(); 8].concat();
                let wrapped = f.keystore.encrypt(&kek, &raw, &wrap_aad(version)).unwrap();
                let key = Key {
                    cipher: cipher(&raw).unwrap(),
                    wrapped,
                    created_ms: 1,
                };
                held.by_version.insert(version, key);
            }
            held.latest = max;
        }
        f.registry
            .put_config(DATA_KEYS_CONFIG, &encode(&keys.snapshot()))
            .await
            .unwrap();
        let refused = keys.rotate(&f.registry, 2).await.unwrap_err().to_string();
        assert!(
            refused.contains("holds 65536, the most it keeps"),
            "{refused}"
        );
        assert_eq!(keys.current_version(), max);

        // What is stored loads at the next start; one key more would not.
        let again = DataKeys::load(f.keystore.clone(), &f.registry, 3)
            .await
            .unwrap();
        assert_eq!(again.status().len(), MAX_DATA_KEYS);
        let mut past = again.snapshot();
        let wrapped = past.keys[0].2.clone();
        past.keys.push((max + 1, 3, wrapped));
        assert!(decode(&encode(&past)).is_err());

        // The round whose rotation is refused retires what nothing needs; the next rotates.
        let auditor = crate::audit::Auditor::off();
        let in_use = |_: &DataKeys| Some(10);
        assert!(!rotation_round(&again, &f.registry, &auditor, &in_use, 4).await);
        assert_eq!(again.status().len(), MAX_DATA_KEYS - 9);
        assert_eq!(again.current_version(), max);
        assert!(rotation_round(&again, &f.registry, &auditor, &in_use, 5).await);
        assert_eq!(again.current_version(), max + 1);
        assert_eq!(
            DataKeys::load(f.keystore.clone(), &f.registry, 6)
                .await
                .unwrap()
                .current_version(),
            max + 1
        );
    }

    /// A round whose versions in use can't be told (`None`: a stream's first entry unreadable,
    /// streams kept but not configured) rotates and retires nothing.
    #[tokio::test]
    async fn a_round_retires_nothing_when_the_versions_in_use_can_not_be_told() {
        let f = fixture();
        let keys = DataKeys::load(f.keystore.clone(), &f.registry, 1)
            .await
            .unwrap();
        let old = keys.seal(b"a", b"old").unwrap();
        let auditor = crate::audit::Auditor::off();
        assert!(rotation_round(&keys, &f.registry, &auditor, &|_: &DataKeys| None, 2).await);
        assert_eq!(
            keys.status().iter().map(|k| k.version).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(keys.open(b"a", &old).unwrap(), b"old");
        // Told, it retires what nothing needs.
        assert!(
            rotation_round(
                &keys,
                &f.registry,
                &auditor,
                &|k: &DataKeys| Some(k.current_version()),
                3
            )
            .await
        );
        assert_eq!(
            keys.status().iter().map(|k| k.version).collect::<Vec<_>>(),
            [3]
        );
    }

    /// While the audit log is failed the loop's round neither rotates nor retires: nothing it
    /// would do is left unrecorded.
    #[tokio::test]
    async fn no_key_is_rotated_or_retired_while_the_audit_log_is_failed() {
        let f = fixture();
        let keys = DataKeys::load(f.keystore.clone(), &f.registry, 1)
            .await
            .unwrap();
        let audit_dir = f._dir.path().join("audit");
        let (auditor, writer) = crate::audit::Auditor::open(
            &crate::AuditConfig::new(audit_dir.clone()),
            "acme.internal",
            &f.keystore,
            &f.registry,
            Arc::default(),
        )
        .await
        .unwrap();
        let all = |_: &DataKeys| Some(u32::MAX);
        assert!(rotation_round(&keys, &f.registry, &auditor, &all, 2).await);
        assert_eq!(keys.status().len(), 1);
        assert_eq!(keys.current_version(), 2);

        crate::audit::fail_for_tests(&auditor, &audit_dir).await;
        assert!(auditor.check().is_err());
        assert!(!rotation_round(&keys, &f.registry, &auditor, &all, 3).await);
        assert_eq!(keys.current_version(), 2);
        assert_eq!(keys.status().len(), 1);
        auditor.close();
        assert!(writer.join().await.is_err());
    }
}
