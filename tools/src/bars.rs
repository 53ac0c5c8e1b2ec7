//! Progress bars and the worker thread pool of the commands.

use indicatif::{ProgressBar, ProgressStyle};
use lml_kernel::KernelError;

/// A bar of `len` items labelled `what`, with rate and time left.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// A bar of `len` images labelled `what` (a split), with rate and time left.
pub fn image_bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} images {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// A bar of bytes downloaded (its length set once known).
pub fn bytes_bar() -> ProgressBar {
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template("{bytes}/{total_bytes} {bytes_per_sec} eta {eta}").expect("valid template"),
    );
    pb
}

/// Threads to use when not told: every core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A rayon pool of `threads` threads (every core if `None`), and that count.
///
/// # Errors
/// [`KernelError::ThreadPool`] for 0 threads or a pool that cannot be built.
pub fn pool(threads: Option<usize>) -> Result<(rayon::ThreadPool, usize), KernelError> {
    let threads = threads.unwrap_or_else(default_threads);
    Ok((lml_kernel::parallel::thread_pool(threads)?, threads))
}
