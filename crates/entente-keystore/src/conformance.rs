//! The conformance suite: checks every [`KeyStore`] backend must pass, written against
//! `&dyn KeyStore` so each backend's tests call the same functions.
//!
//! Each check creates keys only under its own names (all starting with `conformance-`), removes
//! any left over from an interrupted run first, and deletes them again at the end, so the checks
//! can share one store and run in any order. A failed check panics, like an assertion.
//!
//! ```
//! # use entente_keystore::local::{Argon2Params, LocalKeyStore, Unlock};
//! # let tmp = tempfile::tempdir().unwrap();
//! # let unlock = Unlock::passphrase("pass");
//! # let store = LocalKeyStore::create(tmp.path(), &unlock, Argon2Params::danger_fast_for_tests())
//! #     .unwrap();
//! entente_keystore::conformance::run_all(&store);
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a failed check panics like an assertion"
)]

use crate::{KeyAlgorithm, KeyName, KeyStore, KeyStoreError};

const MESSAGE: &[u8] = b"entente conformance message";

/// Runs every check, in order.
pub fn run_all(store: &dyn KeyStore) {
    backend_is_named(store);
    generate_sign_verify(store);
    tampered_message_or_signature_fails(store);
    public_key_is_stable(store);
    generate_existing_fails(store);
    missing_key_is_not_found(store);
    list_and_delete(store);
    keys_are_independent(store);
    names_are_validated(store);
    concurrent_signing(store);
}

/// The backend has a short lowercase name.
pub fn backend_is_named(store: &dyn KeyStore) {
    let backend = store.backend();
    assert!(!backend.is_empty());
    assert!(
        backend
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    );
}

/// Both algorithms generate keys of the documented shape whose signatures verify.
pub fn generate_sign_verify(store: &dyn KeyStore) {
    for alg in KeyAlgorithm::ALL {
        let name = fresh(store, &format!("conformance-sign-{alg}"));
        let public = store.generate(&name, alg).unwrap();
        assert_eq!(public.algorithm, alg);
        let sig = store.sign(&name, MESSAGE).unwrap();
        match alg {
            KeyAlgorithm::EcdsaP256Sha256 => {
                assert_eq!(public.bytes.len(), 65, "uncompressed SEC1 point");
                assert_eq!(public.bytes[0], 0x04, "uncompressed SEC1 point");
                assert_eq!(sig[0], 0x30, "ASN.1 DER SEQUENCE");
                assert!((8..=72).contains(&sig.len()), "DER signature length");
            }
            KeyAlgorithm::Ed25519 => {
                assert_eq!(public.bytes.len(), 32);
                assert_eq!(sig.len(), 64);
            }
        }
        public.verify(MESSAGE, &sig).unwrap();
        // Signing the empty message works too.
        let empty_sig = store.sign(&name, b"").unwrap();
        public.verify(b"", &empty_sig).unwrap();
        store.delete(&name).unwrap();
    }
}

/// A changed message or signature does not verify.
pub fn tampered_message_or_signature_fails(store: &dyn KeyStore) {
    for alg in KeyAlgorithm::ALL {
        let name = fresh(store, &format!("conformance-tamper-{alg}"));
        let public = store.generate(&name, alg).unwrap();
        let sig = store.sign(&name, MESSAGE).unwrap();

        let mut msg = MESSAGE.to_vec();
        msg[0] ^= 1;
        assert_bad_signature(public.verify(&msg, &sig));
        assert_bad_signature(public.verify(&MESSAGE[1..], &sig));

        let mut bad_sig = sig.clone();
        let last = bad_sig.len() - 1;
        bad_sig[last] ^= 1;
        assert_bad_signature(public.verify(MESSAGE, &bad_sig));
        assert_bad_signature(public.verify(MESSAGE, &[]));

        let mut other = public.clone();
        other.algorithm = match alg {
            KeyAlgorithm::EcdsaP256Sha256 => KeyAlgorithm::Ed25519,
            KeyAlgorithm::Ed25519 => KeyAlgorithm::EcdsaP256Sha256,
        };
        assert_bad_signature(other.verify(MESSAGE, &sig));
        store.delete(&name).unwrap();
    }
}

