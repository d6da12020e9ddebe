//! Merkle trees of RFC 9162 §2.1 (the hashing of RFC 6962) over SHA-256.
//!
//! - [`leaf_hash`] is `SHA-256(0x00 ‖ leaf)`, [`node_hash`] is `SHA-256(0x01 ‖ left ‖ right)`,
//!   and the root of the empty tree is `SHA-256()`.
//! - [`MerkleTree`] keeps the hash of every perfect subtree, so the root at any earlier size and
//!   every proof are computed without rehashing leaves: `2n` hashes of memory for `n` leaves.
//! - [`InclusionProof`] and [`ConsistencyProof`] are made as in RFC 9162 §2.1.3.1 and §2.1.4.1
//!   and checked with the algorithms of §2.1.3.2 and §2.1.4.2.
//!
//! The audit log uses the same trees three times: the envelopes of a delivered batch, the
//! records of a leaf, and the leaves of the log.

use std::fmt;

use aws_lc_rs::digest::{SHA256, digest};
use sha2::{Digest as _, Sha256};

/// A SHA-256 value: a node of a Merkle tree, a root, a record or envelope hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The length of a hash in bytes.
    pub const LEN: usize = 32;

    /// SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Self {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest(&SHA256, data).as_ref());
        Self(out)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            let pair = s.get(2 * i..2 * i + 2)?;
            *b = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl From<[u8; 32]> for Hash {
    fn from(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

/// `SHA-256(0x00 ‖ leaf)`.
///
/// Tree hashes are many and small: they go through `sha2`, whose per-call setup is a fraction
/// of aws-lc-rs' for inputs of a block or two (the same SHA-256, SHA-NI where the CPU has it).
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut ctx = Sha256::new();
    ctx.update([0x00]);
    ctx.update(leaf);
    Hash(ctx.finalize().into())
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut ctx = Sha256::new();
    ctx.update([0x01]);
    ctx.update(left.0);
    ctx.update(right.0);
    Hash(ctx.finalize().into())
}

/// The root of the empty tree: `SHA-256()` of no bytes.
pub fn empty_root() -> Hash {
    Hash::of(&[])
}

/// The root of the tree whose leaf hashes are `leaves` (RFC 9162 `MTH`).
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => empty_root(),
        [one] => *one,
        _ => {
            let k = split_point(leaves.len() as u64) as usize;
            let (left, right) = leaves.split_at(k.min(leaves.len()));
            node_hash(&root_of(left), &root_of(right))
        }
    }
}

/// Why a proof did not verify, or could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The leaf index is not below the tree size.
    #[error("leaf {index} is not in a tree of size {size}")]
    IndexOutOfRange {
        /// The leaf index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// The older tree is larger than the newer one, or a size is beyond the tree.
    #[error("no proof between tree sizes {old} and {new}")]
    BadSizes {
        /// The first size.
        old: u64,
        /// The second size.
        new: u64,
    },
    /// The proof has the wrong number of hashes for these sizes.
    #[error("proof has {got} hashes, {expected} expected")]
    WrongLength {
        /// Hashes in the proof.
        got: usize,
        /// Hashes the sizes call for.
        expected: usize,
    },
    /// The proof leads to another root than the expected one.
    #[error("proof does not lead to the expected root")]
    RootMismatch,
}

/// The hashes that prove one leaf is in a tree of a given size (RFC 9162 §2.1.3), from the
/// leaf's sibling up to the root's child.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InclusionProof {
    /// The leaf's index.
    pub index: u64,
    /// The tree size the proof is for.
    pub size: u64,
    /// The audit path.
    pub path: Vec<Hash>,
}

