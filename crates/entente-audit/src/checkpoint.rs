//! Checkpoints in the C2SP `tlog-checkpoint` format: a signed note whose text is the origin,
//! the tree size in decimal and the base64 root hash, each on its own line, then optional
//! extension lines.
//!
//! ```text
//! hub-1.acme.internal/audit
//! 2
//! <base64 of the 32-byte root>
//!
//! — hub-1.acme.internal/audit <base64 of key ID ‖ Ed25519 signature>
//! ```
//!
//! [`CheckpointIn::parse`] reads one without trusting it; only [`CheckpointIn::verify`] and
//! [`Checkpoint::sign`] make a [`Checkpoint`].

use std::fmt;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};

use crate::{
    ConsistencyProof, Hash, InclusionProof, ProofError,
    note::{self, NoteError, NoteSigner, Verifier, VerifierKey},
};

/// Why a checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The signed-note envelope is malformed, or its signatures do not verify.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// The note text is not a checkpoint body; the reason says which rule it breaks.
    #[error("malformed checkpoint body: {0}")]
    Body(&'static str),
}

/// A checkpoint as read, before its signatures are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointIn {
    body: Body,
    note: String,
}

impl CheckpointIn {
    /// Parses a signed checkpoint note. Nothing here is trusted until [`verify`](Self::verify).
    pub fn parse(note: &str) -> Result<Self, CheckpointError> {
        let (text, _) = note::split_note(note)?;
        Ok(Self {
            body: Body::parse(text)?,
            note: note.to_owned(),
        })
    }

    /// The claimed origin.
    pub fn origin(&self) -> &str {
        &self.body.origin
    }

    /// The claimed tree size.
    pub fn size(&self) -> u64 {
        self.body.size
    }

    /// Checks the signatures against `verifier` (see [`note::open_note`]).
    pub fn verify(self, verifier: &Verifier) -> Result<Checkpoint, CheckpointError> {
        let opened = note::open_note(&self.note, verifier)?;
        Ok(Checkpoint {
            body: self.body,
            note: self.note,
            signed_by: opened.signed_by,
        })
    }
}

/// A checkpoint whose signature verified (or that this process signed).
#[derive(Clone, PartialEq, Eq)]
pub struct Checkpoint {
    body: Body,
    note: String,
    signed_by: Vec<VerifierKey>,
}

impl Checkpoint {
    /// Signs the checkpoint of a tree of `size` leaves with root `root`. The origin is the
    /// signer's key name.
    pub fn sign(size: u64, root: Hash, signer: &dyn NoteSigner) -> Result<Self, CheckpointError> {
        let body = Body {
            origin: signer.verifier_key().name().to_owned(),
            size,
            root,
            extensions: Vec::new(),
        };
        let note = note::sign_note(&body.text(), &[signer])?;
        Ok(Self {
            body,
            note,
            signed_by: vec![signer.verifier_key().clone()],
        })
    }

    /// Parses and verifies a signed checkpoint.
    pub fn parse(note: &str, verifier: &Verifier) -> Result<Self, CheckpointError> {
        CheckpointIn::parse(note)?.verify(verifier)
    }

    /// The origin: the log's name.
    pub fn origin(&self) -> &str {
        &self.body.origin
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.body.size
    }

    /// The RFC 9162 root hash at that size.
    pub fn root(&self) -> Hash {
        self.body.root
    }

    /// The extension lines, if any.
    pub fn extensions(&self) -> &[String] {
        &self.body.extensions
    }

    /// The keys whose signatures verified.
    pub fn signed_by(&self) -> &[VerifierKey] {
        &self.signed_by
    }

    /// The whole signed note, as stored and served.
    pub fn as_str(&self) -> &str {
        &self.note
    }

    /// Checks that `leaf` (a leaf hash) is at `proof.index` in the tree of this checkpoint.
    pub fn verify_inclusion(&self, leaf: &Hash, proof: &InclusionProof) -> Result<(), ProofError> {
        if proof.size != self.size() {
            return Err(ProofError::BadSizes {
                old: proof.size,
                new: self.size(),
            });
        }
        proof.verify(leaf, &self.root())
    }

    /// Checks that `newer` extends this checkpoint's tree.
    pub fn verify_consistency(
        &self,
        newer: &Checkpoint,
        proof: &ConsistencyProof,
    ) -> Result<(), ProofError> {
        verify_consistency(self, newer, proof)
    }
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoint")
            .field("origin", &self.body.origin)
            .field("size", &self.body.size)
            .field("root", &self.body.root)
            .field("signed_by", &self.signed_by)
            .finish()
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.note)
    }
}

