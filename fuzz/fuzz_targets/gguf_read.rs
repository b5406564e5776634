//! The GGUF header parser and everything a caller reads after it: metadata, tensor bytes, the
//! f32 reference dequantization and the tokenizer built from the metadata. Any panic, overflow
//! (debug assertions are on under cargo-fuzz) or allocation past libFuzzer's RSS limit is a bug.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use truthgpt_interop::gguf::{vocab, Gguf};

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::from_bytes(Path::new("fuzz.gguf"), data) else { return };
    for (key, value) in g.metadata() {
        let _ = (key.len(), value.type_name());
    }
    for t in g.tensors() {
        assert_eq!(g.tensor_bytes(t).len(), t.bytes);
        // Bounded by the file: a tensor's bytes are checked to lie inside it.
        if t.elements() <= 1 << 20 {
            let _ = g.dequantize(&t.name);
        }
    }
    let _ = vocab::tokenizer(&g);
});
