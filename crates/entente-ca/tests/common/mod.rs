//! Shared fixtures: a real CA over a real `LocalKeyStore` in a temporary directory.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    dead_code,
    unreachable_pub
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use entente_ca::{Ca, CaOptions};
use entente_keystore::KeyStore;
use entente_keystore::local::{Argon2Params, LocalKeyStore, Unlock};
use entente_types::{AgentId, HumanId, Principal, TrustDomain};
use rcgen::{CertificateParams, KeyPair};
use tempfile::TempDir;

pub const PASSPHRASE: &str = "test passphrase";

/// A CA, its key store and the directory holding it.
pub struct Fixture {
    pub ca: Ca,
    pub keystore: Arc<dyn KeyStore>,
    pub td: TrustDomain,
    pub dir: TempDir,
}

impl Fixture {
    pub fn keystore_dir(&self) -> PathBuf {
        self.dir.path().join("keystore")
    }

    pub fn agent(&self, segment: &str, name: &str) -> Principal {
        Principal::from(AgentId::new(&self.td, segment, name).unwrap())
    }

    pub fn human(&self, name: &str) -> Principal {
        Principal::from(HumanId::new(&self.td, name).unwrap())
    }
}

/// A fixed "now" in 2025, so tests don't depend on the clock.
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_760_000_000)
}

pub fn unix_ms(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

pub fn create_keystore(dir: &Path) -> Arc<dyn KeyStore> {
    Arc::new(
        LocalKeyStore::create(
            dir,
            &Unlock::passphrase(PASSPHRASE),
            Argon2Params::danger_fast_for_tests(),
        )
        .unwrap(),
    )
}

pub fn open_keystore(dir: &Path) -> Arc<dyn KeyStore> {
    Arc::new(LocalKeyStore::open(dir, &Unlock::passphrase(PASSPHRASE)).unwrap())
}

/// A new CA for `td` with default options.
pub fn new_ca(td: &str) -> Fixture {
    new_ca_with(td, CaOptions::default())
}

pub fn new_ca_with(td: &str, options: CaOptions) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let keystore = create_keystore(&dir.path().join("keystore"));
    let td = TrustDomain::new(td).unwrap();
    let ca = Ca::init(keystore.clone(), &td, options, now()).unwrap();
    Fixture {
        ca,
        keystore,
        td,
        dir,
    }
}

/// A P-256 key and a CSR for it that asks for nothing.
pub fn p256_csr() -> (KeyPair, Vec<u8>) {
    csr_with(CertificateParams::default())
}

/// A P-256 key and a CSR asking for `params`.
pub fn csr_with(params: CertificateParams) -> (KeyPair, Vec<u8>) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = params.serialize_request(&key).unwrap();
    (key, csr.der().to_vec())
}

/// A CA made directly with rcgen and in-memory keys, to craft certificates our `Ca` never
/// issues.
pub struct RcgenCa {
    pub root: rcgen::Certificate,
    pub root_params: CertificateParams,
    pub root_key: KeyPair,
    pub intermediate: rcgen::Certificate,
    pub intermediate_params: CertificateParams,
    pub intermediate_key: KeyPair,
}

impl RcgenCa {
    pub fn new(td: &str) -> Self {
        use rcgen::{BasicConstraints, IsCa, KeyUsagePurpose, SanType};
        let ca_params = |cn: &str, path_len: Option<u8>| {
            let mut p = CertificateParams::default();
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            p.subject_alt_names = vec![SanType::URI(format!("spiffe://{td}").try_into().unwrap())];
            p.is_ca = IsCa::Ca(match path_len {
                Some(n) => BasicConstraints::Constrained(n),
                None => BasicConstraints::Unconstrained,
            });
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2040, 1, 1);
            p
        };
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let root_params = ca_params("rcgen root", None);
        let root = root_params.self_signed(&root_key).unwrap();
        let intermediate_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let intermediate_params = ca_params("rcgen intermediate", Some(0));
        let intermediate = intermediate_params
            .signed_by(
                &intermediate_key,
                &rcgen::Issuer::from_params(&root_params, &root_key),
            )
            .unwrap();
        Self {
            root,
            root_params,
            root_key,
            intermediate,
            intermediate_params,
            intermediate_key,
        }
    }

    pub fn bundle(&self) -> entente_ca::TrustBundle {
        entente_ca::TrustBundle::new(
            vec![self.root.der().clone()],
            vec![self.intermediate.der().clone()],
        )
        .unwrap()
    }

    /// A leaf with exactly `params` (validity defaults to 2020..2040), signed by the
    /// intermediate; returns the chain leaf, intermediate.
    pub fn issue(
        &self,
        params: &CertificateParams,
    ) -> Vec<rustls_pki_types::CertificateDer<'static>> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let leaf = params
            .signed_by(
                &key,
                &rcgen::Issuer::from_params(&self.intermediate_params, &self.intermediate_key),
            )
            .unwrap();
        vec![leaf.der().clone(), self.intermediate.der().clone()]
    }
}

/// Leaf parameters like an SVID's, with the given SANs.
pub fn leaf_params(sans: Vec<rcgen::SanType>) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.subject_alt_names = sans;
    p.is_ca = rcgen::IsCa::ExplicitNoCa;
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    ];
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2040, 1, 1);
    p
}

pub fn uri(s: &str) -> rcgen::SanType {
    rcgen::SanType::URI(s.try_into().unwrap())
}
