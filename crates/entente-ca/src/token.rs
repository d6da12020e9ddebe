//! One-time join tokens for enrollment.
//!
//! An operator creates a token bound to an agent ID (whose segment is part of it) or a human
//! ID, with an expiry; the agent or human presents it once with its CSR. A token is 256 random bits rendered as
//! `ent_` and 64 lowercase hex digits. Only its SHA-256 is kept, so the records can be stored
//! without the secret.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use aws_lc_rs::digest;
use entente_types::Principal;
use zeroize::Zeroize;

/// The prefix of every join token.
pub const TOKEN_PREFIX: &str = "ent_";

/// Hex digits after the prefix.
const TOKEN_HEX_LEN: usize = 64;

/// The segment of Entente's own services (`spiffe://TD/agent/system/hub`): no join token
/// enrolls an agent into it, so no agent can hold a certificate naming the hub.
pub const RESERVED_SEGMENT: &str = "system";

/// A join token: the secret an operator hands to an agent or a human. `Debug` does not show it, and it is
/// wiped from memory when dropped. It has no `PartialEq`: compare tokens only through their
/// hash, never their text.
#[derive(Clone)]
pub struct JoinToken(String);

/// What is stored about a token: its SHA-256, never the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// SHA-256 of the whole token text, prefix included.
    pub hash: [u8; 32],
    /// The agent or human the token enrolls.
    pub principal: Principal,
    /// When it was created.
    pub created: SystemTime,
    /// When it stops being accepted.
    pub expires: SystemTime,
    /// Whether it has been redeemed.
    pub used: bool,
}

/// The registry of join tokens.
#[derive(Debug, Clone, Default)]
pub struct JoinTokens {
    records: HashMap<[u8; 32], TokenInfo>,
}

/// Why a token was not created or not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The text is not `ent_` followed by 64 lowercase hex digits.
    #[error("malformed join token")]
    Malformed,
    /// No such token was issued (or it was purged).
    #[error("unknown join token")]
    Unknown,
    /// The token has expired.
    #[error("join token has expired")]
    Expired,
    /// The token was already redeemed.
    #[error("join token was already used")]
    AlreadyUsed,
    /// `now + ttl` is not a representable time.
    #[error("join token lifetime is out of range")]
    InvalidTtl,
    /// The agent's segment is reserved for Entente's own services (the hub).
    #[error("segment `{0}` is reserved and cannot be enrolled into")]
    ReservedSegment(String),
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

// === impl JoinToken ===

impl JoinToken {
    /// Checks the format of a presented token.
    pub fn parse(token: &str) -> Result<Self, TokenError> {
        let hex = token
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::Malformed)?;
        let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if hex.len() != TOKEN_HEX_LEN || !hex.bytes().all(lower_hex) {
            return Err(TokenError::Malformed);
        }
        Ok(Self(token.to_owned()))
    }

    /// The secret text, to show the operator once.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the token text: the key it is stored under.
    pub fn hash(&self) -> [u8; 32] {
        let digest = digest::digest(&digest::SHA256, self.0.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        out
    }

    fn generate() -> Result<Self, TokenError> {
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut secret).map_err(|_| TokenError::Random)?;
        let mut text = String::with_capacity(TOKEN_PREFIX.len() + TOKEN_HEX_LEN);
        text.push_str(TOKEN_PREFIX);
        for byte in secret {
            text.push(hex_digit(byte >> 4));
            text.push(hex_digit(byte & 0x0f));
        }
        secret.zeroize();
        Ok(Self(text))
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinToken(<redacted>)")
    }
}

impl Drop for JoinToken {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

// === impl JoinTokens ===

impl JoinTokens {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Restores a registry from stored records. A later record with the same hash replaces an
    /// earlier one.
    pub fn from_records(records: impl IntoIterator<Item = TokenInfo>) -> Self {
        Self {
            records: records.into_iter().map(|r| (r.hash, r)).collect(),
        }
    }

