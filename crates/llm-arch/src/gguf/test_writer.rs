//! A tiny GGUF writer for tests (used by the tests of every module of `gguf`).

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
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
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

    pub(crate) fn build(&self) -> Vec<u8> {
        let align = |n: usize| n.div_ceil(self.alignment) * self.alignment;
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (k, t, v) in &self.kvs {
            out.extend(enc_str(k));
            out.extend_from_slice(&t.to_le_bytes());
            out.extend_from_slice(v);
        }
        let mut offset = 0usize;
        let mut offsets = Vec::new();
        for (name, dims, ty, data) in &self.tensors {
            out.extend(enc_str(name));
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = align(offset + data.len());
        }
        if !self.tensors.is_empty() {
            out.resize(align(out.len()), 0);
        }
        let data_start = out.len();
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + off, 0);
            out.extend_from_slice(data);
        }
        out
    }
}
