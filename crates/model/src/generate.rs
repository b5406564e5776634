//! Sampling, and the generation of one sequence: [`Generator`] runs the model over a
//! [`KvCache`] and leaves the sequence's rules (stop tokens and strings, text, limits, usage) to
//! its [`Sequence`], the same state the server's scheduler keeps for each request.

use truthgpt_data::TextDecoder;
use truthgpt_engine::rng::Rng;

use crate::decode::KvCache;
use crate::error::{ModelError, Result};
use crate::model::Model;
use crate::sequence::{FinishReason, Limits, Sequence, Step};

/// How the next token is chosen from the logits.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 is greedy (argmax, ties to the lowest id); otherwise logits are divided by it.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`; 1 keeps all.
    pub top_p: f32,
    /// CTRL-style penalty (Keskar et al. 2019) on tokens already in the prompt or output: positive
    /// logits are divided by it, negative ones multiplied; 1 is off.
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { temperature: 0.8, top_k: 0, top_p: 1.0, repetition_penalty: 1.0, seed: 0 }
    }
}

impl Sampling {
    pub fn greedy() -> Self {
        Sampling { temperature: 0.0, ..Sampling::default() }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, value: f32| ModelError::Sampling(format!("{what} = {value}"));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(bad("temperature must be finite and >= 0, got", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(bad("top_p must be in (0, 1], got", self.top_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(bad("repetition_penalty must be finite and > 0, got", self.repetition_penalty));
        }
        Ok(())
    }
}

/// Turns logits into a token id; owns its random state and scratch.
#[derive(Debug, Clone)]
pub struct Sampler {
    sampling: Sampling,
    rng: Rng,
    /// (id, probability) candidates, reused.
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(sampling: Sampling) -> Result<Self> {
        sampling.validate()?;
        let rng = Rng::new(sampling.seed);
        Ok(Sampler { sampling, rng, candidates: Vec::new() })
    }

    /// Picks the next token from `logits`; `history` is every token of the sequence so far.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let s = &self.sampling;
        if s.temperature == 0.0 && s.repetition_penalty == 1.0 {
            // Greedy: the candidate list below would cost more than the search itself.
            let ties_to_lowest_id = |best: usize, i: usize| match logits[i].total_cmp(&logits[best]) {
                std::cmp::Ordering::Greater => i,
                _ => best,
            };
            return (0..logits.len()).reduce(ties_to_lowest_id).expect("logits are not empty") as u32;
        }
        let candidates = &mut self.candidates;
        candidates.clear();
        candidates.extend(logits.iter().enumerate().map(|(id, &logit)| (id as u32, logit)));
        if s.repetition_penalty != 1.0 {
            // Computed from the original logit, so a token seen twice is penalised once (as HF does).
            for &id in history {
                if let Some(&logit) = logits.get(id as usize) {
                    let penalised =
                        if logit > 0.0 { logit / s.repetition_penalty } else { logit * s.repetition_penalty };
                    candidates[id as usize].1 = penalised;
                }
            }
        }
        if s.temperature == 0.0 {
            let ties_to_lowest_id =
                |a: &&(u32, f32), b: &&(u32, f32)| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0));
            return candidates.iter().max_by(ties_to_lowest_id).expect("logits are not empty").0;
        }
        // Only top-k and top-p need the candidates in order; plain sampling draws from them in id
        // order, which spares a sort of the whole vocabulary per token.
        let top_k = s.top_k > 0 && s.top_k < candidates.len();
        if top_k || s.top_p < 1.0 {
            let by_logit_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
            if top_k {
                candidates.select_nth_unstable_by(s.top_k - 1, by_logit_desc);
                candidates.truncate(s.top_k);
            }
            candidates.sort_unstable_by(by_logit_desc);
        }
        let max = candidates.iter().map(|&(_, logit)| logit).fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0;
        for (_, weight) in candidates.iter_mut() {
            *weight = ((*weight - max) / s.temperature).exp();
            total += *weight;
        }
        if s.top_p < 1.0 {
            let (threshold, mut kept) = (s.top_p * total, 0.0);
            let last = candidates.iter().position(|&(_, w)| {
                kept += w;
                kept >= threshold
            });
            candidates.truncate(last.map_or(candidates.len(), |i| i + 1));
            total = candidates.iter().map(|&(_, w)| w).sum();
        }
        let mut target = self.rng.uniform() * total;
        for &(id, weight) in candidates.iter() {
            if target < weight {
                return id;
            }
            target -= weight;
        }
        candidates.last().expect("at least the most likely token is kept").0
    }
}

