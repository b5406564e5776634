//! Text in, text out: a prompt is tokenized, a [`Generator`] produces ids, and a streaming
//! decoder turns them back into text as they come, cut at the first stop string.

use truthgpt_data::{TextDecoder, Tokenizer};
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
    stop: Vec<String>,
    /// Decoded text not yet returned because it may be the start of a stop string.
    held: String,
    stopped: bool,
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
            stop: request.stop.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
            stopped: false,
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
        if self.stopped {
            Some(FinishReason::Stop)
        } else {
            self.generator.finish_reason()
        }
    }

    fn next_piece(&mut self) -> Result<Option<String>> {
        while !self.stopped {
            let Some(token) = self.generator.next() else {
                // The generator is done: release what was held back for a stop string.
                return Ok((!self.held.is_empty()).then(|| std::mem::take(&mut self.held)));
            };
            let token = token.during("generating")?;
            let Some(text) = self.decoder.push(token)? else { continue };
            self.held.push_str(&text);
            if let Some(at) = self.stop.iter().filter_map(|s| self.held.find(s.as_str())).min() {
                self.stopped = true;
                self.held.truncate(at);
                return Ok((!self.held.is_empty()).then(|| std::mem::take(&mut self.held)));
            }
            // Hold back the longest tail that could still grow into a stop string.
            let keep = self.stop.iter().map(|s| partial_match(&self.held, s)).max().unwrap_or(0);
            let ready = self.held.len() - keep;
            if ready > 0 {
                let rest = self.held.split_off(ready);
                return Ok(Some(std::mem::replace(&mut self.held, rest)));
            }
        }
        Ok(None)
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`, on char boundaries.
fn partial_match(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && stop.is_char_boundary(n) && text.ends_with(&stop[..n])
        })
        .unwrap_or(0)
}

impl Iterator for TextStream<'_> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        self.next_piece().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::partial_match;

    #[test]
    fn partial_stop_matches() {
        assert_eq!(partial_match("hello\n\n", "\n\nEND"), 2);
        assert_eq!(partial_match("hello", "lo!"), 2);
        assert_eq!(partial_match("hello", "xyz"), 0);
        assert_eq!(partial_match("caf\u{e9}", "\u{e9}t\u{e9}"), 2);
        assert_eq!(partial_match("", "abc"), 0);
    }
}
