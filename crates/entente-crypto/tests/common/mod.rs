//! Test fixtures: a CA key, agents with verified key bundles.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair},
};
use entente_crypto::{
    EcdsaAuthority, KeyBundleBody, KeyBundleIn, MessageKeys, VerifiedKeyBundle, signer_id,
};
use entente_types::Principal;
use entente_wire as wire;

pub mod vectors;

pub const NOW: u64 = 1_800_000_000_000;
pub const DAY: u64 = 86_400_000;

pub struct TestCa {
    pub key: EcdsaKeyPair,
    pub signer: [u8; 32],
    pub authority: EcdsaAuthority,
}

impl TestCa {
    pub fn new() -> Self {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new())
                .unwrap();
        Self::from_pkcs8(pkcs8.as_ref())
    }

    pub fn from_pkcs8(pkcs8: &[u8]) -> Self {
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8).unwrap();
        let public = key.public_key().as_ref().to_vec();
        // The ID is a hash of the key: any stable bytes serve for these tests.
        let signer = signer_id(&public);
        let mut authority = EcdsaAuthority::for_trust_domain("acme.internal");
        authority.insert(signer, public, 0, u64::MAX);
        Self {
            key,
            signer,
            authority,
        }
    }

    pub fn key_public(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    pub fn sign_bundle(&self, body: KeyBundleBody) -> wire::KeyBundle {
        body.sign(self.signer, |input| {
            Ok::<_, ()>(
                self.key
                    .sign(&SystemRandom::new(), input)
                    .unwrap()
                    .as_ref()
                    .to_vec(),
            )
        })
        .unwrap()
    }
}

pub struct Agent {
    pub id: Principal,
    pub keys: Arc<MessageKeys>,
    pub bundle: VerifiedKeyBundle,
}

impl Agent {
    pub fn new(ca: &TestCa, name: &str) -> Self {
        Self::with_keys(ca, name, MessageKeys::generate().unwrap())
    }

    pub fn with_keys(ca: &TestCa, name: &str, keys: MessageKeys) -> Self {
        let id = Principal::parse(&format!("spiffe://acme.internal/agent/ops/{name}")).unwrap();
        let body = KeyBundleBody {
            principal: id.clone(),
            ed25519_public: keys.ed25519_public(),
            x25519_public: keys.x25519_public(),
            epoch: 1,
            not_before_ms: NOW - DAY,
            not_after_ms: NOW + DAY,
        };
        let bundle = KeyBundleIn::from_wire(ca.sign_bundle(body))
            .unwrap()
            .verify(&ca.authority, NOW)
            .unwrap();
        Self {
            id,
            keys: Arc::new(keys),
            bundle,
        }
    }

    pub fn opener(&self) -> entente_crypto::Opener {
        entente_crypto::Opener::new(self.id.clone(), 1, self.keys.clone(), Default::default())
    }

    /// A sealer on `channel` on `epoch` (with a secret of its own).
    pub fn sealer_on_epoch(
        &self,
        channel: &str,
        recipients: &[&Agent],
        epoch: u64,
    ) -> (entente_crypto::Sealer, wire::SenderKey) {
        let bundles: Vec<_> = recipients.iter().map(|a| a.bundle.clone()).collect();
        entente_crypto::danger::danger_sealer_on_epoch(
            self.id.clone(),
            1,
            self.keys.clone(),
            channel.parse().unwrap(),
            &bundles,
            Default::default(),
            NOW,
            epoch,
        )
        .unwrap()
    }

    pub fn sealer(
        &self,
        channel: &str,
        recipients: &[&Agent],
    ) -> (entente_crypto::Sealer, wire::SenderKey) {
        let bundles: Vec<_> = recipients.iter().map(|a| a.bundle.clone()).collect();
        entente_crypto::Sealer::new(
            self.id.clone(),
            1,
            self.keys.clone(),
            channel.parse().unwrap(),
            &bundles,
            Default::default(),
            NOW,
        )
        .unwrap()
    }
}
