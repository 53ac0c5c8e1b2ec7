//! Thread pools: the kernel's one level of parallelism.
//!
//! Every layer spreads its tasks over the *current* rayon pool and runs GEMM
//! single-threaded inside each task. To run with `t` threads (e.g. to emulate
//! a Lambda function's vCPUs), build a pool with [`thread_pool`] and call the
//! kernel inside [`rayon::ThreadPool::install`]; outside any pool, rayon's
//! global pool (one thread per core, or `RAYON_NUM_THREADS`) is used.

use crate::error::{KernelError, Result};

/// A rayon pool of exactly `threads` threads.
///
/// # Errors
/// [`KernelError::ThreadPool`] if `threads` is zero or the OS refuses.
pub fn thread_pool(threads: usize) -> Result<rayon::ThreadPool> {
    if threads == 0 {
        return Err(KernelError::ThreadPool { threads, reason: "need at least one thread".into() });
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("lml-kernel-{i}"))
        .build()
        .map_err(|e| KernelError::ThreadPool { threads, reason: e.to_string() })
}
