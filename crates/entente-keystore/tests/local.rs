//! Tests of the local backend through its public API and its documented on-disk format.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use entente_keystore::local::{Argon2Params, LocalKeyStore, Unlock};
use entente_keystore::{KeyAlgorithm, KeyName, KeyStore, KeyStoreError, conformance};
use zeroize::Zeroizing;

const PASSPHRASE: &str = "correct horse battery staple";
const HEX_KEY: &str = "8f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

fn passphrase() -> Unlock {
    Unlock::passphrase(PASSPHRASE)
}

fn raw_key() -> Unlock {
    let mut key = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(HEX_KEY, key.as_mut_slice()).unwrap();
    Unlock::Key(key)
}

fn fast() -> Argon2Params {
    Argon2Params::danger_fast_for_tests()
}

/// A fresh store directory (not yet created) inside a temporary directory.
fn store_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keystore");
    (tmp, dir)
}

fn name(s: &str) -> KeyName {
    KeyName::new(s).unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Rewrites `path` (keeping mode 0600) with `edit` applied to its JSON.
fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut json: serde_json::Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    edit(&mut json);
    fs::write(path, serde_json::to_vec(&json).unwrap()).unwrap();
    set_mode(path, 0o600);
}

fn assert_corrupt(result: Result<LocalKeyStore, KeyStoreError>, file: &Path) {
    match result {
        Err(KeyStoreError::Corrupt { path, .. }) => assert_eq!(path, file),
        other => panic!("expected Corrupt for {}, got {other:?}", file.display()),
    }
}

// === the conformance suite ===

#[test]
fn conformance_with_passphrase_and_after_reopening() {
    let (_tmp, dir) = store_dir();
    let store = LocalKeyStore::create(&dir, &passphrase(), fast()).unwrap();
    conformance::run_all(&store);
    drop(store);
    let store = LocalKeyStore::open(&dir, &passphrase()).unwrap();
    conformance::run_all(&store);
}

#[test]
fn conformance_with_raw_key() {
    let (_tmp, dir) = store_dir();
    let store = LocalKeyStore::create(&dir, &raw_key(), fast()).unwrap();
    assert_eq!(store.backend(), "local");
    conformance::run_all(&store);
}

// === persistence and unlocking ===

#[test]
fn reopen_signs_with_persisted_keys() {
    let (_tmp, dir) = store_dir();
    let (ca, audit) = (name("ca-root"), name("audit"));
    let (ca_public, audit_public) = {
        let store = LocalKeyStore::create(&dir, &passphrase(), fast()).unwrap();
        (
            store.generate(&ca, KeyAlgorithm::EcdsaP256Sha256).unwrap(),
            store.generate(&audit, KeyAlgorithm::Ed25519).unwrap(),
        )
    };

    let store = LocalKeyStore::open(&dir, &passphrase()).unwrap();
    assert_eq!(
        store.list().unwrap(),
        vec![
            (audit.clone(), KeyAlgorithm::Ed25519),
            (ca.clone(), KeyAlgorithm::EcdsaP256Sha256)
        ]
    );
    assert_eq!(store.public_key(&ca).unwrap(), ca_public);
    assert_eq!(store.public_key(&audit).unwrap(), audit_public);
    ca_public
        .verify(b"cert", &store.sign(&ca, b"cert").unwrap())
        .unwrap();
    audit_public
        .verify(b"checkpoint", &store.sign(&audit, b"checkpoint").unwrap())
        .unwrap();

    // A deleted key stays deleted after reopening.
    store.delete(&ca).unwrap();
    assert!(!store.key_path(&ca).exists());
    drop(store);
    let store = LocalKeyStore::open(&dir, &passphrase()).unwrap();
    assert_eq!(store.list().unwrap(), vec![(audit, KeyAlgorithm::Ed25519)]);
}

