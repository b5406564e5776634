//! Bit-exactness against gguf-py and ggml, on the fixtures of `scripts/make_quant_fixtures.py`:
//! for every type, our dequantization of random blocks and of quantized rows equals
//! `gguf.quants.dequantize` bit for bit, and our round-to-nearest quantizers write the bytes
//! that gguf-py (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) or ggml's `quantize_row_q{4,5,6}_K_ref` (Q4_K,
//! Q5_K, Q6_K) wrote.

use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use truthgpt_engine::close::max_abs_diff;
use truthgpt_quant::{dequantize, quantize_row, GgmlType};

struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    fn load(ty: GgmlType) -> Fixture {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{ty}.safetensors"));
        Fixture { bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) }
    }

    fn tensor(&self, name: &str, dtype: Dtype) -> Vec<u8> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let view = st.tensor(name).unwrap();
        assert_eq!(view.dtype(), dtype, "{name}");
        view.data().to_vec()
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        self.tensor(name, Dtype::F32)
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
}

/// Panics unless `got` and `want` have the same bits everywhere (so -0.0 differs from 0.0, and a
/// NaN matches only the same NaN), naming the first difference.
#[track_caller]
fn assert_same_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = got.iter().zip(want).position(|(g, w)| g.to_bits() != w.to_bits()) {
        panic!(
            "{what}[{i}]: got {} ({:#010x}), want {} ({:#010x}); max |diff| {:e}",
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits(),
            max_abs_diff(got, want)
        );
    }
}

#[test]
fn dequantization_matches_gguf_py_bit_for_bit_for_every_type() {
    for &ty in GgmlType::ALL {
        let fx = Fixture::load(ty);
        for (bytes, values) in [("random.bytes", "random.values"), ("quantized", "quantized.values")] {
            let bytes = fx.tensor(bytes, Dtype::U8);
            let want = fx.f32s(values);
            assert!(!want.is_empty(), "{ty} {values}: empty fixture");
            let got = dequantize(ty, &bytes, want.len()).unwrap();
            assert_same_bits(&format!("{ty} {values}"), &got, &want);
        }
        // The quantized rows come from finite inputs, so their values must be finite too: a NaN
        // matching a NaN would hide a broken fixture.
        assert!(fx.f32s("quantized.values").iter().all(|v| v.is_finite()), "{ty}: non-finite values");
    }
}

#[test]
fn rtn_quantization_writes_the_reference_bytes() {
    for &ty in GgmlType::QUANTIZABLE {
        let fx = Fixture::load(ty);
        let input = fx.f32s("input");
        let want = fx.tensor("quantized", Dtype::U8);
        let mut got = Vec::new();
        quantize_row(ty, &input, &mut got).unwrap();
        assert_eq!(got.len(), want.len(), "{ty}: bytes");
        let block = ty.block_bytes();
        if let Some(i) = got.iter().zip(&want).position(|(g, w)| g != w) {
            panic!(
                "{ty}: byte {i} (block {}, offset {}): got {:#04x}, want {:#04x}",
                i / block,
                i % block,
                got[i],
                want[i]
            );
        }
    }
}
