//! Text in, text out: a prompt is tokenized, and a [`Generator`] streams the text of its
//! sequence (cut at the first stop string, ended by the tokenizer's end-of-text token).

use truthgpt_data::Tokenizer;
use truthgpt_model::{FinishReason, Generator, Model, Sampling};

use crate::error::{ModelContext, Result};

/// What to generate.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: String,
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Generation ends before the first occurrence of any of these; it is not part of the output.
    pub stop: Vec<String>,
}

/// Pieces of generated text, in order, as an iterator; see [`TextStream::finish_reason`].
pub struct TextStream<'a> {
    generator: Generator<'a>,
}

impl<'a> TextStream<'a> {
    /// Tokenizes the prompt and checks it (and the sampling settings) before any work. The
    /// tokenizer's end-of-text token, if it has one, ends generation.
    pub fn new(model: &'a mut Model, tokenizer: &'a Tokenizer, request: &Request) -> Result<Self> {
        let prompt = tokenizer.encode(&request.prompt)?;
        let stop_tokens = tokenizer.eos_id().into_iter().collect();
        let generator =
            Generator::new(model, &prompt, request.max_tokens, request.sampling.clone(), stop_tokens)
                .during("starting generation")?
                .with_text(tokenizer.text_decoder(), &request.stop);
        Ok(TextStream { generator })
    }

    pub fn prompt_tokens(&self) -> usize {
        self.generator.sequence().prompt_tokens()
    }

    /// Tokens generated so far.
    pub fn completion_tokens(&self) -> usize {
        self.generator.sequence().completion_tokens()
    }

    /// Why the stream ended: a stop string or token, or the length limit.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.generator.finish_reason()
    }

    fn next_piece(&mut self) -> Result<Option<String>> {
        while let Some(step) = self.generator.step().during("generating")? {
            if step.text.is_some() {
                return Ok(step.text);
            }
        }
        Ok(None)
    }
}

impl Iterator for TextStream<'_> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        self.next_piece().transpose()
    }
}