#[test]
fn aes_key_survives_reopening() {
    let (_tmp, dir) = store_dir();
    let kek = name("data-kek");
    let sealed = {
        let store = LocalKeyStore::create(&dir, &passphrase(), fast()).unwrap();
        let public = store.generate(&kek, KeyAlgorithm::Aes256Gcm).unwrap();
        assert_eq!(public.algorithm, KeyAlgorithm::Aes256Gcm);
        assert!(public.bytes.is_empty());
        store.encrypt(&kek, b"data key", b"blob-1").unwrap()
    };

    let store = LocalKeyStore::open(&dir, &passphrase()).unwrap();
    assert_eq!(
        store.list().unwrap(),
        vec![(kek.clone(), KeyAlgorithm::Aes256Gcm)]
    );
    assert!(store.public_key(&kek).unwrap().bytes.is_empty());
    assert_eq!(
        *store.decrypt(&kek, &sealed, b"blob-1").unwrap(),
        b"data key"
    );
    assert!(matches!(
        store.decrypt(&kek, &sealed, b"blob-2"),
        Err(KeyStoreError::Decrypt)
    ));
    // And the other way round: what the reopened store seals, the next instance opens.
    let sealed_again = store.encrypt(&kek, b"second", b"").unwrap();
    drop(store);
    let store = LocalKeyStore::open(&dir, &passphrase()).unwrap();
    assert_eq!(*store.decrypt(&kek, &sealed_again, b"").unwrap(), b"second");
    assert_eq!(
        *store.decrypt(&kek, &sealed, b"blob-1").unwrap(),
        b"data key"
    );

    // A key of the same name in another store is another key.
    let (_tmp2, other_dir) = store_dir();
    let other = LocalKeyStore::create(&other_dir, &passphrase(), fast()).unwrap();
    other.generate(&kek, KeyAlgorithm::Aes256Gcm).unwrap();
    assert!(matches!(
        other.decrypt(&kek, &sealed, b"blob-1"),
        Err(KeyStoreError::Decrypt)
    ));
}

#[test]
fn aes_key_survives_reopening_with_a_raw_key() {
    let (_tmp, dir) = store_dir();
    let kek = name("audit-hmac-kek");
    let store = LocalKeyStore::create(&dir, &raw_key(), fast()).unwrap();
    store.generate(&kek, KeyAlgorithm::Aes256Gcm).unwrap();
    let sealed = store.encrypt(&kek, &[7; 32], b"audit").unwrap();
    drop(store);
    let store = LocalKeyStore::open(&dir, &raw_key()).unwrap();
    assert_eq!(*store.decrypt(&kek, &sealed, b"audit").unwrap(), [7; 32]);
}

#[test]
fn wrong_passphrase_is_refused() {
    let (_tmp, dir) = store_dir();
    LocalKeyStore::create(&dir, &passphrase(), fast())
        .unwrap()
        .generate(&name("k"), KeyAlgorithm::Ed25519)
        .unwrap();
    let err =
        LocalKeyStore::open(&dir, &Unlock::passphrase("Correct horse battery staple")).unwrap_err();
    assert!(matches!(err, KeyStoreError::WrongPassphrase), "{err:?}");
    assert_eq!(err.to_string(), "wrong passphrase or key for the keystore");
}

#[test]
fn wrong_passphrase_is_detected_before_reading_keys() {
    let (_tmp, dir) = store_dir();
    let store = LocalKeyStore::create(&dir, &passphrase(), fast()).unwrap();
    store.generate(&name("k"), KeyAlgorithm::Ed25519).unwrap();
    // A damaged key file would make a right passphrase fail with Corrupt...
    fs::write(store.key_path(&name("k")), b"garbage").unwrap();
    // ...but a wrong one is reported first.
    let err = LocalKeyStore::open(&dir, &Unlock::passphrase("wrong")).unwrap_err();
    assert!(matches!(err, KeyStoreError::WrongPassphrase), "{err:?}");
}

#[test]
fn empty_passphrase_is_refused() {
    let (_tmp, dir) = store_dir();
    let err = LocalKeyStore::create(&dir, &Unlock::passphrase(""), fast()).unwrap_err();
    assert!(matches!(err, KeyStoreError::Unlock(_)), "{err:?}");
    assert!(!dir.exists());
}

#[test]
fn short_passphrase_is_refused_for_a_new_store() {
    let (_tmp, dir) = store_dir();
    // Characters are counted, not bytes: eleven two-byte characters are too few.
    for short in ["eleven char", "ééééééééééé"] {
        let err = LocalKeyStore::create(&dir, &Unlock::passphrase(short), fast()).unwrap_err();
        let KeyStoreError::Unlock(message) = &err else {
            panic!("{err:?}")
        };
        assert!(message.contains("at least 12 characters"), "{message}");
        assert!(!message.contains(short), "{message}");
        assert!(!dir.exists());
        let err =
            LocalKeyStore::open_or_create(&dir, &Unlock::passphrase(short), fast()).unwrap_err();
        assert!(matches!(err, KeyStoreError::Unlock(_)), "{err:?}");
    }
    LocalKeyStore::create(&dir, &Unlock::passphrase("éééééééééééé"), fast()).unwrap();
    LocalKeyStore::open(&dir, &Unlock::passphrase("éééééééééééé")).unwrap();
}

