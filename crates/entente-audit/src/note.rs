//! Signed notes in the C2SP `signed-note` format, with Ed25519 keys.
//!
//! A note is UTF-8 text ending in a newline, then a blank line, then one or more signature
//! lines `— <key name> <base64(key ID ‖ signature)>`. An Ed25519 key's ID is the first four
//! bytes of `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)`, and its verifier key is the text
//! `<name>+<hex key ID>+<base64(0x01 ‖ public key)>`.
//!
//! Signing goes through [`NoteSigner`], so the private key can live in a key store or an HSM;
//! [`Ed25519Signer`] keeps it in memory. A [`Verifier`] holds every key a reader trusts, so a log
//! whose key was rotated stays verifiable.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::{
    encoding::AsBigEndian,
    signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey},
};
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};

use crate::Hash;

/// The signature-type byte of Ed25519 keys.
pub const ED25519_TYPE: u8 = 0x01;

/// The longest note [`open_note`] accepts, in bytes.
pub const MAX_NOTE_LEN: usize = 16 * 1024;

/// The most signature lines [`open_note`] accepts (as Go's `sumdb/note` does).
pub const MAX_SIGNATURES: usize = 100;

/// The longest key name, in bytes.
pub const MAX_KEY_NAME_LEN: usize = 256;

const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// Why a note, a key or a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    /// The note breaks the signed-note format; the reason says where.
    #[error("malformed signed note: {0}")]
    Malformed(&'static str),
    /// The note is longer than [`MAX_NOTE_LEN`].
    #[error("signed note is {0} bytes, more than {MAX_NOTE_LEN}")]
    TooLong(usize),
    /// A key name is empty, too long, or has a space or `+`.
    #[error("invalid key name `{}`", .0.escape_debug())]
    BadKeyName(String),
    /// A verifier key is not `name+keyid+base64(0x01 ‖ 32-byte key)` with a matching key ID.
    #[error("malformed verifier key: {0}")]
    BadVerifierKey(&'static str),
    /// No signature line is from a key of the verifier.
    #[error("the note has no signature from a trusted key")]
    UnknownKey,
    /// A signature line names a trusted key (name and key ID) but does not verify.
    #[error("the signature of `{}` ({key_id:08x}) does not verify", name.escape_debug())]
    BadSignature {
        /// The key name.
        name: String,
        /// The key ID.
        key_id: u32,
    },
    /// The signer failed (its key store or HSM is unavailable).
    #[error("signing failed: {0}")]
    Signer(String),
}

/// The public key that checks a signer's notes, with its name and key ID.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct VerifierKey {
    name: String,
    key_id: u32,
    public: [u8; 32],
}

impl VerifierKey {
    /// The verifier key of the Ed25519 `public` key named `name`.
    pub fn ed25519(name: &str, public: [u8; 32]) -> Result<Self, NoteError> {
        check_key_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            key_id: key_id(name, &public),
            public,
        })
    }

    /// Parses the text form `<name>+<hex key ID>+<base64(0x01 ‖ public key)>`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let (name, rest) = text
            .split_once('+')
            .ok_or(NoteError::BadVerifierKey("no `+` after the name"))?;
        let (id_hex, key_b64) = rest
            .split_once('+')
            .ok_or(NoteError::BadVerifierKey("no `+` after the key ID"))?;
        check_key_name(name)?;
        if id_hex.len() != 8 || !id_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(NoteError::BadVerifierKey("key ID is not 8 hex digits"));
        }
        let id = u32::from_str_radix(id_hex, 16)
            .map_err(|_| NoteError::BadVerifierKey("key ID is not 8 hex digits"))?;
        let key = BASE64
            .decode(key_b64)
            .map_err(|_| NoteError::BadVerifierKey("key is not canonical base64"))?;
        let (alg, public) = key
            .split_first()
            .ok_or(NoteError::BadVerifierKey("key is empty"))?;
        if *alg != ED25519_TYPE {
            return Err(NoteError::BadVerifierKey("key type is not Ed25519 (0x01)"));
        }
        let public: [u8; 32] = public
            .try_into()
            .map_err(|_| NoteError::BadVerifierKey("Ed25519 key is not 32 bytes"))?;
        let parsed = Self::ed25519(name, public)?;
        if parsed.key_id != id {
            return Err(NoteError::BadVerifierKey(
                "key ID does not match the name and key",
            ));
        }
        Ok(parsed)
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID: the first four bytes of `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ key)`, big-endian.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The raw Ed25519 public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public
    }

    fn verifies(&self, msg: &[u8], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public)
            .verify(msg, sig)
            .is_ok()
    }
}

