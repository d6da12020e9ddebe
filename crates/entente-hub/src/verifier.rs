//! The hub's client-certificate verifier: strict X509-SVID checks at the TLS handshake.
//!
//! [`SvidClientVerifier`] wraps rustls' `WebPkiClientVerifier` (chain to a root of the trust
//! bundle, validity, EKU `clientAuth`, handshake signatures) and additionally runs
//! [`TrustBundle::verify_svid`] with the revocation list in force, so that a certificate from
//! another CA, expired, revoked (by serial or principal), or without exactly one Entente SPIFFE
//! ID of our trust domain never completes a handshake. A certificate naming the hub itself is
//! refused too. Every [`SvidError`] becomes a TLS alert through one function, [`svid_error`].
//!
//! A resumed TLS 1.3 session does not come through the verifier: the hub runs
//! [`SvidClientVerifier::verify_chain`] again on the chain every connection carries, resumed
//! or not, before serving it (see [`crate::tls`] for how tickets are bound).

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use entente_ca::{SvidError, TrustBundle, VerifiedRevocationList, VerifiedSvid};
use entente_types::Principal;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::HubError;

/// The revocation list in force, shared by the verifier and the hub, replaced live.
#[derive(Debug, Default)]
pub(crate) struct RevocationState {
    current: RwLock<Option<Arc<VerifiedRevocationList>>>,
}

/// Verifies client X509-SVIDs against the trust bundle and the live revocation list.
#[derive(Debug)]
pub(crate) struct SvidClientVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    trust: TrustBundle,
    revocations: Arc<RevocationState>,
    hub: Principal,
}

// === impl RevocationState ===

impl RevocationState {
    /// The list in force, if any.
    pub(crate) fn current(&self) -> Option<Arc<VerifiedRevocationList>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `list` in force if its version is above the one held.
    pub(crate) fn replace(
        &self,
        list: VerifiedRevocationList,
    ) -> Result<Arc<VerifiedRevocationList>, HubError> {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = current.as_ref()
            && list.version() <= held.version()
        {
            return Err(HubError::StaleRevocations {
                held: held.version(),
                got: list.version(),
            });
        }
        let list = Arc::new(list);
        *current = Some(list.clone());
        Ok(list)
    }
}

// === impl SvidClientVerifier ===

impl SvidClientVerifier {
    pub(crate) fn new(
        trust: TrustBundle,
        revocations: Arc<RevocationState>,
        hub: Principal,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, HubError> {
        let mut roots = RootCertStore::empty();
        for root in trust.roots() {
            roots
                .add(root.clone())
                .map_err(|e| HubError::Tls(e.to_string()))?;
        }
        let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| HubError::Tls(e.to_string()))?;
        Ok(Self {
            webpki,
            trust,
            revocations,
            hub,
        })
    }

    /// The revocation list in force, as this verifier reads it.
    pub(crate) fn revocations(&self) -> &Arc<RevocationState> {
        &self.revocations
    }

    /// The SVID checks on top of webpki's: chain, validity, SPIFFE ID, revocation, not the hub.
    pub(crate) fn verify_chain(
        &self,
        chain: &[CertificateDer<'_>],
        now: SystemTime,
    ) -> Result<VerifiedSvid, rustls::Error> {
        let revocations = self.revocations.current();
        let svid = self
            .trust
            .verify_svid(chain, now, revocations.as_deref())
            .map_err(svid_error)?;
        if svid.principal() == &self.hub {
            // Only the hub holds the hub's identity; a client presenting it is an impostor.
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(svid)
    }
}

impl ClientCertVerifier for SvidClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.webpki
            .verify_client_cert(end_entity, intermediates, now)?;
        let mut chain = Vec::with_capacity(intermediates.len() + 1);
        chain.push(CertificateDer::from(end_entity.as_ref()));
        chain.extend(
            intermediates
                .iter()
                .map(|c| CertificateDer::from(c.as_ref())),
        );
        self.verify_chain(&chain, system_time(now))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

// === helpers ===

/// The one mapping from an SVID error to a TLS error (and so to the alert the peer sees).
pub(crate) fn svid_error(error: SvidError) -> rustls::Error {
    let certificate = match error {
        SvidError::Expired => CertificateError::Expired,
        SvidError::NotYetValid => CertificateError::NotValidYet,
        SvidError::UnknownIssuer => CertificateError::UnknownIssuer,
        SvidError::BadSignature => CertificateError::BadSignature,
        SvidError::RevokedSerial | SvidError::RevokedPrincipal(_) => CertificateError::Revoked,
        SvidError::EmptyChain | SvidError::Malformed(_) => CertificateError::BadEncoding,
        // Not a leaf, wrong key usage, not exactly one URI SAN, not an Entente principal of our
        // trust domain, and whatever else webpki refused.
        _ => CertificateError::ApplicationVerificationFailure,
    };
    rustls::Error::InvalidCertificate(certificate)
}

/// rustls' time as a `SystemTime`.
pub(crate) fn system_time(now: UnixTime) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(now.as_secs()))
        .unwrap_or(UNIX_EPOCH)
}