#[test]
fn raw_key_store_reopens_and_refuses_other_unlocks() {
    let (_tmp, dir) = store_dir();
    let k = name("k");
    let public = LocalKeyStore::create(&dir, &raw_key(), fast())
        .unwrap()
        .generate(&k, KeyAlgorithm::Ed25519)
        .unwrap();
    let metadata = read_json(&dir.join("keystore.json"));
    assert_eq!(metadata["kdf"], serde_json::json!({"alg": "raw"}));

    let store = LocalKeyStore::open(&dir, &raw_key()).unwrap();
    public.verify(b"m", &store.sign(&k, b"m").unwrap()).unwrap();

    let err = LocalKeyStore::open(&dir, &passphrase()).unwrap_err();
    assert!(matches!(err, KeyStoreError::Unlock(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "cannot unlock the keystore: this keystore was created with a raw 32-byte key \
         (`ENTENTE_KEYSTORE_KEY`), not a passphrase"
    );

    let err = LocalKeyStore::open(&dir, &Unlock::Key(Zeroizing::new([9; 32]))).unwrap_err();
    assert!(matches!(err, KeyStoreError::WrongPassphrase), "{err:?}");
}

#[test]
fn passphrase_store_refuses_a_raw_key() {
    let (_tmp, dir) = store_dir();
    LocalKeyStore::create(&dir, &passphrase(), fast()).unwrap();
    let err = LocalKeyStore::open(&dir, &raw_key()).unwrap_err();
    assert!(matches!(err, KeyStoreError::Unlock(_)), "{err:?}");
    assert!(err.to_string().contains("ENTENTE_KEYSTORE_PASSPHRASE"));
}

#[test]
fn real_argon2id_params_are_recorded_and_used() {
    let (_tmp, dir) = store_dir();
    let params = Argon2Params {
        m_cost_kib: 16 * 1024,
        t_cost: 2,
        p_cost: 2,
    };
    let k = name("ca-root");
    let public = LocalKeyStore::create(&dir, &passphrase(), params)
        .unwrap()
        .generate(&k, KeyAlgorithm::EcdsaP256Sha256)
        .unwrap();

    let kdf = &read_json(&dir.join("keystore.json"))["kdf"];
    assert_eq!(kdf["alg"], "argon2id");
    assert_eq!(kdf["m_cost_kib"], 16 * 1024);
    assert_eq!(kdf["t_cost"], 2);
    assert_eq!(kdf["p_cost"], 2);
    assert_eq!(kdf["salt"].as_str().unwrap().len(), 32);

    let store = LocalKeyStore::open(&dir, &passphrase()).unwrap();
    public.verify(b"m", &store.sign(&k, b"m").unwrap()).unwrap();
    let err = LocalKeyStore::open(&dir, &Unlock::passphrase("nope")).unwrap_err();
    assert!(matches!(err, KeyStoreError::WrongPassphrase));
}

#[test]
fn each_store_gets_its_own_salt() {
    let (_tmp, a) = store_dir();
    let (_tmp2, b) = store_dir();
    LocalKeyStore::create(&a, &passphrase(), fast()).unwrap();
    LocalKeyStore::create(&b, &passphrase(), fast()).unwrap();
    let salt = |dir: &Path| read_json(&dir.join("keystore.json"))["kdf"]["salt"].clone();
    assert_ne!(salt(&a), salt(&b));
}

// === creating ===

#[test]
fn create_over_an_existing_store_fails() {
    let (_tmp, dir) = store_dir();
    let store = LocalKeyStore::create(&dir, &passphrase(), fast()).unwrap();
    store.generate(&name("k"), KeyAlgorithm::Ed25519).unwrap();
    let before = fs::read(dir.join("keystore.json")).unwrap();

    for unlock in [passphrase(), raw_key()] {
        let err = LocalKeyStore::create(&dir, &unlock, fast()).unwrap_err();
        assert!(matches!(err, KeyStoreError::StoreExists { .. }), "{err:?}");
    }
    assert_eq!(fs::read(dir.join("keystore.json")).unwrap(), before);
    LocalKeyStore::open(&dir, &passphrase()).unwrap();
}

#[test]
fn create_refuses_orphaned_key_files() {
    let (_tmp, dir) = store_dir();
    let store = LocalKeyStore::create(&dir, &passphrase(), fast()).unwrap();
    store.generate(&name("k"), KeyAlgorithm::Ed25519).unwrap();
    fs::remove_file(dir.join("keystore.json")).unwrap();
    let err = LocalKeyStore::create(&dir, &passphrase(), fast()).unwrap_err();
    assert!(matches!(err, KeyStoreError::StoreExists { .. }), "{err:?}");
}

#[test]
fn open_or_create_creates_once() {
    let (_tmp, dir) = store_dir();
    let (store, created) = LocalKeyStore::open_or_create(&dir, &passphrase(), fast()).unwrap();
    assert!(created);
    let public = store.generate(&name("k"), KeyAlgorithm::Ed25519).unwrap();
    drop(store);

    let (store, created) = LocalKeyStore::open_or_create(&dir, &passphrase(), fast()).unwrap();
    assert!(!created);
    assert_eq!(store.public_key(&name("k")).unwrap(), public);

    let err = LocalKeyStore::open_or_create(&dir, &Unlock::passphrase("x"), fast()).unwrap_err();
    assert!(matches!(err, KeyStoreError::WrongPassphrase));
}

#[test]
fn open_without_a_store_is_not_found() {
    let (_tmp, dir) = store_dir();
    let err = LocalKeyStore::open(&dir, &passphrase()).unwrap_err();
    assert!(
        matches!(err, KeyStoreError::StoreNotFound { .. }),
        "{err:?}"
    );
    assert!(!dir.exists(), "open creates nothing");
}

#[test]
fn invalid_params_are_refused() {
    let (_tmp, dir) = store_dir();
    let params = Argon2Params {
        m_cost_kib: 1,
        t_cost: 0,
        p_cost: 1,
    };
    let err = LocalKeyStore::create(&dir, &passphrase(), params).unwrap_err();
    assert!(matches!(err, KeyStoreError::InvalidParams(_)), "{err:?}");
}

// === files and permissions ===

#[test]
fn files_are_0600_and_directories_0700() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nested").join("keystore");
    let store = LocalKeyStore::create(&dir, &passphrase(), fast()).unwrap();
    for alg in KeyAlgorithm::ALL {
        store.generate(&name(alg.as_str()), alg).unwrap();
    }
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&tmp.path().join("nested")), 0o700);
    assert_eq!(mode(&dir.join("keys")), 0o700);
    assert_eq!(mode(&dir.join("keystore.json")), 0o600);
    let mut entries: Vec<String> = fs::read_dir(dir.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        ["aes256-gcm.key", "ecdsa-p256-sha256.key", "ed25519.key"],
        "no temp files left"
    );
    for entry in entries {
        assert_eq!(mode(&dir.join("keys").join(entry)), 0o600);
    }
}

