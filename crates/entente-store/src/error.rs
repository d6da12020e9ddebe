//! The one error type of this crate.
//!
//! Messages are lowercase and put names and paths in backticks. They carry no stored values: a
//! token hash or a key bundle never appears in a message.

/// Everything that can go wrong in a [`Store`](crate::Store).
///
/// Kinds: the token and version variants are outcomes the caller asked about (refuse the peer);
/// [`Corrupt`](Self::Corrupt) and [`FormatVersion`](Self::FormatVersion) mean the stored data
/// can't be trusted (stop, don't guess); [`Unavailable`](Self::Unavailable) means the storage
/// underneath failed (retry or fail closed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No join token with this hash is stored.
    #[error("unknown join token")]
    TokenUnknown,

    /// The join token was redeemed before.
    #[error("join token already used")]
    TokenUsed,

    /// The join token's expiry has passed.
    #[error("join token expired")]
    TokenExpired,

    /// A versioned value was offered with a version not greater than the stored one.
    #[error("stale version {offered}: version {stored} is stored")]
    StaleVersion {
        /// The version in the store.
        stored: u64,
        /// The version that was refused.
        offered: u64,
    },

    /// An entry that must be new already exists.
    #[error("{what} already exists")]
    AlreadyExists {
        /// What kind of entry, e.g. `"join token"`.
        what: &'static str,
    },

    /// The store holds as many entries of a kind as it may.
    #[error("{what}: {max} are stored, the most allowed")]
    Full {
        /// What kind of entry, e.g. `"join tokens"`.
        what: &'static str,
        /// The bound.
        max: u64,
    },

    /// A stored value, or the database itself, can't be decoded.
    #[error("{what} is corrupt: {reason}")]
    Corrupt {
        /// What was being read, e.g. ``"agent `spiffe://…`"`` or ``"database file `…`"``.
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The storage underneath failed: I/O, a lock held by another process, a lost connection.
    /// Carries the engine's message only.
    #[error("store unavailable: {0}")]
    Unavailable(String),

    /// The database was written in a format version this build does not know.
    #[error("store format version {found} is not supported (this build reads version {supported})")]
    FormatVersion {
        /// The version the database declares.
        found: u64,
        /// The version this build reads and writes.
        supported: u64,
    },
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use super::StoreError;

    #[test]
    fn messages_are_lowercase_one_line() {
        let all = [
            StoreError::TokenUnknown,
            StoreError::TokenUsed,
            StoreError::TokenExpired,
            StoreError::StaleVersion {
                stored: 4,
                offered: 3,
            },
            StoreError::AlreadyExists { what: "join token" },
            StoreError::Corrupt {
                what: "agent `a`".to_owned(),
                reason: "expected value".to_owned(),
            },
            StoreError::Unavailable("disk full".to_owned()),
            StoreError::FormatVersion {
                found: 9,
                supported: 1,
            },
        ];
        for err in all {
            let msg = err.to_string();
            let first = msg.chars().next().unwrap();
            assert!(!first.is_uppercase(), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
        assert_eq!(
            StoreError::StaleVersion {
                stored: 4,
                offered: 3
            }
            .to_string(),
            "stale version 3: version 4 is stored"
        );
    }
}
