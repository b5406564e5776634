//! Continuous batching over the paged key/value pool: a batch must give every sequence exactly the
//! logits it gets alone, shared prompt prefixes must be computed once and give the same numbers,
//! and a full pool must refuse work without corrupting anything.

use truthgpt_config::{Config, FfnKind, ModelConfig, Positional, TrainConfig};
use truthgpt_engine::close::max_abs_diff;
use truthgpt_engine::rng::Rng;
use truthgpt_model::generate::argmax;
use truthgpt_model::{DecodeWork, Model, ModelError, SeqKv};

fn config() -> ModelConfig {
    ModelConfig {
        vocab_size: 60,
        d_model: 32,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        d_ff: 48,
        max_seq_len: 96,
        positional: Positional::Rope,
        init_std: 0.2,
        ..ModelConfig::default()
    }
}

fn variants() -> Vec<(&'static str, ModelConfig)> {
    let mut moe = ModelConfig { ffn: FfnKind::Moe, ..config() };
    moe.moe.n_experts = 4;
    vec![
        ("rope gqa", config()),
        ("learned", ModelConfig { positional: Positional::Learned, n_kv_heads: 4, ..config() }),
        ("alibi window", ModelConfig { positional: Positional::Alibi, sliding_window: Some(9), ..config() }),
        ("moe", moe),
    ]
}

fn model(config: &ModelConfig) -> Model {
    let train = TrainConfig { seq_len: 16, ..TrainConfig::default() };
    Config { model: config.clone(), train, ..Config::default() }.validate().unwrap();
    Model::new(config, 5)
}

fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| (rng.next_u64() % vocab as u64) as u32).collect()
}

/// Greedy continuation of `prompt` by one sequence alone: the logits of every step.
fn alone(model: &mut Model, prompt: &[u32], steps: usize) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache();
    let mut logits = vec![model.forward_cached(&mut cache, prompt).unwrap().to_vec()];
    for _ in 0..steps {
        let next = argmax(logits.last().unwrap());
        logits.push(model.forward_cached(&mut cache, &[next]).unwrap().to_vec());
    }
    logits
}

/// Five sequences of different prompt lengths; three start together, two join later while the
/// others decode (a prompt and single tokens in one forward), and one leaves early. Every step of
/// every sequence matches decoding it alone.
#[test]
fn a_batch_gives_each_sequence_its_own_logits() {
    for (name, config) in variants() {
        let mut model = model(&config);
        let vocab = config.vocab_size;
        let prompts: Vec<Vec<u32>> =
            [7, 1, 20, 13, 4].iter().enumerate().map(|(i, &n)| tokens(n, vocab, i as u64)).collect();
        let joins = [0, 0, 0, 3, 5];
        // Generated tokens per sequence; the third leaves early.
        let leaves = [12, 12, 6, 12, 12];
        let want: Vec<Vec<Vec<f32>>> = prompts.iter().map(|p| alone(&mut model, p, 12)).collect();

        let mut pool = model.new_pool(4, 200);
        let mut work = DecodeWork::default();
        let mut seqs: Vec<SeqKv> = vec![SeqKv::default(); 5];
        let mut next: Vec<u32> = vec![0; 5];
        // Forwards each sequence has had: its prompt, then one per generated token.
        let mut done = [0usize; 5];
        for step in 0..20 {
            let active: Vec<usize> = (0..5).filter(|&i| step >= joins[i] && done[i] <= leaves[i]).collect();
            let inputs: Vec<Vec<u32>> = active
                .iter()
                .map(|&i| if done[i] == 0 { prompts[i].clone() } else { vec![next[i]] })
                .collect();
            let mut taken: Vec<SeqKv> = active.iter().map(|&i| std::mem::take(&mut seqs[i])).collect();
            let mut batch: Vec<(&mut SeqKv, &[u32])> =
                taken.iter_mut().zip(&inputs).map(|(s, t)| (s, t.as_slice())).collect();
            if batch.is_empty() {
                break;
            }
            let logits = model.forward_paged(&mut pool, &mut work, &mut batch).unwrap().to_vec();
            for ((k, &i), seq) in active.iter().enumerate().zip(taken) {
                let got = &logits[k * vocab..(k + 1) * vocab];
                let diff = max_abs_diff(got, &want[i][done[i]]);
                assert!(diff <= 1e-4, "{name}: sequence {i} forward {} differs by {diff:e}", done[i]);
                next[i] = argmax(got);
                done[i] += 1;
                seqs[i] = seq;
                if done[i] > leaves[i] {
                    pool.release(std::mem::take(&mut seqs[i]));
                }
            }
        }
        assert!(done.iter().zip(leaves).all(|(&d, l)| d == l + 1), "{name}: every sequence ran to its end");
        assert_eq!(pool.used_blocks(), 0, "{name}: every block was given back");
    }
}