#[test]
fn key_file_has_the_documented_shape() {
    let (_tmp, dir) = store_dir();
    let store = LocalKeyStore::create(&dir, &passphrase(), fast()).unwrap();
    let k = name("ca.root");
    store.generate(&k, KeyAlgorithm::EcdsaP256Sha256).unwrap();
    let path = dir.join("keys").join("ca.root.key");
    assert_eq!(store.key_path(&k), path);
    let json = read_json(&path);
    let obj = json.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["algorithm", "ciphertext", "nonce", "version"]);
    assert_eq!(json["version"], 1);
    assert_eq!(json["algorithm"], "ecdsa-p256-sha256");
    assert_eq!(json["nonce"].as_str().unwrap().len(), 24);

    let metadata = read_json(&dir.join("keystore.json"));
    assert_eq!(metadata["version"], 1);
    assert_eq!(metadata["check"]["nonce"].as_str().unwrap().len(), 24);
    // "entente-keystore check v1" (25 bytes) plus the 16-byte tag, hex-encoded.
    assert_eq!(
        metadata["check"]["ciphertext"].as_str().unwrap().len(),
        2 * (25 + 16)
    );
}

#[test]
fn tampered_key_file_is_corrupt() {
    let (_tmp, dir) = store_dir();
    let store = LocalKeyStore::create(&dir, &passphrase(), fast()).unwrap();
    let path = store.key_path(&name("k"));
    store.generate(&name("k"), KeyAlgorithm::Ed25519).unwrap();
    drop(store);

    let original = fs::read(&path).unwrap();
    edit_json(&path, |json| {
        let ct = json["ciphertext"].as_str().unwrap();
        let flipped = if ct.starts_with('0') { "1" } else { "0" };
        json["ciphertext"] = format!("{flipped}{}", &ct[1..]).into();
    });
    assert_corrupt(LocalKeyStore::open(&dir, &passphrase()), &path);

    fs::write(&path, &original).unwrap();
    edit_json(&path, |json| {
        json["nonce"] = "000000000000000000000000".into()
    });
    assert_corrupt(LocalKeyStore::open(&dir, &passphrase()), &path);

    fs::write(&path, b"{ not json").unwrap();
    assert_corrupt(LocalKeyStore::open(&dir, &passphrase()), &path);

    fs::write(&path, &original).unwrap();
    LocalKeyStore::open(&dir, &passphrase()).unwrap();
}