impl fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut key = Vec::with_capacity(33);
        key.push(ED25519_TYPE);
        key.extend_from_slice(&self.public);
        write!(
            f,
            "{}+{:08x}+{}",
            self.name,
            self.key_id,
            BASE64.encode(key)
        )
    }
}

impl fmt::Debug for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifierKey({self})")
    }
}

impl FromStr for VerifierKey {
    type Err = NoteError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Something that signs notes: the audit log's checkpoint key.
///
/// Implement it over a key store or an HSM; [`Ed25519Signer`] holds the key in memory.
pub trait NoteSigner: Send + Sync + fmt::Debug {
    /// The verifier key of this signer's signatures (its name is the log's origin).
    fn verifier_key(&self) -> &VerifierKey;

    /// An Ed25519 signature (64 bytes) over `msg`.
    fn sign(&self, msg: &[u8]) -> Result<[u8; 64], NoteError>;
}

/// An Ed25519 key held in memory (aws-lc-rs).
pub struct Ed25519Signer {
    pair: Ed25519KeyPair,
    key: VerifierKey,
}

impl Ed25519Signer {
    /// A fresh key from the system random source.
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        let pair = Ed25519KeyPair::generate()
            .map_err(|_| NoteError::Signer("Ed25519 key generation failed".into()))?;
        Self::from_pair(name, pair)
    }

    /// The key with this 32-byte seed (RFC 8032 private key).
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, NoteError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| NoteError::Signer("bad Ed25519 seed".into()))?;
        Self::from_pair(name, pair)
    }

    /// The 32-byte seed, to store in a key store. Treat it as secret.
    pub fn to_seed(&self) -> Result<zeroize::Zeroizing<[u8; 32]>, NoteError> {
        let seed = self
            .pair
            .seed()
            .and_then(|s| s.as_be_bytes())
            .map_err(|_| NoteError::Signer("cannot export the Ed25519 seed".into()))?;
        let mut out = zeroize::Zeroizing::new([0u8; 32]);
        if seed.as_ref().len() != 32 {
            return Err(NoteError::Signer("Ed25519 seed is not 32 bytes".into()));
        }
        out.copy_from_slice(seed.as_ref());
        Ok(out)
    }

    fn from_pair(name: &str, pair: Ed25519KeyPair) -> Result<Self, NoteError> {
        let public: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| NoteError::Signer("Ed25519 public key is not 32 bytes".into()))?;
        let key = VerifierKey::ed25519(name, public)?;
        Ok(Self { pair, key })
    }
}

impl NoteSigner for Ed25519Signer {
    fn verifier_key(&self) -> &VerifierKey {
        &self.key
    }

    fn sign(&self, msg: &[u8]) -> Result<[u8; 64], NoteError> {
        self.pair
            .sign(msg)
            .as_ref()
            .try_into()
            .map_err(|_| NoteError::Signer("Ed25519 signature is not 64 bytes".into()))
    }
}

impl fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ed25519Signer")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The keys a reader trusts. A note is accepted when a signature of one of them verifies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verifier {
    keys: Vec<VerifierKey>,
}

impl Verifier {
    /// A verifier trusting `key`.
    pub fn new(key: VerifierKey) -> Self {
        Self { keys: vec![key] }
    }

    /// Adds a key (for example the key a log used before a rotation).
    pub fn add(&mut self, key: VerifierKey) -> &mut Self {
        if !self.keys.contains(&key) {
            self.keys.push(key);
        }
        self
    }

    /// The trusted keys.
    pub fn keys(&self) -> &[VerifierKey] {
        &self.keys
    }

    fn find(&self, name: &str, key_id: u32) -> Option<&VerifierKey> {
        self.keys
            .iter()
            .find(|k| k.key_id == key_id && k.name == name)
    }
}

impl From<VerifierKey> for Verifier {
    fn from(key: VerifierKey) -> Self {
        Self::new(key)
    }
}

/// A note whose signatures were checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenedNote {
    /// The signed text, with its final newline.
    pub text: String,
    /// The trusted keys whose signatures verified.
    pub signed_by: Vec<VerifierKey>,
}

/// Signs `text` (which must end in a newline) with every signer and returns the signed note.
pub fn sign_note(text: &str, signers: &[&dyn NoteSigner]) -> Result<String, NoteError> {
    check_text(text)?;
    if signers.is_empty() {
        return Err(NoteError::Malformed("a note needs at least one signature"));
    }
    let mut out = String::with_capacity(text.len() + 1 + signers.len() * 120);
    out.push_str(text);
    out.push('\n');
    for signer in signers {
        let key = signer.verifier_key();
        let sig = signer.sign(text.as_bytes())?;
        let mut blob = Vec::with_capacity(4 + sig.len());
        blob.extend_from_slice(&key.key_id.to_be_bytes());
        blob.extend_from_slice(&sig);
        out.push_str(SIGNATURE_PREFIX);
        out.push_str(&key.name);
        out.push(' ');
        out.push_str(&BASE64.encode(blob));
        out.push('\n');
    }
    Ok(out)
}

