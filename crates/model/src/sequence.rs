//! One generated sequence's rules, decided here for the CLI's [`Generator`](crate::Generator) and
//! the server's scheduler alike. Push each sampled token; the [`Step`] says whether the token is
//! part of the output, what text is now safe to show, and, when the sequence ends, its [`Usage`].
//!
//! - A stop token (the tokenizer's end of sequence) ends it with [`FinishReason::Stop`]. It is
//!   not part of the output and is not counted.
//! - A stop string ends it with `Stop` too. The text is cut before it; the token that completed
//!   it is counted.
//! - Otherwise `max_tokens` tokens, or a context full at `max_seq_len`, end it with
//!   [`FinishReason::Length`].
//! - Decoded text that may be the start of a stop string is held back until it is known not to
//!   be, and released when the sequence ends. A token that ends mid-character (byte-level BPE)
//!   shows its text with the token that completes the character.

use truthgpt_data::TextDecoder;

use crate::error::Result;

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or a stop string.
    Stop,
    /// `max_tokens` tokens, or the context is full.
    Length,
}

/// Why and after how many tokens a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// How far a sequence may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Generated tokens at most.
    pub max_tokens: usize,
    /// Prompt plus generated tokens at most: the model's context.
    pub max_seq_len: usize,
}

/// What one pushed token did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// The token, unless it was a stop token (which ends the sequence and is not part of it).
    pub token: Option<u32>,
    /// Text now safe to show: decoded, and clear of any stop string.
    pub text: Option<String>,
    /// Set by the token that ended the sequence.
    pub finished: Option<Usage>,
}

/// The state of one sequence being generated: its counts, its limits and, when it makes text,
/// the streaming decoder and the stop strings.
pub struct Sequence<'t> {
    text: Option<(TextDecoder<'t>, StopText)>,
    stop_tokens: Vec<u32>,
    limits: Limits,
    prompt_tokens: usize,
    completion_tokens: usize,
    finish_reason: Option<FinishReason>,
}

impl<'t> Sequence<'t> {
    /// A sequence of token ids after a prompt of `prompt_tokens`; any of `stop_tokens` ends it.
    /// With no room to generate (`max_tokens` 0, or a full context) it has already ended.
    pub fn new(prompt_tokens: usize, limits: Limits, stop_tokens: Vec<u32>) -> Self {
        let full = limits.max_tokens == 0 || prompt_tokens >= limits.max_seq_len;
        Sequence {
            text: None,
            stop_tokens,
            limits,
            prompt_tokens,
            completion_tokens: 0,
            finish_reason: full.then_some(FinishReason::Length),
        }
    }

    /// Also turns the tokens into text with `decoder`, cut before the first of `stop` (empty
    /// strings are ignored).
    pub fn with_text(self, decoder: TextDecoder<'t>, stop: &[String]) -> Self {
        Sequence { text: Some((decoder, StopText::new(stop))), ..self }
    }

    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// Generated tokens so far, stop tokens excluded.
    pub fn completion_tokens(&self) -> usize {
        self.completion_tokens
    }

    /// Why the sequence ended, once it has.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish_reason
    }

    /// What the sequence used, once it has ended.
    pub fn usage(&self) -> Option<Usage> {
        Some(Usage {
            finish_reason: self.finish_reason?,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
        })
    }

    /// Adds the sampled `token`. Fails only if the decoder does; nothing is added after the end.
    pub fn push(&mut self, token: u32) -> Result<Step> {
        if self.finish_reason.is_some() {
            return Ok(Step::default());
        }
        if self.stop_tokens.contains(&token) {
            return Ok(self.finish(FinishReason::Stop, None, None));
        }
        self.completion_tokens += 1;
        let mut text = None;
        if let Some((decoder, stop)) = &mut self.text {
            if let Some(piece) = decoder.push(token)? {
                text = stop.push(&piece);
                if stop.stopped() {
                    return Ok(self.finish(FinishReason::Stop, Some(token), text));
                }
            }
        }
        let Limits { max_tokens, max_seq_len } = self.limits;
        if self.completion_tokens >= max_tokens || self.prompt_tokens + self.completion_tokens >= max_seq_len
        {
            return Ok(self.finish(FinishReason::Length, Some(token), text));
        }
        Ok(Step { token: Some(token), text, finished: None })
    }

    /// Ends the sequence: the text held back for a stop string comes out after `text`.
    fn finish(&mut self, reason: FinishReason, token: Option<u32>, text: Option<String>) -> Step {
        self.finish_reason = Some(reason);
        let held = self.text.as_mut().and_then(|(_, stop)| stop.finish());
        let text = match (text, held) {
            (Some(text), Some(held)) => Some(text + &held),
            (text, held) => text.or(held),
        };
        Step { token, text, finished: self.usage() }
    }
}

