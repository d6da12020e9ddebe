//! A leaf of the log: one sealed batch of consecutive records (docs/AUDIT.md §3).
//!
//! ```text
//! leaf = "entente/v1/audit-leaf" 0x00 ‖ u64(first_record) ‖ u32(count) ‖ raw(records_root)
//! ```
//!
//! `records_root` is the RFC 9162 root over the batch's records, each record's leaf hash being
//! `SHA-256(0x00 ‖ record)`. One record is proven with a path in that small tree, then the
//! leaf's path in the log.

use crate::{
    Hash, RecordError,
    codec::{Reader, Writer},
    merkle::leaf_hash,
};

/// The label at the start of every leaf.
pub const LEAF_LABEL: &str = "entente/v1/audit-leaf";

/// The most records one leaf may hold.
pub const MAX_LEAF_RECORDS: u32 = 65_536;

/// The length of an encoded leaf.
pub const LEAF_LEN: usize = LEAF_LABEL.len() + 1 + 8 + 4 + 32;

/// A leaf: which records it seals and the root over them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// The index (in the whole log) of its first record.
    pub first_record: u64,
    /// How many records, 1 to [`MAX_LEAF_RECORDS`].
    pub count: u32,
    /// The root over their record hashes.
    pub records_root: Hash,
}

impl Leaf {
    /// The encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(LEAF_LEN);
        w.label(LEAF_LABEL)
            .u64(self.first_record)
            .u32(self.count)
            .raw(&self.records_root.0);
        w.into_bytes()
    }

    /// Decodes a leaf.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RecordError> {
        let mut r = Reader::new(bytes);
        let label = r.take(LEAF_LABEL.len() + 1, "leaf label")?;
        if label.strip_suffix(&[0]) != Some(LEAF_LABEL.as_bytes()) {
            return Err(RecordError::Invalid(
                "leaf label is not entente/v1/audit-leaf",
            ));
        }
        let first_record = r.u64("first record")?;
        let count = r.u32("record count")?;
        let records_root = Hash(r.array("records root")?);
        r.finish("leaf")?;
        if count == 0 || count > MAX_LEAF_RECORDS {
            return Err(RecordError::Invalid("a leaf holds 1 to 65536 records"));
        }
        if first_record.checked_add(count.into()).is_none() {
            return Err(RecordError::Invalid("leaf record range overflows"));
        }
        Ok(Self {
            first_record,
            count,
            records_root,
        })
    }

    /// `SHA-256(0x00 ‖ leaf)`: this leaf's hash in the log's tree.
    pub fn hash(&self) -> Hash {
        leaf_hash(&self.to_bytes())
    }

    /// The records it holds, as a range of record indexes.
    pub fn records(&self) -> std::ops::Range<u64> {
        self.first_record..self.first_record.saturating_add(self.count.into())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn leaves_round_trip_and_bad_ones_are_refused() {
        let leaf = Leaf {
            first_record: 1000,
            count: 1000,
            records_root: Hash::of(b"r"),
        };
        let bytes = leaf.to_bytes();
        assert_eq!(bytes.len(), LEAF_LEN);
        assert_eq!(Leaf::from_bytes(&bytes).unwrap(), leaf);
        for n in 0..bytes.len() {
            assert!(Leaf::from_bytes(&bytes[..n]).is_err());
        }
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        assert!(Leaf::from_bytes(&bad).is_err());
        let zero = Leaf { count: 0, ..leaf };
        assert!(Leaf::from_bytes(&zero.to_bytes()).is_err());
        let overflow = Leaf {
            first_record: u64::MAX,
            ..leaf
        };
        assert!(Leaf::from_bytes(&overflow.to_bytes()).is_err());
    }
}
