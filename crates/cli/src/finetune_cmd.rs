//! `truthgpt finetune` and `truthgpt distill`: `train` with a base (and LoRA settings) or a
//! teacher given as flags.

use crate::args::{DistillArgs, FinetuneArgs};
use crate::run_cmd;

pub fn run(args: &FinetuneArgs) -> anyhow::Result<()> {
    if args.train.resume {
        return run_cmd::train(&args.train);
    }
    let model = args.model.as_ref().expect("clap requires --model without --resume");
    // Set before validation, which then leaves the context to the base's architecture.
    let mut config = run_cmd::load_config(&args.train, &[format!("train.base={}", model.display())])?;
    config.train.lora = match args.full {
        true => None,
        false => {
            let mut lora = config.train.lora.take().unwrap_or_default();
            lora.rank = args.lora_rank.unwrap_or(lora.rank);
            lora.alpha = args.lora_alpha.unwrap_or(lora.alpha);
            if !args.lora_targets.is_empty() {
                lora.targets = args.lora_targets.clone();
            }
            lora.rslora |= args.rslora;
            Some(lora)
        }
    };
    config.validate()?;
    run_cmd::train_fresh(&args.train, config)
}

pub fn distill(args: &DistillArgs) -> anyhow::Result<()> {
    if args.train.resume {
        return run_cmd::train(&args.train);
    }
    let teacher = args.teacher.as_ref().expect("clap requires --teacher without --resume");
    let mut config =
        run_cmd::load_config(&args.train, &[format!("train.distill.teacher={}", teacher.display())])?;
    let distill = config.train.distill.as_mut().expect("train.distill.teacher was just set");
    distill.temperature = args.temperature.unwrap_or(distill.temperature);
    distill.alpha = args.alpha.unwrap_or(distill.alpha);
    config.validate()?;
    run_cmd::train_fresh(&args.train, config)
}
