//! `truthgpt bench train|moe|generate`: each prints exactly one JSON line on stdout, so scripts can compare
//! runs (and the PyTorch baseline) without parsing prose.

use std::time::Instant;

use anyhow::{ensure, Context};
use serde_json::json;
use truthgpt_config::{ExpertKind, FfnKind, ModelConfig, MoeConfig, MAX_TOP_K};
use truthgpt_engine::matmul::{skinny_nt_with, Tile};
use truthgpt_engine::rng::Rng;
use truthgpt_interop::hf;
use truthgpt_model::ffn::Ffn;
use truthgpt_model::generate::argmax;
use truthgpt_model::moe::Moe;
use truthgpt_model::params::ParamBuilder;
use truthgpt_model::{Batch, DecodeWork, Generator, Mode, Model, Sampling, SeqKv, Trainer};
use truthgpt_train::checkpoint;

use crate::args::{BenchGenerateArgs, BenchLoadArgs, BenchMoeArgs, BenchSkinnyArgs, BenchTrainArgs};
use crate::config_cmd;

pub fn train(args: &BenchTrainArgs) -> anyhow::Result<()> {
    ensure!(args.steps > 0, "--steps must be at least 1");
    // The global pool must exist before anything (the model's init included) touches rayon.
    let threads = init_threads(args.threads)?;
    let preset = args.layers.preset.as_deref();
    let mut config = config_cmd::load(preset, args.config.as_deref(), &args.layers.set)?;
    if args.gradient_checkpointing {
        config.train.gradient_checkpointing = true;
    }
    let (b, t) = (config.train.batch_size, config.train.seq_len);
    // Distinct random micro-batches, so `grad_accum` costs what it would in training.
    let mut rng = Rng::new(config.train.seed);
    let data: Vec<(Vec<u32>, Vec<u32>)> = (0..config.train.grad_accum)
        .map(|_| {
            (
                random_tokens(&mut rng, b * t, config.model.vocab_size),
                random_tokens(&mut rng, b * t, config.model.vocab_size),
            )
        })
        .collect();
    let batches: Vec<Batch> = data.iter().map(|(tokens, targets)| Batch { tokens, targets, b, t }).collect();

    let model = Model::new(&config.model, config.train.seed);
    let params = model.num_params();
    let mut trainer = Trainer::new(model, config.train.clone());
    for _ in 0..args.warmup {
        trainer.step(&batches).context("warmup step")?;
    }
    let mut ms = Vec::with_capacity(args.steps);
    let mut loss = f32::NAN;
    for _ in 0..args.steps {
        let start = Instant::now();
        loss = trainer.step(&batches).context("training step")?.loss;
        ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    // Median, as the PyTorch baseline script measures, so one slow step does not skew the ratio.
    let ms_per_step = median(&mut ms);
    let tokens_per_step = (b * t * batches.len()) as f64;
    let source = describe_source(preset, args.config.as_deref());
    let line = json!({
        "tokens_per_sec": tokens_per_step / (ms_per_step / 1e3),
        "ms_per_step": ms_per_step,
        "peak_rss_mb": peak_rss_mb(),
        "params": params,
        "activation_mb": trainer.model.activation_bytes() as f64 / 1e6,
        "loss": loss,
        "threads": threads,
        "preset_or_config": source,
        "linear_gemm": format!("{:?}", trainer.model.linear_gemm()).to_lowercase(),
    });
    println!("{line}");
    Ok(())
}

pub fn moe(args: &BenchMoeArgs) -> anyhow::Result<()> {
    let &BenchMoeArgs { tokens: n, d_model: c, d_ff: f, experts: e, top_k: k, iters, threads } = args;
    ensure!(
        n > 0 && c > 0 && f > 0 && e > 0 && iters > 0,
        "--tokens, --d-model, --d-ff, --experts and --iters must be positive"
    );
    ensure!(
        (1..=e.min(MAX_TOP_K)).contains(&k),
        "--top-k {k} must be between 1 and min(--experts, {MAX_TOP_K})"
    );
    let threads = init_threads(threads)?;
    let m = dropless_swiglu_moe(c, f, e, k);
    let groups = m.expert_groups().context("ffn: moe has expert groups")?;
    let seed = 1337;

    let mut pb = ParamBuilder::default();
    let mut moe = Moe::new(&mut pb, &m, &groups, m.init_std);
    let (_, moe_params) = pb.finish(seed);
    let mut moe_grads = truthgpt_model::Grads::new(0, moe_params.len());
    let (mut acts, mut scratch) = (moe.acts(n), moe.scratch(n));

    // Same FLOPs per token as the routed experts (ignoring the router): one SwiGLU of width F*K.
    let mut pb = ParamBuilder::default();
    let dense = Ffn::new(&mut pb, "ffn", &m, ExpertKind::Swiglu, f * k, m.init_std);
    let (_, dense_params) = pb.finish(seed);
    let mut dense_grads = truthgpt_model::Grads::new(0, dense_params.len());
    let (hidden, width) = (dense.hidden_width(), dense.width);
    let (mut h, mut a) = (vec![0.0; n * hidden], vec![0.0; n * width]);
    let (mut dh, mut da) = (vec![0.0; n * hidden], vec![0.0; n * width]);

    let mut rng = Rng::new(seed);
    let (mut x, mut dy) = (vec![0.0; n * c], vec![0.0; n * c]);
    rng.fill_normal(&mut x, 1.0);
    rng.fill_normal(&mut dy, 1.0);
    let (mut y, mut dx) = (vec![0.0; n * c], vec![0.0; n * c]);

    // Interleaved so that frequency scaling or a noisy neighbour hits both alike; the first
    // round is untimed.
    let (mut moe_ms, mut dense_ms) = (Vec::with_capacity(iters), Vec::with_capacity(iters));
    for round in 0..=iters {
        let start = Instant::now();
        // As in training: the forward counts its routing, which the load imbalance reads.
        moe.forward(&moe_params, &mut acts, &mut y, &x, n);
        moe.count(&acts, n);
        moe.backward(&moe_params, &mut moe_grads, &mut scratch, &acts, &mut dx, &dy, &x, n, 1.0);
        let moe_time = start.elapsed().as_secs_f64() * 1e3;

        let start = Instant::now();
        dense.forward(&dense_params, &mut h, &mut a, &mut y, &x, n);
        dense.backward(&dense_params, &mut dense_grads, &mut dh, &mut da, &mut dx, &dy, &x, &h, &a, n);
        let dense_time = start.elapsed().as_secs_f64() * 1e3;
        if round > 0 {
            moe_ms.push(moe_time);
            dense_ms.push(dense_time);
        }
    }
    let (moe_ms, dense_ms) = (median(&mut moe_ms), median(&mut dense_ms));
    // Busiest expert over the mean: routing imbalance explains part of any gap to the dense FFN.
    let loads = &moe.stats.tokens;
    let mean_load = loads.iter().sum::<u64>() as f64 / loads.len() as f64;
    let imbalance = loads.iter().copied().max().unwrap_or(0) as f64 / mean_load.max(1.0);
    let line = json!({
        "moe_ms": moe_ms,
        "dense_ms": dense_ms,
        "ratio": moe_ms / dense_ms,
        "tokens": n,
        "d_model": c,
        "d_ff": f,
        "dense_d_ff": f * k,
        "experts": e,
        "top_k": k,
        "iters": iters,
        "threads": threads,
        "load_imbalance": imbalance,
    });
    println!("{line}");
    Ok(())
}

/// The layer `bench moe` times: `e` SwiGLU experts of width `f` over `c`, `k` per token,
/// without capacity drops or biases.
fn dropless_swiglu_moe(c: usize, f: usize, e: usize, k: usize) -> ModelConfig {
    ModelConfig {
        d_model: c,
        d_ff: f,
        bias: false,
        ffn: FfnKind::Moe,
        moe: MoeConfig {
            n_experts: e,
            top_k: k,
            expert: ExpertKind::Swiglu,
            dropless: true,
            ..MoeConfig::default()
        },
        ..ModelConfig::default()
    }
}

/// Where a benchmark's config came from: the preset, the file, or both.
fn describe_source(preset: Option<&str>, file: Option<&std::path::Path>) -> String {
    match (preset, file) {
        (Some(preset), Some(file)) => format!("{preset} + {}", file.display()),
        (None, Some(file)) => file.display().to_string(),
        (Some(preset), None) => preset.to_string(),
        (None, None) => String::new(),
    }
}

/// Greedy decoding with the key/value cache against the same tokens produced by re-running the
/// whole sequence for each one (what generation costs without a cache), on random weights.
pub fn generate(args: &BenchGenerateArgs) -> anyhow::Result<()> {
    ensure!(args.tokens > 0 && args.prompt_tokens > 0, "--tokens and --prompt-tokens must be at least 1");
    let threads = init_threads(args.threads)?;
    let preset = args.layers.preset.as_deref();
    let config = config_cmd::load(preset, args.config.as_deref(), &args.layers.set)?;
    let max = config.model.max_seq_len;
    ensure!(
        args.prompt_tokens + args.tokens <= max,
        "--prompt-tokens + --tokens = {} exceeds model.max_seq_len = {max}",
        args.prompt_tokens + args.tokens
    );
    let mut model = Model::new(&config.model, config.train.seed);
    let prompt = random_tokens(&mut Rng::new(1), args.prompt_tokens, config.model.vocab_size);

    let decode = |model: &mut Model| -> anyhow::Result<(Vec<u32>, f64)> {
        let start = Instant::now();
        let tokens = Generator::new(model, &prompt, args.tokens, Sampling::greedy(), vec![])?
            .collect::<Result<Vec<u32>, _>>()?;
        Ok((tokens, start.elapsed().as_secs_f64()))
    };
    decode(&mut model)?; // warm-up: page faults and the cache's first allocation
    let (cached, cached_secs) = decode(&mut model)?;

    let start = Instant::now();
    let mut sequence = prompt.clone();
    for _ in 0..args.tokens {
        let t = sequence.len();
        let logits = model.forward(&sequence, 1, t, Mode::Eval)?;
        let last = &logits[(t - 1) * config.model.vocab_size..];
        sequence.push(argmax(last));
    }
    let recompute_secs = start.elapsed().as_secs_f64();
    ensure!(cached == sequence[prompt.len()..], "cached and recomputed greedy tokens differ");
    let batched = (args.batch > 1).then(|| decode_batch(&mut model, args, &prompt, &cached)).transpose()?;
    let mut line = json!({
        "cached_tokens_per_sec": args.tokens as f64 / cached_secs,
        "recompute_tokens_per_sec": args.tokens as f64 / recompute_secs,
        "ratio": recompute_secs / cached_secs,
        "ms_per_token": cached_secs * 1e3 / args.tokens as f64,
        "prompt_tokens": args.prompt_tokens,
        "tokens": args.tokens,
        "params": model.num_params(),
        "threads": threads,
        "preset_or_config": describe_source(preset, args.config.as_deref()),
    });
    if let Some(secs) = batched {
        let aggregate = (args.batch * args.tokens) as f64 / secs;
        line["batch"] = args.batch.into();
        line["batch_tokens_per_sec"] = aggregate.into();
        line["batch_ratio"] = (aggregate * cached_secs / args.tokens as f64).into();
    }
    println!("{line}");
    Ok(())
}

/// Greedy decoding of `--batch` sequences in lockstep through one paged pool: the first shares
/// the single-sequence prompt (and must produce `want`), the others have their own prompts.
/// Returns the seconds taken after a warm-up round.
fn decode_batch(
    model: &mut Model,
    args: &BenchGenerateArgs,
    prompt: &[u32],
    want: &[u32],
) -> anyhow::Result<f64> {
    let vocab = model.config.vocab_size;
    let mut rng = Rng::new(2);
    let prompts: Vec<Vec<u32>> = std::iter::once(prompt.to_vec())
        .chain((1..args.batch).map(|_| random_tokens(&mut rng, prompt.len(), vocab)))
        .collect();
    let blocks_per_sequence = (prompt.len() + args.tokens).div_ceil(16);
    let mut pool = model.new_pool(16, args.batch * blocks_per_sequence);
    let mut work = DecodeWork::default();
    let mut run = |model: &mut Model| -> anyhow::Result<(Vec<u32>, f64)> {
        let start = Instant::now();
        let mut seqs: Vec<SeqKv> = vec![SeqKv::default(); args.batch];
        let mut inputs = prompts.clone();
        let mut first = Vec::with_capacity(args.tokens);
        for _ in 0..args.tokens {
            let mut batch: Vec<(&mut SeqKv, &[u32])> =
                seqs.iter_mut().zip(&inputs).map(|(s, t)| (s, t.as_slice())).collect();
            let logits = model.forward_paged(&mut pool, &mut work, &mut batch)?;
            for (input, row) in inputs.iter_mut().zip(logits.chunks_exact(vocab)) {
                input.clear();
                input.push(argmax(row));
            }
            first.push(inputs[0][0]);
        }
        seqs.into_iter().for_each(|seq| pool.release(seq));
        Ok((first, start.elapsed().as_secs_f64()))
    };
    run(model)?; // warm-up: the pool's first allocation
    let (first, secs) = run(model)?;
    ensure!(first == want, "the batch decoded the shared prompt differently from one sequence alone");
    Ok(secs)
}

/// Each register tile of the few-row product against the portable one, per shape. The weights
/// cycle through copies that together exceed L2, so they stream from L3 as in a decode step.
pub fn skinny(args: &BenchSkinnyArgs) -> anyhow::Result<()> {
    let threads = init_threads(args.threads)?;
    let shapes = if args.shapes.is_empty() {
        vec![[16, 128, 256], [16, 128, 128], [8, 128, 512], [8, 256, 128], [16, 128, 2048]]
    } else {
        args.shapes.clone()
    };
    let mut rng = Rng::new(3);
    for [m, k, n] in shapes {
        let mut a = vec![0.0; m * k];
        rng.fill_normal(&mut a, 1.0);
        let copies = (16 << 20) / (4 * n * k) + 1;
        let weights: Vec<Vec<f32>> = (0..copies)
            .map(|_| {
                let mut w = vec![0.0; n * k];
                rng.fill_normal(&mut w, 1.0);
                w
            })
            .collect();
        let mut out = vec![0.0; m * n];
        // About 0.2 s per tile and round, the weights cycled in order.
        let calls = ((4e8 / (m * n * k) as f64) as usize).max(copies);
        let mut results = serde_json::Map::new();
        let mut seconds = Vec::new();
        for tile in Tile::available() {
            let mut best = f64::INFINITY;
            for _ in 0..3 {
                let start = Instant::now();
                // On a pool thread, as the decode step runs: from outside the pool every split
                // product would wait for a sleeping worker to be woken and then sleep itself.
                rayon::scope(|_| {
                    for call in 0..calls {
                        skinny_nt_with(tile, &mut out, &a, &weights[call % copies], m, k, n, false);
                    }
                });
                best = best.min(start.elapsed().as_secs_f64() / calls as f64);
            }
            results.insert(
                format!("{tile:?}_gflops").to_lowercase(),
                (2.0 * (m * n * k) as f64 / best / 1e9).into(),
            );
            seconds.push(best);
        }
        let mut line = json!({"m": m, "k": k, "n": n, "threads": threads, "weights_mib": (copies * n * k * 4) as f64 / (1 << 20) as f64});
        line.as_object_mut().expect("an object").extend(results);
        if let [portable, .., best] = seconds[..] {
            line["speedup_vs_lanes8"] = (portable / best).into();
        }
        println!("{line}");
    }
    Ok(())
}

/// Writes one model both ways, then times `--repeats` loads of each and reports the medians.
pub fn load(args: &BenchLoadArgs) -> anyhow::Result<()> {
    ensure!(args.repeats > 0, "--repeats must be at least 1");
    let threads = init_threads(args.threads)?;
    let preset = args.layers.preset.as_deref().unwrap_or("gpt2-small");
    let config = config_cmd::load(Some(preset), None, &args.layers.set)?;
    let model = Model::new(&config.model, config.train.seed);
    let scratch = tempfile::tempdir().context("creating a temporary directory")?;
    let hf_dir = args.keep.clone().unwrap_or_else(|| scratch.path().join("hf"));
    let ours_dir = scratch.path().join("ours");
    let exported = hf::export(&model, None, None, &hf_dir)?;
    checkpoint::save_model(&ours_dir, &config, &model, None)?;
    let params = model.num_params();
    drop(model);

    let median = |load: &dyn Fn() -> anyhow::Result<Model>| -> anyhow::Result<f64> {
        let mut secs = Vec::with_capacity(args.repeats);
        for _ in 0..args.repeats {
            let start = Instant::now();
            let model = load()?;
            secs.push(start.elapsed().as_secs_f64());
            drop(model);
        }
        secs.sort_by(f64::total_cmp);
        Ok(secs[secs.len() / 2])
    };
    let hf_secs = median(&|| Ok(hf::load(&hf_dir)?.model))?;
    let ours_secs = median(&|| Ok(checkpoint::load_model(&ours_dir)?.model))?;
    let bytes = std::fs::metadata(hf_dir.join("model.safetensors")).map(|m| m.len()).unwrap_or(0);
    let line = json!({
        "hf_load_secs": hf_secs,
        "native_load_secs": ours_secs,
        "ratio": ours_secs / hf_secs,
        "weights_bytes": bytes,
        "hf_gib_per_sec": bytes as f64 / hf_secs / (1u64 << 30) as f64,
        "architecture": exported.family.architecture(),
        "params": params,
        "threads": threads,
        "preset": preset,
    });
    println!("{line}");
    Ok(())
}

/// Builds the global rayon pool when asked to, and returns its size.
pub fn init_threads(threads: Option<usize>) -> anyhow::Result<usize> {
    if let Some(n) = threads {
        ensure!(n > 0, "--threads must be at least 1");
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("building the rayon thread pool")?;
    }
    Ok(rayon::current_num_threads())
}

pub fn random_tokens(rng: &mut Rng, len: usize, vocab: usize) -> Vec<u32> {
    (0..len).map(|_| (rng.next_u64() % vocab as u64) as u32).collect()
}

/// Median of a non-empty sample (the mean of the middle two for even lengths).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// Peak resident set size in MB (10^6 bytes, like `activation_mb`), from `VmHWM`; `None` off Linux.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0 / 1e6)
}
