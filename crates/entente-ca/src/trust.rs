//! Trust bundles: the CA certificates a hub or an agent trusts, and SVID verification.
//!
//! Chains and validity are checked by rustls-webpki; the SPIFFE rules on top (exactly one URI
//! SAN, an Entente principal in this trust domain, not a CA) and revocation are checked here.

use std::time::SystemTime;

use entente_crypto::{BundleAuthority, BundleError, EcdsaAuthority, signer_id};
use entente_types::{IdError, Principal, SpiffeId, TrustDomain};
use rustls_pki_types::{CertificateDer, TrustAnchor};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::{VerifiedRevocationList, clock, csr, pem};

/// The certificates of one trust domain's CAs: self-signed roots (the trust anchors) and the
/// intermediates they signed.
///
/// Every certificate is a CA certificate, every intermediate is signed by one of the roots, and
/// the trust domain is read from the `spiffe://<trust domain>` URI SAN of the CA certificates.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
    intermediates: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
    authority: EcdsaAuthority,
}

/// An X509-SVID whose chain, validity, SPIFFE ID and revocation status were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSvid {
    principal: Principal,
    serial: Vec<u8>,
    /// The serials of the intermediates the verified chain went through, leaf side first.
    issuer_serials: Vec<Vec<u8>>,
    not_after: SystemTime,
}

/// Why a set of certificates is not a usable trust bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustBundleError {
    /// The PEM text could not be read.
    #[error("invalid pem: {0}")]
    Pem(String),
    /// There is no self-signed root certificate.
    #[error("the trust bundle has no root certificate")]
    NoRoot,
    /// A certificate is not valid X.509.
    #[error("certificate {index} of the trust bundle is malformed: {reason}")]
    Malformed {
        /// Position of the certificate, roots first.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate is not a CA certificate (basic constraints `cA` is not set).
    #[error("certificate {index} of the trust bundle is not a ca certificate")]
    NotCa {
        /// Position of the certificate, roots first.
        index: usize,
    },
    /// A root's self-signature does not verify.
    #[error("root certificate {index} is not validly self-signed")]
    BadSelfSignature {
        /// Position of the certificate, roots first.
        index: usize,
    },
    /// An intermediate is not signed by any root of the bundle.
    #[error("intermediate certificate {index} is not signed by a root of the bundle")]
    NotChained {
        /// Position of the certificate, roots first.
        index: usize,
    },
    /// No CA certificate names a trust domain with a `spiffe://` URI SAN.
    #[error("no ca certificate names a spiffe trust domain")]
    NoTrustDomain,
    /// CA certificates name different trust domains, or not a valid one.
    #[error("ca certificates name conflicting or invalid trust domains (`{found}`)")]
    TrustDomainMismatch {
        /// The offending URI SAN.
        found: String,
    },
}