/// Checks a signed note against `verifier` and returns its text.
///
/// Signatures from keys the verifier does not hold are ignored (they may be a witness's); a
/// signature that names a trusted key but does not verify refuses the whole note; at least one
/// trusted signature must verify.
pub fn open_note(note: &str, verifier: &Verifier) -> Result<OpenedNote, NoteError> {
    let (text, signatures) = split_note(note)?;
    let mut signed_by = Vec::new();
    for line in signatures {
        let (name, key_id, sig) = parse_signature_line(line)?;
        let Some(key) = verifier.find(name, key_id) else {
            continue;
        };
        if !key.verifies(text.as_bytes(), sig.get(4..).unwrap_or_default()) {
            return Err(NoteError::BadSignature {
                name: name.to_owned(),
                key_id,
            });
        }
        if !signed_by.contains(key) {
            signed_by.push(key.clone());
        }
    }
    if signed_by.is_empty() {
        return Err(NoteError::UnknownKey);
    }
    Ok(OpenedNote {
        text: text.to_owned(),
        signed_by,
    })
}

/// The key ID of an Ed25519 key: `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ key)[0..4]`, big-endian.
pub fn key_id(name: &str, public: &[u8; 32]) -> u32 {
    let mut input = Vec::with_capacity(name.len() + 2 + 32);
    input.extend_from_slice(name.as_bytes());
    input.push(b'\n');
    input.push(ED25519_TYPE);
    input.extend_from_slice(public);
    let h = Hash::of(&input).0;
    u32::from_be_bytes([h[0], h[1], h[2], h[3]])
}

/// Splits a note into its text (with the final newline) and its signature lines, checking the
/// format rules common to every note.
pub(crate) fn split_note(note: &str) -> Result<(&str, Vec<&str>), NoteError> {
    if note.len() > MAX_NOTE_LEN {
        return Err(NoteError::TooLong(note.len()));
    }
    if note.chars().any(|c| c < ' ' && c != '\n') {
        return Err(NoteError::Malformed("control character"));
    }
    // The text is separated from the signatures by the last blank line.
    let split = note
        .rfind("\n\n")
        .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let (text, rest) = note.split_at(split + 1);
    let sigs = rest
        .strip_prefix('\n')
        .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let body = sigs.strip_suffix('\n').ok_or(NoteError::Malformed(
        "the last signature line has no newline",
    ))?;
    let lines: Vec<&str> = body.split('\n').collect();
    if lines.len() > MAX_SIGNATURES {
        return Err(NoteError::Malformed("too many signatures"));
    }
    Ok((text, lines))
}

fn parse_signature_line(line: &str) -> Result<(&str, u32, Vec<u8>), NoteError> {
    let rest = line
        .strip_prefix(SIGNATURE_PREFIX)
        .ok_or(NoteError::Malformed(
            "signature line does not start with `— `",
        ))?;
    let (name, b64) = rest
        .split_once(' ')
        .ok_or(NoteError::Malformed("signature line has no signature"))?;
    check_key_name(name).map_err(|_| NoteError::Malformed("bad key name in a signature line"))?;
    let sig = BASE64
        .decode(b64)
        .map_err(|_| NoteError::Malformed("signature is not canonical base64"))?;
    let id: [u8; 4] = sig
        .get(..4)
        .and_then(|id| id.try_into().ok())
        .ok_or(NoteError::Malformed("signature is shorter than its key ID"))?;
    let key_id = u32::from_be_bytes(id);
    if sig.len() == 4 {
        return Err(NoteError::Malformed("signature is empty"));
    }
    Ok((name, key_id, sig))
}

fn check_text(text: &str) -> Result<(), NoteError> {
    if !text.ends_with('\n') {
        return Err(NoteError::Malformed("text does not end in a newline"));
    }
    if text.len() > MAX_NOTE_LEN {
        return Err(NoteError::TooLong(text.len()));
    }
    if text.chars().any(|c| c < ' ' && c != '\n') {
        return Err(NoteError::Malformed("control character"));
    }
    Ok(())
}

