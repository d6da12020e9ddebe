//! The client side of the hub's TLS, for the SDK and tests.
//!
//! The hub's certificate is an X509-SVID with only a URI SAN, so web-PKI name checks can't
//! apply. [`HubServerVerifier`] instead verifies the chain against the trust bundle
//! ([`TrustBundle::verify_server_svid`]: root, validity, EKU `serverAuth`, one SPIFFE ID of the
//! trust domain) and requires that the SPIFFE ID be the hub's
//! ([`hub_id`](crate::hub_id)). The server name the client dials (normally
//! [`hub_server_name`](crate::hub_server_name)) is used for SNI only.
//!
//! The hub's chain is built through the intermediates of the client's own trust bundle, not
//! through those the server presents: a retired intermediate (revoked, and gone from every
//! bundle an agent renews with) can't vouch for a server even if its key leaked and its
//! certificate is still within its validity. Only a bundle without intermediates (roots
//! alone, as an operator may hand out for enrollment) and an enrollment, whose bundle came out
//! of band and may predate a rollover, take the presented ones.

use std::sync::Arc;

use entente_ca::{TrustBundle, VerifiedRevocationList};
use entente_types::{IdError, Principal};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::tls::provider;
use crate::verifier::{svid_error, system_time};

/// Verifies that the server is the hub of a trust domain.
#[derive(Debug, Clone)]
pub struct HubServerVerifier {
    trust: TrustBundle,
    expected: Principal,
    revocations: Option<Arc<VerifiedRevocationList>>,
    /// Whether the server's presented intermediates may build its chain.
    presented_intermediates: bool,
    provider: Arc<CryptoProvider>,
}

/// Why a client TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientTlsError {
    /// rustls refused the key, certificate or settings.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// The hub's ID could not be formed in the bundle's trust domain.
    #[error("hub id: {0}")]
    Id(#[from] IdError),
}

// === impl HubServerVerifier ===

impl HubServerVerifier {
    /// Expects the hub of `trust`'s trust domain.
    pub fn new(trust: TrustBundle) -> Result<Self, ClientTlsError> {
        let expected = Principal::from(crate::hub_id(trust.trust_domain())?);
        Ok(Self::expecting(trust, expected))
    }

    /// Expects a server presenting an SVID for `expected`, chained through the intermediates
    /// of `trust` (through those it presents only if `trust` lists none).
    pub fn expecting(trust: TrustBundle, expected: Principal) -> Self {
        Self {
            trust,
            expected,
            revocations: None,
            presented_intermediates: false,
            provider: provider(),
        }
    }

    /// Also builds the server's chain through the intermediates it presents, that a root of
    /// the trust bundle signed: for an enrollment, whose bundle, handed out of band, may not
    /// list the intermediate in use since a rollover.
    pub fn with_presented_intermediates(mut self) -> Self {
        self.presented_intermediates = true;
        self
    }

    /// Also refuses a server certificate revoked by `list`.
    pub fn with_revocations(mut self, list: Arc<VerifiedRevocationList>) -> Self {
        self.revocations = Some(list);
        self
    }
}

impl ServerCertVerifier for HubServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = Vec::with_capacity(intermediates.len() + 1);
        chain.push(CertificateDer::from(end_entity.as_ref()));
        if self.presented_intermediates || self.trust.intermediates().is_empty() {
            chain.extend(
                intermediates
                    .iter()
                    .map(|c| CertificateDer::from(c.as_ref())),
            );
        }
        let svid = self
            .trust
            .verify_server_svid(&chain, system_time(now), self.revocations.as_deref())
            .map_err(svid_error)?;
        if svid.principal() != &self.expected {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

// === configurations ===

/// A TLS 1.3 client configuration (aws-lc-rs, ALPN `h2`) that presents `chain` (the agent's
/// X509-SVID, leaf first) with `key`, and accepts only the hub of `trust`'s trust domain,
/// chained through `trust`'s own intermediates.
pub fn client_config(
    trust: &TrustBundle,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ClientConfig, ClientTlsError> {
    let verifier = HubServerVerifier::new(trust.clone())?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A TLS 1.3 client configuration without a client certificate, for enrollment: dial
/// [`enroll_server_name`](crate::enroll_server_name). The hub's chain may go through an
/// intermediate it presents that `trust` does not list
/// ([`HubServerVerifier::with_presented_intermediates`]).
pub fn enroll_client_config(trust: &TrustBundle) -> Result<ClientConfig, ClientTlsError> {
    let verifier = HubServerVerifier::new(trust.clone())?.with_presented_intermediates();
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The server name to dial for the hub of `trust`'s trust domain:
/// [`hub_server_name`](crate::hub_server_name) as a rustls `ServerName`.
pub fn server_name(trust: &TrustBundle) -> Result<ServerName<'static>, ClientTlsError> {
    ServerName::try_from(crate::hub_server_name(trust.trust_domain()))
        .map_err(|_| ClientTlsError::Tls(rustls::Error::General("invalid server name".into())))
}
