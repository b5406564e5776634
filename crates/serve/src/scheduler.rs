//! Continuous batching: one thread owns the model and its paged key/value pool. Every step it
//! admits queued requests while the batch and the pool have room, runs one forward over every
//! active sequence (new prompts and single next tokens together), samples each sequence's next
//! token, turns it into text (cut at stop strings), and sends it to the request's stream.
//! Requests join and leave at token boundaries; a request whose client went away is dropped at
//! the next step and its blocks freed.
//!
//! Each admitted request reserves the blocks its prompt plus `max_tokens` could need, so a step
//! never runs out of pool; shared prompt prefixes only make the reservation generous.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use truthgpt_data::Tokenizer;
use truthgpt_model::{DecodeWork, Limits, Model, Sampler, Sampling, SeqKv, Sequence, Usage};

/// One generation to run.
#[derive(Debug)]
pub struct Job {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Generation ends before the first of these strings; it is not part of the text.
    pub stop: Vec<String>,
    /// Where the text goes; dropping the receiver cancels the job.
    pub events: mpsc::UnboundedSender<Event>,
    /// When the request arrived, for time to first token.
    pub received: std::time::Instant,
    /// Tokens generated so far, for the usage of a request whose client leaves mid-way.
    pub progress: Arc<AtomicUsize>,
}

/// What a job's stream receives: text pieces, then one `Finished` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Text(String),
    Finished(Usage),
    Failed(SchedulerError),
}

#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// Most sequences in one forward.
    pub max_batch: usize,
    /// Most requests waiting for a place in the batch; beyond it, [`SchedulerError::Busy`].
    pub queue: usize,
    /// Positions per key/value block.
    pub block_size: usize,
    /// Blocks in the key/value pool (default: `max_batch` whole contexts).
    pub kv_blocks: Option<usize>,
}

impl SchedulerConfig {
    /// Blocks in the key/value pool for a model of `max_seq_len` positions: `kv_blocks`, or
    /// `max_batch` whole contexts.
    pub fn pool_blocks(&self, max_seq_len: usize) -> usize {
        let whole_contexts = self.max_batch.saturating_mul(max_seq_len.div_ceil(self.block_size));
        self.kv_blocks.unwrap_or(whole_contexts).max(1)
    }

    /// The pool's blocks for `model`, if it can have them. The pool grows block by block up to
    /// its capacity and keeps freed blocks as a prefix cache, so under load its capacity is the
    /// memory it comes to hold: a capacity the machine cannot back is refused here, at start,
    /// instead of aborting the server when an allocation fails later.
    pub fn check_pool(&self, model: &Model) -> Result<usize, String> {
        let blocks = self.pool_blocks(model.config.max_seq_len);
        // Block ids are u32.
        if blocks > u32::MAX as usize {
            return Err(format!("kv_blocks is {blocks}; the pool holds at most {} blocks", u32::MAX));
        }
        let block_bytes = model.new_pool(self.block_size, 1).block_bytes();
        let too_much = |bytes: f64, memory: &str| {
            format!(
                "a key/value pool of {blocks} blocks of {} positions could grow to {:.1} GiB, more than \
                 {memory}: lower kv_blocks (or max_batch, which sizes the default)",
                self.block_size,
                bytes / GIB
            )
        };
        let Some(bytes) = blocks.checked_mul(block_bytes) else {
            return Err(too_much(blocks as f64 * block_bytes as f64, "any machine has"));
        };
        match physical_memory() {
            Some(memory) if bytes as u64 > memory => {
                Err(too_much(bytes as f64, &format!("this machine's {:.1} GiB", memory as f64 / GIB)))
            }
            _ => Ok(blocks),
        }
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// Bytes of physical memory, where the OS says (Linux: `MemTotal` in /proc/meminfo).
fn physical_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = info.lines().find_map(|line| line.strip_prefix("MemTotal:"))?.trim().strip_suffix("kB")?;
    kib.trim().parse::<u64>().ok()?.checked_mul(1024)
}

/// Why the scheduler refused or failed a job. The first three are about the request (it can be
/// retried, or must change); the last two went wrong in the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    #[error("the server is at capacity; retry shortly")]
    Busy,
    #[error("prompt and max_tokens need {needed} key/value blocks; the pool has {capacity}")]
    TooLarge { needed: usize, capacity: usize },
    #[error("{0}")]
    Sampling(String),
    #[error("the scheduler has stopped")]
    Stopped,
    /// The forward or the detokenizer failed.
    #[error("{0}")]
    Generation(String),
}

