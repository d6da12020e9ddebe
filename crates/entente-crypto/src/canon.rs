//! The canonical byte strings that are signed, hashed, or used as AEAD associated data.
//!
//! `docs/PROTOCOL.md` §2 specifies them: a domain-separation label (ASCII, then one zero byte),
//! then fields in a fixed order — integers big-endian, byte and text fields as a 4-byte
//! big-endian length followed by the bytes. Protobuf encodings are never signed.

/// Appends canonical fields to a buffer.
#[derive(Debug, Default)]
pub(crate) struct Canon {
    buf: Vec<u8>,
}

impl Canon {
    /// Starts a string with `label` (which must not contain a zero byte).
    pub(crate) fn new(label: &str) -> Self {
        let mut canon = Self { buf: Vec::new() };
        canon.label(label);
        canon
    }

    /// An empty buffer with room for `capacity` bytes.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
        }
    }

    /// Appends `label` (a new canonical string after those already in the buffer).
    pub(crate) fn label(&mut self, label: &str) -> &mut Self {
        self.buf.extend_from_slice(label.as_bytes());
        self.buf.push(0);
        self
    }

    /// Empties the buffer, keeping its capacity.
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
    }

    /// Keeps the first `len` bytes.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.buf.truncate(len);
    }

    /// Bytes written so far.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A length-prefixed byte string. Every caller passes a field already bounded by the wire
    /// limits (well under 4 GiB); a longer one would be a bug and saturates the prefix.
    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.buf.extend_from_slice(v);
        self
    }

    pub(crate) fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    /// Raw bytes with no length prefix (fixed-size digests).
    pub(crate) fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// Domain-separation labels (PROTOCOL.md §2).
pub(crate) mod label {
    pub(crate) const KEY_BUNDLE: &str = "entente/v1/key-bundle";
    pub(crate) const ENVELOPE: &str = "entente/v1/envelope";
    pub(crate) const BATCH: &str = "entente/v1/batch-digest";
    pub(crate) const SENDER_KEY: &str = "entente/v1/sender-key";
    pub(crate) const WRAP_AAD: &str = "entente/v1/wrap";
    pub(crate) const PAYLOAD_KEY: &str = "entente/v1/payload-key";
    pub(crate) const PAYLOAD_IV: &str = "entente/v1/payload-iv";
    pub(crate) const REVOCATION_LIST: &str = "entente/v1/revocation-list";
    pub(crate) const APPROVAL: &str = "entente/v1/approval";
    pub(crate) const GRANT_REQUEST: &str = "entente/v1/grant-request";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_label_nul_then_big_endian_fields() {
        let mut c = Canon::new("x");
        c.u8(1).u32(2).u64(3).str("ab").raw(&[9]);
        assert_eq!(
            c.as_bytes(),
            [
                b'x', 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 2, b'a', b'b', 9
            ]
        );
    }
}
