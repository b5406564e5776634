//! The tiny model memorises one batch with every feed-forward kind: the whole training path
//! (forward, backward, clipping, AdamW, schedule) works end to end.

use truthgpt_config::{Config, FfnKind};
use truthgpt_engine::rng::Rng;
use truthgpt_model::{Batch, Mode, Model, Trainer};

fn memorise(ffn: FfnKind) -> f32 {
    let mut config = Config::preset("tiny").unwrap();
    config.model.ffn = ffn;
    config.model.moe.n_experts = 4;
    config.train.batch_size = 2;
    config.train.seq_len = 32;
    config.train.lr = 3e-3;
    config.train.min_lr = 3e-3;
    config.train.warmup_steps = 10;
    config.train.weight_decay = 0.0;
    config.validate().unwrap();
    let (b, t) = (config.train.batch_size, config.train.seq_len);
    let mut rng = Rng::new(1);
    let data: Vec<u32> = (0..b * t + 1).map(|_| (rng.next_u64() % 256) as u32).collect();
    let (tokens, targets) = (&data[..b * t], &data[1..]);
    let mut trainer = Trainer::new(Model::new(&config.model, config.train.seed), config.train);
    let mut loss = f32::INFINITY;
    for _ in 0..300 {
        loss = trainer.step(&[Batch { tokens, targets, b, t }]).unwrap().loss;
        if loss < 0.05 {
            break;
        }
    }
    loss
}

#[test]
fn tiny_model_memorises_a_batch_with_every_ffn_kind() {
    for ffn in [FfnKind::Mlp, FfnKind::Geglu, FfnKind::Swiglu, FfnKind::Moe, FfnKind::Pimoe] {
        let loss = memorise(ffn);
        assert!(loss < 0.05, "{ffn:?}: loss {loss} after 300 steps");
    }
}

/// The tiny preset with `ffn`, after one training step on a fixed batch (also returned).
fn one_step(ffn: FfnKind) -> (Trainer, Config, Vec<u32>) {
    let mut config = Config::preset("tiny").unwrap();
    config.model.ffn = ffn;
    let (b, t) = (config.train.batch_size, config.train.seq_len);
    let tokens: Vec<u32> = (0..(b * t) as u32).map(|i| i * 37 % 256).collect();
    let mut trainer = Trainer::new(Model::new(&config.model, 0), config.train.clone());
    trainer.step(&[Batch { tokens: &tokens, targets: &tokens, b, t }]).unwrap();
    (trainer, config, tokens)
}

/// PiMoE reports utilisation per expert type, over every token it routed.
#[test]
fn pimoe_reports_per_type_utilisation() {
    let (trainer, config, _) = one_step(FfnKind::Pimoe);
    let (b, t) = (config.train.batch_size, config.train.seq_len);
    for moe in trainer.model.moe_layers() {
        let names: Vec<&str> = config.model.pimoe.groups.iter().map(|g| g.name.as_str()).collect();
        let shares = moe.group_utilisation();
        assert_eq!(shares.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), names);
        assert!((shares.iter().map(|(_, s)| s).sum::<f64>() - 1.0).abs() < 1e-9, "{shares:?}");
        let routed: u64 = moe.stats.tokens.iter().sum();
        assert_eq!(routed + moe.stats.dropped, (b * t * config.model.moe.top_k) as u64);
    }
}

/// Evaluation forwards leave the router's counters and balancing state alone.
#[test]
fn eval_forwards_do_not_count_routing() {
    let (mut trainer, config, tokens) = one_step(FfnKind::Moe);
    let (b, t) = (config.train.batch_size, config.train.seq_len);
    let counted: Vec<_> = trainer.model.moe_layers().map(|m| m.stats.clone()).collect();
    trainer.model.forward(&tokens, b, t, Mode::Eval).unwrap();
    trainer.model.loss(&tokens).unwrap();
    assert_eq!(trainer.model.moe_layers().map(|m| m.stats.clone()).collect::<Vec<_>>(), counted);
}

/// A bad micro-batch is rejected before any work: parameters and the step counter are unchanged.
#[test]
fn a_rejected_step_changes_nothing() {
    let config = Config::preset("tiny").unwrap();
    let mut trainer = Trainer::new(Model::new(&config.model, 0), config.train.clone());
    let (good, bad) = (vec![1u32; 8], vec![1u32, 2, 3, 300, 5, 6, 7, 8]);
    let before = trainer.model.params.clone();
    let batches = [
        Batch { tokens: &good, targets: &good, b: 1, t: 8 },
        Batch { tokens: &good, targets: &bad, b: 1, t: 8 },
    ];
    assert!(trainer.step(&batches).is_err());
    assert!(trainer.step(&[]).is_err());
    assert_eq!(trainer.step, 0);
    assert_eq!(trainer.model.params, before);
}