/// Index of the largest logit, ties to the lowest id: greedy decoding without a [`Sampler`].
pub fn argmax(logits: &[f32]) -> u32 {
    (0..logits.len()).fold(0, |best, i| if logits[i] > logits[best] { i } else { best }) as u32
}

/// One sequence generated from a prompt: the prompt is run on the first step, then one cached
/// step per token. As an iterator it yields token ids (a stop token ends it unyielded); with
/// [`Generator::with_text`], [`Generator::step`] also gives the text.
pub struct Generator<'a> {
    model: &'a mut Model,
    cache: KvCache,
    sampler: Sampler,
    /// Prompt then generated tokens.
    history: Vec<u32>,
    /// Tokens to run next: the prompt, then the last sampled token.
    pending: std::ops::Range<usize>,
    sequence: Sequence<'a>,
}

impl<'a> Generator<'a> {
    /// Checks the prompt (non-empty, in vocabulary, shorter than `max_seq_len`) and the sampling
    /// settings before any work. Any of `stop_tokens` ends the sequence.
    pub fn new(
        model: &'a mut Model,
        prompt: &[u32],
        max_tokens: usize,
        sampling: Sampling,
        stop_tokens: Vec<u32>,
    ) -> Result<Self> {
        let max_seq_len = model.config.max_seq_len;
        if prompt.len() >= max_seq_len {
            return Err(ModelError::PromptTooLong { tokens: prompt.len(), max: max_seq_len });
        }
        model.check_batch(prompt, 1, prompt.len())?;
        let sampler = Sampler::new(sampling)?;
        let cache = model.new_cache();
        let sequence = Sequence::new(prompt.len(), Limits { max_tokens, max_seq_len }, stop_tokens);
        Ok(Generator { model, cache, sampler, history: prompt.to_vec(), pending: 0..prompt.len(), sequence })
    }

    /// Also decodes the tokens into text with `decoder`, cut before the first of `stop`.
    pub fn with_text(self, decoder: TextDecoder<'a>, stop: &[String]) -> Self {
        Generator { sequence: self.sequence.with_text(decoder, stop), ..self }
    }

    /// Why generation ended, once it has.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.sequence.finish_reason()
    }

    /// The sequence's counts and limits.
    pub fn sequence(&self) -> &Sequence<'a> {
        &self.sequence
    }

    /// The prompt and every token generated so far.
    pub fn tokens(&self) -> &[u32] {
        &self.history
    }

    /// Samples one more token; `None` once the sequence has ended.
    pub fn step(&mut self) -> Result<Option<Step>> {
        if self.sequence.finish_reason().is_some() {
            return Ok(None);
        }
        let logits = self.model.forward_cached(&mut self.cache, &self.history[self.pending.clone()])?;
        let step = self.sequence.push(self.sampler.sample(logits, &self.history))?;
        if let Some(token) = step.token {
            self.history.push(token);
            self.pending = self.history.len() - 1..self.history.len();
        }
        Ok(Some(step))
    }
}

impl Iterator for Generator<'_> {
    type Item = Result<u32>;

    fn next(&mut self) -> Option<Result<u32>> {
        match self.step() {
            // A step without a token was a stop token, and the sequence has ended.
            Ok(step) => step.and_then(|step| step.token).map(Ok),
            Err(e) => Some(Err(e)),
        }
    }
}
