//! After the first step, our code allocates nothing in a training step: every buffer is sized
//! once per (B, T), our packed GEMM's panels included. The `gemm` crate (on CPUs without
//! AVX-512F) still takes packing scratch inside each call (freed before it returns); allocations a
//! thread makes inside it are attributed to it, every other one fails the test, and live memory
//! must not grow. Steps run inside a rayon pool: entering rayon
//! from a thread outside it takes its cold injection path, which allocated here (seen: 23 4-byte
//! allocations on the calling thread over 30 steps); inside the pool, nested parallel calls do not.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use truthgpt_config::{Config, FfnKind, Precision};
use truthgpt_engine::matmul::inside_gemm_crate;
use truthgpt_model::{Batch, Model, Trainer};

struct Counting;

/// Allocations made outside the `gemm` crate: ours.
static OURS: AtomicUsize = AtomicUsize::new(0);
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !inside_gemm_crate() {
            OURS.fetch_add(1, Ordering::Relaxed);
        }
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn training_steps_after_the_first_do_not_allocate() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for (ffn, checkpointing, precision) in [
        (FfnKind::Mlp, false, Precision::F32),
        (FfnKind::Swiglu, true, Precision::F32),
        (FfnKind::Moe, false, Precision::F32),
        (FfnKind::Pimoe, true, Precision::F32),
        (FfnKind::Moe, false, Precision::Bf16),
    ] {
        let mut config = Config::preset("tiny").unwrap();
        config.model.ffn = ffn;
        config.model.dropout = 0.1;
        config.train.gradient_checkpointing = checkpointing;
        config.train.precision = precision;
        let (b, t) = (config.train.batch_size, config.train.seq_len);
        let tokens: Vec<u32> = (0..(b * t) as u32).map(|i| i * 31 % 256).collect();
        let targets: Vec<u32> = (0..(b * t) as u32).map(|i| i * 17 % 256).collect();
        let mut trainer = Trainer::new(Model::new(&config.model, 0), config.train);
        let batch = [Batch { tokens: &tokens, targets: &targets, b, t }];
        let case = format!("{ffn:?} (checkpointing {checkpointing}, {precision:?})");
        let (ours, grown) = pool.install(|| {
            // Warm-up: buffers, and the gemm crate's lazily made thread-local slabs on each worker.
            for _ in 0..3 {
                trainer.step(&batch).unwrap();
            }
            let (live, ours) = (LIVE_BYTES.load(Ordering::Relaxed), OURS.load(Ordering::Relaxed));
            for _ in 0..10 {
                trainer.step(&batch).unwrap();
            }
            let grown = LIVE_BYTES.load(Ordering::Relaxed) as isize - live as isize;
            (OURS.load(Ordering::Relaxed) - ours, grown)
        });
        assert_eq!(ours, 0, "{case}: {ours} allocations outside GEMMs in 10 steps");
        // rayon's deques free lazily (crossbeam-epoch), so a few bytes may still be in flight.
        assert!(grown < 16 * 1024, "{case}: live memory grew by {grown} bytes");
    }
}