/// The handle requests are submitted through.
#[derive(Debug, Clone)]
pub struct Scheduler {
    queue: mpsc::UnboundedSender<Queued>,
    /// One permit per place in the queue (`SchedulerConfig::queue`).
    places: Arc<Semaphore>,
    pub max_seq_len: usize,
    /// Blocks in the key/value pool.
    pub kv_blocks: usize,
}

/// A job on its way to the batch, with the place it holds in the queue.
struct Queued {
    job: Job,
    place: Arc<Place>,
}

/// A request's place in the queue. It is given back when the scheduler admits the request or
/// when its client leaves, whichever comes first: a client that gives up while queued frees
/// its place at once, not when the scheduler reaches its job.
#[derive(Debug)]
struct Place(Mutex<Option<OwnedSemaphorePermit>>);

impl Place {
    fn release(&self) {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
    }
}

impl Scheduler {
    /// Starts the scheduler thread; it ends when every handle is dropped and the batch is done.
    /// Fails if the machine cannot back the pool ([`SchedulerConfig::check_pool`]).
    pub fn start(
        model: Model,
        tokenizer: Arc<Tokenizer>,
        config: SchedulerConfig,
    ) -> Result<(Self, std::thread::JoinHandle<()>), String> {
        let kv_blocks = config.check_pool(&model)?;
        // The thread makes its metric handles once; made before the recorder, they would be no-ops.
        crate::telemetry::handle();
        let max_seq_len = model.config.max_seq_len;
        let (scheduler, incoming) = Scheduler::new(config.queue, max_seq_len, kv_blocks);
        let thread = std::thread::Builder::new()
            .name("truthgpt-scheduler".into())
            .spawn(move || run(model, &tokenizer, incoming, config, kv_blocks))
            .map_err(|e| format!("starting the scheduler thread: {e}"))?;
        Ok((scheduler, thread))
    }

    /// The handle, and the end of its queue that the scheduler thread reads.
    fn new(queue: usize, max_seq_len: usize, kv_blocks: usize) -> (Self, mpsc::UnboundedReceiver<Queued>) {
        let (sender, incoming) = mpsc::unbounded_channel();
        let places = Arc::new(Semaphore::new(queue.max(1)));
        (Scheduler { queue: sender, places, max_seq_len, kv_blocks }, incoming)
    }

    /// A place in the queue, or why there is none at once: a full queue is [`SchedulerError::Busy`].
    /// Taken before a request is charged, so a request refused for capacity costs nothing.
    pub fn reserve(&self) -> Result<Slot, SchedulerError> {
        if self.queue.is_closed() {
            return Err(SchedulerError::Stopped);
        }
        let permit = self.places.clone().try_acquire_owned().map_err(|_| SchedulerError::Busy)?;
        Ok(Slot { permit, queue: self.queue.clone() })
    }

    /// Whether the scheduler thread still takes requests.
    pub fn is_running(&self) -> bool {
        !self.queue.is_closed()
    }
}

/// A reserved place in the scheduler's queue; dropped unused, it is given back.
pub struct Slot {
    permit: OwnedSemaphorePermit,
    queue: mpsc::UnboundedSender<Queued>,
}

impl Slot {
    /// Queues `job`. The request keeps its place until the scheduler admits it or the returned
    /// [`Waiting`] is dropped (the client left). Should the scheduler have stopped, the job is
    /// dropped, and its stream ends without a `Finished`.
    pub fn submit(self, job: Job) -> Waiting {
        let place = Arc::new(Place(Mutex::new(Some(self.permit))));
        let _ = self.queue.send(Queued { job, place: place.clone() });
        Waiting(place)
    }
}

/// Held by a queued request's handler: dropping it gives back the request's queue place.
#[derive(Debug)]
#[must_use = "dropping it gives the queue place back at once"]
pub struct Waiting(Arc<Place>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// A request in the running batch.
struct Active<'t> {
    job: Job,
    seq: SeqKv,
    /// Tokens to run next: the uncached prompt, then each sampled token.
    input: Vec<u32>,
    /// Prompt and generated tokens, for the repetition penalty.
    history: Vec<u32>,
    sampler: Sampler,
    /// Stop token and strings, text, limits and usage: the same rules as the CLI's generator.
    sequence: Sequence<'t>,
    /// Blocks reserved for the whole generation.
    reserved: usize,
    /// Whether text has been sent yet (time to first token is recorded once).
    started: bool,
}

