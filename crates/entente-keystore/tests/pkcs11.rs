//! The `pkcs11` backend against real SoftHSM2 tokens.
//!
//! SoftHSM2 reads its configuration (`SOFTHSM2_CONF`, which names the token directory) once,
//! when the module is initialized, and PKCS#11 allows one initialization per process. Setting
//! the variable here would need `std::env::set_var`, which is `unsafe` in edition 2024 and which
//! the workspace forbids. So each test runs in two halves: the `#[test]` function makes a token
//! directory, a `softhsm2.conf` and the tokens it needs (with `softhsm2-util`), then runs this
//! test binary again, just that test, with `SOFTHSM2_CONF` set; in that child the same function
//! finds [`CHILD_ENV`] and runs its body. Every test has its own tokens and its own SoftHSM2, so
//! tests run in parallel.
//!
//! SoftHSM2 must be installed (`apt-get install softhsm2`; `scripts/test` does it). The module
//! is looked for at the Debian paths, or at `ENTENTE_TEST_PKCS11_MODULE`. Without it these tests
//! fail; they never skip.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::process::Command;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, ED25519, UnparsedPublicKey};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::{AuthPin, Ulong};
use entente_keystore::pkcs11::{Pkcs11Config, Pkcs11KeyStore};
use entente_keystore::{KeyAlgorithm, KeyName, KeyStore, KeyStoreError, conformance};
use zeroize::Zeroizing;

/// Set in the child process that runs a test's body.
const CHILD_ENV: &str = "ENTENTE_TEST_SOFTHSM_CHILD";
/// Overrides where the SoftHSM2 module is looked for.
const MODULE_OVERRIDE_ENV: &str = "ENTENTE_TEST_PKCS11_MODULE";
/// Where Debian puts the module (the first is a link to the second on amd64).
const MODULE_PATHS: [&str; 3] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
];
const INSTALL_HINT: &str = "the pkcs11 tests need SoftHSM2: install it with \
     `apt-get install softhsm2` (scripts/test does this), or point ENTENTE_TEST_PKCS11_MODULE \
     at libsofthsm2.so";

const PIN: &str = "entente-user-pin";
const SO_PIN: &str = "entente-so-pin";
const TOKEN: &str = "entente-test";

// === the conformance suite ===

#[test]
fn conformance_suite() {
    with_softhsm("conformance_suite", &[TOKEN], |hsm| {
        let store = hsm.open(TOKEN);
        assert_eq!(store.backend(), "pkcs11");
        conformance::run_all(&store);
        // Again on the same token: the checks clean up after themselves.
        conformance::run_all(&store);
        assert!(store.list().unwrap().is_empty());
    });
}

// === persistence ===