impl InclusionProof {
    /// The root the proof leads to from `leaf`, or an error if its shape is wrong for its
    /// index and size (RFC 9162 §2.1.3.2, steps 1 to 4).
    pub fn root_from(&self, leaf: &Hash) -> Result<Hash, ProofError> {
        if self.index >= self.size {
            return Err(ProofError::IndexOutOfRange {
                index: self.index,
                size: self.size,
            });
        }
        let expected = inclusion_len(self.index, self.size);
        if self.path.len() != expected {
            return Err(ProofError::WrongLength {
                got: self.path.len(),
                expected,
            });
        }
        let (mut f_n, mut s_n) = (self.index, self.size - 1);
        let mut r = *leaf;
        for p in &self.path {
            if s_n == 0 {
                return Err(ProofError::RootMismatch);
            }
            if f_n & 1 == 1 || f_n == s_n {
                r = node_hash(p, &r);
                if f_n & 1 == 0 {
                    while f_n & 1 == 0 && f_n != 0 {
                        f_n >>= 1;
                        s_n >>= 1;
                    }
                }
            } else {
                r = node_hash(&r, p);
            }
            f_n >>= 1;
            s_n >>= 1;
        }
        if s_n != 0 {
            return Err(ProofError::RootMismatch);
        }
        Ok(r)
    }

    /// Checks that `leaf` is at `self.index` in the tree of `self.size` leaves whose root is
    /// `root`.
    pub fn verify(&self, leaf: &Hash, root: &Hash) -> Result<(), ProofError> {
        if self.root_from(leaf)? == *root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        }
    }
}

/// The hashes that prove the tree of `old` leaves is a prefix of the tree of `new` leaves
/// (RFC 9162 §2.1.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsistencyProof {
    /// The older tree size.
    pub old: u64,
    /// The newer tree size.
    pub new: u64,
    /// The proof's hashes.
    pub path: Vec<Hash>,
}

impl ConsistencyProof {
    /// Checks that `old_root` (of `self.old` leaves) and `new_root` (of `self.new` leaves) are
    /// roots of one append-only tree (RFC 9162 §2.1.4.2).
    pub fn verify(&self, old_root: &Hash, new_root: &Hash) -> Result<(), ProofError> {
        let (old, new) = (self.old, self.new);
        if old > new {
            return Err(ProofError::BadSizes { old, new });
        }
        if old == 0 || old == new {
            // Every tree extends the empty one; a tree extends itself. Neither needs hashes.
            if !self.path.is_empty() {
                return Err(ProofError::WrongLength {
                    got: self.path.len(),
                    expected: 0,
                });
            }
            return if old == new && old_root != new_root {
                Err(ProofError::RootMismatch)
            } else {
                Ok(())
            };
        }
        let expected = consistency_len(old, new);
        if self.path.len() != expected {
            return Err(ProofError::WrongLength {
                got: self.path.len(),
                expected,
            });
        }
        let mut path: Vec<&Hash> = Vec::with_capacity(self.path.len() + 1);
        if old.is_power_of_two() {
            path.push(old_root);
        }
        path.extend(self.path.iter());
        let (mut f_n, mut s_n) = (old - 1, new - 1);
        while f_n & 1 == 1 {
            f_n >>= 1;
            s_n >>= 1;
        }
        let Some((first, rest)) = path.split_first() else {
            return Err(ProofError::RootMismatch);
        };
        let (mut f_r, mut s_r) = (**first, **first);
        for c in rest {
            if s_n == 0 {
                return Err(ProofError::RootMismatch);
            }
            if f_n & 1 == 1 || f_n == s_n {
                f_r = node_hash(c, &f_r);
                s_r = node_hash(c, &s_r);
                if f_n & 1 == 0 {
                    while f_n & 1 == 0 && f_n != 0 {
                        f_n >>= 1;
                        s_n >>= 1;
                    }
                }
            } else {
                s_r = node_hash(&s_r, c);
            }
            f_n >>= 1;
            s_n >>= 1;
        }
        if s_n == 0 && f_r == *old_root && s_r == *new_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        }
    }
}

