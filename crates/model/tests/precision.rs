//! Mixed precision (`train.precision: bf16`): the linear layers' products round their operands to
//! bf16 and sum in f32, and training follows the f32 run. On a CPU without a bf16 kernel the mode
//! falls back to f32 products, and the two runs must then be identical.

use truthgpt_config::{Config, FfnKind, Precision};
use truthgpt_engine::close::max_rel_diff;
use truthgpt_engine::matmul::{self, Gemm};
use truthgpt_model::{Batch, Model, Trainer};

fn bf16_runs() -> bool {
    Gemm::for_precision(matmul::Precision::Bf16).precision() == matmul::Precision::Bf16
}

/// Losses of `steps` training steps on one fixed batch from the same initialisation.
fn losses(ffn: FfnKind, precision: Precision, steps: usize) -> Vec<f32> {
    let mut config = Config::preset("tiny").unwrap();
    config.model.ffn = ffn;
    config.train.precision = precision;
    config.train.warmup_steps = 0;
    let (b, t) = (config.train.batch_size, config.train.seq_len);
    let tokens: Vec<u32> = (0..(b * t) as u32).map(|i| i * 31 % 97).collect();
    let targets: Vec<u32> = (0..(b * t) as u32).map(|i| (i * 31 + 5) % 97).collect();
    let mut trainer = Trainer::new(Model::new(&config.model, 7), config.train);
    let batch = [Batch { tokens: &tokens, targets: &targets, b, t }];
    (0..steps).map(|_| trainer.step(&batch).unwrap().loss).collect()
}

#[test]
fn bf16_training_follows_f32() {
    for ffn in [FfnKind::Mlp, FfnKind::Swiglu, FfnKind::Moe] {
        let (f32_losses, bf16_losses) = (losses(ffn, Precision::F32, 40), losses(ffn, Precision::Bf16, 40));
        let (first, last) = (f32_losses[0], f32_losses[39]);
        assert!(last <= 0.5 * first, "{ffn:?}: f32 did not learn the batch: {first} -> {last}");
        // The first step's loss is a forward through rounded operands: within bf16's 2^-8.
        let first_diff = max_rel_diff(&bf16_losses[..1], &f32_losses[..1]);
        let last_diff = max_rel_diff(&bf16_losses[39..], &f32_losses[39..]);
        if bf16_runs() {
            assert!(first_diff <= 4e-3, "{ffn:?}: first losses differ by {first_diff}");
            assert!(last_diff <= 0.05, "{ffn:?}: after 40 steps bf16 {bf16_losses:?} f32 {f32_losses:?}");
            // Some loss must differ, or the mode never reached the products. (Not necessarily the
            // first: on the vdpbf16ps kernel, without AMX, the MoE model's first forward loss comes
            // out bit-equal to f32's while its later steps differ; not yet explained.)
            assert!(
                bf16_losses != f32_losses,
                "{ffn:?}: bf16 gave f32's losses exactly: the mode did not reach the products"
            );
        } else {
            eprintln!("no bf16 kernel on this CPU: checking the f32 fallback");
            assert!(bf16_losses == f32_losses, "{ffn:?}: the fallback differs from f32");
        }
    }
}
