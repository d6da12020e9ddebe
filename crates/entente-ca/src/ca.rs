//! The CA: a root and an intermediate, ECDSA P-256, keys only in a [`KeyStore`].
//!
//! The root signs the intermediate; the intermediate signs X509-SVIDs, key bundles and
//! revocation lists. The intermediate is rolled over with overlap
//! ([`Ca::stage_intermediate`], [`Ca::activate_staged`], [`Ca::retire_previous`]): a new one
//! is first only trusted (staged), then signs while the old one is still trusted (retiring),
//! then the old one leaves the trust bundle. Both certificates carry the URI SAN `spiffe://<trust domain>`, which is
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
/// Name of the first intermediate CA key in the key store. The keys of later intermediates
/// are named `ca-intermediate-` and 8 random hex digits.
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
    /// The intermediate certificate that signs (the active one).
    pub intermediate: String,
    /// A new intermediate, trusted but not signing yet.
    pub staged: Option<String>,
    /// The previous intermediate, still trusted, no longer signing.
    pub retiring: Option<String>,
}

/// What an intermediate CA does during a rollover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntermediateRole {
    /// Signs SVIDs, key bundles and revocation lists.
    Active,
    /// In the trust bundle, not signing yet: relying parties learn it before it signs.
    Staged,
    /// In the trust bundle, no longer signing: what it signed stays valid until it leaves.
    Retiring,
}