/// Key names are non-empty and have no Unicode space and no `+`.
pub(crate) fn check_key_name(name: &str) -> Result<(), NoteError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_KEY_NAME_LEN
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c < ' ');
    if ok {
        Ok(())
    } else {
        Err(NoteError::BadKeyName(
            name.chars().take(MAX_KEY_NAME_LEN).collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    // The example of golang.org/x/mod/sumdb/note (BSD-3-Clause, Copyright 2019 The Go
    // Authors): a published key and the note it signs. Ed25519 is deterministic, so signing the
    // same text with the same seed must give the same bytes.
    const GO_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const GO_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                           then you don't know what your problem is.\n";
    const GO_NOTE: &str = "If you think cryptography is the answer to your problem,\n\
                           then you don't know what your problem is.\n\
                           \n\
                           \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    fn go_signer() -> Ed25519Signer {
        // PRIVATE+KEY+<name>+<id>+base64(0x01 ‖ seed); the base64 contains a `+`.
        let b64 = GO_SKEY.splitn(5, '+').nth(4).unwrap();
        let raw = BASE64.decode(b64).unwrap();
        assert_eq!(raw[0], ED25519_TYPE);
        Ed25519Signer::from_seed("PeterNeumann", raw[1..].try_into().unwrap()).unwrap()
    }

    #[test]
    fn go_vector_signs_and_verifies_byte_for_byte() {
        let signer = go_signer();
        assert_eq!(signer.verifier_key().to_string(), GO_VKEY);
        assert_eq!(sign_note(GO_TEXT, &[&signer]).unwrap(), GO_NOTE);
        let key = VerifierKey::parse(GO_VKEY).unwrap();
        assert_eq!(key.key_id(), 0xc74f20a3);
        let opened = open_note(GO_NOTE, &Verifier::new(key.clone())).unwrap();
        assert_eq!(opened.text, GO_TEXT);
        assert_eq!(opened.signed_by, vec![key]);
    }

    #[test]
    fn altered_text_and_other_keys_are_refused() {
        let key = VerifierKey::parse(GO_VKEY).unwrap();
        let v = Verifier::new(key);
        let altered = GO_NOTE.replace("cryptography", "cryptographY");
        assert!(matches!(
            open_note(&altered, &v),
            Err(NoteError::BadSignature { .. })
        ));
        let other = Ed25519Signer::generate("PeterNeumann").unwrap();
        assert_eq!(
            open_note(GO_NOTE, &Verifier::new(other.verifier_key().clone())).unwrap_err(),
            NoteError::UnknownKey
        );
    }

    #[test]
    fn unknown_signatures_are_ignored_and_several_keys_may_be_trusted() {
        let a = Ed25519Signer::generate("log.example/a").unwrap();
        let b = Ed25519Signer::generate("witness.example").unwrap();
        let note = sign_note("hello\n", &[&a, &b]).unwrap();
        let only_a = Verifier::new(a.verifier_key().clone());
        assert_eq!(open_note(&note, &only_a).unwrap().signed_by.len(), 1);
        let mut both = only_a.clone();
        both.add(b.verifier_key().clone());
        assert_eq!(open_note(&note, &both).unwrap().signed_by.len(), 2);
    }

    #[test]
    fn verifier_keys_round_trip_and_manglings_are_refused() {
        let key = VerifierKey::parse(GO_VKEY).unwrap();
        assert_eq!(key.to_string(), GO_VKEY);
        assert_eq!(GO_VKEY.parse::<VerifierKey>().unwrap(), key);
        let b = GO_VKEY.as_bytes();
        for i in 0..b.len() {
            for j in i + 1..=b.len() {
                if i == 0 && j == b.len() {
                    continue;
                }
                if let Ok(s) = std::str::from_utf8(&b[i..j]) {
                    assert!(VerifierKey::parse(s).is_err(), "accepted `{s}`");
                }
            }
        }
        for i in 0..b.len() {
            let mut m = b.to_vec();
            m[i] = m[i].wrapping_add(1);
            if let Ok(s) = std::str::from_utf8(&m) {
                assert!(VerifierKey::parse(s).is_err(), "accepted `{s}`");
            }
        }
        assert!(
            VerifierKey::parse("a b+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
                .is_err()
        );
    }

    #[test]
    fn malformed_notes_are_refused() {
        let key = VerifierKey::parse(GO_VKEY).unwrap();
        let v = Verifier::new(key);
        for bad in [
            "",
            "text\n",
            "text\n\n",
            "text\n\n\u{2014} PeterNeumann x08go\n",
            "text\n\n- PeterNeumann x08go/ZJku\n",
            "text\n\n\u{2014} PeterNeumann x08g\u{2014}\n",
            "te\x07xt\n\n\u{2014} PeterNeumann x08go/ZJku\n",
        ] {
            assert!(open_note(bad, &v).is_err(), "accepted {bad:?}");
        }
        let no_final_newline = GO_NOTE.trim_end_matches('\n');
        assert!(open_note(no_final_newline, &v).is_err());
        let long = "a".repeat(MAX_NOTE_LEN + 1);
        assert_eq!(
            open_note(&long, &v).unwrap_err(),
            NoteError::TooLong(MAX_NOTE_LEN + 1)
        );
        assert!(sign_note("no newline", &[&go_signer()]).is_err());
    }
}
