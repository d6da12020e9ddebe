//! rcgen's remote-signing traits over a [`KeyStore`] key: rcgen builds the certificate and asks
//! the store for the signature, so it never holds private key bytes.

use std::sync::{Arc, Mutex};

use entente_keystore::{KeyName, KeyStore, KeyStoreError, PublicKey};
use rcgen::{PublicKeyData, SignatureAlgorithm, SigningKey};

/// An ECDSA P-256 key in a key store, usable as an rcgen signing key.
///
/// rcgen's error type can't carry the key store's error, so the first failure is kept here and
/// taken with [`take_error`](Self::take_error) once rcgen returns `RemoteKeyError`. Make one
/// signer per operation so that concurrent operations don't see each other's errors.
#[derive(Debug)]
pub(crate) struct KeyStoreSigner {
    keystore: Arc<dyn KeyStore>,
    name: KeyName,
    public: PublicKey,
    error: Mutex<Option<KeyStoreError>>,
}

impl KeyStoreSigner {
    /// A signer for `name`, whose public key is `public` (already checked to be ECDSA P-256).
    pub(crate) fn new(keystore: Arc<dyn KeyStore>, name: KeyName, public: PublicKey) -> Self {
        Self {
            keystore,
            name,
            public,
            error: Mutex::new(None),
        }
    }

    /// The key store error behind a failed signature, if there was one.
    pub(crate) fn take_error(&self) -> Option<KeyStoreError> {
        self.error.lock().ok().and_then(|mut e| e.take())
    }

    fn record(&self, error: KeyStoreError) {
        if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert(error);
        }
    }
}

impl PublicKeyData for KeyStoreSigner {
    fn der_bytes(&self) -> &[u8] {
        &self.public.bytes
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for KeyStoreSigner {
    /// Signs in the key store, then checks the signature against the expected public key so
    /// that a store whose key changed underneath us can't produce a certificate that won't
    /// verify.
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let signed = self
            .keystore
            .sign(&self.name, msg)
            .and_then(|sig| self.public.verify(msg, &sig).map(|()| sig));
        signed.map_err(|e| {
            self.record(e);
            rcgen::Error::RemoteKeyError
        })
    }
}
