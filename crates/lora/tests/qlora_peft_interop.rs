//! QLoRA interop (issue 21): an adapter Temper trained on an NF4 base
//! (`fixtures/qlora/temper_adapter/`, written by `temper-train`'s `qlora_peft_fixture` test)
//! runs in PEFT 0.21.2 on a bitsandbytes 0.50.2 4-bit model on CPU (`make_qlora_fixture.py`,
//! see `fixtures/README.md`), and Temper's forward on the same NF4 base gives PEFT's logits.
//!
//! The argument has two halves, one test each. (1) The stored NF4 state — packed nibbles,
//! 8-bit scale codes, nested absmax, offset — that `quantize_base` writes is bit for bit what
//! transformers' `load_in_4bit` loading made, so both sides decode identical f32 weights
//! (`scale = code[q]·absmax₂ + offset`, `nf4[i]·scale`, both in f32; the decoder itself is checked
//! against bnb's in `temper-formats`' quant fixtures). (2) With identical weights, the logits
//! differ only by f32 rounding in a different order: torch's sgemm, softmax, RMSNorm and SiLU
//! against burn Flex's. See [`TOL`].

use std::path::PathBuf;

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use temper_llm_arch::{ForwardOptions, LlamaForCausalLM};
use temper_lora::{
    QuantType, adapter_paths, load_adapter, projections, quantize_base, set_adapters_enabled,
};

mod common;
use common::{assert_close, fixtures, has_tensor, load_dir, max_abs_diff, read_f32, read_raw};

/// Largest allowed `|Temper − PEFT|` over the `[2, 8, 64]` logits (magnitudes up to 3.6).
///
/// Both sides multiply the same f32 weights (test 1), so the gap is reordered f32 rounding
/// only. A length-n dot product summed in another order moves by at most ~n·u·Σ|aᵢbᵢ|
/// (u = 2⁻²⁴ ≈ 6e-8), typically √n·u·Σ|aᵢbᵢ|; here n ≤ 128, and two decoder layers (seven
/// products, an attention softmax and two RMSNorms each) plus the LM head compound it: a
/// logit near 3.6 has an ulp of 2.4e-7, and the measured gap is 2.9e-6 (about 12 ulps; the
/// NF4 base alone 2.6e-6). 2e-5 leaves ~7× room for other SIMD widths and thread splits while
/// staying 10⁵ times below the adapter's effect (3.0), 6·10⁴ times below NF4's own error
/// (1.2) and 2500 times below what bnb's bfloat16 CPU path changes (0.05): a wrong scale, a
/// transposed block, a dense base or a lost adapter fails it.
const TOL: f32 = 2e-5;

fn qlora_dir() -> PathBuf {
    fixtures().join("qlora")
}

fn expected_file() -> PathBuf {
    qlora_dir().join("expected.safetensors")
}

fn expected(name: &str) -> Vec<f32> {
    read_f32(&expected_file(), name).1
}

fn device() -> Device {
    Device::flex()
}

fn tiny(device: &Device) -> LlamaForCausalLM {
    load_dir(&qlora_dir().join("tiny_llama"), device)
}

fn nf4_tiny(device: &Device) -> LlamaForCausalLM {
    quantize_base(tiny(device), QuantType::Nf4).expect("quantize")
}

