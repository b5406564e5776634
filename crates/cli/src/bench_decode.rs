//! `truthgpt bench decode --model FILE`: a saved model's prompt and decoding speed, as
//! llama.cpp's `llama-bench` measures them (`-p N`: one forward over an N-token prompt; `-n N`:
//! N tokens generated one at a time from an empty context), median of several rounds; with
//! `--batch S`, also S sequences decoded together through the paged pool. One JSON line.
//! `scripts/bench_vs_llamacpp.sh` runs it against llama-bench on the same GGUF file.

use std::time::Instant;

use anyhow::ensure;
use serde_json::json;
use truthgpt_engine::rng::Rng;
use truthgpt_model::generate::argmax;
use truthgpt_model::{DecodeWork, Model, SeqKv};
use truthgpt_train::checkpoint;

use crate::args::BenchDecodeArgs;
use crate::bench::{init_threads, median, random_tokens};

pub fn run(args: &BenchDecodeArgs) -> anyhow::Result<()> {
    ensure!(
        args.rounds > 0 && args.tokens > 0 && args.prompt_tokens > 0,
        "--rounds, --tokens and --prompt-tokens must be at least 1"
    );
    ensure!(args.batch > 0, "--batch must be at least 1");
    let threads = init_threads(args.threads)?;
    let load = Instant::now();
    let mut model = checkpoint::load_model(&args.model)?.model;
    let load_secs = load.elapsed().as_secs_f64();
    let max = model.config.max_seq_len;
    ensure!(args.prompt_tokens <= max && args.tokens < max, "the model's context is {max} tokens");
    let vocab = model.config.vocab_size;
    let prompt = random_tokens(&mut Rng::new(1), args.prompt_tokens, vocab);
    let (mut prefill, mut decode, mut batched) = (Vec::new(), Vec::new(), Vec::new());
    // One untimed round first: page faults in the mapped weights, buffers, the CPU's clock.
    for round in 0..=args.rounds {
        let mut cache = model.new_cache();
        let start = Instant::now();
        model.forward_cached(&mut cache, &prompt)?;
        let p = start.elapsed().as_secs_f64();
        let mut cache = model.new_cache();
        let mut token = prompt[0];
        let start = Instant::now();
        for _ in 0..args.tokens {
            token = argmax(model.forward_cached(&mut cache, &[token])?);
        }
        let d = start.elapsed().as_secs_f64();
        let b = if args.batch > 1 { Some(decode_batch(&mut model, args)?) } else { None };
        if round > 0 {
            prefill.push(args.prompt_tokens as f64 / p);
            decode.push(args.tokens as f64 / d);
            batched.extend(b.map(|secs| (args.batch * args.tokens) as f64 / secs));
        }
    }
    let mut line = json!({
        "model": args.model.display().to_string(),
        "quantized": model.is_quantized(),
        "threads": threads,
        "rounds": args.rounds,
        "load_secs": load_secs,
        "prompt_tokens": args.prompt_tokens,
        "tokens": args.tokens,
        "prefill_tok_per_s": median(&mut prefill),
        "decode_tok_per_s": median(&mut decode),
    });
    if args.batch > 1 {
        let aggregate = median(&mut batched);
        line["batch"] = json!(args.batch);
        line["batch_tok_per_s"] = json!(aggregate);
        line["batch_vs_one"] = json!(aggregate / median(&mut decode));
    }
    println!("{line}");
    Ok(())
}

/// `--batch` sequences, each from its own first token, decoding `--tokens` tokens in lockstep
/// through one paged pool; returns the seconds taken.
fn decode_batch(model: &mut Model, args: &BenchDecodeArgs) -> anyhow::Result<f64> {
    let vocab = model.config.vocab_size;
    let mut inputs: Vec<Vec<u32>> =
        random_tokens(&mut Rng::new(2), args.batch, vocab).into_iter().map(|t| vec![t]).collect();
    let mut pool = model.new_pool(16, args.batch * (args.tokens + 1).div_ceil(16));
    let mut work = DecodeWork::default();
    let mut seqs: Vec<SeqKv> = vec![SeqKv::default(); args.batch];
    let start = Instant::now();
    for _ in 0..args.tokens {
        let mut batch: Vec<(&mut SeqKv, &[u32])> =
            seqs.iter_mut().zip(&inputs).map(|(s, t)| (s, t.as_slice())).collect();
        let logits = model.forward_paged(&mut pool, &mut work, &mut batch)?;
        for (input, row) in inputs.iter_mut().zip(logits.chunks_exact(vocab)) {
            input[0] = argmax(row);
        }
    }
    Ok(start.elapsed().as_secs_f64())
}
