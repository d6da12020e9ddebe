//! Pins the on-disk format: a store written once and committed under `tests/vectors/` must keep
//! opening, with the same keys. Regenerate (only for a deliberate format change, which also
//! bumps the format version) with
//! `cargo test -p entente-keystore --test format_v1 -- --ignored regenerate`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use entente_keystore::local::{Argon2Params, LocalKeyStore, Unlock};
use entente_keystore::{KeyAlgorithm, KeyName, KeyStore, PublicKey};
use serde_json::json;

const PASSPHRASE: &str = "entente test vector";
const MESSAGE: &[u8] = b"entente test vector message";
const AAD: &[u8] = b"entente test vector aad";

fn vector_dir() -> PathBuf {
    Path::new("tests/vectors/keystore-v1").to_path_buf()
}

fn expected_path() -> PathBuf {
    Path::new("tests/vectors/keystore-v1.expected.json").to_path_buf()
}

/// Copies the committed store to a private temporary directory (git does not keep modes).
fn private_copy(tmp: &Path) -> PathBuf {
    let dir = tmp.join("keystore");
    let keys = dir.join("keys");
    fs::create_dir_all(&keys).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(&keys, fs::Permissions::from_mode(0o700)).unwrap();
    let copy = |rel: &str| {
        let to = dir.join(rel);
        fs::copy(vector_dir().join(rel), &to).unwrap();
        fs::set_permissions(&to, fs::Permissions::from_mode(0o600)).unwrap();
    };
    copy("keystore.json");
    copy("keys/ca-root.key");
    copy("keys/audit.key");
    copy("keys/data-kek.key");
    dir
}

#[test]
fn committed_store_opens_with_its_keys() {
    let expected: serde_json::Value =
        serde_json::from_slice(&fs::read(expected_path()).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store =
        LocalKeyStore::open(&private_copy(tmp.path()), &Unlock::passphrase(PASSPHRASE)).unwrap();

    let (ca, audit, kek) = (
        KeyName::new("ca-root").unwrap(),
        KeyName::new("audit").unwrap(),
        KeyName::new("data-kek").unwrap(),
    );
    assert_eq!(
        store.list().unwrap(),
        vec![
            (audit.clone(), KeyAlgorithm::Ed25519),
            (ca.clone(), KeyAlgorithm::EcdsaP256Sha256),
            (kek.clone(), KeyAlgorithm::Aes256Gcm),
        ]
    );
    let public = |name: &KeyName| hex::encode(store.public_key(name).unwrap().bytes);
    assert_eq!(public(&ca), expected["ca-root"]["public_key"]);
    assert_eq!(public(&audit), expected["audit"]["public_key"]);

    // Ed25519 is deterministic: the same key signs the same message identically.
    assert_eq!(
        hex::encode(store.sign(&audit, MESSAGE).unwrap()),
        expected["audit"]["signature"]
    );
    let ca_public = PublicKey {
        algorithm: KeyAlgorithm::EcdsaP256Sha256,
        bytes: hex::decode(expected["ca-root"]["public_key"].as_str().unwrap()).unwrap(),
    };
    ca_public
        .verify(MESSAGE, &store.sign(&ca, MESSAGE).unwrap())
        .unwrap();

    // The AES-256-GCM key still opens what it sealed when the vector was made.
    let sealed = hex::decode(expected["data-kek"]["sealed"].as_str().unwrap()).unwrap();
    let aad = expected["data-kek"]["aad"].as_str().unwrap();
    assert_eq!(aad.as_bytes(), AAD);
    assert_eq!(*store.decrypt(&kek, &sealed, AAD).unwrap(), MESSAGE);
}

#[test]
#[ignore = "rewrites the committed test vector"]
fn regenerate() {
    let dir = vector_dir();
    if dir.exists() {
        fs::remove_dir_all(&dir).unwrap();
    }
    let store = LocalKeyStore::create(
        &dir,
        &Unlock::passphrase(PASSPHRASE),
        Argon2Params::danger_fast_for_tests(),
    )
    .unwrap();
    let ca = KeyName::new("ca-root").unwrap();
    let audit = KeyName::new("audit").unwrap();
    let kek = KeyName::new("data-kek").unwrap();
    let ca_public = store.generate(&ca, KeyAlgorithm::EcdsaP256Sha256).unwrap();
    let audit_public = store.generate(&audit, KeyAlgorithm::Ed25519).unwrap();
    store.generate(&kek, KeyAlgorithm::Aes256Gcm).unwrap();
    let expected = json!({
        "passphrase": PASSPHRASE,
        "message": String::from_utf8(MESSAGE.to_vec()).unwrap(),
        "ca-root": {
            "algorithm": KeyAlgorithm::EcdsaP256Sha256.as_str(),
            "public_key": hex::encode(&ca_public.bytes),
        },
        "audit": {
            "algorithm": KeyAlgorithm::Ed25519.as_str(),
            "public_key": hex::encode(&audit_public.bytes),
            "signature": hex::encode(store.sign(&audit, MESSAGE).unwrap()),
        },
        "data-kek": {
            "algorithm": KeyAlgorithm::Aes256Gcm.as_str(),
            "aad": String::from_utf8(AAD.to_vec()).unwrap(),
            "sealed": hex::encode(store.encrypt(&kek, MESSAGE, AAD).unwrap()),
        },
    });
    let mut bytes = serde_json::to_vec_pretty(&expected).unwrap();
    bytes.push(b'\n');
    fs::write(expected_path(), bytes).unwrap();
}
