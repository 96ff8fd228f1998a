//! A tiny GGUF image builder for tests (used by the tests of every module of `gguf`): raw
//! value bytes and any version, so tests can also build malformed files. It encodes through
//! the real writer's [`encode_header`].

use super::writer::{data_offsets, encode_header, encode_str};

/// Builds a GGUF image in memory: metadata and tensors in insertion order, data aligned,
/// and the last tensor ending exactly at the end of the file.
#[derive(Debug, Clone)]
pub(crate) struct GgufBuilder {
    pub version: u32,
    pub alignment: usize,
    kvs: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

pub(crate) fn enc_str(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    encode_str(&mut out, s);
    out
}

impl GgufBuilder {
    pub(crate) fn new(version: u32) -> Self {
        Self {
            version,
            alignment: 32,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// A key with an already-encoded value.
    pub(crate) fn kv_raw(mut self, key: &str, value_type: u32, value: Vec<u8>) -> Self {
        self.kvs.push((key.to_string(), value_type, value));
        self
    }

    pub(crate) fn kv_u32(self, key: &str, v: u32) -> Self {
        self.kv_raw(key, 4, v.to_le_bytes().to_vec())
    }

    pub(crate) fn kv_i32(self, key: &str, v: i32) -> Self {
        self.kv_raw(key, 5, v.to_le_bytes().to_vec())
    }

    pub(crate) fn kv_u64(self, key: &str, v: u64) -> Self {
        self.kv_raw(key, 10, v.to_le_bytes().to_vec())
    }

    pub(crate) fn kv_f32(self, key: &str, v: f32) -> Self {
        self.kv_raw(key, 6, v.to_le_bytes().to_vec())
    }

    pub(crate) fn kv_bool(self, key: &str, v: bool) -> Self {
        self.kv_raw(key, 7, vec![u8::from(v)])
    }

    pub(crate) fn kv_str(self, key: &str, v: &str) -> Self {
        self.kv_raw(key, 8, enc_str(v))
    }

    pub(crate) fn kv_str_array(self, key: &str, items: &[&str]) -> Self {
        let mut v = 8u32.to_le_bytes().to_vec();
        v.extend_from_slice(&(items.len() as u64).to_le_bytes());
        for s in items {
            v.extend(enc_str(s));
        }
        self.kv_raw(key, 9, v)
    }

    pub(crate) fn kv_i32_array(self, key: &str, items: &[i32]) -> Self {
        let mut v = 5u32.to_le_bytes().to_vec();
        v.extend_from_slice(&(items.len() as u64).to_le_bytes());
        for x in items {
            v.extend_from_slice(&x.to_le_bytes());
        }
        self.kv_raw(key, 9, v)
    }

    /// A tensor with raw data bytes; `dims` are GGUF order (ne0 first).
    pub(crate) fn tensor(
        mut self,
        name: &str,
        dims: &[u64],
        ggml_type: u32,
        data: Vec<u8>,
    ) -> Self {
        self.tensors
            .push((name.to_string(), dims.to_vec(), ggml_type, data));
        self
    }

    pub(crate) fn f32_tensor(self, name: &str, dims: &[u64], values: &[f32]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, dims, 0, data)
    }

    /// The image: the header through the shared encoder ([`encode_header`]), then the data at
    /// its offsets; unlike a written file, the last tensor is not padded.
    pub(crate) fn build(&self) -> Vec<u8> {
        let kvs: Vec<(&str, u32, &[u8])> = self
            .kvs
            .iter()
            .map(|(k, t, v)| (k.as_str(), *t, v.as_slice()))
            .collect();
        let infos: Vec<(&str, &[u64], u32, u64)> = self
            .tensors
            .iter()
            .map(|(n, d, t, data)| (n.as_str(), d.as_slice(), *t, data.len() as u64))
            .collect();
        let mut out = encode_header(self.version, self.alignment, &kvs, &infos);
        let data_start = out.len();
        let offsets = data_offsets(self.alignment, infos.iter().map(|i| i.3));
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + off as usize, 0);
            out.extend_from_slice(data);
        }
        out
    }
}