/// One intermediate CA of a [`Ca`], as [`Ca::intermediates`] lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntermediateInfo {
    /// What it does now.
    pub role: IntermediateRole,
    /// SHA-256 of its SubjectPublicKeyInfo, which key bundles and revocation lists name.
    pub signer_id: [u8; 32],
    /// Its key in the key store (`None`: the key is not there).
    pub key: Option<KeyName>,
    /// Start of its validity.
    pub not_before: SystemTime,
    /// End of its validity.
    pub not_after: SystemTime,
    /// The certificate.
    pub cert: CertificateDer<'static>,
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
    /// The active intermediate.
    intermediate: CaCert,
    staged: Option<CaCert>,
    retiring: Option<CaCert>,
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
    /// A rollover step is not possible in the CA's present state.
    #[error("intermediate rollover: {0}")]
    Rollover(&'static str),
    /// Issuing a new intermediate needs the root key, which is not in the key store.
    #[error("the root ca key is not in the key store (kept offline?): a new intermediate needs it")]
    RootKeyOffline,
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

/// A CA certificate with its key.
#[derive(Debug, Clone)]
struct CaCert {
    der: CertificateDer<'static>,
    key: KeyName,
    /// Whether `key` is in the key store.
    in_store: bool,
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
                    Self::from_certs(
                        keystore.clone(),
                        root_der,
                        intermediate_der,
                        None,
                        None,
                        options,
                    )
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
        Self::from_pem(
            keystore,
            &CaPem {
                root: root_pem.to_owned(),
                intermediate: intermediate_pem.to_owned(),
                staged: None,
                retiring: None,
            },
            options,
        )
    }

    /// Reopens a CA, possibly mid-rollover, from [`to_pem`](Self::to_pem)'s output and its
    /// key store.
    ///
    /// Each intermediate's key is found in `keystore` by its public key: [`INTERMEDIATE_KEY`]
    /// or a later `ca-intermediate-*` key. The active and the staged intermediate need theirs;
    /// the retiring one does not sign and may have none.
    pub fn from_pem(
        keystore: Arc<dyn KeyStore>,
        pem: &CaPem,
        options: CaOptions,
    ) -> Result<Self, CaError> {
        if options.svid_ttl.is_zero() {
            return Err(CaError::InvalidOptions("the svid ttl must not be zero"));
        }
        let root = single_cert(&pem.root, "root")?;
        let intermediate = single_cert(&pem.intermediate, "intermediate")?;
        let staged = pem
            .staged
            .as_deref()
            .map(|text| single_cert(text, "staged intermediate"))
            .transpose()?;
        let retiring = pem
            .retiring
            .as_deref()
            .map(|text| single_cert(text, "retiring intermediate"))
            .transpose()?;
        Self::from_certs(keystore, root, intermediate, staged, retiring, options)
    }

    /// The CA certificates as PEM.
    pub fn to_pem(&self) -> CaPem {
        CaPem {
            root: pem::encode_cert(&self.root.der),
            intermediate: pem::encode_cert(&self.intermediate.der),
            staged: self.staged.as_ref().map(|c| pem::encode_cert(&c.der)),
            retiring: self.retiring.as_ref().map(|c| pem::encode_cert(&c.der)),
        }
    }

    /// The intermediates: the active one first, then the staged and the retiring one if any.
    pub fn intermediates(&self) -> Vec<IntermediateInfo> {
        let info = |role, cert: &CaCert| IntermediateInfo {
            role,
            signer_id: cert.signer,
            key: cert.in_store.then(|| cert.key.clone()),
            not_before: cert.not_before,
            not_after: cert.not_after,
            cert: cert.der.clone(),
        };
        std::iter::once(info(IntermediateRole::Active, &self.intermediate))
            .chain(
                self.staged
                    .iter()
                    .map(|c| info(IntermediateRole::Staged, c)),
            )
            .chain(
                self.retiring
                    .iter()
                    .map(|c| info(IntermediateRole::Retiring, c)),
            )
            .collect()
    }

    /// The first step of a rollover: a new intermediate key in the key store and its
    /// certificate, signed by the root, valid from `now` (backdated one minute) for
    /// [`CaOptions::intermediate_validity`] (cut to the root's). The CA returned trusts it but
    /// still signs with the active intermediate: relying parties learn the new certificate
    /// before anything signed by it reaches them.
    ///
    /// Needs the root key in the key store ([`CaError::RootKeyOffline`]) and no rollover in
    /// progress ([`CaError::Rollover`]). If a step fails, the new key is deleted again.
    pub fn stage_intermediate(&self, now: SystemTime) -> Result<Self, CaError> {
        if self.staged.is_some() || self.retiring.is_some() {
            return Err(CaError::Rollover(
                "a rollover is in progress: finish it before staging another intermediate",
            ));
        }
        if !self.root.in_store {
            return Err(CaError::RootKeyOffline);
        }
        if self.options.intermediate_validity.is_zero() {
            return Err(CaError::InvalidOptions(
                "the intermediate validity must not be zero",
            ));
        }
        let start =
            clock::to_cert_time(now).ok_or(CaError::InvalidOptions("`now` is out of range"))?;
        let not_before = clock::sub(start, CLOCK_SKEW)
            .ok_or(CaError::InvalidOptions("`now` is out of range"))?;
        let root_not_after = clock::to_cert_time(self.root.not_after)
            .ok_or(CaError::InvalidOptions("the root validity is out of range"))?;
        let not_after = clock::add(start, self.options.intermediate_validity)
            .ok_or(CaError::InvalidOptions(
                "intermediate validity reaches past 9999",
            ))?
            .min(root_not_after);
        if not_after <= start {
            return Err(CaError::Rollover("the root certificate has expired"));
        }

        let key = new_intermediate_key_name()?;
        let public = self
            .keystore
            .generate(&key, KeyAlgorithm::EcdsaP256Sha256)?;
        let staged = self
            .issue_intermediate(&key, public, not_before, not_after)
            .and_then(|der| {
                let staged = ca_cert(der, key.clone(), Some(self.keystore.public_key(&key)?))?;
                self.with_roles(self.intermediate.clone(), Some(staged), None)
            });
        staged.inspect_err(|_| {
            let _ = self.keystore.delete(&key);
        })
    }

    /// The second step: the staged intermediate signs from now on; the active one becomes
    /// the retiring one, still trusted, so that what it signed stays valid.
    pub fn activate_staged(&self) -> Result<Self, CaError> {
        let Some(staged) = self.staged.clone() else {
            return Err(CaError::Rollover("no intermediate is staged"));
        };
        if self.retiring.is_some() {
            return Err(CaError::Rollover(
                "the previous intermediate is still retiring: retire it first",
            ));
        }
        self.with_roles(staged, None, Some(self.intermediate.clone()))
    }

    /// The last step: the retiring intermediate leaves the trust bundle. Returns the CA
    /// without it and the name of its key if it is in the key store: the caller deletes that
    /// key once the new state is persisted.
    pub fn retire_previous(&self) -> Result<(Self, Option<KeyName>), CaError> {
        let Some(retiring) = &self.retiring else {
            return Err(CaError::Rollover("no intermediate is retiring"));
        };
        let ca = self.with_roles(self.intermediate.clone(), self.staged.clone(), None)?;
        Ok((ca, retiring.in_store.then(|| retiring.key.clone())))
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
        staged_der: Option<CertificateDer<'static>>,
        retiring_der: Option<CertificateDer<'static>>,
        options: CaOptions,
    ) -> Result<Self, CaError> {
        // The certificates are checked as a bundle before any key is looked at.
        let mut all = vec![intermediate_der.clone()];
        all.extend(staged_der.iter().chain(&retiring_der).cloned());
        TrustBundle::new(vec![root_der.clone()], all)?;

        let root_key = KeyName::new(ROOT_KEY)?;
        let root_public = if keystore.contains(&root_key)? {
            Some(keystore.public_key(&root_key)?)
        } else {
            None
        };
        let root = ca_cert(root_der, root_key, root_public)?;

        let intermediate = intermediate_cert(&*keystore, intermediate_der, true)?;
        let staged = staged_der
            .map(|der| intermediate_cert(&*keystore, der, true))
            .transpose()?;
        let retiring = retiring_der
            .map(|der| intermediate_cert(&*keystore, der, false))
            .transpose()?;
        let shell = Self {
            trust: TrustBundle::new(vec![root.der.clone()], vec![intermediate.der.clone()])?,
            keystore,
            options,
            intermediate: intermediate.clone(),
            staged: None,
            retiring: None,
            root,
        };
        shell.with_roles(intermediate, staged, retiring)
    }

    /// This CA with other intermediates; the trust bundle is rebuilt from them.
    fn with_roles(
        &self,
        intermediate: CaCert,
        staged: Option<CaCert>,
        retiring: Option<CaCert>,
    ) -> Result<Self, CaError> {
        // Each role is its own intermediate, with its own key: retiring one must never revoke
        // or delete the one that signs (a stored state naming one twice is refused).
        let roles: Vec<&CaCert> = std::iter::once(&intermediate)
            .chain(&staged)
            .chain(&retiring)
            .collect();
        for (i, a) in roles.iter().enumerate() {
            if roles
                .iter()
                .skip(i + 1)
                .any(|b| a.signer == b.signer || a.key == b.key || a.der == b.der)
            {
                return Err(CaError::Rollover(
                    "one intermediate, or one key, holds two roles",
                ));
            }
        }
        let mut intermediates = vec![intermediate.der.clone()];
        intermediates.extend(staged.iter().chain(&retiring).map(|c| c.der.clone()));
        for der in &intermediates {
            check_path_len_zero(der)?;
        }
        let trust = TrustBundle::new(vec![self.root.der.clone()], intermediates)?;
        Ok(Self {
            keystore: self.keystore.clone(),
            options: self.options,
            intermediate,
            staged,
            retiring,
            root: self.root.clone(),
            trust,
        })
    }

    /// A new intermediate certificate for `key`, signed by the root key.
    fn issue_intermediate(
        &self,
        key: &KeyName,
        public: PublicKey,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<CertificateDer<'static>, CaError> {
        let root = self.signer(&self.root);
        let intermediate = KeyStoreSigner::new(self.keystore.clone(), key.clone(), public);
        let mut params = ca_params(
            self.trust_domain(),
            &format!("Entente Intermediate CA {}", key_tag(&intermediate)),
            not_before,
            not_after,
            BasicConstraints::Constrained(0),
        )?;
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_ca_cert_der(&self.root.der, &root)
            .map_err(|e| CaError::Certificate(e.to_string()))?;
        let cert = params
            .signed_by(&intermediate, &issuer)
            .map_err(|e| rcgen_error(&root, e))?;
        Ok(cert.der().clone())
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

/// A name for a new intermediate key: `ca-intermediate-` and 8 random hex digits.
fn new_intermediate_key_name() -> Result<KeyName, CaError> {
    let mut tag = [0u8; 4];
    aws_lc_rs::rand::fill(&mut tag).map_err(|_| CaError::Random)?;
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    Ok(KeyName::new(&format!("{INTERMEDIATE_KEY}-{hex}"))?)
}

/// An intermediate certificate with its key, found in `keystore` by public key among
/// [`INTERMEDIATE_KEY`] and the `ca-intermediate-*` keys. Without a match, a certificate that
/// must sign is refused; one that need not (retiring) is kept without a key.
fn intermediate_cert(
    keystore: &dyn KeyStore,
    der: CertificateDer<'static>,
    must_sign: bool,
) -> Result<CaCert, CaError> {
    let first = KeyName::new(INTERMEDIATE_KEY)?;
    let unmatched = ca_cert(der, first.clone(), None)?;
    let prefix = format!("{INTERMEDIATE_KEY}-");
    let mut candidates: Vec<KeyName> = keystore
        .list()?
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| name == &first || name.as_str().starts_with(&prefix))
        .collect();
    // The first intermediate's key is tried first.
    candidates.sort_by_key(|name| name != &first);
    for name in &candidates {
        let public = keystore.public_key(name)?;
        if public.algorithm == KeyAlgorithm::EcdsaP256Sha256
            && public.bytes == unmatched.public.bytes
        {
            return ca_cert(unmatched.der, name.clone(), Some(public));
        }
    }
    if !must_sign {
        return Ok(unmatched);
    }
    match candidates.first() {
        // The error the first intermediate key alone would give.
        Some(name) if name == &first => ca_cert(
            unmatched.der,
            first.clone(),
            Some(keystore.public_key(&first)?),
        ),
        Some(name) => Err(CaError::KeyMismatch(name.to_string())),
        None => Err(keystore
            .public_key(&first)
            .err()
            .map_or(CaError::KeyMismatch(first.to_string()), CaError::KeyStore)),
    }
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
    let in_store = public.is_some();
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
        in_store,
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
