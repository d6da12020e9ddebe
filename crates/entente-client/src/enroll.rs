//! Enrollment: a join token, a fresh TLS key and CSR, and fresh message keys, exchanged with the
//! hub for an X509-SVID and a CA-signed key bundle.
//!
//! The trust bundle obtained out of band stays the anchor: from the trust bundle the hub sends
//! back, only intermediates one of its roots signed are adopted, so that an agent enrolling
//! during an intermediate CA rollover already knows the staged intermediate.

use std::time::{Duration, SystemTime};

use entente_ca::TrustBundle;
use entente_crypto::MessageKeys;
use entente_types::Principal;
use entente_wire::{EnrollRequest, EnrollResponse, Limits};
use rustls_pki_types::CertificateDer;
use tokio::net::ToSocketAddrs;
use zeroize::Zeroizing;

use crate::identity::enrollment_trust;
use crate::{Error, ErrorKind, Identity, transport::Transport};

/// The gRPC path of enrollment.
const ENROLL_PATH: &str = "/entente.v1.Enroll/Enroll";

/// How long enrollment may take.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);

/// Enrolls with the hub at `hub` using a one-time join `token`.
///
/// `trust` is the trust bundle obtained out of band (the hub operator's `ca.pem`): the hub is
/// verified against it, and the returned identity is checked against its roots, never against
/// roots the hub sends. The identity's trust bundle is `trust` with the intermediates of the
/// hub's trust bundle that a root of `trust` signed (during an intermediate rollover, the
/// staged or new intermediate); if the hub's bundle does not parse, brings none, or would not
/// verify the issued key bundle, it is `trust` as given. The keys are generated here and never
/// leave this process; save the identity with [`Identity::save`].
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let trust = entente_ca::TrustBundle::from_pem(&std::fs::read_to_string("ca.pem")?)?;
/// let identity = entente_client::enroll("127.0.0.1:7443", &trust, "ent_…").await?;
/// identity.save(std::path::Path::new("alice"))?;
/// # Ok(())
/// # }
/// ```
pub async fn enroll(
    hub: impl ToSocketAddrs,
    trust: &TrustBundle,
    token: &str,
) -> Result<Identity, Error> {
    let tls_key = TlsKeyRequest::generate()?;
    let message_keys = MessageKeys::generate()
        .map_err(|e| Error::new(ErrorKind::Crypto, format!("key generation failed: {e}")))?;
    let request = EnrollRequest {
        token: token.trim().to_owned(),
        csr: tls_key.csr,
        ed25519_public: message_keys.ed25519_public().to_vec(),
        x25519_public: message_keys.x25519_public().to_vec(),
    };
    let (transport, driver) = Transport::connect_enroll(trust, hub, Limits::default()).await?;
    let response: Result<EnrollResponse, Error> = transport
        .unary(ENROLL_PATH, request, ENROLL_TIMEOUT, "enrollment")
        .await;
    driver.abort();
    let response = response?;
    let chain: Vec<CertificateDer<'static>> = response
        .certificate_chain
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let bundle = response.key_bundle.ok_or_else(|| {
        Error::new(
            ErrorKind::Protocol,
            "the hub's enrollment answer has no key bundle",
        )
    })?;
    let principal = Principal::parse(&bundle.principal).map_err(|e| {
        Error::new(
            ErrorKind::Protocol,
            format!("the hub's key bundle names no valid principal: {e}"),
        )
    })?;
    let now = SystemTime::now();
    let trust = enrollment_trust(trust, &response.trust_bundle_pem, &bundle, now);
    Identity::new(
        principal,
        chain,
        tls_key.pkcs8,
        message_keys,
        bundle,
        trust,
        now,
    )
    .map_err(|e| {
        Error::new(
            ErrorKind::Protocol,
            format!("the credentials the hub issued do not check out: {e}"),
        )
    })
}

/// A fresh ECDSA P-256 TLS key and a certificate signing request for it, for enrollment and
/// renewal. The CSR names nothing: the hub decides the certificate's name.
pub(crate) struct TlsKeyRequest {
    /// The CSR, DER.
    pub(crate) csr: Vec<u8>,
    /// The private key, PKCS#8 DER.
    pub(crate) pkcs8: Zeroizing<Vec<u8>>,
}

impl TlsKeyRequest {
    pub(crate) fn generate() -> Result<Self, Error> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| Error::new(ErrorKind::Crypto, format!("key generation failed: {e}")))?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .map_err(|e| Error::new(ErrorKind::Crypto, format!("csr creation failed: {e}")))?;
        Ok(Self {
            csr: csr.der().to_vec(),
            pkcs8: Zeroizing::new(key.serialize_der()),
        })
    }
}
