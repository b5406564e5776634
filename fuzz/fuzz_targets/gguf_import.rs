//! A whole GGUF import: header, architecture and hyperparameters from the metadata, every
//! tensor's dims against them, the quantized matrices viewed in place, the tokenizer. The input
//! goes through a file because `import::load` takes a path (as `--model` does); /dev/shm keeps
//! that cheap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use truthgpt_interop::gguf::import;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("truthgpt-fuzz-{}.gguf", std::process::id()));
    std::fs::write(&path, data).expect("write the input");
    let _ = import::load(&path);
});
