//! Key/value cache for incremental decoding.

use burn::tensor::Tensor;

/// Keys and values of one attention layer, `[batch, seq, kv_heads, head_dim]`, before the
/// grouped-query repeat (so the cache is `num_key_value_heads` wide, not `num_attention_heads`).
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    pub(crate) kv: Option<(Tensor<4>, Tensor<4>)>,
}

impl LayerCache {
    /// Append this step's keys and values and return the whole sequence so far.
    pub(crate) fn append(&mut self, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let (k, v) = match self.kv.take() {
            None => (k, v),
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 1), Tensor::cat(vec![pv, v], 1)),
        };
        self.kv = Some((k.clone(), v.clone()));
        (k, v)
    }
}

/// The cache of a whole model: one [`LayerCache`] per decoder layer, plus how many positions
/// it holds.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) layers: Vec<LayerCache>,
    pub(crate) len: usize,
}

impl KvCache {
    /// An empty cache for a model with `num_layers` decoder layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![LayerCache::default(); num_layers],
            len: 0,
        }
    }

    /// Number of positions (tokens per row) already cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first forward.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keep only the rows in `rows` (drop finished sequences from a batch).
    pub fn select_rows(&mut self, rows: &[usize]) {
        for layer in &mut self.layers {
            if let Some((k, v)) = layer.kv.take() {
                let device = k.device();
                let idx = Tensor::<1, burn::tensor::Int>::from_data(
                    burn::tensor::TensorData::new(
                        rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
                        [rows.len()],
                    ),
                    &device,
                );
                layer.kv = Some((k.select(0, idx.clone()), v.select(0, idx)));
            }
        }
    }
}
