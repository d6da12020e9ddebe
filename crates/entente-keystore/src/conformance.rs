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
//! # let unlock = Unlock::passphrase("conformance tests");
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

use crate::{KeyAlgorithm, KeyName, KeyStore, KeyStoreError, MAX_ENCRYPT_LEN};

const MESSAGE: &[u8] = b"entente conformance message";
const AAD: &[u8] = b"entente conformance aad";
/// What `encrypt` adds: a 12-byte nonce and a 16-byte tag.
const OVERHEAD: usize = 12 + 16;

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
    encrypt_decrypt_round_trip(store);
    tampered_sealed_data_fails(store);
    wrong_aad_or_key_fails(store);
    nonces_are_fresh(store);
    algorithms_are_enforced(store);
    encrypt_bounds(store);
    concurrent_encryption(store);
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

/// Both signature algorithms generate keys of the documented shape whose signatures verify.
pub fn generate_sign_verify(store: &dyn KeyStore) {
    for alg in signing_algorithms() {
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
            KeyAlgorithm::Aes256Gcm => unreachable!("not a signature algorithm"),
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
    for alg in signing_algorithms() {
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
            KeyAlgorithm::Aes256Gcm => unreachable!("not a signature algorithm"),
        };
        assert_bad_signature(other.verify(MESSAGE, &sig));
        other.algorithm = KeyAlgorithm::Aes256Gcm;
        assert!(matches!(
            other.verify(MESSAGE, &sig),
            Err(KeyStoreError::NoPublicKey { .. })
        ));
        store.delete(&name).unwrap();
    }
}