/// Checks that `new` extends `old`: same origin, and `proof` links their roots.
pub fn verify_consistency(
    old: &Checkpoint,
    new: &Checkpoint,
    proof: &ConsistencyProof,
) -> Result<(), ProofError> {
    if proof.old != old.size() || proof.new != new.size() || old.origin() != new.origin() {
        return Err(ProofError::BadSizes {
            old: old.size(),
            new: new.size(),
        });
    }
    proof.verify(&old.root(), &new.root())
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Body {
    origin: String,
    size: u64,
    root: Hash,
    extensions: Vec<String>,
}

impl Body {
    fn text(&self) -> String {
        let mut out = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            BASE64.encode(self.root.0)
        );
        for ext in &self.extensions {
            out.push_str(ext);
            out.push('\n');
        }
        out
    }

    fn parse(text: &str) -> Result<Self, CheckpointError> {
        let text = text
            .strip_suffix('\n')
            .ok_or(CheckpointError::Body("text does not end in a newline"))?;
        let mut lines = text.split('\n');
        let mut next = |what| {
            lines
                .next()
                .filter(|l| !l.is_empty())
                .ok_or(CheckpointError::Body(what))
        };
        let origin = next("no origin line")?.to_owned();
        let size = next("no tree size line")?;
        let root = next("no root hash line")?;
        let size = parse_size(size)?;
        let root = BASE64
            .decode(root)
            .ok()
            .and_then(|r| <[u8; 32]>::try_from(r).ok())
            .ok_or(CheckpointError::Body(
                "root hash is not the canonical base64 of 32 bytes",
            ))?;
        let extensions: Vec<String> = lines.map(str::to_owned).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(CheckpointError::Body("empty extension line"));
        }
        Ok(Self {
            origin,
            size,
            root: Hash(root),
            extensions,
        })
    }
}

/// ASCII decimal, no sign, no leading zero (except `0` itself), at most `u64::MAX`.
fn parse_size(s: &str) -> Result<u64, CheckpointError> {
    let bad = CheckpointError::Body("tree size is not a canonical decimal number");
    if !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return Err(bad);
    }
    s.parse().map_err(|_| bad)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use crate::note::Ed25519Signer;

    fn signer() -> Ed25519Signer {
        Ed25519Signer::from_seed("hub-1.acme.internal/audit", &[7; 32]).unwrap()
    }

    #[test]
    fn sign_parse_verify_round_trip() {
        let s = signer();
        let root = Hash::of(b"root");
        let cp = Checkpoint::sign(42, root, &s).unwrap();
        let text = cp.as_str();
        assert!(text.starts_with(&format!(
            "hub-1.acme.internal/audit\n42\n{}\n\n\u{2014} hub-1.acme.internal/audit ",
            BASE64.encode(root.0)
        )));
        let v = Verifier::new(s.verifier_key().clone());
        let parsed = Checkpoint::parse(text, &v).unwrap();
        assert_eq!(parsed, cp);
        assert_eq!(parsed.size(), 42);
        assert_eq!(parsed.root(), root);
        assert_eq!(parsed.origin(), "hub-1.acme.internal/audit");
    }

    #[test]
    fn altered_lines_wrong_keys_and_wrong_key_ids_are_refused() {
        let s = signer();
        let v = Verifier::new(s.verifier_key().clone());
        let cp = Checkpoint::sign(42, Hash::of(b"root"), &s).unwrap();
        let text = cp.as_str();

        // Each body line altered.
        let lines: Vec<&str> = text.split('\n').collect();
        for i in 0..3 {
            let mut l = lines.clone();
            let altered = match i {
                0 => "hub-2.acme.internal/audit".to_owned(),
                1 => "43".to_owned(),
                _ => BASE64.encode(Hash::of(b"other").0),
            };
            l[i] = &altered;
            let bad = l.join("\n");
            assert!(
                matches!(
                    Checkpoint::parse(&bad, &v),
                    Err(CheckpointError::Note(NoteError::BadSignature { .. }))
                ),
                "line {i}"
            );
        }
        // An extension line added.
        let extended = text.replacen("\n\n", "\nextra\n\n", 1);
        assert!(Checkpoint::parse(&extended, &v).is_err());

        // Another key with the same name.
        let other = Ed25519Signer::generate("hub-1.acme.internal/audit").unwrap();
        let forged = Checkpoint::sign(42, Hash::of(b"root"), &other).unwrap();
        assert_eq!(
            Checkpoint::parse(forged.as_str(), &v).unwrap_err(),
            CheckpointError::Note(NoteError::UnknownKey)
        );

        // The right signature under a wrong key ID.
        let sig_line = lines[4];
        let (prefix, b64) = sig_line.rsplit_once(' ').unwrap();
        let mut blob = BASE64.decode(b64).unwrap();
        blob[0] ^= 1;
        let wrong_id = text.replace(sig_line, &format!("{prefix} {}", BASE64.encode(&blob)));
        assert_eq!(
            Checkpoint::parse(&wrong_id, &v).unwrap_err(),
            CheckpointError::Note(NoteError::UnknownKey)
        );
    }

    #[test]
    fn bodies_are_parsed_strictly() {
        let root = BASE64.encode([0u8; 32]);
        let ok = |t: &str| Body::parse(t).is_ok();
        assert!(ok(&format!("o\n0\n{root}\n")));
        assert!(ok(&format!("o\n18446744073709551615\n{root}\next\n")));
        assert!(!ok(&format!("o\n18446744073709551616\n{root}\n")));
        assert!(!ok(&format!("o\n01\n{root}\n")));
        assert!(!ok(&format!("o\n+1\n{root}\n")));
        assert!(!ok(&format!("o\n1\n{root}")));
        assert!(!ok(&format!("\n1\n{root}\n")));
        assert!(!ok(&format!("o\n1\n{root}\n\n")));
        assert!(!ok("o\n1\nAAAA\n"));
        assert!(!ok("o\n1\n"));
    }
}
