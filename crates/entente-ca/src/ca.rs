//! The CA: a root and an intermediate, ECDSA P-256, keys only in a [`KeyStore`].
//!
//! The root signs the intermediate; the intermediate signs X509-SVIDs, key bundles and
//! revocation lists. Both certificates carry the URI SAN `spiffe://<trust domain>`, which is
//! how a [`TrustBundle`] learns its trust domain. The intermediate has no URI name constraint:
//! rustls-webpki refuses every certificate under one (it does not implement URI constraints),
//! so the trust domain of a leaf is checked by [`TrustBundle::verify_svid`] instead.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use entente_crypto::{KeyBundleBody, signer_id};
use entente_keystore::{KeyAlgorithm, KeyName, KeyStore, KeyStoreError, PublicKey};
use entente_types::{Principal, TrustDomain};
use entente_wire as wire;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::revocation::signing_input;
use crate::signer::KeyStoreSigner;
use crate::{Revocations, TrustBundle, TrustBundleError, clock, csr, pem};

/// Name of the root CA key in the key store.
pub const ROOT_KEY: &str = "ca-root";
/// Name of the intermediate CA key in the key store.
pub const INTERMEDIATE_KEY: &str = "ca-intermediate";

/// How far `not_before` is backdated, for clock skew between the CA and relying parties.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Validity periods of the CA and of the certificates it issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaOptions {
    /// Root certificate validity. Default 10 years.
    pub root_validity: Duration,
    /// Intermediate certificate validity (cut to the root's). Default 1 year.
    pub intermediate_validity: Duration,
    /// X509-SVID lifetime (cut to the intermediate's). Default 1 hour.
    pub svid_ttl: Duration,
}

/// The CA certificates as PEM, to persist next to the key store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPem {
    /// The root certificate.
    pub root: String,
    /// The intermediate certificate.
    pub intermediate: String,
}

/// An X509-SVID issued by [`Ca::issue_svid`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedSvid {
    /// The leaf certificate.
    pub cert_der: CertificateDer<'static>,
    /// The chain to present in TLS: the leaf, then the intermediate.
    pub chain_der: Vec<CertificateDer<'static>>,
    /// The serial number: 16 random bytes, positive (the content bytes of the DER INTEGER).
    pub serial: Vec<u8>,
    /// When the certificate expires (whole seconds).
    pub not_after: SystemTime,
}

/// A root and an intermediate CA whose keys live in a key store.
#[derive(Debug)]
pub struct Ca {
    keystore: Arc<dyn KeyStore>,
    options: CaOptions,
    intermediate: CaCert,
    root: CaCert,
    trust: TrustBundle,
}