/// `generate` and `public_key` agree, and using the key does not change it.
pub fn public_key_is_stable(store: &dyn KeyStore) {
    for alg in KeyAlgorithm::ALL {
        let name = fresh(store, &format!("conformance-stable-{alg}"));
        let generated = store.generate(&name, alg).unwrap();
        assert_eq!(store.public_key(&name).unwrap(), generated);
        for _ in 0..3 {
            if alg.is_signing() {
                let sig = store.sign(&name, MESSAGE).unwrap();
                generated.verify(MESSAGE, &sig).unwrap();
            } else {
                let sealed = store.encrypt(&name, MESSAGE, AAD).unwrap();
                assert_eq!(*store.decrypt(&name, &sealed, AAD).unwrap(), MESSAGE);
            }
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

    // An existing AES-256-GCM key is not replaced either: it still opens what it sealed.
    let kek = fresh(store, "conformance-exists-aes");
    store.generate(&kek, KeyAlgorithm::Aes256Gcm).unwrap();
    let sealed = store.encrypt(&kek, MESSAGE, AAD).unwrap();
    for alg in KeyAlgorithm::ALL {
        match store.generate(&kek, alg) {
            Err(KeyStoreError::KeyExists { name: n }) => assert_eq!(n, kek.as_str()),
            other => panic!("expected KeyExists, got {other:?}"),
        }
    }
    assert_eq!(*store.decrypt(&kek, &sealed, AAD).unwrap(), MESSAGE);
    store.delete(&kek).unwrap();
}

/// Every operation on a missing key fails with `KeyNotFound`.
pub fn missing_key_is_not_found(store: &dyn KeyStore) {
    let name = fresh(store, "conformance-missing");
    assert!(!store.contains(&name).unwrap());
    assert_not_found(store.public_key(&name), &name);
    assert_not_found(store.sign(&name, MESSAGE), &name);
    assert_not_found(store.encrypt(&name, MESSAGE, AAD), &name);
    assert_not_found(store.decrypt(&name, &[0; OVERHEAD + 8], AAD), &name);
    assert_not_found(store.delete(&name), &name);
    assert!(!listed(store, &name));
}

/// `list` shows keys with their algorithms until they are deleted; a deleted name can be reused
/// for a new, different key.
pub fn list_and_delete(store: &dyn KeyStore) {
    let ecdsa = fresh(store, "conformance-list-a");
    let ed25519 = fresh(store, "conformance-list-b");
    let aes = fresh(store, "conformance-list-c");
    store
        .generate(&ecdsa, KeyAlgorithm::EcdsaP256Sha256)
        .unwrap();
    let old = store.generate(&ed25519, KeyAlgorithm::Ed25519).unwrap();
    store.generate(&aes, KeyAlgorithm::Aes256Gcm).unwrap();

    let list = store.list().unwrap();
    assert!(list.contains(&(ecdsa.clone(), KeyAlgorithm::EcdsaP256Sha256)));
    assert!(list.contains(&(ed25519.clone(), KeyAlgorithm::Ed25519)));
    assert!(list.contains(&(aes.clone(), KeyAlgorithm::Aes256Gcm)));
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

    // The same for an AES-256-GCM key: once deleted, what it sealed is lost, even to a new key
    // under the same name.
    let sealed = store.encrypt(&aes, MESSAGE, AAD).unwrap();
    store.delete(&aes).unwrap();
    assert!(!store.contains(&aes).unwrap());
    assert!(!listed(store, &aes));
    assert_not_found(store.encrypt(&aes, MESSAGE, AAD), &aes);
    assert_not_found(store.decrypt(&aes, &sealed, AAD), &aes);
    store.generate(&aes, KeyAlgorithm::Aes256Gcm).unwrap();
    assert_decrypt_fails(store.decrypt(&aes, &sealed, AAD));

    store.delete(&ecdsa).unwrap();
    store.delete(&ed25519).unwrap();
    store.delete(&aes).unwrap();
    assert!(!listed(store, &ecdsa));
}

/// Two keys of the same algorithm differ, and one's signature does not verify under the other.
pub fn keys_are_independent(store: &dyn KeyStore) {
    for alg in signing_algorithms() {
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

/// An AES-256-GCM key has no public part, and round-trips plaintexts and associated data of
/// every length from empty to [`MAX_ENCRYPT_LEN`], adding exactly a nonce and a tag.
pub fn encrypt_decrypt_round_trip(store: &dyn KeyStore) {
    let name = fresh(store, "conformance-aes-round-trip");
    let public = store.generate(&name, KeyAlgorithm::Aes256Gcm).unwrap();
    assert_eq!(public.algorithm, KeyAlgorithm::Aes256Gcm);
    assert!(
        public.bytes.is_empty(),
        "a symmetric key has no public part"
    );
    assert_eq!(store.public_key(&name).unwrap(), public);
    assert!(matches!(
        public.verify(MESSAGE, &[0; 64]),
        Err(KeyStoreError::NoPublicKey { .. })
    ));

    let data_key: Vec<u8> = (0..32).collect();
    let longest = vec![0xA5; MAX_ENCRYPT_LEN];
    let plaintexts: [&[u8]; 5] = [b"", b"x", MESSAGE, &data_key, &longest];
    let aads: [&[u8]; 3] = [b"", AAD, &longest];
    for plaintext in plaintexts {
        for aad in aads {
            let sealed = store.encrypt(&name, plaintext, aad).unwrap();
            assert_eq!(sealed.len(), plaintext.len() + OVERHEAD);
            // Long enough that a chance match is out of the question.
            if plaintext.len() >= 16 {
                assert!(
                    !sealed.windows(plaintext.len()).any(|w| w == plaintext),
                    "the plaintext does not appear in the sealed data"
                );
            }
            let opened = store.decrypt(&name, &sealed, aad).unwrap();
            assert_eq!(opened.as_slice(), plaintext);
        }
    }
    store.delete(&name).unwrap();
}

/// Flipping any single bit of sealed data, or cutting or extending it, makes it fail to decrypt.
pub fn tampered_sealed_data_fails(store: &dyn KeyStore) {
    let name = fresh(store, "conformance-aes-tamper");
    store.generate(&name, KeyAlgorithm::Aes256Gcm).unwrap();
    let sealed = store.encrypt(&name, b"data key", AAD).unwrap();
    for i in 0..sealed.len() {
        for bit in 0..8 {
            let mut bad = sealed.clone();
            bad[i] ^= 1 << bit;
            assert_decrypt_fails(store.decrypt(&name, &bad, AAD));
        }
    }
    assert_decrypt_fails(store.decrypt(&name, &sealed[..sealed.len() - 1], AAD));
    assert_decrypt_fails(store.decrypt(&name, &sealed[1..], AAD));
    assert_decrypt_fails(store.decrypt(&name, &[sealed.as_slice(), b"\0"].concat(), AAD));
    // The untouched data still opens.
    assert_eq!(*store.decrypt(&name, &sealed, AAD).unwrap(), b"data key");
    store.delete(&name).unwrap();
}

/// Sealed data opens only with the same associated data and under the same key.
pub fn wrong_aad_or_key_fails(store: &dyn KeyStore) {
    let a = fresh(store, "conformance-aes-key-a");
    let b = fresh(store, "conformance-aes-key-b");
    store.generate(&a, KeyAlgorithm::Aes256Gcm).unwrap();
    store.generate(&b, KeyAlgorithm::Aes256Gcm).unwrap();

    let sealed = store.encrypt(&a, MESSAGE, AAD).unwrap();
    let mut flipped_aad = AAD.to_vec();
    flipped_aad[0] ^= 1;
    let longer_aad = [AAD, b"\0"].concat();
    for aad in [&b""[..], &flipped_aad, &longer_aad, &AAD[..AAD.len() - 1]] {
        assert_decrypt_fails(store.decrypt(&a, &sealed, aad));
    }
    assert_decrypt_fails(store.decrypt(&b, &sealed, AAD));

    // Without associated data, the binding still holds the other way round.
    let sealed_no_aad = store.encrypt(&a, MESSAGE, b"").unwrap();
    assert_decrypt_fails(store.decrypt(&a, &sealed_no_aad, AAD));
    assert_decrypt_fails(store.decrypt(&b, &sealed_no_aad, b""));

    assert_eq!(*store.decrypt(&a, &sealed, AAD).unwrap(), MESSAGE);
    store.delete(&a).unwrap();
    store.delete(&b).unwrap();
}

/// Every encryption draws a fresh nonce: the same plaintext never seals to the same bytes.
pub fn nonces_are_fresh(store: &dyn KeyStore) {
    let name = fresh(store, "conformance-aes-nonces");
    store.generate(&name, KeyAlgorithm::Aes256Gcm).unwrap();
    let sealed: Vec<Vec<u8>> = (0..32)
        .map(|_| store.encrypt(&name, MESSAGE, AAD).unwrap())
        .collect();
    let mut nonces: Vec<&[u8]> = sealed.iter().map(|s| &s[..12]).collect();
    nonces.sort_unstable();
    nonces.dedup();
    assert_eq!(nonces.len(), sealed.len(), "nonces repeat");
    assert_ne!(sealed[0], sealed[1]);
    for s in &sealed {
        assert_eq!(*store.decrypt(&name, s, AAD).unwrap(), MESSAGE);
    }
    store.delete(&name).unwrap();
}

/// An AES-256-GCM key does not sign, and a signing key neither encrypts nor decrypts; both fail
/// with `WrongAlgorithm`, naming the key.
pub fn algorithms_are_enforced(store: &dyn KeyStore) {
    let kek = fresh(store, "conformance-alg-aes");
    store.generate(&kek, KeyAlgorithm::Aes256Gcm).unwrap();
    let sealed = store.encrypt(&kek, MESSAGE, AAD).unwrap();
    assert_wrong_algorithm(store.sign(&kek, MESSAGE), &kek, KeyAlgorithm::Aes256Gcm);

    for alg in signing_algorithms() {
        let name = fresh(store, &format!("conformance-alg-{alg}"));
        let public = store.generate(&name, alg).unwrap();
        assert_wrong_algorithm(store.encrypt(&name, MESSAGE, AAD), &name, alg);
        assert_wrong_algorithm(store.decrypt(&name, &sealed, AAD), &name, alg);
        // The refusals change nothing.
        public
            .verify(MESSAGE, &store.sign(&name, MESSAGE).unwrap())
            .unwrap();
        store.delete(&name).unwrap();
    }
    assert_eq!(*store.decrypt(&kek, &sealed, AAD).unwrap(), MESSAGE);
    store.delete(&kek).unwrap();
}

/// Plaintext and associated data longer than [`MAX_ENCRYPT_LEN`] are refused with `TooLong`,
/// and sealed data too short to hold a nonce and a tag fails with `Decrypt`.
pub fn encrypt_bounds(store: &dyn KeyStore) {
    let name = fresh(store, "conformance-aes-bounds");
    store.generate(&name, KeyAlgorithm::Aes256Gcm).unwrap();
    let too_long = vec![0u8; MAX_ENCRYPT_LEN + 1];

    assert_too_long(store.encrypt(&name, &too_long, AAD), MAX_ENCRYPT_LEN + 1);
    assert_too_long(
        store.encrypt(&name, MESSAGE, &too_long),
        MAX_ENCRYPT_LEN + 1,
    );
    let sealed = store.encrypt(&name, MESSAGE, AAD).unwrap();
    assert_too_long(
        store.decrypt(&name, &sealed, &too_long),
        MAX_ENCRYPT_LEN + 1,
    );
    let too_long_sealed = vec![0u8; MAX_ENCRYPT_LEN + OVERHEAD + 1];
    assert_too_long(
        store.decrypt(&name, &too_long_sealed, AAD),
        MAX_ENCRYPT_LEN + OVERHEAD + 1,
    );

    for len in 0..=OVERHEAD {
        // Up to 27 bytes can't hold a nonce and a tag; 28 zero bytes hold a wrong tag.
        assert_decrypt_fails(store.decrypt(&name, &vec![0u8; len], AAD));
        assert_decrypt_fails(store.decrypt(&name, &sealed[..len], AAD));
    }
    // The shortest sealed data is that of the empty plaintext.
    let empty = store.encrypt(&name, b"", AAD).unwrap();
    assert_eq!(empty.len(), OVERHEAD);
    assert!(store.decrypt(&name, &empty, AAD).unwrap().is_empty());
    store.delete(&name).unwrap();
}

/// The store can be shared between threads that encrypt and decrypt at once, with one key or
/// several.
pub fn concurrent_encryption(store: &dyn KeyStore) {
    let shared = fresh(store, "conformance-aes-threads");
    store.generate(&shared, KeyAlgorithm::Aes256Gcm).unwrap();
    let own: Vec<KeyName> = (0..4)
        .map(|i| fresh(store, &format!("conformance-aes-threads-{i}")))
        .collect();
    let sealed_before = store.encrypt(&shared, MESSAGE, AAD).unwrap();
    std::thread::scope(|scope| {
        for (i, own) in own.iter().enumerate() {
            let (shared, sealed_before) = (&shared, &sealed_before);
            scope.spawn(move || {
                store.generate(own, KeyAlgorithm::Aes256Gcm).unwrap();
                for j in 0..16u8 {
                    let msg = [i as u8, j];
                    let aad = [j, i as u8];
                    for name in [shared, own] {
                        let sealed = store.encrypt(name, &msg, &aad).unwrap();
                        assert_eq!(*store.decrypt(name, &sealed, &aad).unwrap(), msg);
                    }
                    assert_eq!(*store.decrypt(shared, sealed_before, AAD).unwrap(), MESSAGE);
                }
            });
        }
    });
    for name in own.iter().chain([&shared]) {
        store.delete(name).unwrap();
    }
}

// === helpers ===

fn signing_algorithms() -> impl Iterator<Item = KeyAlgorithm> {
    KeyAlgorithm::ALL.into_iter().filter(|alg| alg.is_signing())
}

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

fn assert_decrypt_fails(result: Result<zeroize::Zeroizing<Vec<u8>>, KeyStoreError>) {
    match result {
        Err(KeyStoreError::Decrypt) => {}
        Err(other) => panic!("expected Decrypt, got {other:?}"),
        Ok(_) => panic!("expected Decrypt, but the data decrypted"),
    }
}

fn assert_too_long<T: std::fmt::Debug>(result: Result<T, KeyStoreError>, len: usize) {
    match result {
        Err(KeyStoreError::TooLong {
            what,
            len: l,
            max: _,
        }) => {
            assert_eq!(l, len, "{what}");
            assert!(!what.is_empty());
        }
        other => panic!("expected TooLong, got {other:?}"),
    }
}

fn assert_wrong_algorithm<T: std::fmt::Debug>(
    result: Result<T, KeyStoreError>,
    name: &KeyName,
    algorithm: KeyAlgorithm,
) {
    let err = match result {
        Err(err @ KeyStoreError::WrongAlgorithm { .. }) => err,
        other => panic!("expected WrongAlgorithm for `{name}`, got {other:?}"),
    };
    if let KeyStoreError::WrongAlgorithm {
        name: n,
        algorithm: a,
        wanted,
    } = &err
    {
        assert_eq!(n, name.as_str());
        assert_eq!(*a, algorithm);
        assert!(!wanted.is_empty());
    }
    let msg = err.to_string();
    assert!(msg.contains(name.as_str()), "{msg}");
    assert!(msg.contains(algorithm.as_str()), "{msg}");
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
        let unlock = Unlock::passphrase("conformance tests");
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
        encrypt_decrypt_round_trip,
        tampered_sealed_data_fails,
        wrong_aad_or_key_fails,
        nonces_are_fresh,
        algorithms_are_enforced,
        encrypt_bounds,
        concurrent_encryption,
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