/// A second prompt that starts with the first one's 12 tokens takes its three blocks of 4 instead
/// of recomputing them, and gets the logits a fresh pool gives.
#[test]
fn shared_prompt_prefixes_are_computed_once() {
    let config = config();
    let mut model = model(&config);
    let first = tokens(13, config.vocab_size, 1);
    let mut second = first[..12].to_vec();
    second.extend(tokens(5, config.vocab_size, 2));

    let mut pool = model.new_pool(4, 64);
    let mut work = DecodeWork::default();
    let (mut a, cached) = pool.start(&first);
    assert_eq!(cached, 0, "an empty pool has nothing cached");
    model.forward_paged(&mut pool, &mut work, &mut [(&mut a, &first[..])]).unwrap();
    let used = pool.used_blocks();

    let (mut b, cached) = pool.start(&second);
    assert_eq!(cached, 12);
    assert_eq!(&b.blocks()[..3], &a.blocks()[..3], "the prefix blocks are the same blocks");
    let got = model.forward_paged(&mut pool, &mut work, &mut [(&mut b, &second[12..])]).unwrap().to_vec();
    assert_eq!(pool.used_blocks(), used + 2, "only the new positions took blocks");
    let want = alone(&mut model, &second, 0);
    assert!(max_abs_diff(&got, &want[0]) <= 1e-5);

    // Released blocks stay cached: the same prompt again finds its prefix.
    pool.release(a);
    pool.release(b);
    assert_eq!(pool.used_blocks(), 0);
    let (c, cached) = pool.start(&second);
    assert_eq!(cached, 16, "four full blocks of the second prompt (leaving its last token to run)");
    pool.release(c);
    // A prompt that is exactly one block is run, not served from cache: its logits are needed.
    assert_eq!(pool.start(&first[..4]).1, 0);
}

/// A full pool refuses a step without writing anything; freed blocks are reused, and a recycled
/// block's old contents are never matched again.
#[test]
fn a_full_pool_refuses_work_and_recycles_blocks() {
    let config = config();
    let mut model = model(&config);
    let mut pool = model.new_pool(4, 6);
    let mut work = DecodeWork::default();
    let (p, q) = (tokens(16, config.vocab_size, 3), tokens(12, config.vocab_size, 4));
    let (mut a, _) = pool.start(&p);
    model.forward_paged(&mut pool, &mut work, &mut [(&mut a, &p[..])]).unwrap();
    let (mut b, _) = pool.start(&q);
    let err = model.forward_paged(&mut pool, &mut work, &mut [(&mut b, &q[..])]).unwrap_err();
    assert!(matches!(err, ModelError::KvPoolExhausted { needed: 3, free: 2, capacity: 6 }), "{err}");
    assert!(b.is_empty() && b.blocks().is_empty(), "a refused step takes nothing");
    assert_eq!(a.len(), 16);

    pool.release(a);
    let got = model.forward_paged(&mut pool, &mut work, &mut [(&mut b, &q[..])]).unwrap().to_vec();
    assert!(max_abs_diff(&got, &alone(&mut model, &q, 0)[0]) <= 1e-5);
    // `p`'s first blocks were recycled for `q`: its prefix is no longer found.
    assert!(pool.start(&p).1 < 12);
}
