//! GFLOP/s of Flex's matmul on the projection shapes of a SmolLM2 training step (1,024 tokens),
//! forward (`x·W`), weight gradient (`xᵀ·dy`) and input gradient (`dy·Wᵀ`), as the training
//! step runs them. The PyTorch side of the comparison is the same three products with
//! `torch.set_num_threads(2)`.
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo run --release -p temper-backend --example matmul_speed
//! ```

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};

fn gflops(m: usize, k: usize, n: usize, f: impl Fn() -> Tensor<2>) -> f64 {
    for _ in 0..3 {
        drop(f());
    }
    let runs = 20;
    let start = Instant::now();
    for _ in 0..runs {
        drop(f());
    }
    let dt = start.elapsed().as_secs_f64() / runs as f64;
    2.0 * (m * k * n) as f64 / dt / 1e9
}

fn main() {
    let dev = Device::flex();
    let shapes = [
        ("q/o", 1024, 576, 576),
        ("k/v", 1024, 576, 192),
        ("gate/up", 1024, 576, 1536),
        ("down", 1024, 1536, 576),
        ("head tile", 1024, 576, 4096),
    ];
    for (name, m, k, n) in shapes {
        let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &dev);
        let w = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 1.0), &dev);
        let dy = Tensor::<2>::random([m, n], Distribution::Normal(0.0, 1.0), &dev);
        let fwd = gflops(m, k, n, || x.clone().matmul(w.clone()));
        let dw = gflops(m, k, n, || x.clone().transpose().matmul(dy.clone()));
        let dx = gflops(m, k, n, || dy.clone().matmul(w.clone().transpose()));
        println!("{name:10} fwd {fwd:6.1}  dW {dw:6.1}  dx {dx:6.1} GFLOP/s");
    }
}
