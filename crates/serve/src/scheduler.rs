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
use truthgpt_model::{DecodeWork, KvPool, Limits, Model, Sampler, Sampling, SeqKv, Sequence, Usage};

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

    /// Samples the next token from `logits` and sends the text it makes ready (and, if it ends
    /// the job, the usage). Returns whether the job has ended.
    fn advance(&mut self, logits: &[f32]) -> bool {
        let token = self.sampler.sample(logits, &self.history);
        self.history.push(token);
        self.input.clear();
        self.input.push(token);
        let step = match self.sequence.push(token) {
            Ok(step) => step,
            Err(e) => {
                self.send(Event::Failed(SchedulerError::Generation(e.to_string())));
                return true;
            }
        };
        self.job.progress.store(self.sequence.completion_tokens(), Ordering::Relaxed);
        if let Some(text) = step.text {
            if !std::mem::replace(&mut self.started, true) {
                let waited = self.job.received.elapsed().as_secs_f64();
                metrics::histogram!("time_to_first_token_seconds").record(waited);
            }
            self.send(Event::Text(text));
        }
        if let Some(usage) = step.finished {
            self.send(Event::Finished(usage));
        }
        step.finished.is_some()
    }
}

fn run(
    model: Model,
    tokenizer: &Tokenizer,
    mut incoming: mpsc::UnboundedReceiver<Queued>,
    config: SchedulerConfig,
    kv_blocks: usize,
) {
    let mut batcher = Batcher {
        pool: model.new_pool(config.block_size, kv_blocks),
        model,
        tokenizer,
        config,
        work: DecodeWork::default(),
        active: Vec::new(),
        pending: VecDeque::new(),
        reserved: 0,
        figures: Figures::new(),
    };
    while batcher.receive(&mut incoming) {
        batcher.admit();
        batcher.drop_departed();
        batcher.figures.batch(batcher.active.len(), batcher.pending.len());
        if !batcher.active.is_empty() {
            batcher.step();
        }
    }
}

/// What the scheduler thread owns: the model and its pool, the running batch and the queue.
struct Batcher<'t> {
    model: Model,
    tokenizer: &'t Tokenizer,
    config: SchedulerConfig,
    pool: KvPool,
    work: DecodeWork,
    active: Vec<Active<'t>>,
    /// Submitted jobs in order: the front waits when the pool cannot take it yet.
    pending: VecDeque<Queued>,
    /// Blocks reserved by the active jobs.
    reserved: usize,
    figures: Figures,
}

impl<'t> Batcher<'t> {
    /// Takes in what was submitted, first waiting for it if there is nothing to do. False once
    /// every handle is gone and nothing is left to run.
    fn receive(&mut self, incoming: &mut mpsc::UnboundedReceiver<Queued>) -> bool {
        if self.active.is_empty() && self.pending.is_empty() {
            self.figures.idle();
            match incoming.blocking_recv() {
                Some(queued) => self.pending.push_back(queued),
                None => return false,
            }
        }
        while let Ok(queued) = incoming.try_recv() {
            self.pending.push_back(queued);
        }
        // Jobs whose clients left are dropped unrun (their places were given back as they left).
        self.pending.retain(|queued| !queued.job.events.is_closed());
        true
    }