#[test]
fn keys_survive_closing_and_reopening() {
    with_softhsm("keys_survive_closing_and_reopening", &[TOKEN], |hsm| {
        let (ca, audit, kek) = (name("ca-root"), name("audit"), name("data-kek"));
        let store = hsm.open(TOKEN);
        let ca_public = store.generate(&ca, KeyAlgorithm::EcdsaP256Sha256).unwrap();
        let audit_public = store.generate(&audit, KeyAlgorithm::Ed25519).unwrap();
        store.generate(&kek, KeyAlgorithm::Aes256Gcm).unwrap();
        let sealed = store.encrypt(&kek, b"data key", b"blob-1").unwrap();
        drop(store);

        let store = hsm.open(TOKEN);
        assert_eq!(
            store.list().unwrap(),
            vec![
                (audit.clone(), KeyAlgorithm::Ed25519),
                (ca.clone(), KeyAlgorithm::EcdsaP256Sha256),
                (kek.clone(), KeyAlgorithm::Aes256Gcm),
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
        assert_eq!(
            *store.decrypt(&kek, &sealed, b"blob-1").unwrap(),
            b"data key"
        );

        // A deleted key stays deleted.
        store.delete(&ca).unwrap();
        drop(store);
        let store = hsm.open(TOKEN);
        assert!(!store.contains(&ca).unwrap());
        assert_eq!(store.list().unwrap().len(), 2);
    });
}

#[test]
fn a_token_is_open_in_one_store_at_a_time() {
    with_softhsm("a_token_is_open_in_one_store_at_a_time", &[TOKEN], |hsm| {
        let store = hsm.open(TOKEN);
        let k = name("k");
        let public = store.generate(&k, KeyAlgorithm::Ed25519).unwrap();
        let err = Pkcs11KeyStore::open(hsm.config(TOKEN, PIN)).unwrap_err();
        assert!(
            matches!(err, KeyStoreError::Pkcs11 { op: "open", .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "pkcs#11 open failed: token `entente-test` is already open in this process; share \
             that store"
        );
        // The refusal did not disturb the open store.
        public.verify(b"m", &store.sign(&k, b"m").unwrap()).unwrap();
        drop(store);
        // Once it is dropped (its sessions closed, logged out), the token opens again, and
        // the PIN is checked again.
        let err = Pkcs11KeyStore::open(hsm.config(TOKEN, "not-the-pin")).unwrap_err();
        assert!(matches!(err, KeyStoreError::WrongPin { .. }), "{err:?}");
        let store = hsm.open(TOKEN);
        public.verify(b"m", &store.sign(&k, b"m").unwrap()).unwrap();
    });
}

// === opening: clear errors ===

#[test]
fn wrong_pin_is_refused_without_echoing_it() {
    with_softhsm("wrong_pin_is_refused_without_echoing_it", &[TOKEN], |hsm| {
        let wrong = "wrong-pin-1357";
        let err = Pkcs11KeyStore::open(hsm.config(TOKEN, wrong)).unwrap_err();
        assert!(
            matches!(&err, KeyStoreError::WrongPin { token } if token == TOKEN),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "wrong pin for pkcs#11 token `entente-test`"
        );
        assert!(!format!("{err} {err:?}").contains(wrong));
        // Too short for SoftHSM2 (4 to 255 bytes) is a wrong PIN as well.
        let err = Pkcs11KeyStore::open(hsm.config(TOKEN, "1")).unwrap_err();
        assert!(matches!(err, KeyStoreError::WrongPin { .. }), "{err:?}");
        // The right PIN still works afterwards.
        hsm.open(TOKEN);
    });
}

#[test]
fn an_empty_pin_is_refused_before_any_login() {
    with_softhsm(
        "an_empty_pin_is_refused_before_any_login",
        &[TOKEN],
        |hsm| {
            // A failed login leaves its mark: SoftHSM2 sets CKF_USER_PIN_COUNT_LOW.
            let count_low = || {
                let context = hsm.context();
                let slot = context
                    .get_slots_with_token()
                    .unwrap()
                    .into_iter()
                    .find(|slot| context.get_token_info(*slot).unwrap().label() == TOKEN)
                    .unwrap();
                context.get_token_info(slot).unwrap().user_pin_count_low()
            };
            assert!(!count_low());
            // As a restarting service with `ENTENTE_PKCS11_PIN=$PIN` and `PIN` unset would, again
            // and again.
            for _ in 0..3 {
                let err = Pkcs11KeyStore::open(hsm.config(TOKEN, "")).unwrap_err();
                assert!(matches!(err, KeyStoreError::Config(_)), "{err:?}");
                assert_eq!(
                    err.to_string(),
                    "invalid keystore configuration: the user pin for pkcs#11 token `entente-test` \
                 is empty (is `ENTENTE_PKCS11_PIN` set but empty?); no login is tried with an \
                 empty pin"
                );
            }
            // No login was tried: the token counts no failure.
            assert!(!count_low(), "an empty pin reached C_Login");
            // A wrong PIN does count (what the check above relies on), and the right one clears it.
            let err = Pkcs11KeyStore::open(hsm.config(TOKEN, "wrong-pin")).unwrap_err();
            assert!(matches!(err, KeyStoreError::WrongPin { .. }), "{err:?}");
            assert!(count_low());
            drop(hsm.open(TOKEN));
            assert!(!count_low());
        },
    );
}

#[test]
fn softhsm_never_locks_the_pin() {
    // SoftHSM2 2.6 counts no attempts: it only sets CKF_USER_PIN_COUNT_LOW, so the locked-PIN
    // path (`KeyStoreError::PinLocked`) can't be reached with it and is covered by the unit
    // tests of the login error mapping. This pins the behaviour the other tests rely on.
    with_softhsm("softhsm_never_locks_the_pin", &[TOKEN], |hsm| {
        for _ in 0..12 {
            let err = Pkcs11KeyStore::open(hsm.config(TOKEN, "wrong-pin")).unwrap_err();
            assert!(matches!(err, KeyStoreError::WrongPin { .. }), "{err:?}");
        }
        hsm.open(TOKEN);
    });
}

#[test]
fn uninitialized_user_pin_is_a_clear_error() {
    with_softhsm("uninitialized_user_pin_is_a_clear_error", &[], |hsm| {
        // A token with only an SO PIN, as C_InitToken leaves it.
        let context = hsm.context();
        let free = context
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|slot| !context.get_token_info(*slot).unwrap().token_initialized())
            .unwrap();
        context
            .init_token(free, &AuthPin::from(SO_PIN), "no-user-pin")
            .unwrap();
        let err = Pkcs11KeyStore::open(hsm.config("no-user-pin", PIN)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pkcs#11 login failed: the user pin of token `no-user-pin` is not initialized"
        );
    });
}

#[test]
fn missing_token_label_lists_the_labels_found() {
    let tokens = ["entente-a", "entente-b"];
    with_softhsm(
        "missing_token_label_lists_the_labels_found",
        &tokens,
        |hsm| {
            let err = Pkcs11KeyStore::open(hsm.config("entente-c", PIN)).unwrap_err();
            let KeyStoreError::TokenNotFound { label, found } = &err else {
                panic!("expected TokenNotFound, got {err:?}");
            };
            assert_eq!(label, "entente-c");
            let mut found = found.clone();
            found.sort();
            assert_eq!(found, ["entente-a", "entente-b"]);
            let msg = err.to_string();
            assert!(msg.starts_with("no pkcs#11 token labelled `entente-c`; tokens found: "));
            assert!(
                msg.contains("`entente-a`") && msg.contains("`entente-b`"),
                "{msg}"
            );
            // Labels match exactly.
            let err = Pkcs11KeyStore::open(hsm.config("entente", PIN)).unwrap_err();
            assert!(
                matches!(err, KeyStoreError::TokenNotFound { .. }),
                "{err:?}"
            );
            hsm.open("entente-b");
        },
    );
}

#[test]
fn a_missing_or_foreign_module_is_a_clear_error() {
    // These never reach SoftHSM2, so they run in this process.
    let tmp = tempfile::tempdir().unwrap();
    let config = |module: &Path| Pkcs11Config {
        module: module.to_owned(),
        token_label: TOKEN.to_owned(),
        pin: Zeroizing::new(PIN.to_owned()),
    };
    let module_error = |module: &Path| match Pkcs11KeyStore::open(config(module)) {
        Err(KeyStoreError::Pkcs11Module { path, detail }) => {
            assert_eq!(path, module);
            detail
        }
        other => panic!(
            "expected Pkcs11Module for {}, got {other:?}",
            module.display()
        ),
    };

    let missing = tmp.path().join("libnothere.so");
    assert_eq!(module_error(&missing), "no such file");
    let err = Pkcs11KeyStore::open(config(&missing)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot load the pkcs#11 module `{}`: no such file",
            missing.display()
        )
    );
    assert!(!format!("{err} {err:?}").contains(PIN));

    assert_eq!(module_error(tmp.path()), "not a file");

    let garbage = tmp.path().join("garbage.so");
    std::fs::write(&garbage, b"this is not a shared library").unwrap();
    let detail = module_error(&garbage);
    assert!(
        detail.starts_with("not a loadable shared library"),
        "{detail}"
    );

    // A real shared library that is not a PKCS#11 module: the C library.
    let libc = ["x86_64-linux-gnu", "aarch64-linux-gnu"]
        .iter()
        .flat_map(|arch| {
            [
                format!("/lib/{arch}/libc.so.6"),
                format!("/usr/lib/{arch}/libc.so.6"),
            ]
        })
        .map(PathBuf::from)
        .find(|path| path.exists())
        .expect("libc.so.6 at a Debian path");
    assert_eq!(
        module_error(&libc),
        "not a pkcs#11 module: it has no `C_GetFunctionList`"
    );
}

#[test]
fn config_from_env() {
    let module = module_path();
    let env = [
        ("ENTENTE_PKCS11_MODULE", module.display().to_string()),
        ("ENTENTE_PKCS11_TOKEN", TOKEN.to_owned()),
        ("ENTENTE_PKCS11_PIN", PIN.to_owned()),
    ];
    with_softhsm_env("config_from_env", &[TOKEN], &env, |hsm| {
        let config = Pkcs11Config::from_env().unwrap().unwrap();
        assert_eq!(config.module, hsm.module);
        assert_eq!(config.token_label, TOKEN);
        assert_eq!(config.pin.as_str(), PIN);
        let debug = format!("{config:?}");
        assert!(!debug.contains(PIN), "{debug}");
        let store = Pkcs11KeyStore::open(config).unwrap();
        assert_eq!(store.token_label(), TOKEN);
    });
}

// === keys on the token ===

#[test]
fn private_and_secret_keys_are_not_extractable() {
    with_softhsm(
        "private_and_secret_keys_are_not_extractable",
        &[TOKEN],
        |hsm| {
            let store = hsm.open(TOKEN);
            for alg in KeyAlgorithm::ALL {
                store.generate(&name(alg.as_str()), alg).unwrap();
            }
            // A session of our own: the store's login holds for it too.
            let session = hsm.session(TOKEN);
            for alg in KeyAlgorithm::ALL {
                let label = alg.as_str();
                let class = if alg.is_signing() {
                    ObjectClass::PRIVATE_KEY
                } else {
                    ObjectClass::SECRET_KEY
                };
                let key = find_one(&session, label, class);
                let attributes = session
                    .get_attributes(
                        key,
                        &[
                            AttributeType::Token,
                            AttributeType::Private,
                            AttributeType::Sensitive,
                            AttributeType::AlwaysSensitive,
                            AttributeType::Extractable,
                            AttributeType::NeverExtractable,
                            AttributeType::Local,
                            AttributeType::Id,
                            AttributeType::Value,
                        ],
                    )
                    .unwrap();
                for expected in [
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::AlwaysSensitive(true),
                    Attribute::Extractable(false),
                    Attribute::NeverExtractable(true),
                    Attribute::Local(true),
                    Attribute::Id(label.as_bytes().to_vec()),
                ] {
                    assert!(attributes.contains(&expected), "{label}: {expected:?}");
                }
                // The value is refused (CKR_ATTRIBUTE_SENSITIVE), so cryptoki leaves it out.
                assert!(
                    !attributes.iter().any(|a| matches!(a, Attribute::Value(_))),
                    "{label}: the key value came out"
                );
                // Neither can be turned back.
                for attribute in [Attribute::Extractable(true), Attribute::Sensitive(false)] {
                    let err = session
                        .update_attributes(key, std::slice::from_ref(&attribute))
                        .unwrap_err();
                    assert!(
                        matches!(err, CkError::Pkcs11(RvError::AttributeReadOnly, _)),
                        "{label}: setting {attribute:?}: {err:?}"
                    );
                }
                // Each key does its job only.
                let usage = session
                    .get_attributes(
                        key,
                        &[
                            AttributeType::Sign,
                            AttributeType::Derive,
                            AttributeType::Encrypt,
                            AttributeType::Wrap,
                        ],
                    )
                    .unwrap();
                assert!(
                    usage.contains(&Attribute::Sign(alg.is_signing())),
                    "{label}"
                );
                assert!(usage.contains(&Attribute::Derive(false)), "{label}");
                if !alg.is_signing() {
                    assert!(usage.contains(&Attribute::Encrypt(true)), "{label}");
                    assert!(usage.contains(&Attribute::Wrap(false)), "{label}");
                }
            }
            // The public keys are token objects seen only once logged in, and can't be
            // changed: no one can swap them without the PIN.
            for alg in [KeyAlgorithm::EcdsaP256Sha256, KeyAlgorithm::Ed25519] {
                let public = find_one(&session, alg.as_str(), ObjectClass::PUBLIC_KEY);
                let attributes = session
                    .get_attributes(
                        public,
                        &[
                            AttributeType::Token,
                            AttributeType::Private,
                            AttributeType::Modifiable,
                        ],
                    )
                    .unwrap();
                assert!(attributes.contains(&Attribute::Token(true)));
                assert!(attributes.contains(&Attribute::Private(true)));
                assert!(attributes.contains(&Attribute::Modifiable(false)));
            }
        },
    );
}

#[test]
fn signatures_verify_with_aws_lc_rs() {
    with_softhsm("signatures_verify_with_aws_lc_rs", &[TOKEN], |hsm| {
        let store = hsm.open(TOKEN);
        let (ecdsa, ed25519) = (name("ecdsa"), name("ed25519"));
        let ecdsa_public = store
            .generate(&ecdsa, KeyAlgorithm::EcdsaP256Sha256)
            .unwrap();
        let ed25519_public = store.generate(&ed25519, KeyAlgorithm::Ed25519).unwrap();
        assert_eq!(ecdsa_public.bytes.len(), 65);
        assert_eq!(ecdsa_public.bytes[0], 0x04);
        assert_eq!(ed25519_public.bytes.len(), 32);

        // The public key is CKA_EC_POINT without its OCTET STRING.
        let session = hsm.session(TOKEN);
        for (label, public) in [("ecdsa", &ecdsa_public), ("ed25519", &ed25519_public)] {
            let handle = find_one(&session, label, ObjectClass::PUBLIC_KEY);
            let point = session
                .get_attributes(handle, &[AttributeType::EcPoint])
                .unwrap();
            let wrapped = [&[0x04, public.bytes.len() as u8][..], &public.bytes].concat();
            assert_eq!(point, [Attribute::EcPoint(wrapped)], "{label}");
        }
        drop(session);

        let ecdsa_verifier = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &ecdsa_public.bytes);
        let ed25519_verifier = UnparsedPublicKey::new(&ED25519, &ed25519_public.bytes);
        for len in [0, 1, 31, 32, 33, 1000, 100_000] {
            let msg: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let sig = store.sign(&ecdsa, &msg).unwrap();
            ecdsa_verifier.verify(&msg, &sig).unwrap();
            assert_minimal_der_signature(&sig);
            let sig = store.sign(&ed25519, &msg).unwrap();
            assert_eq!(sig.len(), 64);
            ed25519_verifier.verify(&msg, &sig).unwrap();
        }
        // Ed25519 is deterministic; ECDSA draws a fresh nonce.
        assert_eq!(
            store.sign(&ed25519, b"m").unwrap(),
            store.sign(&ed25519, b"m").unwrap()
        );
        assert_ne!(
            store.sign(&ecdsa, b"m").unwrap(),
            store.sign(&ecdsa, b"m").unwrap()
        );
    });
}

#[test]
fn objects_this_store_did_not_make_are_left_alone() {
    with_softhsm(
        "objects_this_store_did_not_make_are_left_alone",
        &[TOKEN],
        |hsm| {
            let store = hsm.open(TOKEN);
            let session = hsm.session(TOKEN);
            let token_key = |label: &str| {
                vec![
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Label(label.as_bytes().to_vec()),
                ]
            };
            // An AES-128 key, a generic secret and a P-384 key pair.
            let mut aes128 = token_key("aes128");
            aes128.push(Attribute::ValueLen(Ulong::new(16)));
            session
                .generate_key(&Mechanism::AesKeyGen, &aes128)
                .unwrap();
            let mut generic = token_key("generic");
            generic.push(Attribute::ValueLen(Ulong::new(32)));
            generic.push(Attribute::KeyType(KeyType::GENERIC_SECRET));
            session
                .generate_key(&Mechanism::GenericSecretKeyGen, &generic)
                .unwrap();
            let p384 = vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
            session
                .generate_key_pair(
                    &Mechanism::EccKeyPairGen,
                    &[
                        Attribute::Token(true),
                        Attribute::Label(b"p384".to_vec()),
                        Attribute::EcParams(p384),
                    ],
                    &token_key("p384"),
                )
                .unwrap();

            assert!(store.list().unwrap().is_empty());
            for foreign in ["aes128", "generic", "p384"] {
                let foreign = name(foreign);
                assert!(store.contains(&foreign).unwrap(), "{foreign}");
                let err = store
                    .generate(&foreign, KeyAlgorithm::Aes256Gcm)
                    .unwrap_err();
                assert!(
                    matches!(err, KeyStoreError::KeyExists { .. }),
                    "{foreign}: {err:?}"
                );
                let err = store.sign(&foreign, b"m").unwrap_err();
                assert!(
                    matches!(err, KeyStoreError::Pkcs11 { op: "sign", .. }),
                    "{foreign}: {err:?}"
                );
                assert!(
                    err.to_string().contains("not a key this keystore made"),
                    "{err}"
                );
                let err = store.delete(&foreign).unwrap_err();
                assert!(
                    matches!(err, KeyStoreError::Pkcs11 { op: "delete", .. }),
                    "{foreign}: {err:?}"
                );
                assert!(store.contains(&foreign).unwrap(), "{foreign} was deleted");
            }

            // A data object under a key's label is not a key and does not get in the way.
            let ca = name("ca-root");
            let public = store.generate(&ca, KeyAlgorithm::EcdsaP256Sha256).unwrap();
            session
                .create_object(&[
                    Attribute::Class(ObjectClass::DATA),
                    Attribute::Token(true),
                    Attribute::Label(b"ca-root".to_vec()),
                    Attribute::Value(b"a note".to_vec()),
                ])
                .unwrap();
            assert_eq!(
                store.list().unwrap(),
                vec![(ca.clone(), KeyAlgorithm::EcdsaP256Sha256)]
            );
            public
                .verify(b"m", &store.sign(&ca, b"m").unwrap())
                .unwrap();
            store.delete(&ca).unwrap();
            assert!(!store.contains(&ca).unwrap());
            let data = session
                .find_objects(&[
                    Attribute::Class(ObjectClass::DATA),
                    Attribute::Label(b"ca-root".to_vec()),
                ])
                .unwrap();
            assert_eq!(data.len(), 1, "the data object is still there");
        },
    );
}

/// A key planted under a name before the hub makes it (readable without the PIN, extractable,
/// or imported with a value its planter knows) is not taken for one this store made: the hub,
/// which adopts a key it finds under a fixed name, would wrap its data keys under a key
/// someone else holds.
#[test]
fn planted_keys_are_not_adopted() {
    with_softhsm("planted_keys_are_not_adopted", &[TOKEN], |hsm| {
        let store = hsm.open(TOKEN);
        let session = hsm.session(TOKEN);
        let aes = |label: &str| {
            vec![
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
            ]
        };
        // Imported: sensitive and not extractable, but its value is known.
        let mut imported = aes("imported");
        imported.extend([
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Value(vec![7; 32]),
        ]);
        session.create_object(&imported).unwrap();
        // Generated on the token, but readable without logging in.
        let mut public = aes("public");
        public.extend([
            Attribute::Private(false),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::ValueLen(Ulong::new(32)),
        ]);
        session
            .generate_key(&Mechanism::AesKeyGen, &public)
            .unwrap();
        // Generated on the token, private, but extractable.
        let mut extractable = aes("extractable");
        extractable.extend([
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(true),
            Attribute::ValueLen(Ulong::new(32)),
        ]);
        session
            .generate_key(&Mechanism::AesKeyGen, &extractable)
            .unwrap();

        assert!(store.list().unwrap().is_empty());
        for (planted, why) in [
            ("imported", "not generated on the token"),
            ("public", "not private"),
            ("extractable", "extractable"),
        ] {
            let planted = name(planted);
            let err = store.encrypt(&planted, b"data key", b"").unwrap_err();
            assert!(
                matches!(err, KeyStoreError::Pkcs11 { op: "encrypt", .. }),
                "{planted}: {err:?}"
            );
            assert!(err.to_string().contains(why), "{planted}: {err}");
            // Never replaced either: the name is taken.
            assert!(store.contains(&planted).unwrap());
            let err = store
                .generate(&planted, KeyAlgorithm::Aes256Gcm)
                .unwrap_err();
            assert!(matches!(err, KeyStoreError::KeyExists { .. }), "{err:?}");
        }
        // A key this store made is all of those.
        let own = name("own");
        store.generate(&own, KeyAlgorithm::Aes256Gcm).unwrap();
        let sealed = store.encrypt(&own, b"data key", b"").unwrap();
        assert_eq!(
            store.decrypt(&own, &sealed, b"").unwrap().as_slice(),
            b"data key"
        );
        assert_eq!(store.list().unwrap(), vec![(own, KeyAlgorithm::Aes256Gcm)]);
    });
}

/// A deletion stopped after the private key went leaves a public key that is no key: not
/// listed, not contained, not found; deleting again, or making the name anew, finishes it.
#[test]
fn a_deletion_stopped_midway_is_finished_by_deleting_again() {
    with_softhsm(
        "a_deletion_stopped_midway_is_finished_by_deleting_again",
        &[TOKEN],
        |hsm| {
            let store = hsm.open(TOKEN);
            let session = hsm.session(TOKEN);
            let key = name("ca-intermediate-1");
            store.generate(&key, KeyAlgorithm::EcdsaP256Sha256).unwrap();
            // What a failure between the two destroys leaves.
            session
                .destroy_object(find_one(&session, key.as_str(), ObjectClass::PRIVATE_KEY))
                .unwrap();
            assert!(store.list().unwrap().is_empty());
            assert!(!store.contains(&key).unwrap());
            let err = store.public_key(&key).unwrap_err();
            assert!(matches!(err, KeyStoreError::KeyNotFound { .. }), "{err:?}");
            store.delete(&key).unwrap();
            assert!(
                session
                    .find_objects(&[Attribute::Label(key.as_str().as_bytes().to_vec())])
                    .unwrap()
                    .is_empty()
            );
            // Again, then the name made anew: the leftover goes, and the new key is whole.
            store.generate(&key, KeyAlgorithm::EcdsaP256Sha256).unwrap();
            session
                .destroy_object(find_one(&session, key.as_str(), ObjectClass::PRIVATE_KEY))
                .unwrap();
            let public = store.generate(&key, KeyAlgorithm::EcdsaP256Sha256).unwrap();
            public
                .verify(b"m", &store.sign(&key, b"m").unwrap())
                .unwrap();
        },
    );
}

#[test]
fn debug_output_holds_no_pin() {
    with_softhsm("debug_output_holds_no_pin", &[TOKEN], |hsm| {
        let config = hsm.config(TOKEN, PIN);
        let debug = format!("{config:?} {config:#?}");
        assert!(!debug.contains(PIN), "{debug}");
        let store = Pkcs11KeyStore::open(config).unwrap();
        store
            .generate(&name("ca-root"), KeyAlgorithm::EcdsaP256Sha256)
            .unwrap();
        let debug = format!("{store:?} {store:#?}");
        assert!(!debug.contains(PIN), "{debug}");
        assert!(debug.contains(TOKEN), "{debug}");
        assert!(debug.contains("libsofthsm2.so"), "{debug}");
    });
}

// === helpers ===

fn name(s: &str) -> KeyName {
    KeyName::new(s).unwrap()
}

/// The SoftHSM2 module; fails the test, saying how to install it, if there is none.
fn module_path() -> PathBuf {
    if let Some(path) = std::env::var_os(MODULE_OVERRIDE_ENV) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{MODULE_OVERRIDE_ENV}={} is not a file; {INSTALL_HINT}",
            path.display()
        );
        return path;
    }
    MODULE_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("no SoftHSM2 module at {MODULE_PATHS:?}; {INSTALL_HINT}"))
}