/// `generate` and `public_key` agree, and signing does not change the key.
pub fn public_key_is_stable(store: &dyn KeyStore) {
    for alg in KeyAlgorithm::ALL {
        let name = fresh(store, &format!("conformance-stable-{alg}"));
        let generated = store.generate(&name, alg).unwrap();
        assert_eq!(store.public_key(&name).unwrap(), generated);
        for _ in 0..3 {
            let sig = store.sign(&name, MESSAGE).unwrap();
            generated.verify(MESSAGE, &sig).unwrap();
        }
        assert_eq!(store.public_key(&name).unwrap(), generated);
        store.delete(&name).unwrap();
    }
}

/// Generating over an existing name fails with `KeyExists` and leaves the key alone.
pub fn generate_existing_fails(store: &dyn KeyStore) {
    let name = fresh(store, "conformance-exists");
    let public = store.generate(&name, KeyAlgorithm::Ed25519).unwrap();
    for alg in KeyAlgorithm::ALL {
        match store.generate(&name, alg) {
            Err(KeyStoreError::KeyExists { name: n }) => assert_eq!(n, name.as_str()),
            other => panic!("expected KeyExists, got {other:?}"),
        }
    }
    assert_eq!(store.public_key(&name).unwrap(), public);
    let sig = store.sign(&name, MESSAGE).unwrap();
    public.verify(MESSAGE, &sig).unwrap();
    store.delete(&name).unwrap();
}

/// Every operation on a missing key fails with `KeyNotFound`.
pub fn missing_key_is_not_found(store: &dyn KeyStore) {
    let name = fresh(store, "conformance-missing");
    assert!(!store.contains(&name).unwrap());
    assert_not_found(store.public_key(&name), &name);
    assert_not_found(store.sign(&name, MESSAGE), &name);
    assert_not_found(store.delete(&name), &name);
    assert!(!listed(store, &name));
}

/// `list` shows keys with their algorithms until they are deleted; a deleted name can be reused
/// for a new, different key.
pub fn list_and_delete(store: &dyn KeyStore) {
    let ecdsa = fresh(store, "conformance-list-a");
    let ed25519 = fresh(store, "conformance-list-b");
    store
        .generate(&ecdsa, KeyAlgorithm::EcdsaP256Sha256)
        .unwrap();
    let old = store.generate(&ed25519, KeyAlgorithm::Ed25519).unwrap();

    let list = store.list().unwrap();
    assert!(list.contains(&(ecdsa.clone(), KeyAlgorithm::EcdsaP256Sha256)));
    assert!(list.contains(&(ed25519.clone(), KeyAlgorithm::Ed25519)));
    let names: Vec<&KeyName> = list.iter().map(|(name, _)| name).collect();
    assert!(names.is_sorted(), "list is sorted by name");
    assert!(store.contains(&ecdsa).unwrap());

    store.delete(&ed25519).unwrap();
    assert!(!store.contains(&ed25519).unwrap());
    assert!(!listed(store, &ed25519));
    assert!(listed(store, &ecdsa));
    assert_not_found(store.sign(&ed25519, MESSAGE), &ed25519);
    assert_not_found(store.public_key(&ed25519), &ed25519);
    assert_not_found(store.delete(&ed25519), &ed25519);

    let new = store.generate(&ed25519, KeyAlgorithm::Ed25519).unwrap();
    assert_ne!(new, old, "a regenerated key is a new key");
    let sig = store.sign(&ed25519, MESSAGE).unwrap();
    new.verify(MESSAGE, &sig).unwrap();
    assert_bad_signature(old.verify(MESSAGE, &sig));

    store.delete(&ecdsa).unwrap();
    store.delete(&ed25519).unwrap();
    assert!(!listed(store, &ecdsa));
}

/// Two keys of the same algorithm differ, and one's signature does not verify under the other.
pub fn keys_are_independent(store: &dyn KeyStore) {
    for alg in KeyAlgorithm::ALL {
        let a = fresh(store, &format!("conformance-indep-a-{alg}"));
        let b = fresh(store, &format!("conformance-indep-b-{alg}"));
        let public_a = store.generate(&a, alg).unwrap();
        let public_b = store.generate(&b, alg).unwrap();
        assert_ne!(public_a, public_b);
        let sig_a = store.sign(&a, MESSAGE).unwrap();
        assert_bad_signature(public_b.verify(MESSAGE, &sig_a));
        store.delete(&a).unwrap();
        store.delete(&b).unwrap();
    }
}

