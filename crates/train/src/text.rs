//! Text in, text out: a prompt is tokenized, a [`Generator`] produces ids, and a streaming
//! decoder turns them back into text as they come, cut at the first stop string.

use truthgpt_data::{StopText, TextDecoder, Tokenizer};
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
    decoder: TextDecoder<'a>,
    stop: StopText,
    prompt_tokens: usize,
}

impl<'a> TextStream<'a> {
    /// Tokenizes the prompt and checks it (and the sampling settings) before any work. The
    /// tokenizer's end-of-text token, if it has one, ends generation.
    pub fn new(model: &'a mut Model, tokenizer: &'a Tokenizer, request: &Request) -> Result<Self> {
        let prompt = tokenizer.encode(&request.prompt)?;
        let stop_tokens = tokenizer.eos_id().into_iter().collect();
        let generator =
            Generator::new(model, &prompt, request.max_tokens, request.sampling.clone(), stop_tokens)
                .during("starting generation")?;
        Ok(TextStream {
            generator,
            decoder: tokenizer.text_decoder(),
            stop: StopText::new(&request.stop),
            prompt_tokens: prompt.len(),
        })
    }

    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// Tokens generated so far.
    pub fn completion_tokens(&self) -> usize {
        self.generator.tokens().len() - self.prompt_tokens
    }

    /// Why the stream ended: a stop string or token, or the length limit.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        if self.stop.stopped() {
            Some(FinishReason::Stop)
        } else {
            self.generator.finish_reason()
        }
    }

    fn next_piece(&mut self) -> Result<Option<String>> {
        while !self.stop.stopped() {
            let Some(token) = self.generator.next() else {
                // The generator is done: release what was held back for a stop string.
                return Ok(self.stop.finish());
            };
            let token = token.during("generating")?;
            let Some(text) = self.decoder.push(token)? else { continue };
            if let Some(ready) = self.stop.push(&text) {
                return Ok(Some(ready));
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