    /// Creates a token for `principal` (an agent or a human), valid for `ttl` from `now`.
    /// Returns the secret (to hand to the operator, once) and the stored record. An agent of
    /// the reserved segment [`RESERVED_SEGMENT`] is refused.
    pub fn create(
        &mut self,
        principal: impl Into<Principal>,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<(JoinToken, TokenInfo), TokenError> {
        let principal = principal.into();
        if let Principal::Agent(agent) = &principal
            && agent.segment() == RESERVED_SEGMENT
        {
            return Err(TokenError::ReservedSegment(RESERVED_SEGMENT.to_owned()));
        }
        let expires = now.checked_add(ttl).ok_or(TokenError::InvalidTtl)?;
        let token = JoinToken::generate()?;
        let info = TokenInfo {
            hash: token.hash(),
            principal,
            created: now,
            expires,
            used: false,
        };
        self.records.insert(info.hash, info.clone());
        Ok((token, info))
    }

    /// Redeems `token`, marking it used, and returns the agent or human it enrolls.
    ///
    /// A token is accepted once: any later attempt is [`TokenError::AlreadyUsed`], even after
    /// it expires (until it is purged).
    pub fn redeem(&mut self, token: &str, now: SystemTime) -> Result<Principal, TokenError> {
        let hash = JoinToken::parse(token)?.hash();
        let record = self.records.get_mut(&hash).ok_or(TokenError::Unknown)?;
        if record.used {
            return Err(TokenError::AlreadyUsed);
        }
        if now >= record.expires {
            return Err(TokenError::Expired);
        }
        record.used = true;
        Ok(record.principal.clone())
    }

    /// The record stored under `hash` (see [`JoinToken::hash`]).
    pub fn info(&self, hash: &[u8; 32]) -> Option<&TokenInfo> {
        self.records.get(hash)
    }

    /// Every record, in no particular order, for persistence.
    pub fn records(&self) -> impl Iterator<Item = &TokenInfo> {
        self.records.values()
    }

    /// Drops every record that expired at or before `now`, used or not. Returns how many.
    pub fn purge_expired(&mut self, now: SystemTime) -> usize {
        let before = self.records.len();
        self.records.retain(|_, r| r.expires > now);
        before - self.records.len()
    }

    /// How many records are held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

fn hex_digit(nibble: u8) -> char {
    char::from_digit(u32::from(nibble), 16).unwrap_or('0')
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use std::time::UNIX_EPOCH;

    use entente_types::{AgentId, HumanId, TrustDomain};

    use super::*;

    fn agent() -> Principal {
        Principal::from(
            AgentId::new(&TrustDomain::new("example.org").unwrap(), "ops", "bot").unwrap(),
        )
    }

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn token_format_is_prefix_and_64_lowercase_hex() {
        let mut tokens = JoinTokens::new();
        let (token, info) = tokens
            .create(agent(), Duration::from_secs(60), t(0))
            .unwrap();
        let text = token.as_str();
        assert_eq!(text.len(), 68);
        assert!(text.starts_with("ent_"));
        assert!(
            text[4..]
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        );
        assert_eq!(JoinToken::parse(text).unwrap().hash(), token.hash());
        assert_eq!(info.hash, token.hash());
        assert_eq!(info.expires, t(60));
        assert!(!info.used);
    }

    #[test]
    fn tokens_are_distinct() {
        let mut tokens = JoinTokens::new();
        let (a, _) = tokens
            .create(agent(), Duration::from_secs(60), t(0))
            .unwrap();
        let (b, _) = tokens
            .create(agent(), Duration::from_secs(60), t(0))
            .unwrap();
        assert_ne!(a.as_str(), b.as_str());
        assert_eq!(tokens.len(), 2);
    }

    #[test]
    fn redeem_once_then_already_used() {
        let mut tokens = JoinTokens::new();
        let (token, _) = tokens
            .create(agent(), Duration::from_secs(60), t(0))
            .unwrap();
        assert_eq!(tokens.redeem(token.as_str(), t(10)).unwrap(), agent());
        assert_eq!(
            tokens.redeem(token.as_str(), t(11)),
            Err(TokenError::AlreadyUsed)
        );
        // Still AlreadyUsed after expiry, never Unknown.
        assert_eq!(
            tokens.redeem(token.as_str(), t(100)),
            Err(TokenError::AlreadyUsed)
        );
        assert!(tokens.info(&token.hash()).unwrap().used);
    }

    #[test]
    fn expired_unknown_and_malformed_tokens_are_refused() {
        let mut tokens = JoinTokens::new();
        let (token, _) = tokens
            .create(agent(), Duration::from_secs(60), t(0))
            .unwrap();
        assert_eq!(
            tokens.redeem(token.as_str(), t(60)),
            Err(TokenError::Expired)
        );
        assert_eq!(
            tokens.redeem(token.as_str(), t(61)),
            Err(TokenError::Expired)
        );

        let unknown = format!("ent_{}", "ab".repeat(32));
        assert_eq!(tokens.redeem(&unknown, t(1)), Err(TokenError::Unknown));

        for bad in [
            "",
            "ent_",
            "ent_abc",
            &format!("ent_{}", "AB".repeat(32)),
            &format!("tok_{}", "ab".repeat(32)),
            &format!("ent_{}", "ab".repeat(33)),
            &format!("ent_{}g", "a".repeat(63)),
            &format!(" ent_{}", "ab".repeat(32)),
        ] {
            assert_eq!(
                tokens.redeem(bad, t(1)),
                Err(TokenError::Malformed),
                "{bad:?}"
            );
        }
        // Refused attempts don't consume the token.
        assert_eq!(tokens.redeem(token.as_str(), t(1)).unwrap(), agent());
    }

    #[test]
    fn stored_records_hold_no_plaintext_and_round_trip() {
        let mut tokens = JoinTokens::new();
        let (token, _) = tokens
            .create(agent(), Duration::from_secs(60), t(0))
            .unwrap();
        let records: Vec<TokenInfo> = tokens.records().cloned().collect();
        let dump = format!("{records:?}");
        let secret_hex = &token.as_str()[4..];
        assert!(!dump.contains(secret_hex));
        assert!(!format!("{tokens:?}").contains(secret_hex));
        assert!(!format!("{token:?}").contains(secret_hex));
        let expected: [u8; 32] = digest::digest(&digest::SHA256, token.as_str().as_bytes())
            .as_ref()
            .try_into()
            .unwrap();
        assert_eq!(records[0].hash, expected);

        let mut restored = JoinTokens::from_records(records);
        assert_eq!(restored.redeem(token.as_str(), t(1)).unwrap(), agent());
        assert_eq!(
            restored.redeem(token.as_str(), t(2)),
            Err(TokenError::AlreadyUsed)
        );
    }

    #[test]
    fn purge_drops_only_expired_records() {
        let mut tokens = JoinTokens::new();
        let (short, _) = tokens
            .create(agent(), Duration::from_secs(10), t(0))
            .unwrap();
        let (long, _) = tokens
            .create(agent(), Duration::from_secs(100), t(0))
            .unwrap();
        assert_eq!(tokens.purge_expired(t(10)), 1);
        assert_eq!(
            tokens.redeem(short.as_str(), t(11)),
            Err(TokenError::Unknown)
        );
        assert_eq!(tokens.redeem(long.as_str(), t(11)).unwrap(), agent());
    }

    #[test]
    fn ttl_overflow_is_an_error() {
        let mut tokens = JoinTokens::new();
        assert_eq!(
            tokens
                .create(agent(), Duration::from_secs(u64::MAX), t(0))
                .map(|_| ()),
            Err(TokenError::InvalidTtl)
        );
        assert!(tokens.is_empty());
    }

    #[test]
    fn the_reserved_segment_cannot_be_enrolled_into() {
        let td = entente_types::TrustDomain::new("example.org").unwrap();
        let hub = AgentId::new(&td, RESERVED_SEGMENT, "hub").unwrap();
        let err = JoinTokens::new()
            .create(hub, Duration::from_secs(60), SystemTime::now())
            .unwrap_err();
        assert_eq!(err, TokenError::ReservedSegment("system".into()));
    }

    #[test]
    fn humans_get_tokens_too() {
        let td = TrustDomain::new("example.org").unwrap();
        let ann = Principal::from(HumanId::new(&td, "ann").unwrap());
        let mut tokens = JoinTokens::new();
        let (token, info) = tokens
            .create(ann.clone(), Duration::from_secs(60), t(0))
            .unwrap();
        assert_eq!(info.principal, ann);
        assert_eq!(tokens.redeem(token.as_str(), t(1)).unwrap(), ann);
    }
}