/// SoftHSM2 as the child process of a test sees it.
struct SoftHsm {
    module: PathBuf,
}

impl SoftHsm {
    fn config(&self, label: &str, pin: &str) -> Pkcs11Config {
        Pkcs11Config {
            module: self.module.clone(),
            token_label: label.to_owned(),
            pin: Zeroizing::new(pin.to_owned()),
        }
    }

    fn open(&self, label: &str) -> Pkcs11KeyStore {
        Pkcs11KeyStore::open(self.config(label, PIN)).unwrap()
    }

    /// A cryptoki context of our own on the module (initialized once per process).
    fn context(&self) -> Pkcs11 {
        let context = Pkcs11::new(&self.module).unwrap();
        match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(err) => panic!("C_Initialize: {err}"),
        }
        context
    }

    /// A session of our own on the token; it shares the login of a store open on the token,
    /// else logs in.
    fn session(&self, label: &str) -> Session {
        let context = self.context();
        let slot: Slot = context
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|slot| context.get_token_info(*slot).unwrap().label() == label)
            .unwrap();
        let session = context.open_rw_session(slot).unwrap();
        match session.login(UserType::User, Some(&AuthPin::from(PIN))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(err) => panic!("C_Login: {err}"),
        }
        session
    }
}

fn find_one(session: &Session, label: &str, class: ObjectClass) -> ObjectHandle {
    let found = session
        .find_objects(&[
            Attribute::Class(class),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .unwrap();
    assert_eq!(found.len(), 1, "{label} {class}");
    found[0]
}

/// A DER ECDSA signature with minimal, positive INTEGERs.
fn assert_minimal_der_signature(sig: &[u8]) {
    assert_eq!(sig[0], 0x30);
    assert_eq!(sig[1] as usize, sig.len() - 2);
    let mut rest = &sig[2..];
    for _ in 0..2 {
        assert_eq!(rest[0], 0x02);
        let len = rest[1] as usize;
        let int = &rest[2..2 + len];
        assert!((1..=33).contains(&len));
        assert!(int[0] & 0x80 == 0, "negative INTEGER");
        if len > 1 {
            assert!(int[0] != 0 || int[1] & 0x80 != 0, "non-minimal INTEGER");
        }
        rest = &rest[2 + len..];
    }
    assert!(rest.is_empty());
}

/// Runs `body` in a child process with its own SoftHSM2 token directory holding `tokens`.
fn with_softhsm(test: &str, tokens: &[&str], body: impl FnOnce(&SoftHsm)) {
    with_softhsm_env(test, tokens, &[], body);
}

/// [`with_softhsm`], with `env` set in the child too.
fn with_softhsm_env(
    test: &str,
    tokens: &[&str],
    env: &[(&str, String)],
    body: impl FnOnce(&SoftHsm),
) {
    let module = module_path();
    if std::env::var_os(CHILD_ENV).is_some() {
        body(&SoftHsm { module });
        return;
    }

    let tmp = tempfile::tempdir().unwrap();
    let token_dir = tmp.path().join("tokens");
    std::fs::create_dir(&token_dir).unwrap();
    let conf = tmp.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n\
             slots.removable = false\n",
            token_dir.display()
        ),
    )
    .unwrap();
    for label in tokens {
        let out = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", label])
            .args(["--pin", PIN, "--so-pin", SO_PIN])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .unwrap_or_else(|err| panic!("cannot run softhsm2-util ({err}); {INSTALL_HINT}"));
        assert!(
            out.status.success(),
            "softhsm2-util --init-token {label}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .env("SOFTHSM2_CONF", &conf)
        .envs(env.iter().map(|(key, value)| (key, value)))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "`{test}` failed in its SoftHSM2 process:\n{stdout}\n{stderr}"
    );
}
