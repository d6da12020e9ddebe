//! The structured records a [`Store`](crate::Store) keeps: agents and join tokens.
//!
//! Both serialize to JSON with byte strings as lowercase hex, so a dump of the store is readable.
//! On disk the embedded backend prefixes each value with a one-byte value version (see
//! `docs/STORE.md`); the JSON itself is the v1 shape and must not change without bumping it
//! (an agent record with `renewed_from` is written as version 2).

use serde::{Deserialize, Serialize};

/// An enrolled agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The agent's SPIFFE ID, the key of the record.
    pub principal: String,
    /// The segment the agent belongs to, if any.
    pub segment: Option<String>,
    /// When the agent enrolled, in Unix milliseconds.
    pub enrolled_at_ms: u64,
    /// Serial numbers of the certificates issued to the agent, oldest first (hex in JSON).
    #[serde(with = "hex_list")]
    pub certificate_serials: Vec<Vec<u8>>,
    /// The agent's current key-bundle epoch.
    pub key_epoch: u64,
    /// Whether the agent is suspended (quarantined or disabled by an admin).
    pub suspended: bool,
    /// Of the serials in `certificate_serials` issued by a renewal, each with the serial of
    /// the certificate the renewing connection presented (hex pairs in JSON; left out when
    /// empty, and empty in records written before it): the lineage a revocation of a serial
    /// follows to the certificates renewed from it.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "hex_pairs")]
    pub renewed_from: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A one-time join token, stored by the hash of its secret: the secret itself is never stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// SHA-256 of the token secret, the key of the record (hex in JSON).
    #[serde(with = "hex_32")]
    pub hash: [u8; 32],
    /// The agent ID (SPIFFE ID) the token enrolls.
    pub agent: String,
    /// When the token was created, in Unix milliseconds.
    pub created_ms: u64,
    /// When the token stops being accepted, in Unix milliseconds (exclusive: at `expires_ms` it
    /// is expired).
    pub expires_ms: u64,
    /// Whether the token has been redeemed.
    pub used: bool,
}

// === serde helpers ===

/// `Vec<Vec<u8>>` as a JSON list of hex strings.
mod hex_list {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _, ser::SerializeSeq as _};

    pub(super) fn serialize<S: Serializer>(list: &[Vec<u8>], ser: S) -> Result<S::Ok, S::Error> {
        let mut seq = ser.serialize_seq(Some(list.len()))?;
        for item in list {
            seq.serialize_element(&hex::encode(item))?;
        }
        seq.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Vec::<String>::deserialize(de)?
            .iter()
            .map(|s| hex::decode(s).map_err(D::Error::custom))
            .collect()
    }
}

/// A list of byte-string pairs as pairs of hex strings.
mod hex_pairs {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _, ser::SerializeSeq as _};

    type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

    pub(super) fn serialize<S: Serializer>(list: &Pairs, ser: S) -> Result<S::Ok, S::Error> {
        let mut seq = ser.serialize_seq(Some(list.len()))?;
        for (a, b) in list {
            seq.serialize_element(&(hex::encode(a), hex::encode(b)))?;
        }
        seq.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Pairs, D::Error> {
        Vec::<(String, String)>::deserialize(de)?
            .iter()
            .map(|(a, b)| {
                Ok((
                    hex::decode(a).map_err(D::Error::custom)?,
                    hex::decode(b).map_err(D::Error::custom)?,
                ))
            })
            .collect()
    }
}

/// `[u8; 32]` as a hex string.
mod hex_32 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8; 32], ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(&hex::encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(de)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out).map_err(D::Error::custom)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use super::{AgentRecord, TokenRecord};

    #[test]
    fn agent_json_shape() {
        let agent = AgentRecord {
            principal: "spiffe://example.org/agent/ops/a".to_owned(),
            segment: Some("ops".to_owned()),
            enrolled_at_ms: 5,
            certificate_serials: vec![vec![0x0a, 0xff], vec![]],
            key_epoch: 2,
            suspended: false,
            renewed_from: Vec::new(),
        };
        // The lineage is left out when empty: the shape records had before it.
        let json = serde_json::to_string(&agent).unwrap();
        assert_eq!(
            json,
            r#"{"principal":"spiffe://example.org/agent/ops/a","segment":"ops","enrolled_at_ms":5,"certificate_serials":["0aff",""],"key_epoch":2,"suspended":false}"#
        );
        assert_eq!(serde_json::from_str::<AgentRecord>(&json).unwrap(), agent);
        let renewed = AgentRecord {
            certificate_serials: vec![vec![0x0a], vec![0x0b]],
            renewed_from: vec![(vec![0x0b], vec![0x0a])],
            ..agent
        };
        let json = serde_json::to_string(&renewed).unwrap();
        assert!(json.ends_with(r#""renewed_from":[["0b","0a"]]}"#), "{json}");
        assert_eq!(serde_json::from_str::<AgentRecord>(&json).unwrap(), renewed);
    }

    #[test]
    fn token_json_shape() {
        let token = TokenRecord {
            hash: [0xab; 32],
            agent: "spiffe://example.org/agent/ops/a".to_owned(),
            created_ms: 1,
            expires_ms: 2,
            used: true,
        };
        let json = serde_json::to_string(&token).unwrap();
        assert!(json.starts_with(&format!(r#"{{"hash":"{}","#, "ab".repeat(32))));
        assert_eq!(serde_json::from_str::<TokenRecord>(&json).unwrap(), token);
    }

    #[test]
    fn bad_hex_is_refused() {
        let short = r#"{"hash":"abcd","agent":"a","created_ms":1,"expires_ms":2,"used":false}"#;
        assert!(serde_json::from_str::<TokenRecord>(short).is_err());
        let odd = r#"{"principal":"a","segment":null,"enrolled_at_ms":1,"certificate_serials":["abc"],"key_epoch":0,"suspended":false}"#;
        assert!(serde_json::from_str::<AgentRecord>(odd).is_err());
    }
}