#[test]
fn aes_key_file_has_the_documented_shape() {
    let (_tmp, dir) = store_dir();
    let store = LocalKeyStore::create(&dir, &passphrase(), fast()).unwrap();
    let k = name("data-kek");
    store.generate(&k, KeyAlgorithm::Aes256Gcm).unwrap();
    let json = read_json(&store.key_path(&k));
    assert_eq!(json["version"], 1);
    assert_eq!(json["algorithm"], "aes256-gcm");
    assert_eq!(json["nonce"].as_str().unwrap().len(), 24);
    // The 32 raw key bytes plus the 16-byte tag, hex-encoded.
    assert_eq!(json["ciphertext"].as_str().unwrap().len(), 2 * (32 + 16));
    assert_eq!(mode(&store.key_path(&k)), 0o600);
}

#[test]
fn tampered_aes_key_file_is_corrupt() {
    let (_tmp, dir) = store_dir();
    let store = LocalKeyStore::create(&dir, &passphrase(), fast()).unwrap();
    let kek = name("kek");
    let path = store.key_path(&kek);
    store.generate(&kek, KeyAlgorithm::Aes256Gcm).unwrap();
    let sealed = store.encrypt(&kek, b"data key", b"").unwrap();
    drop(store);

    let original = fs::read(&path).unwrap();
    // Every nibble of the ciphertext (key bytes and tag) and of the nonce matters.
    let ct_len = read_json(&path)["ciphertext"].as_str().unwrap().len();
    for field in ["ciphertext", "nonce"] {
        let len = if field == "nonce" { 24 } else { ct_len };
        for i in 0..len {
            fs::write(&path, &original).unwrap();
            edit_json(&path, |json| {
                let hex_str = json[field].as_str().unwrap();
                let c = &hex_str[i..=i];
                let flipped = if c == "0" { "1" } else { "0" };
                json[field] = format!("{}{flipped}{}", &hex_str[..i], &hex_str[i + 1..]).into();
            });
            assert_corrupt(LocalKeyStore::open(&dir, &passphrase()), &path);
        }
    }

    // An AES key relabelled as a signing key, and back, is corrupt.
    for alg in ["ed25519", "ecdsa-p256-sha256"] {
        fs::write(&path, &original).unwrap();
        edit_json(&path, |json| json["algorithm"] = alg.into());
        assert_corrupt(LocalKeyStore::open(&dir, &passphrase()), &path);
    }

    fs::write(&path, &original).unwrap();
    let store = LocalKeyStore::open(&dir, &passphrase()).unwrap();
    assert_eq!(*store.decrypt(&kek, &sealed, b"").unwrap(), b"data key");
}

#[test]
fn signing_key_relabelled_as_aes_is_corrupt() {
    let (_tmp, dir) = store_dir();
    let store = LocalKeyStore::create(&dir, &passphrase(), fast()).unwrap();
    let path = store.key_path(&name("k"));
    store.generate(&name("k"), KeyAlgorithm::Ed25519).unwrap();
    drop(store);
    edit_json(&path, |json| json["algorithm"] = "aes256-gcm".into());
    assert_corrupt(LocalKeyStore::open(&dir, &passphrase()), &path);
}

#[test]
fn changed_algorithm_is_corrupt() {
    let (_tmp, dir) = store_dir();
    let store = LocalKeyStore::create(&dir, &passphrase(), fast()).unwrap();
    let path = store.key_path(&name("k"));
    store.generate(&name("k"), KeyAlgorithm::Ed25519).unwrap();
    drop(store);
    edit_json(&path, |json| json["algorithm"] = "ecdsa-p256-sha256".into());
    assert_corrupt(LocalKeyStore::open(&dir, &passphrase()), &path);
    edit_json(&path, |json| json["algorithm"] = "rsa".into());
    assert_corrupt(LocalKeyStore::open(&dir, &passphrase()), &path);
}

