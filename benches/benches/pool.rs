//! VGG19's 2×2 max-pools at 224×224 (batch 8), by bytes moved: input read
//! plus output written, so `Gelem/s` reads as GB/s, to set beside the
//! streaming bandwidth of `--bench peak -- stream`. The pools are
//! memory-bound; this shows how close they run to that limit.
//!
//! ```text
//! cargo bench -p lml-benches --bench pool
//! ```

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lml_benches::random_input;
use lml_kernel::geometry::Window2d;
use lml_kernel::layers::maxpool2d_values_into;
use ndarray::Array4;

fn pools(c: &mut Criterion) {
    let mut g = c.benchmark_group("maxpool_224_batch8");
    g.sample_size(10);
    // (name, channels, input side) of the five pools at 224×224.
    for (name, ch, side) in
        [("pool1", 64, 224), ("pool2", 128, 112), ("pool3", 256, 56), ("pool4", 512, 28), ("pool5", 512, 14)]
    {
        let x = random_input(8, ch, side, 1);
        let mut out = Array4::<f32>::zeros((8, ch, side / 2, side / 2));
        g.throughput(Throughput::Elements(((x.len() + out.len()) * 4) as u64));
        for threads in [1usize, 2] {
            let pool = lml_kernel::parallel::thread_pool(threads).unwrap();
            g.bench_function(format!("{name}/{threads}t"), |b| {
                b.iter(|| {
                    pool.install(|| maxpool2d_values_into(x.view(), &Window2d::VGG_POOL, out.view_mut()).unwrap())
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, pools);
criterion_main!(benches);
