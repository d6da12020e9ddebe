//! JSON test vectors: hex bytes, reading and (re)writing vector files.

use std::path::Path;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Bytes, written as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hex(pub Vec<u8>);

impl Hex {
    pub fn of(bytes: impl AsRef<[u8]>) -> Self {
        Self(bytes.as_ref().to_vec())
    }
}

impl std::ops::Deref for Hex {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Serialize for Hex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map(Hex).map_err(serde::de::Error::custom)
    }
}

/// Reads the vector file at `path`; `test` is the test binary that regenerates it.
pub fn read_vector<T: DeserializeOwned>(path: &str, test: &str) -> T {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{path}: {e}; regenerate with `cargo test -p entente-crypto --test {test} -- --ignored`"
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Writes a vector file: aside, then renamed, so a test reading concurrently never sees
/// half a file.
pub fn write(path: &str, value: &impl Serialize) {
    let mut text = serde_json::to_string_pretty(value).unwrap();
    text.push('\n');
    std::fs::create_dir_all(Path::new(path).parent().unwrap()).unwrap();
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