#[test]
fn renamed_key_file_is_corrupt() {
    let (_tmp, dir) = store_dir();
    let store = LocalKeyStore::create(&dir, &passphrase(), fast()).unwrap();
    store
        .generate(&name("intermediate"), KeyAlgorithm::EcdsaP256Sha256)
        .unwrap();
    drop(store);
    let renamed = dir.join("keys").join("ca-root.key");
    fs::rename(dir.join("keys").join("intermediate.key"), &renamed).unwrap();
    assert_corrupt(LocalKeyStore::open(&dir, &passphrase()), &renamed);
}

#[test]
fn key_file_from_another_store_is_corrupt() {
    let (_tmp, a) = store_dir();
    let (_tmp2, b) = store_dir();
    let store_a = LocalKeyStore::create(&a, &passphrase(), fast()).unwrap();
    store_a.generate(&name("k"), KeyAlgorithm::Ed25519).unwrap();
    LocalKeyStore::create(&b, &passphrase(), fast()).unwrap();
    let copied = b.join("keys").join("k.key");
    fs::copy(store_a.key_path(&name("k")), &copied).unwrap();
    assert_corrupt(LocalKeyStore::open(&b, &passphrase()), &copied);
}

#[test]
fn unexpected_entries_in_the_key_directory() {
    let (_tmp, dir) = store_dir();
    LocalKeyStore::create(&dir, &passphrase(), fast()).unwrap();
    // Dot files (temporary files of interrupted writes) are ignored.
    let tmp_file = dir.join("keys").join(".k.key.0011223344556677.tmp");
    fs::write(&tmp_file, b"partial").unwrap();
    LocalKeyStore::open(&dir, &passphrase()).unwrap();
    // Anything else is not.
    for stray in ["notes.txt", "Upper.key", "k.key.bak"] {
        let path = dir.join("keys").join(stray);
        fs::write(&path, b"{}").unwrap();
        set_mode(&path, 0o600);
        assert_corrupt(LocalKeyStore::open(&dir, &passphrase()), &path);
        fs::remove_file(&path).unwrap();
    }
}

#[test]
fn tampered_metadata() {
    let (_tmp, dir) = store_dir();
    LocalKeyStore::create(&dir, &passphrase(), fast()).unwrap();
    let path = dir.join("keystore.json");
    let original = fs::read(&path).unwrap();

    // Changing the salt changes the derived key: indistinguishable from a wrong passphrase.
    edit_json(&path, |json| {
        json["kdf"]["salt"] = "00112233445566778899aabbccddeeff".into();
    });
    let err = LocalKeyStore::open(&dir, &passphrase()).unwrap_err();
    assert!(matches!(err, KeyStoreError::WrongPassphrase), "{err:?}");

    fs::write(&path, &original).unwrap();
    edit_json(&path, |json| json["kdf"]["alg"] = "scrypt".into());
    assert_corrupt(LocalKeyStore::open(&dir, &passphrase()), &path);

    fs::write(&path, &original).unwrap();
    edit_json(&path, |json| json["kdf"]["m_cost_kib"] = u32::MAX.into());
    assert_corrupt(LocalKeyStore::open(&dir, &passphrase()), &path);

    fs::write(&path, &original).unwrap();
    edit_json(&path, |json| json["version"] = 2.into());
    let err = LocalKeyStore::open(&dir, &passphrase()).unwrap_err();
    assert!(
        matches!(err, KeyStoreError::UnsupportedVersion { version: 2, .. }),
        "{err:?}"
    );
}

#[test]
fn group_readable_files_are_refused() {
    let (_tmp, dir) = store_dir();
    let store = LocalKeyStore::create(&dir, &passphrase(), fast()).unwrap();
    let key = store.key_path(&name("k"));
    store.generate(&name("k"), KeyAlgorithm::Ed25519).unwrap();
    drop(store);

    for (path, bad_mode) in [
        (key.clone(), 0o640),
        (key.clone(), 0o604),
        (key.clone(), 0o620),
        (dir.join("keystore.json"), 0o644),
    ] {
        set_mode(&path, bad_mode);
        match LocalKeyStore::open(&dir, &passphrase()) {
            Err(KeyStoreError::InsecurePermissions { path: p, mode }) => {
                assert_eq!(p, path);
                assert_eq!(mode, bad_mode);
            }
            other => panic!("expected InsecurePermissions, got {other:?}"),
        }
        set_mode(&path, 0o600);
    }
    // A file the owner alone can only read is fine.
    set_mode(&key, 0o400);
    LocalKeyStore::open(&dir, &passphrase()).unwrap();

    let err = {
        set_mode(&key, 0o644);
        LocalKeyStore::open(&dir, &passphrase()).unwrap_err()
    };
    assert!(err.to_string().contains("mode 0644"), "{err}");
}

