//! The per-log HMAC key that protects sensitive fields, as Vault's audit devices do.
//!
//! A sensitive value enters a record only as `HMAC-SHA256(key, "entente/v1/audit-field" 0x00 ‖
//! value)`. Whoever holds the key can check that a value is the one recorded
//! ([`AuditKey::matches`]) or search the log for it; other readers learn nothing about it,
//! not even by guessing low-entropy values.

use std::fmt;

use aws_lc_rs::{
    constant_time,
    hmac::{self, HMAC_SHA256},
    rand::{SecureRandom, SystemRandom},
};
use zeroize::Zeroizing;

use crate::record::{FieldMac, Text};

/// The label in front of every protected value.
pub const FIELD_LABEL: &str = "entente/v1/audit-field";

/// The label in front of the key-ID input.
pub const KEY_ID_LABEL: &str = "entente/v1/audit-key-id";

/// Why a key could not be made or loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditKeyError {
    /// The key bytes are not 32 bytes.
    #[error("audit HMAC key must be 32 bytes, not {0}")]
    Length(usize),
    /// The system random source failed.
    #[error("audit HMAC key generation failed")]
    Generation,
}

/// The identifier of an [`AuditKey`]: `HMAC-SHA256(key, "entente/v1/audit-key-id" 0x00)`,
/// first 8 bytes. It names the key in the log's metadata without revealing it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuditKeyId(pub [u8; 8]);

impl AuditKeyId {
    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 16 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 16 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 8];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Debug for AuditKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuditKeyId({})", self.to_hex())
    }
}

impl fmt::Display for AuditKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A log's HMAC-SHA256 key. The raw bytes are wiped on drop.
pub struct AuditKey {
    bytes: Zeroizing<[u8; 32]>,
    key: hmac::Key,
    id: AuditKeyId,
}

impl AuditKey {
    /// The key length in bytes.
    pub const LEN: usize = 32;

    /// A fresh key from the system random source.
    pub fn generate() -> Result<Self, AuditKeyError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| AuditKeyError::Generation)?;
        Ok(Self::from_array(bytes))
    }

    /// Loads a key saved with [`to_bytes`](Self::to_bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AuditKeyError> {
        let mut array = Zeroizing::new([0u8; 32]);
        if bytes.len() != Self::LEN {
            return Err(AuditKeyError::Length(bytes.len()));
        }
        array.copy_from_slice(bytes);
        Ok(Self::from_array(array))
    }

    /// The raw key, to store encrypted (in the key store). Wiped when dropped.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        self.bytes.clone()
    }

    /// The key's public identifier.
    pub fn id(&self) -> AuditKeyId {
        self.id
    }

    /// The MAC of a sensitive value.
    pub fn mac(&self, value: &str) -> FieldMac {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(FIELD_LABEL.as_bytes());
        ctx.update(&[0]);
        ctx.update(value.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        FieldMac(out)
    }

    /// A record field holding the MAC of `value` instead of `value`.
    pub fn protect(&self, value: &str) -> Text {
        Text::Mac(self.mac(value))
    }

    /// Whether `plaintext` is the value whose MAC is `mac` (compared in constant time).
    pub fn matches(&self, mac: &FieldMac, plaintext: &str) -> bool {
        constant_time::verify_slices_are_equal(&self.mac(plaintext).0, &mac.0).is_ok()
    }

    /// Whether a record field holds `plaintext`: in clear, or as its MAC under this key.
    pub fn field_matches(&self, field: &Text, plaintext: &str) -> bool {
        match field {
            Text::Clear(s) => s == plaintext,
            Text::Mac(mac) => self.matches(mac, plaintext),
        }
    }

    fn from_array(bytes: Zeroizing<[u8; 32]>) -> Self {
        let key = hmac::Key::new(HMAC_SHA256, bytes.as_ref());
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(KEY_ID_LABEL.as_bytes());
        ctx.update(&[0]);
        let tag = ctx.sign();
        let mut id = [0u8; 8];
        id.copy_from_slice(tag.as_ref().get(..8).unwrap_or(&[0; 8]));
        Self {
            bytes,
            key,
            id: AuditKeyId(id),
        }
    }
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn macs_verify_only_their_plaintext_under_their_key() {
        let key = AuditKey::from_bytes(&[1; 32]).unwrap();
        let mac = key.mac("rotate the prod database password");
        assert!(key.matches(&mac, "rotate the prod database password"));
        assert!(!key.matches(&mac, "rotate the prod database password "));
        let other = AuditKey::from_bytes(&[2; 32]).unwrap();
        assert!(!other.matches(&mac, "rotate the prod database password"));
        assert_ne!(key.id(), other.id());
        let field = key.protect("x");
        assert!(key.field_matches(&field, "x"));
        assert!(!key.field_matches(&field, "y"));
        assert!(key.field_matches(&Text::Clear("y".into()), "y"));
    }

    #[test]
    fn keys_round_trip_and_bad_lengths_are_refused() {
        let key = AuditKey::generate().unwrap();
        let again = AuditKey::from_bytes(key.to_bytes().as_ref()).unwrap();
        assert_eq!(key.id(), again.id());
        assert_eq!(key.mac("v"), again.mac("v"));
        assert_eq!(
            AuditKey::from_bytes(&[0; 31]).unwrap_err(),
            AuditKeyError::Length(31)
        );
        assert!(!format!("{key:?}").contains(&format!("{:?}", key.to_bytes().as_ref())));
        assert_eq!(AuditKeyId::from_hex(&key.id().to_hex()), Some(key.id()));
    }

    #[test]
    fn the_mac_is_hmac_sha256_over_the_label_and_value() {
        // Pins the framing of the input: the label, a zero byte, then the value.
        let key = AuditKey::from_bytes(&[0x0b; 32]).unwrap();
        let direct = hmac::sign(
            &hmac::Key::new(HMAC_SHA256, &[0x0b; 32]),
            b"entente/v1/audit-field\0Hi There",
        );
        assert_eq!(key.mac("Hi There").0.as_slice(), direct.as_ref());
    }
}