impl Active<'_> {
    fn send(&self, event: Event) {
        // A closed stream means the client left; the job is dropped at the next step.
        let _ = self.job.events.send(event);
    }
}

fn run(
    mut model: Model,
    tokenizer: &Tokenizer,
    mut incoming: mpsc::UnboundedReceiver<Queued>,
    config: SchedulerConfig,
    kv_blocks: usize,
) {
    let vocab = model.config.vocab_size;
    let max_seq_len = model.config.max_seq_len;
    let eos = tokenizer.eos_id();
    let mut pool = model.new_pool(config.block_size, kv_blocks);
    let mut work = DecodeWork::default();
    let mut active: Vec<Active> = Vec::new();
    let mut reserved = 0;
    // Submitted jobs in order: the front waits when the pool cannot take it yet.
    let mut pending: VecDeque<Queued> = VecDeque::new();
    // Counters made once (for MoE models): a labelled lookup per step would cost more than
    // the increments.
    let mut expert_tokens: Vec<metrics::Counter> = Vec::new();
    let tokens_total = metrics::counter!("generated_tokens_total");
    // One step: the forward, sampling, detokenising and sending for the whole batch.
    let step_seconds = metrics::histogram!("decode_step_seconds");
    let (batch_size, queue_depth) = (metrics::gauge!("batch_size"), metrics::gauge!("queue_depth"));
    let tokens_per_second = metrics::gauge!("generated_tokens_per_second");
    let mut window = (std::time::Instant::now(), 0u64);
    loop {
        if active.is_empty() && pending.is_empty() {
            // Idle until a request comes: nothing is being generated meanwhile.
            tokens_per_second.set(0.0);
            window = (std::time::Instant::now(), 0);
            match incoming.blocking_recv() {
                Some(queued) => pending.push_back(queued),
                None => return,
            }
        }
        while let Ok(queued) = incoming.try_recv() {
            pending.push_back(queued);
        }
        // Jobs whose clients left are dropped unrun (their places were given back as they left).
        pending.retain(|queued| !queued.job.events.is_closed());
        while active.len() < config.max_batch {
            let Some(Queued { job, .. }) = pending.front() else { break };
            let need = (job.prompt.len() + job.max_tokens).min(max_seq_len).div_ceil(config.block_size);
            if need <= pool.capacity() && reserved + need > pool.capacity() {
                break; // it waits, first in line, for blocks to come back
            }
            let Queued { job, place } = pending.pop_front().expect("the front was just seen");
            place.release();
            if need > pool.capacity() {
                let too_large = SchedulerError::TooLarge { needed: need, capacity: pool.capacity() };
                let _ = job.events.send(Event::Failed(too_large));
                continue;
            }
            let sampler = match Sampler::new(job.sampling.clone()) {
                Ok(sampler) => sampler,
                Err(e) => {
                    let _ = job.events.send(Event::Failed(SchedulerError::Sampling(e.to_string())));
                    continue;
                }
            };
            let limits = Limits { max_tokens: job.max_tokens, max_seq_len };
            let sequence = Sequence::new(job.prompt.len(), limits, eos.into_iter().collect())
                .with_text(tokenizer.text_decoder(), &job.stop);
            if let Some(usage) = sequence.usage() {
                let _ = job.events.send(Event::Finished(usage)); // nothing to generate
                continue;
            }
            reserved += need;
            let (seq, cached) = pool.start(&job.prompt);
            active.push(Active {
                input: job.prompt[cached..].to_vec(),
                history: job.prompt.clone(),
                seq,
                sampler,
                sequence,
                reserved: need,
                started: false,
                job,
            });
        }
        // Clients that left: their blocks go back before the step.
        active.retain_mut(|a| {
            let gone = a.job.events.is_closed();
            if gone {
                pool.release(std::mem::take(&mut a.seq));
                reserved -= a.reserved;
            }
            !gone
        });
        batch_size.set(active.len() as f64);
        queue_depth.set(pending.len() as f64);
        if active.is_empty() {
            continue;
        }

        let mut batch: Vec<(&mut SeqKv, &[u32])> =
            active.iter_mut().map(|a| (&mut a.seq, &a.input[..])).collect();
        let step = std::time::Instant::now();
        let logits = match model.forward_paged(&mut pool, &mut work, &mut batch) {
            Ok(logits) => logits,
            Err(e) => {
                for a in active.drain(..) {
                    a.send(Event::Failed(SchedulerError::Generation(e.to_string())));
                    pool.release(a.seq);
                }
                reserved = 0;
                continue;
            }
        };
        let mut finished = Vec::new();
        for (i, (a, row)) in active.iter_mut().zip(logits.chunks_exact(vocab)).enumerate() {
            let token = a.sampler.sample(row, &a.history);
            a.history.push(token);
            a.input.clear();
            a.input.push(token);
            match a.sequence.push(token) {
                Ok(step) => {
                    a.job.progress.store(a.sequence.completion_tokens(), Ordering::Relaxed);
                    if let Some(text) = step.text {
                        if !a.started {
                            a.started = true;
                            let waited = a.job.received.elapsed().as_secs_f64();
                            metrics::histogram!("time_to_first_token_seconds").record(waited);
                        }
                        a.send(Event::Text(text));
                    }
                    if let Some(usage) = step.finished {
                        a.send(Event::Finished(usage));
                        finished.push(i);
                    }
                }
                Err(e) => {
                    a.send(Event::Failed(SchedulerError::Generation(e.to_string())));
                    finished.push(i);
                }
            }
        }
        step_seconds.record(step.elapsed().as_secs_f64());
        tokens_total.increment(active.len() as u64);
        if expert_tokens.len() != work.expert_load().len() {
            // Experts per layer as the forward counted them (PiMoE counts its groups' experts).
            let experts = work.expert_load().len() / model.config.n_layers;
            expert_tokens = (0..work.expert_load().len())
                .map(|i| {
                    let (layer, expert) = ((i / experts).to_string(), (i % experts).to_string());
                    metrics::counter!("moe_expert_tokens_total", "layer" => layer, "expert" => expert)
                })
                .collect();
        }
        for (counter, &rows) in expert_tokens.iter().zip(work.expert_load()) {
            counter.increment(rows as u64);
        }
        // Tokens per second over windows of at least a second of steps.
        window.1 += active.len() as u64;
        let elapsed = window.0.elapsed().as_secs_f64();
        if elapsed >= 1.0 {
            tokens_per_second.set(window.1 as f64 / elapsed);
            window = (std::time::Instant::now(), 0);
        }
        for i in finished.into_iter().rev() {
            let a = active.swap_remove(i);
            reserved -= a.reserved;
            pool.release(a.seq);
        }
        metrics::gauge!("kv_blocks_used").set(pool.used_blocks() as f64);
        metrics::gauge!("kv_blocks_total").set(pool.capacity() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> (Job, mpsc::UnboundedReceiver<Event>) {
        let (events, receiver) = mpsc::unbounded_channel();
        let job = Job {
            prompt: vec![1],
            max_tokens: 1,
            sampling: Sampling::greedy(),
            stop: vec![],
            events,
            received: std::time::Instant::now(),
            progress: Arc::default(),
        };
        (job, receiver)
    }

    /// Without the scheduler thread, so nothing is admitted unless the test does it.
    #[test]
    fn a_queue_place_comes_back_when_its_client_leaves_or_its_job_is_admitted() {
        let (scheduler, mut incoming) = Scheduler::new(2, 64, 8);
        let free = || scheduler.places.available_permits();
        let (first, _first_client) = job();
        let first_waits = scheduler.reserve().unwrap().submit(first);
        let (second, second_client) = job();
        let second_waits = scheduler.reserve().unwrap().submit(second);
        assert!(matches!(scheduler.reserve(), Err(SchedulerError::Busy)));

        // The second client leaves while its job is still in the channel.
        drop((second_client, second_waits));
        assert_eq!(free(), 1);
        drop(scheduler.reserve().expect("the place the second client left"));
        assert_eq!(free(), 1, "an unused slot is given back");

        // Admitting the first job gives its place back while its client still waits for text.
        let admitted = incoming.try_recv().unwrap();
        admitted.place.release();
        assert_eq!(free(), 2);
        // The client's own release, later, is a no-op.
        drop(first_waits);
        assert_eq!(free(), 2);
        // The dead job is still in the channel, for the scheduler to drop unrun.
        assert!(incoming.try_recv().unwrap().job.events.is_closed());

        drop(incoming);
        assert!(matches!(scheduler.reserve(), Err(SchedulerError::Stopped)));
    }
}