    /// Moves queued jobs into the batch, in order, while the batch and the pool have room.
    fn admit(&mut self) {
        while self.active.len() < self.config.max_batch {
            let Some(Queued { job, .. }) = self.pending.front() else { break };
            let max_seq_len = self.model.config.max_seq_len;
            let need = (job.prompt.len() + job.max_tokens).min(max_seq_len).div_ceil(self.config.block_size);
            if need <= self.pool.capacity() && self.reserved + need > self.pool.capacity() {
                break; // it waits, first in line, for blocks to come back
            }
            let Queued { job, place } = self.pending.pop_front().expect("the front was just seen");
            place.release();
            match self.prepare(&job, need) {
                Ok((sampler, sequence)) => {
                    self.reserved += need;
                    let (seq, cached) = self.pool.start(&job.prompt);
                    self.active.push(Active {
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
                // The job ends before its first token; a failed send means its client has left.
                Err(event) => {
                    let _ = job.events.send(event);
                }
            }
        }
    }

    /// The sampler and sequence of a job that needs `need` blocks, or the event that ends it
    /// before its first token.
    fn prepare(&self, job: &Job, need: usize) -> Result<(Sampler, Sequence<'t>), Event> {
        if need > self.pool.capacity() {
            return Err(Event::Failed(SchedulerError::TooLarge {
                needed: need,
                capacity: self.pool.capacity(),
            }));
        }
        let sampler = Sampler::new(job.sampling.clone())
            .map_err(|e| Event::Failed(SchedulerError::Sampling(e.to_string())))?;
        let limits = Limits { max_tokens: job.max_tokens, max_seq_len: self.model.config.max_seq_len };
        let stop_tokens = self.tokenizer.eos_id().into_iter().collect();
        let sequence = Sequence::new(job.prompt.len(), limits, stop_tokens)
            .with_text(self.tokenizer.text_decoder(), &job.stop);
        match sequence.usage() {
            Some(usage) => Err(Event::Finished(usage)), // no room to generate
            None => Ok((sampler, sequence)),
        }
    }

    /// Clients that left: their blocks go back before the step.
    fn drop_departed(&mut self) {
        let (pool, reserved) = (&mut self.pool, &mut self.reserved);
        self.active.retain_mut(|a| {
            let gone = a.job.events.is_closed();
            if gone {
                pool.release(std::mem::take(&mut a.seq));
                *reserved -= a.reserved;
            }
            !gone
        });
    }

    /// One forward over the whole batch, then each sequence's next token; ended jobs leave.
    fn step(&mut self) {
        let started = std::time::Instant::now();
        let mut batch: Vec<(&mut SeqKv, &[u32])> =
            self.active.iter_mut().map(|a| (&mut a.seq, &a.input[..])).collect();
        let logits = match self.model.forward_paged(&mut self.pool, &mut self.work, &mut batch) {
            Ok(logits) => logits,
            Err(e) => {
                for a in self.active.drain(..) {
                    a.send(Event::Failed(SchedulerError::Generation(e.to_string())));
                    self.pool.release(a.seq);
                }
                self.reserved = 0;
                return;
            }
        };
        let rows = logits.chunks_exact(self.model.config.vocab_size);
        let ended: Vec<usize> = self
            .active
            .iter_mut()
            .zip(rows)
            .enumerate()
            .filter_map(|(i, (a, row))| a.advance(row).then_some(i))
            .collect();
        self.figures.step(started, self.active.len(), self.work.expert_load(), self.model.config.n_layers);
        for i in ended.into_iter().rev() {
            let a = self.active.swap_remove(i);
            self.reserved -= a.reserved;
            self.pool.release(a.seq);
        }
        self.figures.pool(&self.pool);
    }
}

/// The scheduler's figures. Handles are made once: a labelled lookup per step would cost more
/// than the increments.
struct Figures {
    tokens_total: metrics::Counter,
    /// One step: the forward, sampling, detokenising and sending for the whole batch.
    step_seconds: metrics::Histogram,
    batch_size: metrics::Gauge,
    queue_depth: metrics::Gauge,
    tokens_per_second: metrics::Gauge,
    kv_blocks_used: metrics::Gauge,
    kv_blocks_total: metrics::Gauge,
    /// The pool grows block by block and keeps freed blocks as a prefix cache, so the memory it
    /// holds is neither the used blocks nor the capacity: these two say what it is.
    kv_bytes_allocated: metrics::Gauge,
    kv_block_bytes: metrics::Gauge,
    /// Tokens per (layer, expert) of MoE models, made at the first step that reports them.
    expert_tokens: Vec<metrics::Counter>,
    /// Tokens per second are measured over windows of at least a second of steps: when the
    /// window opened, and the tokens since.
    window: (std::time::Instant, u64),
}

impl Figures {
    fn new() -> Self {
        Figures {
            tokens_total: metrics::counter!("generated_tokens_total"),
            step_seconds: metrics::histogram!("decode_step_seconds"),
            batch_size: metrics::gauge!("batch_size"),
            queue_depth: metrics::gauge!("queue_depth"),
            tokens_per_second: metrics::gauge!("generated_tokens_per_second"),
            kv_blocks_used: metrics::gauge!("kv_blocks_used"),
            kv_blocks_total: metrics::gauge!("kv_blocks_total"),
            kv_bytes_allocated: metrics::gauge!("kv_bytes_allocated"),
            kv_block_bytes: metrics::gauge!("kv_block_bytes"),
            expert_tokens: Vec::new(),
            window: (std::time::Instant::now(), 0),
        }
    }

    /// Nothing is being generated while the scheduler waits for a request.
    fn idle(&mut self) {
        self.tokens_per_second.set(0.0);
        self.window = (std::time::Instant::now(), 0);
    }

    fn batch(&self, active: usize, pending: usize) {
        self.batch_size.set(active as f64);
        self.queue_depth.set(pending as f64);
    }

    /// A step that began at `started` and made one token for each of `sequences`;
    /// `expert_load` is its rows per expert, layer-major.
    fn step(&mut self, started: std::time::Instant, sequences: usize, expert_load: &[usize], layers: usize) {
        self.step_seconds.record(started.elapsed().as_secs_f64());
        self.tokens_total.increment(sequences as u64);
        if self.expert_tokens.len() != expert_load.len() {
            // Experts per layer as the forward counted them (PiMoE counts its groups' experts).
            let experts = expert_load.len() / layers;
            self.expert_tokens = (0..expert_load.len())
                .map(|i| {
                    let (layer, expert) = ((i / experts).to_string(), (i % experts).to_string());
                    metrics::counter!("moe_expert_tokens_total", "layer" => layer, "expert" => expert)
                })
                .collect();
        }
        for (counter, &rows) in self.expert_tokens.iter().zip(expert_load) {
            counter.increment(rows as u64);
        }
        self.window.1 += sequences as u64;
        let elapsed = self.window.0.elapsed().as_secs_f64();
        if elapsed >= 1.0 {
            self.tokens_per_second.set(self.window.1 as f64 / elapsed);
            self.window = (std::time::Instant::now(), 0);
        }
    }

    fn pool(&self, pool: &KvPool) {
        self.kv_blocks_used.set(pool.used_blocks() as f64);
        self.kv_blocks_total.set(pool.capacity() as f64);
        self.kv_bytes_allocated.set(pool.bytes() as f64);
        self.kv_block_bytes.set(pool.block_bytes() as f64);
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
