#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use entente_ca::{Ca, CaOptions};
use entente_client::{Identity, IdentityError};
use entente_crypto::{KeyBundleBody, MessageKeys};
use entente_keystore::{
    KeyStoreError,
    local::{Argon2Params, LocalKeyStore, Unlock},
};
use entente_types::{AgentId, Principal, TrustDomain};
use rustls_pki_types::CertificateDer;
use zeroize::Zeroizing;

struct Parts {
    principal: Principal,
    chain: Vec<CertificateDer<'static>>,
    tls_key: Zeroizing<Vec<u8>>,
    keys: MessageKeys,
    bundle: entente_wire::KeyBundle,
    ca: Ca,
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn parts(name: &str, dir: &std::path::Path) -> Parts {
    let store = LocalKeyStore::create(
        &dir.join(format!("keys-{name}")),
        &Unlock::passphrase("identity tests"),
        Argon2Params::danger_fast_for_tests(),
    )
    .unwrap();
    let td = TrustDomain::new("acme.internal").unwrap();
    let ca = Ca::init(Arc::new(store), &td, CaOptions::default(), now()).unwrap();
    let principal = Principal::from(AgentId::new(&td, "ops", name).unwrap());
    let tls = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&tls)
        .unwrap();
    let svid = ca.issue_svid(csr.der(), &principal, now()).unwrap();
    let keys = MessageKeys::generate().unwrap();
    let ms = now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let bundle = ca
        .sign_key_bundle(KeyBundleBody {
            principal: principal.clone(),
            ed25519_public: keys.ed25519_public(),
            x25519_public: keys.x25519_public(),
            epoch: 1,
            not_before_ms: ms - 60_000,
            not_after_ms: ms + 3_600_000,
        })
        .unwrap();
    Parts {
        principal,
        chain: svid.chain_der.clone(),
        tls_key: Zeroizing::new(tls.serialize_der()),
        keys,
        bundle,
        ca,
    }
}

fn identity(p: Parts) -> Identity {
    let trust = p.ca.trust_bundle().clone();
    Identity::new(
        p.principal,
        p.chain,
        p.tls_key,
        p.keys,
        p.bundle,
        trust,
        now(),
    )
    .unwrap()
}

#[test]
fn saves_and_loads_with_private_files() {
    let tmp = tempfile::tempdir().unwrap();
    let id = identity(parts("alice", tmp.path()));
    let dir = tmp.path().join("alice");
    id.save(&dir).unwrap();
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for entry in fs::read_dir(&dir).unwrap() {
        let mode = entry.unwrap().metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let loaded = Identity::load(&dir, now()).unwrap();
    assert_eq!(loaded.principal(), id.principal());
    assert_eq!(loaded.chain(), id.chain());
    assert_eq!(loaded.tls_key_pkcs8(), id.tls_key_pkcs8());
    assert_eq!(
        loaded.message_keys().x25519_public(),
        id.message_keys().x25519_public()
    );
    assert_eq!(loaded.key_bundle(), id.key_bundle());
    // Saving again (a renewal) replaces the files in place.
    loaded.save(&dir).unwrap();
    Identity::load(&dir, now()).unwrap();
}

#[test]
fn a_certificate_for_another_principal_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let p = parts("alice", tmp.path());
    let other = Principal::parse("spiffe://acme.internal/agent/ops/bob").unwrap();
    let trust = p.ca.trust_bundle().clone();
    let err = Identity::new(other, p.chain, p.tls_key, p.keys, p.bundle, trust, now()).unwrap_err();
    assert!(matches!(err, IdentityError::WrongPrincipal { .. }), "{err}");
}

#[test]
fn a_tls_key_that_is_not_the_certificates_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let p = parts("alice", tmp.path());
    let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let trust = p.ca.trust_bundle().clone();
    let err = Identity::new(
        p.principal,
        p.chain,
        Zeroizing::new(stranger.serialize_der()),
        p.keys,
        p.bundle,
        trust,
        now(),
    )
    .unwrap_err();
    assert!(matches!(err, IdentityError::KeyMismatch), "{err}");
}

#[test]
fn a_key_bundle_for_other_message_keys_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let p = parts("alice", tmp.path());
    let trust = p.ca.trust_bundle().clone();
    let err = Identity::new(
        p.principal,
        p.chain,
        p.tls_key,
        MessageKeys::generate().unwrap(),
        p.bundle,
        trust,
        now(),
    )
    .unwrap_err();
    assert!(matches!(err, IdentityError::KeyBundle(_)), "{err}");
}

#[test]
fn an_expired_certificate_is_refused_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let id = identity(parts("alice", tmp.path()));
    let dir = tmp.path().join("alice");
    id.save(&dir).unwrap();
    let later = now() + Duration::from_secs(2 * 3600);
    let err = Identity::load(&dir, later).unwrap_err();
    assert!(matches!(err, IdentityError::Certificate(_)), "{err}");
}

#[test]
fn damaged_or_exposed_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let id = identity(parts("alice", tmp.path()));
    let dir = tmp.path().join("alice");
    id.save(&dir).unwrap();

    let bundle = dir.join("key-bundle.pb");
    let mut bytes = fs::read(&bundle).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&bundle, &bytes).unwrap();
    assert!(matches!(
        Identity::load(&dir, now()).unwrap_err(),
        IdentityError::KeyBundle(_)
    ));
    id.save(&dir).unwrap();

    let key = dir.join("tls-key.pem");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        Identity::load(&dir, now()).unwrap_err(),
        IdentityError::Files(KeyStoreError::InsecurePermissions { .. })
    ));
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();

    let meta = dir.join("identity.json");
    fs::write(&meta, br#"{"version": 9, "principal": "x"}"#).unwrap();
    assert!(matches!(
        Identity::load(&dir, now()).unwrap_err(),
        IdentityError::UnsupportedVersion(9)
    ));

    fs::write(dir.join("message-keys.bin"), [0u8; 10]).unwrap();
    id.save(&dir).unwrap();
    Identity::load(&dir, now()).unwrap();
}

#[test]
fn debug_shows_no_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let id = identity(parts("alice", tmp.path()));
    let debug = format!("{id:?}");
    assert!(debug.contains("alice"));
    assert!(!debug.contains(&format!("{:?}", id.tls_key_pkcs8())));
}