/// Names are checked before they reach the store, and the longest valid name works.
pub fn names_are_validated(store: &dyn KeyStore) {
    let too_long = "a".repeat(KeyName::MAX_LEN + 1);
    let invalid = [
        "",
        ".hidden",
        "..",
        "a/b",
        "../up",
        "UPPER",
        "with space",
        "tab\t",
        "nul\0",
        "ünïcode",
        too_long.as_str(),
    ];
    for name in invalid {
        assert!(
            matches!(
                KeyName::new(name),
                Err(KeyStoreError::InvalidKeyName { .. })
            ),
            "{name:?} must be rejected"
        );
    }
    for name in ["a", "ca-root", "audit.v1", "x_9", "0", "a."] {
        assert_eq!(KeyName::new(name).unwrap().as_str(), name);
    }

    let prefix = "conformance-long-";
    let longest = format!("{prefix}{}", "z".repeat(KeyName::MAX_LEN - prefix.len()));
    let name = fresh(store, &longest);
    assert_eq!(name.as_str().len(), KeyName::MAX_LEN);
    let public = store.generate(&name, KeyAlgorithm::Ed25519).unwrap();
    public
        .verify(MESSAGE, &store.sign(&name, MESSAGE).unwrap())
        .unwrap();
    store.delete(&name).unwrap();
}

/// The store can be shared between threads that sign at once.
pub fn concurrent_signing(store: &dyn KeyStore) {
    let name = fresh(store, "conformance-threads");
    let public = store
        .generate(&name, KeyAlgorithm::EcdsaP256Sha256)
        .unwrap();
    std::thread::scope(|scope| {
        for i in 0..4u8 {
            let (name, public) = (&name, &public);
            scope.spawn(move || {
                for j in 0..16u8 {
                    let msg = [i, j];
                    let sig = store.sign(name, &msg).unwrap();
                    public.verify(&msg, &sig).unwrap();
                }
            });
        }
    });
    store.delete(&name).unwrap();
}

// === helpers ===

/// A valid name, with any key left under it by an interrupted run removed.
fn fresh(store: &dyn KeyStore, name: &str) -> KeyName {
    let name = KeyName::new(name).unwrap();
    if store.contains(&name).unwrap() {
        store.delete(&name).unwrap();
    }
    name
}

fn listed(store: &dyn KeyStore, name: &KeyName) -> bool {
    store.list().unwrap().iter().any(|(n, _)| n == name)
}

fn assert_bad_signature(result: Result<(), KeyStoreError>) {
    match result {
        Err(KeyStoreError::BadSignature) => {}
        other => panic!("expected BadSignature, got {other:?}"),
    }
}

fn assert_not_found<T: std::fmt::Debug>(result: Result<T, KeyStoreError>, name: &KeyName) {
    match result {
        Err(KeyStoreError::KeyNotFound { name: n }) => assert_eq!(n, name.as_str()),
        other => panic!("expected KeyNotFound for `{name}`, got {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    //! The suite against the local backend; `tests/local.rs` runs it again across reopening.

    use crate::local::{Argon2Params, LocalKeyStore, Unlock};

    fn store() -> (tempfile::TempDir, LocalKeyStore) {
        let tmp = tempfile::tempdir().unwrap();
        let unlock = Unlock::passphrase("conformance");
        let store =
            LocalKeyStore::create(tmp.path(), &unlock, Argon2Params::danger_fast_for_tests())
                .unwrap();
        (tmp, store)
    }

    macro_rules! conformance_tests {
        ($($check:ident),* $(,)?) => {$(
            #[test]
            fn $check() {
                let (_tmp, store) = store();
                super::$check(&store);
            }
        )*};
    }

    conformance_tests!(
        backend_is_named,
        generate_sign_verify,
        tampered_message_or_signature_fails,
        public_key_is_stable,
        generate_existing_fails,
        missing_key_is_not_found,
        list_and_delete,
        keys_are_independent,
        names_are_validated,
        concurrent_signing,
        run_all,
    );

    #[test]
    fn run_all_twice_on_one_store() {
        let (_tmp, store) = store();
        super::run_all(&store);
        super::run_all(&store);
        assert!(crate::KeyStore::list(&store).unwrap().is_empty());
    }
}