fn logits(model: &LlamaForCausalLM, device: &Device) -> Vec<f32> {
    let (shape, ids) = read_f32(&expected_file(), "input_ids");
    let ids: Vec<i64> = ids.iter().map(|&v| v as i64).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [shape[0], shape[1]]), device);
    model
        .forward(ids, &ForwardOptions::default())
        .expect("forward")
        .cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32")
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn nf4_base_is_bitsandbytes_load_in_4bit_bit_for_bit() {
    let d = device();
    // The dense model first: the fixture loads as transformers reads it.
    assert_close(
        "dense base vs transformers",
        &logits(&tiny(&d), &d),
        &expected("dense_base_logits"),
        1e-5,
    );
    let model = nf4_tiny(&d);
    let state = qlora_dir().join("bnb_nf4_state.safetensors");
    let projections = projections(&model);
    assert_eq!(projections.len(), 14);
    for (path, p) in projections {
        let nf4 = p
            .quantized
            .as_ref()
            .and_then(|q| q.nf4())
            .unwrap_or_else(|| panic!("{path} is not NF4"));
        let raw = |part: &str| read_raw(&state, &format!("{path}.{part}")).2;
        assert!(
            nf4.packed() == raw("packed"),
            "{path}: packed nibbles differ"
        );
        assert!(
            nf4.absmax_codes() == raw("absmax_codes"),
            "{path}: scale codes differ"
        );
        let nested = f32s(&raw("nested_absmax"));
        assert_eq!(nf4.nested_absmax().len(), nested.len(), "{path}");
        for (a, b) in nf4.nested_absmax().iter().zip(&nested) {
            assert_eq!(a.to_bits(), b.to_bits(), "{path}: nested absmax");
        }
        let offset = f32s(&raw("offset"));
        assert_eq!(
            nf4.offset().to_bits(),
            offset[0].to_bits(),
            "{path}: offset"
        );
    }
    // Without adapter, Temper's NF4 forward is transformers + bitsandbytes' 4-bit model's.
    let got = logits(&model, &d);
    let want = expected("nf4_base_logits");
    let gap = max_abs_diff(&got, &want);
    eprintln!("max |Temper NF4 base - bitsandbytes| = {gap:e} (tolerance {TOL:e})");
    assert!(gap <= TOL, "NF4 base vs bitsandbytes: {gap} > {TOL}");
    // NF4 is lossy: the dense model is far away, so the comparison above tells them apart.
    let dense_gap = max_abs_diff(&want, &expected("dense_base_logits"));
    eprintln!("max |NF4 base - dense base| = {dense_gap}");
    assert!(
        dense_gap > 1e3 * TOL,
        "NF4 changed the logits by {dense_gap} only"
    );
}

#[test]
fn temper_qlora_adapter_in_peft_gives_temper_logits() {
    let d = device();
    let (mut model, config) =
        load_adapter(nf4_tiny(&d), qlora_dir().join("temper_adapter"), &d).expect("load");
    assert_eq!((config.r, config.lora_alpha), (4, 8.0));
    assert_eq!(adapter_paths(&model).len(), 14);
    let got = logits(&model, &d);
    let peft = expected("adapter_logits");
    let gap = max_abs_diff(&got, &peft);
    eprintln!("max |Temper - PEFT| = {gap:e} (tolerance {TOL:e})");
    assert!(gap <= TOL, "Temper vs PEFT + bitsandbytes: {gap} > {TOL}");
    // The trained adapter matters: PEFT's logits are far from the bare NF4 base's.
    let base = expected("nf4_base_logits");
    let effect = max_abs_diff(&peft, &base);
    eprintln!("max |adapter - no adapter| = {effect}");
    assert!(
        effect > 1e4 * TOL,
        "the adapter moves the logits by {effect} only"
    );
    // Disabling the adapters gives the base back, as PEFT's `disable_adapter()` did.
    set_adapters_enabled(&mut model, false).expect("disable");
    assert_close("adapters disabled", &logits(&model, &d), &base, TOL);

    // bnb's default inference path on CPUs with AVX512-BF16 (scales and activations rounded to
    // bfloat16), recorded when the fixture machine had it: a different, coarser computation —
    // outside the f32 tolerance, yet far closer than the adapter's effect, so it runs the same
    // adapter on the same blocks.
    let bf16 = "adapter_logits_bnb_bf16_cpu_path";
    if has_tensor(&expected_file(), bf16) {
        let fast = max_abs_diff(&got, &expected(bf16));
        eprintln!("max |Temper - bnb bf16 CPU path| = {fast}");
        assert!(fast > TOL && fast < effect / 10.0, "bf16 path gap {fast}");
    }
}