/// Stop strings, and the streamed text held back for them.
#[derive(Debug, Clone, Default)]
struct StopText {
    stop: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopText {
    /// Empty strings are ignored.
    fn new(stop: &[String]) -> Self {
        StopText { stop: stop.iter().filter(|s| !s.is_empty()).cloned().collect(), ..StopText::default() }
    }

    /// Whether a stop string has been reached; nothing more is returned after it.
    fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds decoded `text`; returns the text now safe to emit, cut before a stop string.
    fn push(&mut self, text: &str) -> Option<String> {
        if self.stopped {
            return None;
        }
        self.held.push_str(text);
        if let Some(at) = self.stop.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.stopped = true;
            self.held.truncate(at);
            return self.finish();
        }
        // Hold back the longest tail that could still grow into a stop string.
        let keep = self.stop.iter().map(|s| partial_match(&self.held, s)).max().unwrap_or(0);
        let ready = self.held.len() - keep;
        (ready > 0).then(|| {
            let rest = self.held.split_off(ready);
            std::mem::replace(&mut self.held, rest)
        })
    }

    /// The text still held back, at the end of generation.
    fn finish(&mut self) -> Option<String> {
        (!self.held.is_empty()).then(|| std::mem::take(&mut self.held))
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

#[cfg(test)]
mod tests {
    use truthgpt_data::Tokenizer;

    use super::*;

    /// A byte-level BPE fitted on ASCII text: characters beyond it are one token per byte.
    fn tokenizer() -> Tokenizer {
        Tokenizer::train_bpe_from_texts(&["hello world, the end of more text"; 4], 300).unwrap()
    }

    const ROOMY: Limits = Limits { max_tokens: 100, max_seq_len: 1000 };

    /// Pushes `ids` until the sequence ends; returns the text, each push's text, and the usage.
    fn run(sequence: &mut Sequence, ids: &[u32]) -> (String, Vec<Option<String>>, Option<Usage>) {
        let (mut text, mut pieces) = (String::new(), vec![]);
        for &id in ids {
            let step = sequence.push(id).unwrap();
            text.extend(step.text.clone());
            pieces.push(step.text);
            if step.finished.is_some() {
                return (text, pieces, step.finished);
            }
        }
        (text, pieces, None)
    }

    fn ids(tokenizer: &Tokenizer, pieces: &[&str]) -> Vec<u32> {
        pieces.iter().flat_map(|p| tokenizer.encode(p).unwrap()).collect()
    }

    #[test]
    fn a_stop_string_split_across_tokens_cuts_the_text_before_it() {
        let tokenizer = tokenizer();
        let ids = ids(&tokenizer, &["he", "llo E", "N", "D more"]);
        let upto_d = self::ids(&tokenizer, &["he", "llo E", "N"]).len() + 1;
        let stop = ["END".to_string(), String::new()];
        let mut sequence = Sequence::new(4, ROOMY, vec![]).with_text(tokenizer.text_decoder(), &stop);
        let (text, _, usage) = run(&mut sequence, &ids);
        assert_eq!(text, "hello ");
        let usage = usage.expect("the stop string ends it");
        assert_eq!(
            usage,
            Usage { finish_reason: FinishReason::Stop, prompt_tokens: 4, completion_tokens: upto_d }
        );
        assert_eq!(sequence.push(ids[0]).unwrap(), Step::default(), "nothing after the end");
    }

    #[test]
    fn a_stop_token_ends_uncounted_and_releases_held_text() {
        let tokenizer = tokenizer();
        let eos = tokenizer.eos_id().unwrap();
        let hi = tokenizer.encode("hi").unwrap();
        let stop = ["i!".to_string()];
        let mut sequence = Sequence::new(1, ROOMY, vec![eos]).with_text(tokenizer.text_decoder(), &stop);
        let mut ids = hi.clone();
        ids.push(eos);
        let (text, pieces, usage) = run(&mut sequence, &ids);
        assert_eq!(text, "hi");
        assert_eq!(pieces.last().unwrap().as_deref(), Some("i"), "held for `i!`, released at the end");
        let usage = usage.unwrap();
        assert_eq!((usage.finish_reason, usage.completion_tokens), (FinishReason::Stop, hi.len()));
    }

    #[test]
    fn max_tokens_and_the_context_end_it_with_length() {
        let mut sequence = Sequence::new(2, Limits { max_tokens: 3, max_seq_len: 100 }, vec![]);
        let (_, pieces, usage) = run(&mut sequence, &[5, 6, 7, 8]);
        assert_eq!(pieces.len(), 3);
        assert_eq!(
            usage,
            Some(Usage { finish_reason: FinishReason::Length, prompt_tokens: 2, completion_tokens: 3 })
        );

        let mut sequence = Sequence::new(8, Limits { max_tokens: 16, max_seq_len: 10 }, vec![]);
        let (_, pieces, usage) = run(&mut sequence, &[5; 16]);
        assert_eq!((pieces.len(), usage.unwrap().finish_reason), (2, FinishReason::Length));

        let ended = Sequence::new(2, Limits { max_tokens: 0, max_seq_len: 10 }, vec![]);
        let usage = Usage { finish_reason: FinishReason::Length, prompt_tokens: 2, completion_tokens: 0 };
        assert_eq!(ended.usage(), Some(usage), "no room: ended before a token");
    }

    #[test]
    fn a_character_split_across_tokens_comes_whole_and_can_stop() {
        let tokenizer = tokenizer();
        let ids = tokenizer.encode("café au lait").unwrap();
        let mut sequence = Sequence::new(1, ROOMY, vec![]).with_text(tokenizer.text_decoder(), &[]);
        let (text, pieces, _) = run(&mut sequence, &ids);
        assert_eq!(text, "café au lait");
        assert!(pieces.iter().any(Option::is_none), "the first byte of é shows nothing yet");
        assert!(pieces.iter().flatten().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");

        let stop = ["é".to_string()];
        let mut sequence = Sequence::new(1, ROOMY, vec![]).with_text(tokenizer.text_decoder(), &stop);
        let (text, _, usage) = run(&mut sequence, &ids);
        assert_eq!((text.as_str(), usage.unwrap().finish_reason), ("caf", FinishReason::Stop));
    }

    #[test]
    fn partial_stop_matches() {
        assert_eq!(partial_match("hello\n\n", "\n\nEND"), 2);
        assert_eq!(partial_match("hello", "lo!"), 2);
        assert_eq!(partial_match("hello", "xyz"), 0);
        assert_eq!(partial_match("caf\u{e9}", "\u{e9}t\u{e9}"), 2);
        assert_eq!(partial_match("", "abc"), 0);
    }

    #[test]
    fn stop_text_holds_back_what_may_start_a_stop_string() {
        let mut stop = StopText::new(&["\n\n".into()]);
        assert_eq!(stop.push("line\n").as_deref(), Some("line"));
        assert_eq!(stop.finish().as_deref(), Some("\n"));
    }
}
