//! The teacher of a distillation run (`train.distill`): loaded for inference (quantized weights
//! stay quantized), checked against the student, and put beside it in the [`Trainer`].

use truthgpt_config::Config;
use truthgpt_data::Tokenizer;
use truthgpt_model::{Teacher, Trainer};

use crate::checkpoint::load_model;
use crate::error::{Result, TrainError};

/// A loaded teacher and its tokenizer, which a student trained from scratch adopts.
#[derive(Debug)]
pub struct LoadedTeacher {
    pub teacher: Teacher,
    pub tokenizer: Option<Tokenizer>,
}

/// The teacher `config.train.distill` names, if any.
pub fn load_teacher(config: &Config) -> Result<Option<LoadedTeacher>> {
    let Some(distill) = &config.train.distill else { return Ok(None) };
    let saved = load_model(&distill.teacher)?;
    let context = saved.model.config.max_seq_len;
    if config.train.seq_len > context {
        return Err(TrainError::FineTune(format!(
            "train.seq_len = {} is longer than the teacher's context ({context}, {})",
            config.train.seq_len,
            distill.teacher.display()
        )));
    }
    let teacher = Teacher { model: saved.model, temperature: distill.temperature, alpha: distill.alpha };
    Ok(Some(LoadedTeacher { teacher, tokenizer: saved.tokenizer }))
}

/// Puts `teacher` beside the trainer's model, which must read the same vocabulary.
pub fn attach(trainer: &mut Trainer, teacher: Teacher) -> Result<()> {
    let (ours, theirs) = (trainer.model.config.vocab_size, teacher.model.config.vocab_size);
    if ours != theirs {
        return Err(TrainError::FineTune(format!(
            "the student's vocabulary has {ours} tokens and the teacher's {theirs}: distillation compares \
             their logits token by token, so they must be the same (a student trained from scratch takes \
             the teacher's tokenizer)"
        )));
    }
    trainer.teacher = Some(teacher);
    Ok(())
}
