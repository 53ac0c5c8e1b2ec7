//! VGG19 forward throughput for one configuration, as one JSON line: the
//! lml side of `benches/ort/compare.py` (which runs onnxruntime on the same
//! weights in the same session).
//!
//! ```text
//! cargo run --release -p lml-benches --example vgg_throughput -- SIZE CUT BATCH THREADS REPS
//! ```
//!
//! Prints `{"size":…,"cut":…,"batch":…,"threads":…,"microkernel":…,
//! "median_s":…,"img_per_s":…,"times_s":[…]}` after one warm-up forward
//! (filter packing, page-in of the weights), timing `REPS` forwards by wall clock.

use std::time::Instant;

use lml_benches::{random_input, weights_dir};
use lml_kernel::{Cut, Vgg19};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: vgg_throughput SIZE CUT BATCH THREADS REPS";
    let [size, cut, batch, threads, reps] = <[String; 5]>::try_from(args).expect(usage);
    let size: usize = size.parse().expect(usage);
    let cut: Cut = cut.parse().expect(usage);
    let batch: usize = batch.parse().expect(usage);
    let threads: usize = threads.parse().expect(usage);
    let reps: usize = reps.parse().expect(usage);
    let vgg = Vgg19::open(weights_dir(), size, cut).expect("benchmark weights");
    let x = random_input(batch, 3, size, 1);
    let pool = lml_kernel::parallel::thread_pool(threads).expect("thread pool");
    pool.install(|| vgg.forward(x.view()).expect("forward"));
    let mut times: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            pool.install(|| std::hint::black_box(vgg.forward(x.view()).expect("forward")));
            t.elapsed().as_secs_f64()
        })
        .collect();
    let listed = times.iter().map(|t| format!("{t:.4}")).collect::<Vec<_>>().join(",");
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{{\"size\":{size},\"cut\":\"{cut:?}\",\"batch\":{batch},\"threads\":{threads},\"microkernel\":\"{}\",\
         \"median_s\":{median:.4},\"img_per_s\":{:.3},\"times_s\":[{listed}]}}",
        vgg.microkernel(),
        batch as f64 / median
    );
}
