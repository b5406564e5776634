//! A prompt's way from text to token ids: its bounds, and tokenization off the async runtime.
//!
//! A 1 MiB prompt takes the tokenizer a second or more and ~100 MB of scratch (normalized text
//! with per-byte alignments, pre-token splits): run on the runtime's threads, 16 of them held
//! every worker and `/health` waited seconds. Large prompts are therefore tokenized on the
//! blocking pool, a few at a time (so the scratch of 16 is not live at once), and after a large
//! request the free heap pages go back to the OS ([`return_memory_after_large`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::Request;
use axum::http::header::CONTENT_LENGTH;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use serde::Serialize;
use tokio::sync::Semaphore;
use truthgpt_data::Tokenizer;

use crate::error::ApiError;

/// Prompts up to this many bytes are tokenized in place: microseconds, cheaper than a hand-off.
const INLINE_BYTES: usize = 16 << 10;

/// A request body at least this large returns the memory it freed to the OS when answered.
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

    /// The ids of `prompt`, or 413 / 400 naming the bound it passes. Large prompts go to
    /// `uncached`, the same tokenizer without a word cache that their words would fill.
    pub async fn tokenize(
        &self,
        tokenizer: &Tokenizer,
        uncached: &Arc<Tokenizer>,
        prompt: String,
    ) -> Result<Vec<u32>, ApiError> {
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
            let tokenizer = uncached.clone();
            tokio::task::spawn_blocking(move || {
                metrics::gauge!("prompts_tokenizing").increment(1.0);
                let ids = encode(&tokenizer, &prompt);
                metrics::gauge!("prompts_tokenizing").decrement(1.0);
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

/// The layer that gives memory back after large requests: when the last large request in flight
/// has been answered (its body, prompt and token ids dropped), the allocator's free pages are
/// returned to the OS. glibc keeps freed heap memory for reuse, in every thread's arena, so one
/// burst of large prompts would otherwise hold the server near its peak for good (340 MB
/// against 29 idle). Within a burst the memory is reused, so only its end trims.
pub async fn return_memory_after_large(request: Request, next: Next) -> Response {
    static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
    let length = request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if length.unwrap_or(0) < TRIM_BYTES {
        return next.run(request).await;
    }
    IN_FLIGHT.fetch_add(1, Ordering::AcqRel);
    let response = next.run(request).await;
    if IN_FLIGHT.fetch_sub(1, Ordering::AcqRel) == 1 {
        // It walks every arena: not on the runtime's threads.
        tokio::task::spawn_blocking(|| {
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: malloc_trim only releases memory the allocator holds free; it takes no pointers.
            unsafe {
                libc::malloc_trim(0);
            }
        });
    }
    response
}

/// Makes every allocation of 128 KiB or more its own mapping, returned to the OS when freed. By
/// default glibc raises that threshold to the largest block freed so far (up to 32 MiB), after
/// which a large prompt's body, text and ids come from the thread arenas, whose tops
/// `malloc_trim` cannot shrink: 16 concurrent 1 MiB prompts left the server at 5x its idle RSS.
/// Process-wide, so the binary calls it once at startup; elsewhere than glibc it does nothing.
pub fn return_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tuning; it takes no pointers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
}
