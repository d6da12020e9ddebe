//! Message IDs: UUIDv7 ([RFC 9562]), so that IDs sort by creation time.
//!
//! The first 48 bits of a UUIDv7 are the Unix time in milliseconds, big-endian, so comparing two
//! [`MessageId`]s byte-wise (which is what `Ord` does) orders them by time first. This crate does
//! no I/O: the caller supplies the clock reading and the random bytes to [`MessageId::from_parts`].
//!
//! [RFC 9562]: https://www.rfc-editor.org/rfc/rfc9562#name-uuid-version-7

use std::fmt;
use std::str::FromStr;

use uuid::{Builder, Uuid, Variant};

/// A UUIDv7 message ID. `Display` prints it hyphenated and lowercase.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(Uuid);

/// Why bytes or a string are not a valid message ID.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageIdError {
    /// The byte slice is not 16 bytes long.
    #[error("message id is {len} bytes, expected 16")]
    WrongLength {
        /// Length of the input in bytes.
        len: usize,
    },
    /// The UUID is not version 7.
    #[error("message id is a version {version} uuid, expected version 7")]
    NotV7 {
        /// The version found in the UUID.
        version: usize,
    },
    /// The UUID does not use the RFC 9562 variant.
    #[error("message id does not use the rfc 9562 uuid variant")]
    WrongVariant,
    /// The string is not a hyphenated UUID.
    #[error("message id is not a hyphenated uuid (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`)")]
    Malformed,
}

// === impl MessageId ===

impl MessageId {
    /// The largest Unix time in milliseconds a UUIDv7 can hold (48 bits, in the year 10889).
    pub const MAX_UNIX_MILLIS: u64 = (1 << 48) - 1;

    /// Builds a UUIDv7 from a Unix time in milliseconds and random bytes.
    ///
    /// Times above [`MessageId::MAX_UNIX_MILLIS`] are clamped to it, which keeps IDs ordered by
    /// time. Six bits of `random` are overwritten by the version and variant, leaving 74 random
    /// bits.
    pub fn from_parts(unix_millis: u64, random: [u8; 10]) -> Self {
        let millis = unix_millis.min(Self::MAX_UNIX_MILLIS);
        Self(Builder::from_unix_timestamp_millis(millis, &random).into_uuid())
    }

    /// Accepts 16 bytes that hold a UUIDv7 with the RFC 9562 variant.
    pub fn from_bytes(bytes: [u8; 16]) -> Result<Self, MessageIdError> {
        let uuid = Uuid::from_bytes(bytes);
        if uuid.get_variant() != Variant::RFC4122 {
            return Err(MessageIdError::WrongVariant);
        }
        match uuid.get_version_num() {
            7 => Ok(Self(uuid)),
            version => Err(MessageIdError::NotV7 { version }),
        }
    }

    /// Like [`MessageId::from_bytes`], but from a slice that must be exactly 16 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, MessageIdError> {
        let bytes = <[u8; 16]>::try_from(bytes)
            .map_err(|_| MessageIdError::WrongLength { len: bytes.len() })?;
        Self::from_bytes(bytes)
    }

    /// The 16 bytes of the UUID, big-endian.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// The Unix time in milliseconds held in the first 48 bits.
    pub fn unix_millis(&self) -> u64 {
        let [a, b, c, d, e, f, ..] = *self.0.as_bytes();
        u64::from_be_bytes([0, 0, a, b, c, d, e, f])
    }

    /// Parses the hyphenated form, e.g. `01890a5d-ac96-774b-bcce-b302099a8057`.
    ///
    /// Hex digits may be in either case. Other UUID forms (simple, braced, URN) are rejected.
    pub fn parse(s: &str) -> Result<Self, MessageIdError> {
        if s.len() != HYPHENATED_LEN {
            return Err(MessageIdError::Malformed);
        }
        let uuid = Uuid::try_parse(s).map_err(|_| MessageIdError::Malformed)?;
        Self::from_bytes(uuid.into_bytes())
    }
}

impl FromStr for MessageId {
    type Err = MessageIdError;