/// An append-only Merkle tree held in memory as the hashes of its perfect subtrees.
///
/// `levels[h][k]` is the root of the perfect subtree over leaves `k·2^h .. (k+1)·2^h`.
#[derive(Clone, Debug, Default)]
pub struct MerkleTree {
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tree of these leaf hashes.
    pub fn from_leaves(leaves: impl IntoIterator<Item = Hash>) -> Self {
        let mut tree = Self::new();
        for leaf in leaves {
            tree.push(leaf);
        }
        tree
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Appends a leaf hash (`SHA-256(0x00 ‖ leaf)`, see [`leaf_hash`]).
    pub fn push(&mut self, leaf: Hash) {
        let mut node = leaf;
        let mut height = 0;
        loop {
            if self.levels.len() <= height {
                self.levels.push(Vec::new());
            }
            let Some(level) = self.levels.get_mut(height) else {
                return;
            };
            level.push(node);
            if level.len() % 2 == 1 {
                return;
            }
            let (Some(right), Some(left)) = (level.last(), level.get(level.len() - 2)) else {
                return;
            };
            node = node_hash(left, right);
            height += 1;
        }
    }

    /// Forgets every leaf from `size` on (undoes pushes that could not be made durable).
    pub fn truncate(&mut self, size: u64) {
        for (height, level) in self.levels.iter_mut().enumerate() {
            let keep = size.checked_shr(height as u32).unwrap_or(0);
            level.truncate(usize::try_from(keep).unwrap_or(usize::MAX));
        }
        while self.levels.last().is_some_and(Vec::is_empty) {
            self.levels.pop();
        }
    }

    /// The hash of leaf `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels
            .first()?
            .get(usize::try_from(index).ok()?)
            .copied()
    }

    /// The root at `size` leaves, for any size up to the current one.
    pub fn root(&self, size: u64) -> Result<Hash, ProofError> {
        if size > self.size() {
            return Err(ProofError::BadSizes {
                old: size,
                new: self.size(),
            });
        }
        if size == 0 {
            return Ok(empty_root());
        }
        Ok(self.subtree(0, size))
    }

    /// The proof that leaf `index` is in the tree of `size` leaves (RFC 9162 §2.1.3.1).
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<InclusionProof, ProofError> {
        if size > self.size() {
            return Err(ProofError::BadSizes {
                old: size,
                new: self.size(),
            });
        }
        if index >= size {
            return Err(ProofError::IndexOutOfRange { index, size });
        }
        let mut path = Vec::with_capacity(inclusion_len(index, size));
        self.path(index, 0, size, &mut path);
        Ok(InclusionProof { index, size, path })
    }

    /// The proof that the tree of `old` leaves is a prefix of the tree of `new` leaves
    /// (RFC 9162 §2.1.4.1). Empty when `old` is 0 or equals `new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<ConsistencyProof, ProofError> {
        if old > new || new > self.size() {
            return Err(ProofError::BadSizes { old, new });
        }
        let mut path = Vec::new();
        if old != 0 && old != new {
            path.reserve(consistency_len(old, new));
            self.subproof(old, 0, new, true, &mut path);
        }
        Ok(ConsistencyProof { old, new, path })
    }

    /// `MTH(D[start:end])`, for `start < end ≤ size`.
    fn subtree(&self, start: u64, end: u64) -> Hash {
        let n = end - start;
        if n.is_power_of_two() && start.is_multiple_of(n) {
            let height = n.trailing_zeros() as usize;
            let node = self
                .levels
                .get(height)
                .and_then(|l| l.get(usize::try_from(start >> height).ok()?));
            if let Some(node) = node {
                return *node;
            }
        }
        if n == 1 {
            // Unreachable for a range inside the tree: every leaf is on level 0.
            return empty_root();
        }
        let k = split_point(n);
        node_hash(
            &self.subtree(start, start + k),
            &self.subtree(start + k, end),
        )
    }

    /// `PATH(m, D[start:end])`, leaf first.
    fn path(&self, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) {
        let n = end - start;
        if n <= 1 {
            return;
        }
        let k = split_point(n);
        if m < k {
            self.path(m, start, start + k, out);
            out.push(self.subtree(start + k, end));
        } else {
            self.path(m - k, start + k, end, out);
            out.push(self.subtree(start, start + k));
        }
    }

    /// `SUBPROOF(m, D[start:end], b)`.
    fn subproof(&self, m: u64, start: u64, end: u64, whole: bool, out: &mut Vec<Hash>) {
        let n = end - start;
        if m == n {
            if !whole {
                out.push(self.subtree(start, end));
            }
            return;
        }
        let k = split_point(n);
        if m <= k {
            self.subproof(m, start, start + k, whole, out);
            out.push(self.subtree(start + k, end));
        } else {
            self.subproof(m - k, start + k, end, false, out);
            out.push(self.subtree(start, start + k));
        }
    }
}