/// Why the CA could not be created, loaded, or sign.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The key store failed or refused (e.g. the CA keys already exist, or are missing).
    #[error("keystore: {0}")]
    KeyStore(#[from] KeyStoreError),
    /// A CA key is not an ECDSA P-256 key.
    #[error("key `{0}` is not an ecdsa p-256 key")]
    WrongKeyAlgorithm(String),
    /// A key in the store is not the key of its certificate.
    #[error("key `{0}` in the keystore does not match its ca certificate")]
    KeyMismatch(String),
    /// A PEM input does not hold exactly one certificate.
    #[error("the {0} pem must hold exactly one certificate")]
    Pem(&'static str),
    /// The certificates are not a valid root and intermediate.
    #[error("ca certificates: {0}")]
    TrustBundle(#[from] TrustBundleError),
    /// The intermediate is not signed by the root, or is not constrained to issue only leaves.
    #[error("the intermediate certificate does not fit the root: {0}")]
    BadIntermediate(&'static str),
    /// A validity period is zero or reaches past the year 9999, or `now` is out of range.
    #[error("invalid ca options: {0}")]
    InvalidOptions(&'static str),
    /// Building a certificate failed.
    #[error("building a ca certificate failed: {0}")]
    Certificate(String),
    /// A key bundle names a principal of another trust domain.
    #[error("principal `{0}` is outside this ca's trust domain")]
    ForeignPrincipal(String),
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// Why an X509-SVID was not issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// The CSR is not valid DER.
    #[error("the csr is not a valid pkcs#10 request")]
    MalformedCsr,
    /// The CSR's self-signature does not verify.
    #[error("the csr signature does not verify")]
    BadCsrSignature,
    /// The CSR's key is not an ECDSA P-256 key.
    #[error("the csr key is not an ecdsa p-256 key")]
    UnsupportedKey,
    /// The CSR is not signed with `ecdsa-with-SHA256`.
    #[error("the csr is not signed with ecdsa-with-sha256")]
    UnsupportedSignatureAlgorithm,
    /// The principal belongs to another trust domain.
    #[error("principal `{0}` is outside this ca's trust domain")]
    ForeignPrincipal(String),
    /// The intermediate certificate is not valid at `now`.
    #[error("the intermediate ca certificate is not valid at this time")]
    CaNotValid,
    /// `now` (or `now` plus the TTL) can't be expressed in a certificate.
    #[error("the validity period is out of range")]
    InvalidTime,
    /// The key store could not sign with the intermediate key.
    #[error("keystore: {0}")]
    KeyStore(#[from] KeyStoreError),
    /// Building the certificate failed.
    #[error("building the certificate failed: {0}")]
    Certificate(String),
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// One of the two CA certificates with its key.
#[derive(Debug)]
struct CaCert {
    der: CertificateDer<'static>,
    key: KeyName,
    public: PublicKey,
    signer: [u8; 32],
    not_before: SystemTime,
    not_after: SystemTime,
}

// === impl CaOptions ===

impl Default for CaOptions {
    fn default() -> Self {
        const DAY: u64 = 24 * 60 * 60;
        Self {
            root_validity: Duration::from_secs(3650 * DAY),
            intermediate_validity: Duration::from_secs(365 * DAY),
            svid_ttl: Duration::from_secs(60 * 60),
        }
    }
}

// === impl Ca ===

impl Ca {
    /// Creates a new CA for `trust_domain`: generates the keys [`ROOT_KEY`] and
    /// [`INTERMEDIATE_KEY`] in `keystore` and issues their certificates, valid from `now`
    /// (backdated one minute).
    ///
    /// Fails with [`KeyStoreError::KeyExists`] if either key exists; keys are never replaced.
    /// If a later step fails, the keys generated here are deleted again.
    pub fn init(
        keystore: Arc<dyn KeyStore>,
        trust_domain: &TrustDomain,
        options: CaOptions,
        now: SystemTime,
    ) -> Result<Self, CaError> {
        if options.root_validity.is_zero()
            || options.intermediate_validity.is_zero()
            || options.svid_ttl.is_zero()
        {
            return Err(CaError::InvalidOptions("validity periods must not be zero"));
        }
        let start =
            clock::to_cert_time(now).ok_or(CaError::InvalidOptions("`now` is out of range"))?;
        let not_before = clock::sub(start, CLOCK_SKEW)
            .ok_or(CaError::InvalidOptions("`now` is out of range"))?;
        let root_not_after = clock::add(start, options.root_validity)
            .ok_or(CaError::InvalidOptions("root validity reaches past 9999"))?;
        let intermediate_not_after = clock::add(start, options.intermediate_validity)
            .ok_or(CaError::InvalidOptions(
                "intermediate validity reaches past 9999",
            ))?
            .min(root_not_after);

        let root_key = KeyName::new(ROOT_KEY)?;
        let intermediate_key = KeyName::new(INTERMEDIATE_KEY)?;
        let root_public = keystore.generate(&root_key, KeyAlgorithm::EcdsaP256Sha256)?;
        let built = keystore
            .generate(&intermediate_key, KeyAlgorithm::EcdsaP256Sha256)
            .map_err(CaError::from)
            .and_then(|intermediate_public| {
                let root = KeyStoreSigner::new(keystore.clone(), root_key.clone(), root_public);
                let intermediate = KeyStoreSigner::new(
                    keystore.clone(),
                    intermediate_key.clone(),
                    intermediate_public,
                );
                build_certs(
                    trust_domain,
                    root,
                    intermediate,
                    not_before,
                    root_not_after,
                    intermediate_not_after,
                )
                .and_then(|(root_der, intermediate_der)| {
                    Self::from_certs(keystore.clone(), root_der, intermediate_der, options)
                })
                .inspect_err(|_| {
                    let _ = keystore.delete(&intermediate_key);
                })
            });
        built.inspect_err(|_| {
            let _ = keystore.delete(&root_key);
        })
    }

    /// Reopens a CA from its certificates (as written by [`to_pem`](Self::to_pem)) and its
    /// key store.
    ///
    /// The intermediate key must be in `keystore` and match the intermediate certificate. The
    /// root key may be absent (kept offline); if present, it must match the root certificate.
    pub fn load(
        keystore: Arc<dyn KeyStore>,
        root_pem: &str,
        intermediate_pem: &str,
        options: CaOptions,
    ) -> Result<Self, CaError> {
        if options.svid_ttl.is_zero() {
            return Err(CaError::InvalidOptions("the svid ttl must not be zero"));
        }
        let root = single_cert(root_pem, "root")?;
        let intermediate = single_cert(intermediate_pem, "intermediate")?;
        Self::from_certs(keystore, root, intermediate, options)
    }

    /// The CA certificates as PEM.
    pub fn to_pem(&self) -> CaPem {
        CaPem {
            root: pem::encode_cert(&self.root.der),
            intermediate: pem::encode_cert(&self.intermediate.der),
        }
    }

    /// The trust bundle of this CA (root and intermediate), to hand to relying parties.
    pub fn trust_bundle(&self) -> &TrustBundle {
        &self.trust
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &TrustDomain {
        self.trust.trust_domain()
    }

    /// The key store holding the CA's keys. The hub keeps its other keys (the audit
    /// checkpoint key, key-encryption keys) in the same store.
    pub fn keystore(&self) -> &Arc<dyn KeyStore> {
        &self.keystore
    }

    /// The options in force.
    pub fn options(&self) -> &CaOptions {
        &self.options
    }

    /// The root certificate.
    pub fn root_cert(&self) -> &CertificateDer<'static> {
        &self.root.der
    }

    /// The intermediate certificate.
    pub fn intermediate_cert(&self) -> &CertificateDer<'static> {
        &self.intermediate.der
    }

    /// The signer ID of the intermediate key (SHA-256 of its SubjectPublicKeyInfo DER), which
    /// key bundles and revocation lists name.
    pub fn signer_id(&self) -> [u8; 32] {
        self.intermediate.signer
    }

    /// Issues an X509-SVID for `principal` to the key of a PKCS#10 CSR.
    ///
    /// The CSR must carry an ECDSA P-256 key and a valid `ecdsa-with-SHA256` self-signature.
    /// Everything it asks for (subject, SANs, extensions) is ignored: the certificate has an
    /// empty subject, exactly one (critical) URI SAN — `principal`'s SPIFFE ID, decided by the
    /// caller, e.g. from a join token — `cA=false`, key usage `digitalSignature`, extended key
    /// usages `clientAuth` and `serverAuth`, a random positive 16-byte serial, and validity from
    /// `now` minus one minute to `now` plus [`CaOptions::svid_ttl`] (cut to the intermediate's
    /// validity).
    pub fn issue_svid(
        &self,
        csr_der: &[u8],
        principal: &Principal,
        now: SystemTime,
    ) -> Result<IssuedSvid, IssueError> {
        let key = csr::verify(csr_der)?;
        if principal.trust_domain() != self.trust_domain().as_str() {
            return Err(IssueError::ForeignPrincipal(principal.to_string()));
        }
        if now < self.intermediate.not_before || now >= self.intermediate.not_after {
            return Err(IssueError::CaNotValid);
        }
        let start = clock::to_cert_time(now).ok_or(IssueError::InvalidTime)?;
        let issuer_not_before =
            clock::to_cert_time(self.intermediate.not_before).ok_or(IssueError::InvalidTime)?;
        let issuer_not_after =
            clock::to_cert_time(self.intermediate.not_after).ok_or(IssueError::InvalidTime)?;
        let not_before = clock::sub(start, CLOCK_SKEW)
            .ok_or(IssueError::InvalidTime)?
            .max(issuer_not_before);
        let not_after = clock::add(start, self.options.svid_ttl)
            .ok_or(IssueError::InvalidTime)?
            .min(issuer_not_after);
        let serial = random_serial().map_err(|()| IssueError::Random)?;
        let uri = Ia5String::try_from(principal.as_str())
            .map_err(|e| IssueError::Certificate(e.to_string()))?;

        let mut params = CertificateParams::default();
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.use_authority_key_identifier_extension = true;

        let signer = self.signer(&self.intermediate);
        let issuer = Issuer::from_ca_cert_der(&self.intermediate.der, &signer)
            .map_err(|e| IssueError::Certificate(e.to_string()))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| match signer.take_error() {
                Some(keystore) => IssueError::KeyStore(keystore),
                None => IssueError::Certificate(e.to_string()),
            })?;
        let cert_der = cert.der().clone();
        Ok(IssuedSvid {
            chain_der: vec![cert_der.clone(), self.intermediate.der.clone()],
            cert_der,
            serial: serial.to_vec(),
            not_after: clock::from_cert_time(not_after),
        })
    }

    /// Signs a key bundle with the intermediate key (ECDSA P-256, through the key store).
    pub fn sign_key_bundle(&self, body: KeyBundleBody) -> Result<wire::KeyBundle, CaError> {
        if body.principal.trust_domain() != self.trust_domain().as_str() {
            return Err(CaError::ForeignPrincipal(body.principal.to_string()));
        }
        body.sign(self.intermediate.signer, |input| {
            self.sign_with(&self.intermediate, input)
        })
    }

    /// Signs the current revocation state with the intermediate key, dated `now`.
    pub fn sign_revocations(
        &self,
        revocations: &Revocations,
        now: SystemTime,
    ) -> Result<wire::RevocationList, CaError> {
        let mut list = revocations.unsigned_list(clock::unix_ms(now), &self.intermediate.signer);
        list.signature = self.sign_with(&self.intermediate, &signing_input(&list))?;
        Ok(list)
    }

    fn from_certs(
        keystore: Arc<dyn KeyStore>,
        root_der: CertificateDer<'static>,
        intermediate_der: CertificateDer<'static>,
        options: CaOptions,
    ) -> Result<Self, CaError> {
        let trust = TrustBundle::new(vec![root_der.clone()], vec![intermediate_der.clone()])?;

        let root_key = KeyName::new(ROOT_KEY)?;
        let root_public = if keystore.contains(&root_key)? {
            Some(keystore.public_key(&root_key)?)
        } else {
            None
        };
        let root = ca_cert(root_der, root_key, root_public)?;

        let intermediate_key = KeyName::new(INTERMEDIATE_KEY)?;
        let intermediate_public = keystore.public_key(&intermediate_key)?;
        let intermediate = ca_cert(
            intermediate_der,
            intermediate_key,
            Some(intermediate_public),
        )?;
        check_path_len_zero(&intermediate.der)?;

        Ok(Self {
            keystore,
            options,
            intermediate,
            root,
            trust,
        })
    }

    fn signer(&self, cert: &CaCert) -> KeyStoreSigner {
        KeyStoreSigner::new(self.keystore.clone(), cert.key.clone(), cert.public.clone())
    }

    /// Signs `msg` with `cert`'s key and checks the signature against the certificate's key.
    fn sign_with(&self, cert: &CaCert, msg: &[u8]) -> Result<Vec<u8>, CaError> {
        let signature = self.keystore.sign(&cert.key, msg)?;
        cert.public.verify(msg, &signature)?;
        Ok(signature)
    }
}

// === helpers ===

/// Issues the root (self-signed) and intermediate certificates.
fn build_certs(
    trust_domain: &TrustDomain,
    root: KeyStoreSigner,
    intermediate: KeyStoreSigner,
    not_before: OffsetDateTime,
    root_not_after: OffsetDateTime,
    intermediate_not_after: OffsetDateTime,
) -> Result<(CertificateDer<'static>, CertificateDer<'static>), CaError> {
    let root_params = ca_params(
        trust_domain,
        &format!("Entente Root CA {}", key_tag(&root)),
        not_before,
        root_not_after,
        BasicConstraints::Unconstrained,
    )?;
    let root_cert = root_params
        .self_signed(&root)
        .map_err(|e| rcgen_error(&root, e))?;

    let mut intermediate_params = ca_params(
        trust_domain,
        &format!("Entente Intermediate CA {}", key_tag(&intermediate)),
        not_before,
        intermediate_not_after,
        BasicConstraints::Constrained(0),
    )?;
    intermediate_params.use_authority_key_identifier_extension = true;
    let issuer = Issuer::new(root_params, &root);
    let intermediate_cert = intermediate_params
        .signed_by(&intermediate, &issuer)
        .map_err(|e| rcgen_error(&root, e))?;
    Ok((root_cert.der().clone(), intermediate_cert.der().clone()))
}

/// The first 8 hex digits of a key's signer ID: part of each CA's name, so that two CAs of
/// the same trust domain (or a rotated intermediate) never share a subject name.
fn key_tag(key: &KeyStoreSigner) -> String {
    signer_id(&key.subject_public_key_info())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Parameters shared by both CA certificates.
fn ca_params(
    trust_domain: &TrustDomain,
    common_name: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    constraints: BasicConstraints,
) -> Result<CertificateParams, CaError> {
    let serial = random_serial().map_err(|()| CaError::Random)?;
    let uri = Ia5String::try_from(format!("spiffe://{trust_domain}"))
        .map_err(|e| CaError::Certificate(e.to_string()))?;
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, trust_domain.as_str());
    name.push(DnType::CommonName, common_name);

    let mut params = CertificateParams::default();
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.distinguished_name = name;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// Checks a CA certificate against its key in the store (`None`: not in the store).
fn ca_cert(
    der: CertificateDer<'static>,
    key: KeyName,
    public: Option<PublicKey>,
) -> Result<CaCert, CaError> {
    let (signer, not_before, not_after, point) = {
        let (_, cert) =
            X509Certificate::from_der(&der).map_err(|e| CaError::Certificate(e.to_string()))?;
        let spki = cert.public_key().raw;
        let point =
            csr::p256_point(spki).ok_or_else(|| CaError::WrongKeyAlgorithm(key.to_string()))?;
        let validity = cert.validity();
        (
            signer_id(spki),
            clock::from_cert_time(validity.not_before.to_datetime()),
            clock::from_cert_time(validity.not_after.to_datetime()),
            point.to_vec(),
        )
    };
    let public = match public {
        Some(public) if public.algorithm != KeyAlgorithm::EcdsaP256Sha256 => {
            return Err(CaError::WrongKeyAlgorithm(key.to_string()));
        }
        Some(public) if public.bytes != point => {
            return Err(CaError::KeyMismatch(key.to_string()));
        }
        Some(public) => public,
        None => PublicKey {
            algorithm: KeyAlgorithm::EcdsaP256Sha256,
            bytes: point,
        },
    };
    Ok(CaCert {
        der,
        key,
        public,
        signer,
        not_before,
        not_after,
    })
}

/// The intermediate must be limited to issuing leaves (pathLenConstraint 0).
fn check_path_len_zero(der: &[u8]) -> Result<(), CaError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| CaError::Certificate(e.to_string()))?;
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca && bc.value.path_len_constraint == Some(0) => Ok(()),
        _ => Err(CaError::BadIntermediate(
            "its path length constraint must be 0",
        )),
    }
}

fn single_cert(pem_text: &str, which: &'static str) -> Result<CertificateDer<'static>, CaError> {
    let mut certs = pem::decode_certs(pem_text).map_err(|_| CaError::Pem(which))?;
    match (certs.pop(), certs.is_empty()) {
        (Some(cert), true) => Ok(cert),
        _ => Err(CaError::Pem(which)),
    }
}

/// 16 random bytes that encode as a positive 16-byte DER INTEGER (top bit clear, first byte
/// non-zero).
fn random_serial() -> Result<[u8; 16], ()> {
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).map_err(|_| ())?;
    if let Some(first) = serial.first_mut() {
        *first &= 0x7f;
        if *first == 0 {
            *first = 1;
        }
    }
    Ok(serial)
}

fn rcgen_error(signer: &KeyStoreSigner, error: rcgen::Error) -> CaError {
    match signer.take_error() {
        Some(keystore) => CaError::KeyStore(keystore),
        None => CaError::Certificate(error.to_string()),
    }
}
