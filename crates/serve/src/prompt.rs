//! A prompt's way from text to token ids: its bounds, and tokenization off the async runtime.
//!
//! A 1 MiB prompt takes the tokenizer a second or more and ~100 MB of scratch (normalized text
//! with per-byte alignments, pre-token splits): run on the runtime's threads, 16 of them held
//! every worker and `/health` waited seconds. Large prompts are therefore tokenized on the
//! blocking pool, a few at a time (so the scratch of 16 is not live at once), and the prompt is
//! dropped there, after which free heap pages go back to the OS (glibc keeps them otherwise).

use std::sync::Arc;

use axum::http::StatusCode;
use serde::Serialize;
use tokio::sync::Semaphore;
use truthgpt_data::Tokenizer;

use crate::error::ApiError;

/// Prompts up to this many bytes are tokenized in place: microseconds, cheaper than a hand-off.
const INLINE_BYTES: usize = 16 << 10;

/// A prompt at least this large returns its scratch memory to the OS when tokenized.
const TRIM_BYTES: usize = 256 << 10;

/// The largest prompt a request may carry, as text (after the chat template and the
/// conversation's history) and as tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PromptBounds {
    /// Larger prompts get 413 before they are tokenized.
    pub max_bytes: usize,
    /// Prompts of more tokens get 400.
    pub max_tokens: usize,
}

impl Default for PromptBounds {
    fn default() -> Self {
        PromptBounds { max_bytes: 256 << 10, max_tokens: 32_768 }
    }
}

/// Tokenizes prompts within their bounds; large ones on the blocking pool, a few at a time.
#[derive(Debug)]
pub struct Prompts {
    pub bounds: PromptBounds,
    /// Large tokenizations at once: half the CPUs (at least one), so the runtime and the
    /// scheduler keep the others.
    large: Semaphore,
}

impl Prompts {
    pub fn new(bounds: PromptBounds) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Prompts { bounds, large: Semaphore::new((cpus / 2).max(1)) }
    }

    /// The ids of `prompt`, or 413 / 400 naming the bound it passes.
    pub async fn tokenize(&self, tokenizer: &Arc<Tokenizer>, prompt: String) -> Result<Vec<u32>, ApiError> {
        let PromptBounds { max_bytes, max_tokens } = self.bounds;
        if prompt.len() > max_bytes {
            let message = format!(
                "the prompt is {} bytes; the limit is {max_bytes} (`max_prompt_bytes` in the serve config)",
                prompt.len()
            );
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                Some("prompt_too_large"),
                message,
            ));
        }
        let ids = if prompt.len() <= INLINE_BYTES {
            encode(tokenizer, &prompt)?
        } else {
            let _turn =
                self.large.acquire().await.map_err(|_| ApiError::internal("tokenizer pool closed"))?;
            let tokenizer = tokenizer.clone();
            tokio::task::spawn_blocking(move || {
                metrics::gauge!("prompts_tokenizing").increment(1.0);
                let ids = encode(&tokenizer, &prompt);
                metrics::gauge!("prompts_tokenizing").decrement(1.0);
                let large = prompt.len() >= TRIM_BYTES;
                drop(prompt);
                if large {
                    return_free_memory();
                }
                ids
            })
            .await
            .map_err(|e| ApiError::internal(format!("tokenizing failed: {e}")))??
        };
        if ids.len() > max_tokens {
            return Err(ApiError::invalid(format!(
                "the prompt has {} tokens; the limit is {max_tokens} (`max_prompt_tokens` in the serve config)",
                ids.len()
            )));
        }
        Ok(ids)
    }
}

fn encode(tokenizer: &Tokenizer, prompt: &str) -> Result<Vec<u32>, ApiError> {
    tokenizer.encode(prompt).map_err(|e| ApiError::invalid(e.to_string()))
}

/// Gives the allocator's free pages back to the OS. glibc keeps freed heap memory for reuse,
/// in every thread's arena, so one burst of large prompts would otherwise hold its peak for good.
fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