#[test]
fn group_writable_directories_are_refused() {
    let (_tmp, dir) = store_dir();
    LocalKeyStore::create(&dir, &passphrase(), fast()).unwrap();
    for path in [dir.clone(), dir.join("keys")] {
        set_mode(&path, 0o770);
        let err = LocalKeyStore::open(&dir, &passphrase()).unwrap_err();
        assert!(
            matches!(err, KeyStoreError::InsecurePermissions { mode: 0o770, .. }),
            "{err:?}"
        );
        set_mode(&path, 0o700);
    }
}

#[test]
fn files_and_directories_another_user_owns_are_refused() {
    use std::os::unix::fs::{MetadataExt as _, chown};
    let (_tmp, dir) = store_dir();
    let store = LocalKeyStore::create(&dir, &passphrase(), fast()).unwrap();
    let key = store.key_path(&name("k"));
    store.generate(&name("k"), KeyAlgorithm::Ed25519).unwrap();
    drop(store);
    // Only root can give a file away; other users can't make the case.
    const SOMEONE: u32 = 54_321;
    if let Err(e) = chown(&key, Some(SOMEONE), None) {
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
        eprintln!("not run as root: ownership checks not exercised");
        return;
    }
    let us = std::fs::metadata(&dir).unwrap().uid();
    chown(&key, Some(us), None).unwrap();
    for path in [
        dir.clone(),
        dir.join("keys"),
        key,
        dir.join("keystore.json"),
    ] {
        chown(&path, Some(SOMEONE), None).unwrap();
        match LocalKeyStore::open(&dir, &passphrase()) {
            Err(KeyStoreError::ForeignOwner { path: p, owner }) => {
                assert_eq!((p, owner), (path.clone(), SOMEONE));
            }
            other => panic!("expected ForeignOwner for {path:?}, got {other:?}"),
        }
        chown(&path, Some(us), None).unwrap();
    }
    LocalKeyStore::open(&dir, &passphrase()).unwrap();
}

#[test]
fn symlinked_key_file_is_refused() {
    let (_tmp, dir) = store_dir();
    let store = LocalKeyStore::create(&dir, &passphrase(), fast()).unwrap();
    store.generate(&name("a"), KeyAlgorithm::Ed25519).unwrap();
    drop(store);
    let link = dir.join("keys").join("b.key");
    std::os::unix::fs::symlink(dir.join("keys").join("a.key"), &link).unwrap();
    assert_corrupt(LocalKeyStore::open(&dir, &passphrase()), &link);
}

// === secrets stay out of messages ===

#[test]
fn debug_output_holds_no_secret() {
    let (_tmp, dir) = store_dir();
    let unlock = passphrase();
    let store = LocalKeyStore::create(&dir, &unlock, fast()).unwrap();
    store
        .generate(&name("ca-root"), KeyAlgorithm::EcdsaP256Sha256)
        .unwrap();
    store
        .generate(&name("data-kek"), KeyAlgorithm::Aes256Gcm)
        .unwrap();

    let debug_unlock = format!("{unlock:?} {unlock:#?}");
    assert!(!debug_unlock.contains(PASSPHRASE));
    assert!(!debug_unlock.contains("horse"));
    assert!(debug_unlock.contains("redacted"));

    let key = raw_key();
    let debug_key = format!("{key:?} {key:#?}");
    assert!(!debug_key.to_lowercase().contains(&HEX_KEY[..16]));
    assert!(!debug_key.contains("143")); // first byte 0x8f in decimal
    assert!(debug_key.contains("redacted"));

    let debug_store = format!("{store:?} {store:#?}");
    assert!(!debug_store.contains(PASSPHRASE));
    assert!(debug_store.contains("ca-root"));
    assert!(debug_store.contains("data-kek"));
    assert!(debug_store.contains("argon2id"));
    // No byte arrays at all: neither the KEK nor key material.
    assert!(!debug_store.contains("[0"), "{debug_store}");

    let err = LocalKeyStore::open(&dir, &Unlock::passphrase("hunter2")).unwrap_err();
    assert!(!format!("{err} {err:?}").contains("hunter2"));
}

