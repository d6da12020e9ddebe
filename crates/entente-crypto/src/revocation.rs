//! The canonical bytes a CA signs for a revocation list (PROTOCOL.md §6). Building, signing
//! and checking lists lives in `entente-ca`; the byte layout lives here with the others.

use crate::canon::{Canon, label};

/// The signing input of a revocation list. `serials` and `principals` must be sorted
/// ascending and free of duplicates; verifiers refuse lists that are not.
pub fn signing_input(
    version: u64,
    issued_at_ms: u64,
    serials: &[Vec<u8>],
    principals: &[String],
    signer: &[u8],
) -> Vec<u8> {
    let mut c = Canon::new(label::REVOCATION_LIST);
    c.u64(version).u64(issued_at_ms);
    c.u32(u32::try_from(serials.len()).unwrap_or(u32::MAX));
    for serial in serials {
        c.bytes(serial);
    }
    c.u32(u32::try_from(principals.len()).unwrap_or(u32::MAX));
    for principal in principals {
        c.str(principal);
    }
    c.bytes(signer);
    c.into_bytes()
}

/// Whether `items` is sorted strictly ascending (sorted, no duplicates).
pub fn is_strictly_sorted<T: Ord>(items: &[T]) -> bool {
    items.windows(2).all(|w| matches!(w, [a, b] if a < b))
}