/// Why an X509-SVID was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    /// No certificate was presented.
    #[error("no certificate was presented")]
    EmptyChain,
    /// The end-entity certificate could not be parsed.
    #[error("the certificate is malformed: {0}")]
    Malformed(String),
    /// A certificate of the chain has expired.
    #[error("the certificate has expired")]
    Expired,
    /// A certificate of the chain is not valid yet.
    #[error("the certificate is not valid yet")]
    NotYetValid,
    /// The chain does not lead to a root of the trust bundle.
    #[error("the certificate is not issued by a trusted ca")]
    UnknownIssuer,
    /// A signature in the chain does not verify.
    #[error("a signature in the certificate chain is invalid")]
    BadSignature,
    /// The end-entity certificate is a CA certificate or may sign certificates or CRLs.
    #[error("the certificate is a ca certificate, not an svid")]
    NotALeaf,
    /// The chain is invalid for another reason (key usage, encoding, path length, …).
    #[error("the certificate chain is invalid: {0}")]
    Rejected(#[source] webpki::Error),
    /// An SVID carries exactly one URI SAN.
    #[error("an svid has exactly one uri san, this certificate has {0}")]
    UriSanCount(usize),
    /// The URI SAN is not an Entente principal.
    #[error("the uri san is not an entente principal: {0}")]
    BadSpiffeId(#[from] IdError),
    /// The principal belongs to another trust domain.
    #[error("principal `{found}` is not in trust domain `{expected}`")]
    ForeignTrustDomain {
        /// The principal in the certificate.
        found: String,
        /// The trust domain of the bundle.
        expected: String,
    },
    /// A certificate of the chain has a revoked serial number.
    #[error("the certificate is revoked")]
    RevokedSerial,
    /// The principal is revoked.
    #[error("principal `{0}` is revoked")]
    RevokedPrincipal(String),
}

// === impl TrustBundle ===

impl TrustBundle {
    /// Checks and assembles a bundle from DER certificates.
    pub fn new(
        roots: Vec<CertificateDer<'static>>,
        intermediates: Vec<CertificateDer<'static>>,
    ) -> Result<Self, TrustBundleError> {
        if roots.is_empty() {
            return Err(TrustBundleError::NoRoot);
        }
        let mut trust_domain: Option<TrustDomain> = None;
        let mut anchors = Vec::with_capacity(roots.len());

        let parsed_roots = roots
            .iter()
            .enumerate()
            .map(|(index, der)| parse_ca(index, der))
            .collect::<Result<Vec<_>, _>>()?;
        for (index, (der, cert)) in roots.iter().zip(&parsed_roots).enumerate() {
            let self_issued = cert.subject().as_raw() == cert.issuer().as_raw();
            if !self_issued || cert.verify_signature(None).is_err() {
                return Err(TrustBundleError::BadSelfSignature { index });
            }
            let anchor =
                webpki::anchor_from_trusted_cert(der).map_err(|e| TrustBundleError::Malformed {
                    index,
                    reason: e.to_string(),
                })?;
            anchors.push(anchor.to_owned());
            merge_trust_domain(&mut trust_domain, cert)?;
        }

        let mut parsed_intermediates = Vec::with_capacity(intermediates.len());
        for (offset, der) in intermediates.iter().enumerate() {
            let index = roots.len() + offset;
            let cert = parse_ca(index, der)?;
            let chained = parsed_roots
                .iter()
                .any(|root| cert.verify_signature(Some(root.public_key())).is_ok());
            if !chained {
                return Err(TrustBundleError::NotChained { index });
            }
            merge_trust_domain(&mut trust_domain, &cert)?;
            parsed_intermediates.push(cert);
        }

        let trust_domain = trust_domain.ok_or(TrustBundleError::NoTrustDomain)?;
        let mut authority = EcdsaAuthority::for_trust_domain(trust_domain.as_str());
        for cert in parsed_roots.iter().chain(&parsed_intermediates) {
            trust(&mut authority, cert);
        }
        Ok(Self {
            trust_domain,
            roots,
            intermediates,
            anchors,
            authority,
        })
    }

    /// Reads PEM `CERTIFICATE` blocks in any order: self-issued ones are roots, the others
    /// intermediates. Other block types are ignored.
    pub fn from_pem(pem: &str) -> Result<Self, TrustBundleError> {
        let certs = pem::decode_certs(pem).map_err(TrustBundleError::Pem)?;
        let mut roots = Vec::new();
        let mut intermediates = Vec::new();
        for (index, der) in certs.into_iter().enumerate() {
            let cert =
                parse(&der).map_err(|reason| TrustBundleError::Malformed { index, reason })?;
            let self_issued = cert.subject().as_raw() == cert.issuer().as_raw();
            if self_issued {
                roots.push(der);
            } else {
                intermediates.push(der);
            }
        }
        Self::new(roots, intermediates)
    }

    /// The bundle as PEM: the roots, then the intermediates.
    pub fn to_pem(&self) -> String {
        self.roots
            .iter()
            .chain(&self.intermediates)
            .map(|der| pem::encode_cert(der))
            .collect()
    }

    /// This bundle's roots with the intermediates of `offered` that one of these roots
    /// signed: how a relying party takes an intermediate rollover from a hub without letting
    /// the hub change what it anchors trust in. Intermediates of `offered` under other roots
    /// are left out; intermediates of this bundle that `offered` no longer lists are dropped.
    ///
    /// Fails, and the caller keeps this bundle, if `offered` is for another trust domain or
    /// none of its intermediates chains to these roots.
    pub fn adopt_intermediates(&self, offered: &Self) -> Result<Self, TrustBundleError> {
        if offered.trust_domain != self.trust_domain {
            return Err(TrustBundleError::TrustDomainMismatch {
                found: offered.trust_domain.to_string(),
            });
        }
        let roots = self
            .roots
            .iter()
            .map(|der| {
                parse(der).map_err(|reason| TrustBundleError::Malformed { index: 0, reason })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let chained: Vec<CertificateDer<'static>> = offered
            .intermediates
            .iter()
            .filter(|der| {
                parse(der).is_ok_and(|cert| {
                    roots
                        .iter()
                        .any(|root| cert.verify_signature(Some(root.public_key())).is_ok())
                })
            })
            .cloned()
            .collect();
        if chained.is_empty() {
            return Err(TrustBundleError::NotChained {
                index: self.roots.len(),
            });
        }
        Self::new(self.roots.clone(), chained)
    }

    /// The trust domain the CAs serve.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The root certificates (the trust anchors).
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The intermediate CA certificates.
    pub fn intermediates(&self) -> &[CertificateDer<'static>] {
        &self.intermediates
    }

    /// Every ECDSA P-256 CA key of the bundle under its signer ID (SHA-256 of its
    /// SubjectPublicKeyInfo), valid for the period of its certificate and bound to the
    /// bundle's trust domain: what key bundles and revocation lists are verified against.
    /// `TrustBundle` is itself a [`BundleAuthority`] backed by the same keys.
    pub fn authority(&self) -> EcdsaAuthority {
        self.authority.clone()
    }

    /// Verifies an X509-SVID presented by a client (EKU `clientAuth`): `chain` is the leaf
    /// followed by any intermediates. The bundle's own intermediates are also used to build
    /// the path.
    ///
    /// Checks the chain up to a root and the validity of every certificate at `now`
    /// (rustls-webpki), that the leaf is not a CA and has exactly one URI SAN naming an
    /// Entente principal in this trust domain, and, given a revocation list, that neither the
    /// principal nor the serial of any certificate in the path is revoked.
    pub fn verify_svid(
        &self,
        chain: &[CertificateDer<'_>],
        now: SystemTime,
        revocations: Option<&VerifiedRevocationList>,
    ) -> Result<VerifiedSvid, SvidError> {
        self.verify(chain, now, revocations, KeyUsage::client_auth())
    }

    /// Like [`verify_svid`](Self::verify_svid), for an SVID presented by a server (EKU
    /// `serverAuth`).
    pub fn verify_server_svid(
        &self,
        chain: &[CertificateDer<'_>],
        now: SystemTime,
        revocations: Option<&VerifiedRevocationList>,
    ) -> Result<VerifiedSvid, SvidError> {
        self.verify(chain, now, revocations, KeyUsage::server_auth())
    }

    fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        now: SystemTime,
        revocations: Option<&VerifiedRevocationList>,
        usage: KeyUsage,
    ) -> Result<VerifiedSvid, SvidError> {
        let (leaf, presented) = chain.split_first().ok_or(SvidError::EmptyChain)?;
        let end_entity = EndEntityCert::try_from(leaf).map_err(map_webpki)?;
        let intermediates: Vec<CertificateDer<'_>> = presented
            .iter()
            .chain(&self.intermediates)
            .map(|der| CertificateDer::from(der.as_ref()))
            .collect();
        let path = end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &self.anchors,
                &intermediates,
                clock::unix_time(now),
                usage,
                None,
                None,
            )
            .map_err(map_webpki)?;
        let issuer_serials: Vec<Vec<u8>> = path
            .intermediate_certificates()
            .map(|cert| cert.serial().to_vec())
            .collect();

        let cert = parse(leaf).map_err(SvidError::Malformed)?;
        if cert.is_ca() {
            return Err(SvidError::NotALeaf);
        }
        let key_usage = cert
            .key_usage()
            .map_err(|e| SvidError::Malformed(e.to_string()))?;
        if key_usage.is_some_and(|ku| ku.value.key_cert_sign() || ku.value.crl_sign()) {
            return Err(SvidError::NotALeaf);
        }
        let principal = principal_of(&cert)?;
        if principal.trust_domain() != self.trust_domain.as_str() {
            return Err(SvidError::ForeignTrustDomain {
                found: principal.to_string(),
                expected: self.trust_domain.to_string(),
            });
        }
        let serial = cert.raw_serial().to_vec();
        if let Some(list) = revocations {
            if list.is_principal_revoked(&principal) {
                return Err(SvidError::RevokedPrincipal(principal.to_string()));
            }
            let mut serials =
                std::iter::once(serial.as_slice()).chain(issuer_serials.iter().map(Vec::as_slice));
            if serials.any(|s| list.is_serial_revoked(s)) {
                return Err(SvidError::RevokedSerial);
            }
        }
        Ok(VerifiedSvid {
            principal,
            serial,
            issuer_serials,
            not_after: clock::from_cert_time(cert.validity().not_after.to_datetime()),
        })
    }
}

impl BundleAuthority for TrustBundle {
    fn verify_ca_signature(
        &self,
        signer: &[u8],
        message: &[u8],
        signature: &[u8],
        now_ms: u64,
    ) -> Result<(), BundleError> {
        self.authority
            .verify_ca_signature(signer, message, signature, now_ms)
    }

    fn trust_domain(&self) -> Option<&str> {
        Some(self.trust_domain.as_str())
    }
}

// === impl VerifiedSvid ===

impl VerifiedSvid {
    /// The agent or human the certificate names.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The certificate's serial number: the content bytes of its DER INTEGER.
    pub fn serial(&self) -> &[u8] {
        &self.serial
    }

    /// The serial numbers of the intermediate CA certificates the verified chain went
    /// through (leaf side first): revoking one revokes this certificate too.
    pub fn issuer_serials(&self) -> &[Vec<u8>] {
        &self.issuer_serials
    }

    /// When the certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

// === helpers ===

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err("trailing bytes after the certificate".to_owned());
    }
    Ok(cert)
}

fn parse_ca(index: usize, der: &[u8]) -> Result<X509Certificate<'_>, TrustBundleError> {
    let cert = parse(der).map_err(|reason| TrustBundleError::Malformed { index, reason })?;
    if !cert.is_ca() {
        return Err(TrustBundleError::NotCa { index });
    }
    Ok(cert)
}

/// Records the trust domain named by `cert`'s `spiffe://` URI SANs, refusing a conflict and
/// refusing a CA certificate that names no trust domain at all (it could otherwise anchor
/// chains and sign key bundles without saying for whom).
fn merge_trust_domain(
    current: &mut Option<TrustDomain>,
    cert: &X509Certificate<'_>,
) -> Result<(), TrustBundleError> {
    let uris = uri_sans(cert).map_err(|_| TrustBundleError::NoTrustDomain)?;
    if !uris.iter().any(|u| u.starts_with("spiffe:")) {
        return Err(TrustBundleError::NoTrustDomain);
    }
    for uri in uris {
        if !uri.starts_with("spiffe:") {
            continue;
        }
        let mismatch = || TrustBundleError::TrustDomainMismatch {
            found: uri.chars().take(300).collect(),
        };
        let id = SpiffeId::parse(uri).map_err(|_| mismatch())?;
        let td = TrustDomain::new(id.trust_domain()).map_err(|_| mismatch())?;
        match current {
            Some(existing) if *existing != td => return Err(mismatch()),
            Some(_) => {}
            None => *current = Some(td),
        }
    }
    Ok(())
}

/// Adds `cert`'s key to `authority` if it is an ECDSA P-256 key.
fn trust(authority: &mut EcdsaAuthority, cert: &X509Certificate<'_>) {
    let spki = cert.public_key().raw;
    if let Some(point) = csr::p256_point(spki) {
        let validity = cert.validity();
        authority.insert(
            signer_id(spki),
            point.to_vec(),
            clock::unix_ms(clock::from_cert_time(validity.not_before.to_datetime())),
            clock::unix_ms(clock::from_cert_time(validity.not_after.to_datetime())),
        );
    }
}

/// The URI SANs of `cert` (none if it has no SAN extension).
fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Result<Vec<&'a str>, String> {
    let san = cert.subject_alternative_name().map_err(|e| e.to_string())?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The principal named by the one URI SAN of an SVID.
fn principal_of(cert: &X509Certificate<'_>) -> Result<Principal, SvidError> {
    let uris = uri_sans(cert).map_err(SvidError::Malformed)?;
    match uris.as_slice() {
        [uri] => Ok(Principal::parse(uri)?),
        other => Err(SvidError::UriSanCount(other.len())),
    }
}

fn map_webpki(error: webpki::Error) -> SvidError {
    match error {
        webpki::Error::CertExpired { .. } => SvidError::Expired,
        webpki::Error::CertNotValidYet { .. } => SvidError::NotYetValid,
        webpki::Error::UnknownIssuer => SvidError::UnknownIssuer,
        webpki::Error::InvalidSignatureForPublicKey => SvidError::BadSignature,
        webpki::Error::CaUsedAsEndEntity => SvidError::NotALeaf,
        other => SvidError::Rejected(other),
    }
}
