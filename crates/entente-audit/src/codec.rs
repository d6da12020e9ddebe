//! Canonical byte strings, in the conventions of PROTOCOL.md §2: a `u8` is one byte, `u32` and
//! `u64` are big-endian, `bytes(x)` is `u32(len(x)) ‖ x`, `str(s)` is `bytes(UTF-8 of s)`, and
//! `raw(x)` is a fixed-size value with no length. The [`Reader`] checks every bound before it
//! takes a slice, and never allocates more than the input holds.

use crate::RecordError;

/// Builds a canonical byte string.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
        }
    }

    /// A label: its ASCII bytes, then `0x00`.
    pub(crate) fn label(&mut self, label: &str) -> &mut Self {
        self.buf.extend_from_slice(label.as_bytes());
        self.buf.push(0);
        self
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

    pub(crate) fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// `u32(len) ‖ bytes`. The caller has checked `len` against its limit, which is far below
    /// `u32::MAX`.
    pub(crate) fn str(&mut self, s: &str) -> &mut Self {
        let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
        self.u32(len).raw(s.as_bytes())
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads a canonical byte string, checking bounds before every step.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// The offset of the next byte.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], RecordError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let (head, _) = rest
            .split_at_checked(n)
            .ok_or_else(|| RecordError::Truncated {
                what,
                at: self.pos,
                needed: n.saturating_sub(rest.len()),
            })?;
        self.pos += n;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], RecordError> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, RecordError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, RecordError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, RecordError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// `0x00` or `0x01`; any other byte is refused so that the encoding stays canonical.
    pub(crate) fn bool(&mut self, what: &'static str) -> Result<bool, RecordError> {
        let at = self.pos;
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(RecordError::Unknown {
                what,
                value: value.into(),
                at,
            }),
        }
    }

    /// A length-prefixed UTF-8 string of at most `max` bytes.
    pub(crate) fn str(&mut self, what: &'static str, max: usize) -> Result<&'a str, RecordError> {
        let at = self.pos;
        let len = self.u32(what)?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > max {
            return Err(RecordError::TooLong { what, at, len, max });
        }
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes).map_err(|_| RecordError::NotUtf8 { what, at })
    }

    /// Fails unless every byte was read.
    pub(crate) fn finish(self, what: &'static str) -> Result<(), RecordError> {
        let len = self.buf.len().saturating_sub(self.pos);
        if len == 0 {
            Ok(())
        } else {
            Err(RecordError::Trailing { what, len })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn writes_the_protocol_conventions() {
        let mut w = Writer::default();
        w.label("ab")
            .u8(7)
            .u32(0x0102_0304)
            .u64(5)
            .str("hé")
            .raw(&[9]);
        assert_eq!(
            w.into_bytes(),
            [
                b'a', b'b', 0, 7, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 3, b'h', 0xc3, 0xa9,
                9
            ]
        );
    }

    #[test]
    fn reader_refuses_what_is_not_there() {
        let mut r = Reader::new(&[0, 0, 0, 9, b'x']);
        assert_eq!(
            r.str("name", 100).unwrap_err(),
            RecordError::Truncated {
                what: "name",
                at: 4,
                needed: 8
            }
        );
        let mut r = Reader::new(&[0, 0, 1, 0]);
        assert_eq!(
            r.str("name", 255).unwrap_err(),
            RecordError::TooLong {
                what: "name",
                at: 0,
                len: 256,
                max: 255
            }
        );
        let mut r = Reader::new(&[2]);
        assert!(matches!(
            r.bool("flag"),
            Err(RecordError::Unknown { value: 2, .. })
        ));
        let mut r = Reader::new(&[0, 0, 0, 1, 0xff]);
        assert!(matches!(
            r.str("name", 10),
            Err(RecordError::NotUtf8 { .. })
        ));
        let r = Reader::new(&[1]);
        assert_eq!(
            r.finish("record").unwrap_err(),
            RecordError::Trailing {
                what: "record",
                len: 1
            }
        );
    }
}
