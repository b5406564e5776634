//! The tiny model memorises one batch with every feed-forward kind: the whole training path
//! (forward, backward, clipping, AdamW, schedule) works end to end.

use truthgpt_config::{Config, FfnKind};
use truthgpt_engine::rng::Rng;
use truthgpt_model::{Batch, Model, Trainer};

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
