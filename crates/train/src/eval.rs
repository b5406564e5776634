//! Validation loss: mean next-token cross-entropy over non-overlapping windows of a token stream.

use truthgpt_data::{sampler, DataError, TokenStream};
use truthgpt_model::{Mode, Model};

use crate::error::{ModelContext, Result};

/// Mean loss over the windows measured, and how many target tokens that covered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    pub loss: f64,
    pub tokens: u64,
}

impl Evaluation {
    pub fn perplexity(&self) -> f64 {
        self.loss.exp()
    }
}

/// Evaluates up to `max_windows` windows of `seq_len`, spread evenly over `stream`, in batches of
/// `batch_size` (the training shape, so the model's buffers are reused).
pub fn evaluate(
    model: &mut Model,
    stream: &TokenStream,
    seq_len: usize,
    batch_size: usize,
    max_windows: usize,
) -> Result<Evaluation> {
    // Zero windows would measure nothing, and report a NaN loss as if it were one.
    if max_windows == 0 {
        return Err(DataError::InvalidOption {
            name: "max_windows",
            value: "0".into(),
            requirement: "at least one window must be evaluated",
        }
        .into());
    }
    // A validation split shorter than one training window is measured in one shorter window.
    let seq_len = seq_len.min(model.config.max_seq_len).min(stream.len().saturating_sub(1) as usize);
    if seq_len == 0 {
        return Err(
            DataError::TooShort { split: "validation", tokens: stream.len(), seq_len: 1, needed: 2 }.into()
        );
    }
    let starts = sampler::eval_windows(stream.len(), seq_len, max_windows);
    let mut window = vec![0u32; seq_len + 1];
    let (mut tokens, mut targets) = (Vec::new(), Vec::new());
    let (mut total, mut count) = (0.0f64, 0u64);
    for batch in starts.chunks(batch_size.max(1)) {
        tokens.clear();
        targets.clear();
        for &start in batch {
            stream.copy_to(start, &mut window);
            tokens.extend_from_slice(&window[..seq_len]);
            targets.extend_from_slice(&window[1..]);
        }
        model.forward(&tokens, batch.len(), seq_len, Mode::Eval).during("validation forward")?;
        let loss = model.loss(&targets).during("validation loss")?;
        total += loss as f64 * targets.len() as f64;
        count += targets.len() as u64;
    }
    Ok(Evaluation { loss: total / count as f64, tokens: count })
}