/// The largest power of two smaller than `n`, for `n ≥ 2`.
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The number of hashes in an inclusion proof for `index < size`.
fn inclusion_len(index: u64, size: u64) -> usize {
    // The path climbs the levels where index and the last leaf still differ (the inner part),
    // then one hash for each set bit of the remaining "border" above them.
    let inner = (64 - (index ^ (size - 1)).leading_zeros()) as usize;
    let border = index.checked_shr(inner as u32).unwrap_or(0).count_ones() as usize;
    inner + border
}

/// The number of hashes in a consistency proof for `0 < old < new`.
fn consistency_len(old: u64, new: u64) -> usize {
    let inner = (64 - ((old - 1) ^ (new - 1)).leading_zeros()) as usize;
    let shift = old.trailing_zeros() as usize;
    let border = (old - 1)
        .checked_shr(inner as u32)
        .unwrap_or(0)
        .count_ones() as usize;
    let start = usize::from(!old.is_power_of_two());
    // RFC 9162: `inner - shift` hashes for the inner part, plus one for the old subtree when
    // old is not a power of two, plus the border.
    inner.saturating_sub(shift) + start + border
}

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

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    /// RFC 9162 §2.1.3.1 `PATH`, written directly from the text over a slice.
    fn naive_path(m: usize, d: &[Hash]) -> Vec<Hash> {
        if d.len() <= 1 {
            return vec![];
        }
        let k = split_point(d.len() as u64) as usize;
        if m < k {
            let mut p = naive_path(m, &d[..k]);
            p.push(root_of(&d[k..]));
            p
        } else {
            let mut p = naive_path(m - k, &d[k..]);
            p.push(root_of(&d[..k]));
            p
        }
    }

    /// RFC 9162 §2.1.4.1 `SUBPROOF`.
    fn naive_subproof(m: usize, d: &[Hash], b: bool) -> Vec<Hash> {
        let n = d.len();
        if m == n {
            return if b { vec![] } else { vec![root_of(d)] };
        }
        let k = split_point(n as u64) as usize;
        if m <= k {
            let mut p = naive_subproof(m, &d[..k], b);
            p.push(root_of(&d[k..]));
            p
        } else {
            let mut p = naive_subproof(m - k, &d[k..], false);
            p.push(root_of(&d[..k]));
            p
        }
    }

    #[test]
    fn split_point_is_the_largest_smaller_power_of_two() {
        assert_eq!(split_point(2), 1);
        assert_eq!(split_point(3), 2);
        assert_eq!(split_point(4), 2);
        assert_eq!(split_point(5), 4);
        assert_eq!(split_point(1 << 40), 1 << 39);
        assert_eq!(split_point((1 << 40) + 1), 1 << 40);
    }

    #[test]
    fn tree_matches_the_definitions_for_small_sizes() {
        let all = leaves(70);
        let tree = MerkleTree::from_leaves(all.iter().copied());
        assert_eq!(tree.root(0).unwrap(), empty_root());
        for n in 1..=70u64 {
            let d = &all[..n as usize];
            assert_eq!(tree.root(n).unwrap(), root_of(d), "root at {n}");
            for m in 0..n {
                let proof = tree.inclusion_proof(m, n).unwrap();
                assert_eq!(proof.path, naive_path(m as usize, d), "path {m} of {n}");
                proof.verify(&all[m as usize], &root_of(d)).unwrap();
            }
            for m in 1..n {
                let proof = tree.consistency_proof(m, n).unwrap();
                assert_eq!(
                    proof.path,
                    naive_subproof(m as usize, d, true),
                    "consistency {m} to {n}"
                );
                proof
                    .verify(&root_of(&all[..m as usize]), &root_of(d))
                    .unwrap();
            }
        }
    }

    #[test]
    fn truncating_gives_the_tree_of_the_prefix() {
        let all = leaves(37);
        for size in 0..=37u64 {
            let mut tree = MerkleTree::from_leaves(all.iter().copied());
            tree.truncate(size);
            assert_eq!(tree.size(), size);
            assert_eq!(tree.root(size).unwrap(), root_of(&all[..size as usize]));
            tree.push(all[0]);
            let mut expected = all[..size as usize].to_vec();
            expected.push(all[0]);
            assert_eq!(tree.root(size + 1).unwrap(), root_of(&expected));
        }
    }

    #[test]
    fn sizes_beyond_the_tree_are_refused() {
        let tree = MerkleTree::from_leaves(leaves(5));
        assert!(tree.root(6).is_err());
        assert!(tree.inclusion_proof(5, 5).is_err());
        assert!(tree.inclusion_proof(0, 6).is_err());
        assert!(tree.consistency_proof(3, 6).is_err());
        assert!(tree.consistency_proof(4, 3).is_err());
        assert!(tree.consistency_proof(0, 5).unwrap().path.is_empty());
        assert!(tree.consistency_proof(5, 5).unwrap().path.is_empty());
    }

    #[test]
    fn trivial_consistency_proofs() {
        let r = leaf_hash(b"x");
        let e = empty_root();
        let proof = |old, new, path: Vec<Hash>| ConsistencyProof { old, new, path };
        proof(0, 0, vec![]).verify(&e, &e).unwrap();
        proof(0, 1, vec![]).verify(&e, &r).unwrap();
        proof(1, 1, vec![]).verify(&r, &r).unwrap();
        assert!(proof(1, 1, vec![]).verify(&r, &e).is_err());
        assert!(proof(1, 0, vec![]).verify(&r, &e).is_err());
        assert!(proof(0, 1, vec![e]).verify(&e, &r).is_err());
        assert!(proof(1, 1, vec![e]).verify(&r, &r).is_err());
        assert!(proof(1, 2, vec![]).verify(&r, &r).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every proof for random sizes verifies, and a proof altered in any byte, or checked
        /// against another index or size, fails.
        #[test]
        fn proofs_verify_and_altered_proofs_fail(
            n in 1u64..600,
            m_seed in any::<u64>(),
            old_seed in any::<u64>(),
            byte in any::<usize>(),
            bit in 0u8..8,
        ) {
            let all = leaves(n);
            let tree = MerkleTree::from_leaves(all.iter().copied());
            let root = tree.root(n).unwrap();

            let m = m_seed % n;
            let proof = tree.inclusion_proof(m, n).unwrap();
            prop_assert!(proof.verify(&all[m as usize], &root).is_ok());
            if !proof.path.is_empty() {
                let mut bad = proof.clone();
                let len = bad.path.len() * 32;
                let at = byte % len;
                bad.path[at / 32].0[at % 32] ^= 1 << bit;
                prop_assert!(bad.verify(&all[m as usize], &root).is_err());
            }
            let mut other = proof.clone();
            other.index = (m + 1) % n;
            if other.index != m {
                prop_assert!(other.verify(&all[m as usize], &root).is_err());
            }
            let mut wrong_leaf = all[m as usize];
            wrong_leaf.0[byte % 32] ^= 1 << bit;
            prop_assert!(proof.verify(&wrong_leaf, &root).is_err());

            let old = 1 + old_seed % n;
            let old_root = tree.root(old).unwrap();
            let proof = tree.consistency_proof(old, n).unwrap();
            prop_assert!(proof.verify(&old_root, &root).is_ok());
            if !proof.path.is_empty() {
                let mut bad = proof.clone();
                let len = bad.path.len() * 32;
                let at = byte % len;
                bad.path[at / 32].0[at % 32] ^= 1 << bit;
                prop_assert!(bad.verify(&old_root, &root).is_err());
                let mut short = proof.clone();
                short.path.pop();
                prop_assert!(short.verify(&old_root, &root).is_err());
                let mut long = proof.clone();
                long.path.push(root);
                prop_assert!(long.verify(&old_root, &root).is_err());
            }
            if old < n {
                let mut wrong_old = old_root;
                wrong_old.0[byte % 32] ^= 1 << bit;
                prop_assert!(proof.verify(&wrong_old, &root).is_err());
            }
        }
    }
}