    fn from_str(s: &str) -> Result<Self, MessageIdError> {
        Self::parse(s)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

// === helpers ===

const HYPHENATED_LEN: usize = 36;

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use proptest::prelude::*;

    use super::*;

    /// The UUIDv7 example from RFC 9562, appendix A.6.
    const RFC_EXAMPLE: &str = "017f22e2-79b0-7cc3-98c4-dc0c0c07398f";
    const RFC_EXAMPLE_MILLIS: u64 = 0x017F_22E2_79B0;

    #[test]
    fn parses_rfc_example() {
        let id = MessageId::parse(RFC_EXAMPLE).unwrap();
        assert_eq!(id.unix_millis(), RFC_EXAMPLE_MILLIS);
        assert_eq!(id.to_string(), RFC_EXAMPLE);
        assert_eq!(RFC_EXAMPLE.parse::<MessageId>().unwrap(), id);
    }

    #[test]
    fn from_parts_sets_time_version_and_variant() {
        let id = MessageId::from_parts(RFC_EXAMPLE_MILLIS, [0xff; 10]);
        assert_eq!(id.unix_millis(), RFC_EXAMPLE_MILLIS);
        let bytes = id.as_bytes();
        assert_eq!(bytes[6] >> 4, 7, "version nibble");
        assert_eq!(bytes[8] >> 6, 0b10, "variant bits");
        assert_eq!(MessageId::from_bytes(*bytes).unwrap(), id);
    }

    #[test]
    fn from_parts_clamps_time() {
        let max = MessageId::from_parts(MessageId::MAX_UNIX_MILLIS, [0; 10]);
        assert_eq!(max.unix_millis(), MessageId::MAX_UNIX_MILLIS);
        let over = MessageId::from_parts(u64::MAX, [0; 10]);
        assert_eq!(over.unix_millis(), MessageId::MAX_UNIX_MILLIS);
    }

    #[test]
    fn displays_lowercase_and_accepts_uppercase() {
        let id = MessageId::parse(&RFC_EXAMPLE.to_uppercase()).unwrap();
        assert_eq!(id.to_string(), RFC_EXAMPLE);
    }

    #[test]
    fn rejects_wrong_version() {
        let v4 = "9eebccd2-12bf-40a6-b262-65fe0487d453";
        assert_eq!(
            MessageId::parse(v4),
            Err(MessageIdError::NotV7 { version: 4 })
        );
        let mut bytes = *MessageId::parse(RFC_EXAMPLE).unwrap().as_bytes();
        bytes[6] = (bytes[6] & 0x0f) | 0x80;
        assert_eq!(
            MessageId::from_bytes(bytes),
            Err(MessageIdError::NotV7 { version: 8 })
        );
    }

    #[test]
    fn rejects_nil_and_max() {
        assert_eq!(
            MessageId::from_bytes([0; 16]),
            Err(MessageIdError::WrongVariant)
        );
        assert_eq!(
            MessageId::from_bytes([0xff; 16]),
            Err(MessageIdError::WrongVariant)
        );
    }

    #[test]
    fn rejects_wrong_variant() {
        let mut bytes = *MessageId::parse(RFC_EXAMPLE).unwrap().as_bytes();
        bytes[8] &= 0x3f; // NCS variant `0xxx`
        assert_eq!(
            MessageId::from_bytes(bytes),
            Err(MessageIdError::WrongVariant)
        );
        bytes[8] |= 0xc0; // Microsoft variant `110x`
        assert_eq!(
            MessageId::from_bytes(bytes),
            Err(MessageIdError::WrongVariant)
        );
    }

    #[test]
    fn rejects_wrong_slice_length() {
        let bytes = *MessageId::parse(RFC_EXAMPLE).unwrap().as_bytes();
        assert!(MessageId::from_slice(&bytes).is_ok());
        assert_eq!(
            MessageId::from_slice(&bytes[..15]),
            Err(MessageIdError::WrongLength { len: 15 })
        );
        assert_eq!(
            MessageId::from_slice(&[0; 17]),
            Err(MessageIdError::WrongLength { len: 17 })
        );
        assert_eq!(
            MessageId::from_slice(&[]),
            Err(MessageIdError::WrongLength { len: 0 })
        );
    }

    #[test]
    fn rejects_malformed_strings() {
        for s in [
            "",
            "not a uuid",
            "017f22e279b07cc398c4dc0c0c07398f",
            "{017f22e2-79b0-7cc3-98c4-dc0c0c07398f}",
            "urn:uuid:017f22e2-79b0-7cc3-98c4-dc0c0c07398f",
            "017f22e2-79b0-7cc3-98c4-dc0c0c07398g",
            "017f22e2-79b0-7cc3-98c4_dc0c0c07398f",
            " 017f22e2-79b0-7cc3-98c4-dc0c0c07398",
        ] {
            assert_eq!(MessageId::parse(s), Err(MessageIdError::Malformed), "{s}");
        }
    }

    proptest! {
        #[test]
        fn bytes_and_string_round_trip(millis in 0..=MessageId::MAX_UNIX_MILLIS, random in any::<[u8; 10]>()) {
            let id = MessageId::from_parts(millis, random);
            prop_assert_eq!(id.unix_millis(), millis);
            prop_assert_eq!(MessageId::from_bytes(*id.as_bytes()).unwrap(), id);
            prop_assert_eq!(MessageId::from_slice(id.as_bytes()).unwrap(), id);
            prop_assert_eq!(MessageId::parse(&id.to_string()).unwrap(), id);
        }

        #[test]
        fn ordering_follows_unix_millis(
            a in 0..=MessageId::MAX_UNIX_MILLIS,
            b in 0..=MessageId::MAX_UNIX_MILLIS,
            ra in any::<[u8; 10]>(),
            rb in any::<[u8; 10]>(),
        ) {
            let (x, y) = (MessageId::from_parts(a, ra), MessageId::from_parts(b, rb));
            if a != b {
                prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            }
        }

        #[test]
        fn from_bytes_never_panics(bytes in any::<[u8; 16]>()) {
            if let Ok(id) = MessageId::from_bytes(bytes) {
                prop_assert_eq!(id.as_bytes(), &bytes);
            }
        }
    }
}