#[test]
fn encryption_errors_are_clear_and_hold_no_data() {
    let (_tmp, dir) = store_dir();
    let store = LocalKeyStore::create(&dir, &passphrase(), fast()).unwrap();
    let (kek, ca) = (name("data-kek"), name("ca-root"));
    store.generate(&kek, KeyAlgorithm::Aes256Gcm).unwrap();
    store.generate(&ca, KeyAlgorithm::EcdsaP256Sha256).unwrap();

    let err = store.sign(&kek, b"m").unwrap_err();
    assert_eq!(
        err.to_string(),
        "key `data-kek` has algorithm `aes256-gcm`; this operation needs a signing key"
    );
    let err = store.encrypt(&ca, b"m", b"").unwrap_err();
    assert_eq!(
        err.to_string(),
        "key `ca-root` has algorithm `ecdsa-p256-sha256`; this operation needs an `aes256-gcm` key"
    );

    let secret = b"top secret plaintext";
    let sealed = store.encrypt(&kek, secret, b"ctx").unwrap();
    let err = store.decrypt(&kek, &sealed, b"other ctx").unwrap_err();
    assert_eq!(
        err.to_string(),
        "decryption failed: the data was altered, or made under another key or context"
    );
    assert!(!format!("{err:?}").contains("secret"));

    let long = vec![b's'; entente_keystore::MAX_ENCRYPT_LEN + 1];
    let err = store.encrypt(&kek, &long, b"").unwrap_err();
    assert_eq!(
        err.to_string(),
        "the plaintext is 65537 bytes, more than the 65536 allowed"
    );
    let err = store.encrypt(&kek, b"", &long).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the aad is 65537 bytes, more than the 65536 allowed"
    );
    assert!(!format!("{err:?}").contains("sss"));
}

// === Unlock::from_env, in a child process with its own environment ===

/// Runs only as the child of `from_env_reads_the_environment`; reports what it sees.
#[test]
fn from_env_child() {
    let Ok(expected) = std::env::var("ENTENTE_KEYSTORE_TEST_EXPECT") else {
        return;
    };
    let seen = match Unlock::from_env() {
        Ok(None) => "none".to_owned(),
        Ok(Some(Unlock::Key(key))) => format!("key:{}", hex::encode(*key)),
        Ok(Some(Unlock::Passphrase(p))) => format!("passphrase:{}", p.as_str()),
        Err(KeyStoreError::Unlock(_)) => "error".to_owned(),
        Err(other) => format!("other:{other}"),
    };
    assert_eq!(seen, expected);
}

#[test]
fn from_env_reads_the_environment() {
    let cases: [(Option<&str>, Option<&str>, String); 5] = [
        (Some(HEX_KEY), Some("pw"), format!("key:{HEX_KEY}")),
        (None, Some("pw"), "passphrase:pw".to_owned()),
        (Some(""), Some("pw"), "passphrase:pw".to_owned()),
        (Some("not-hex"), Some("pw"), "error".to_owned()),
        (None, None, "none".to_owned()),
    ];
    for (key, passphrase, expected) in cases {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "from_env_child", "--test-threads=1"])
            .env("ENTENTE_KEYSTORE_TEST_EXPECT", &expected)
            .env_remove("ENTENTE_KEYSTORE_KEY")
            .env_remove("ENTENTE_KEYSTORE_PASSPHRASE");
        if let Some(key) = key {
            cmd.env("ENTENTE_KEYSTORE_KEY", key);
        }
        if let Some(passphrase) = passphrase {
            cmd.env("ENTENTE_KEYSTORE_PASSPHRASE", passphrase);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "case {expected}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
    }
}

#[test]
fn env_key_unlock_creates_and_opens() {
    let (_tmp, dir) = store_dir();
    let k = name("k");
    let public = LocalKeyStore::create(&dir, &raw_key(), Argon2Params::default())
        .unwrap()
        .generate(&k, KeyAlgorithm::EcdsaP256Sha256)
        .unwrap();
    let store = LocalKeyStore::open(&dir, &raw_key()).unwrap();
    public.verify(b"m", &store.sign(&k, b"m").unwrap()).unwrap();
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}
