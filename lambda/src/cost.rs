//! What a job costs on AWS: a small model of Lambda GB-seconds and requests,
//! DynamoDB on-demand requests, EFS storage and elastic throughput, and the
//! Lambda interface endpoint's hours.
//!
//! Prices are inputs ([`Prices`]); the defaults are AWS's published us-east-1
//! list prices (2025). Check them before relying on an estimate.

use serde::Serialize;

/// Memory (MB) that buys one vCPU's worth of CPU time on Lambda. Lambda
/// allocates CPU in proportion to configured memory ("at 1,769 MB, a
/// function has the equivalent of one vCPU": AWS Lambda Developer Guide,
/// "Configuring Lambda function memory"), so the share is fractional:
/// 10,240 MB buys 5.79 vCPUs. This constant is the one source of that rule:
/// the compute threads ([`compute_threads`]), the time model
/// ([`vcpu_share`], [`seconds_per_example`]) and the benchmarks' memory
/// labels all derive from it.
pub const MB_PER_VCPU: u32 = 1769;

/// Lambda's largest memory size (MB).
pub const MAX_MEMORY_MB: u32 = 10_240;

/// Lambda's smallest memory size (MB).
pub const MIN_MEMORY_MB: u32 = 128;

/// The most compute threads a function runs: ⌈10,240 / 1,769⌉ = 6.
pub const MAX_THREADS: usize = MAX_MEMORY_MB.div_ceil(MB_PER_VCPU) as usize;

/// vCPUs' worth of CPU time a function of `memory_mb` gets per second:
/// `memory_mb / 1769` (fractional: 8,192 MB → 4.63, 10,240 MB → 5.79;
/// below 1,769 MB, less than one vCPU). Memory past [`MAX_MEMORY_MB`] counts as the maximum.
pub fn vcpu_share(memory_mb: u32) -> f64 {
    f64::from(memory_mb.min(MAX_MEMORY_MB)) / f64::from(MB_PER_VCPU)
}

/// Compute threads for a function of `memory_mb`: one per started 1,769 MB
/// (`⌈memory / 1769⌉`), at least 1, at most [`MAX_THREADS`]. There are
/// never fewer threads than the [`vcpu_share`], so the share is what limits
/// the speed. (The CPUs a function *sees* differ: published `/proc/cpuinfo`
/// dumps show 2 CPUs up to 3,008 MB. The time it gets is the share.)
pub fn compute_threads(memory_mb: u32) -> usize {
    (memory_mb.div_ceil(MB_PER_VCPU) as usize).clamp(1, MAX_THREADS)
}

/// Worker seconds per example at `memory_mb` for work that takes
/// `per_vcpu_s` seconds per example on one full vCPU: `per_vcpu_s / share`.
/// The model assumes the work divides evenly over the threads (measured:
/// 0.99 of linear from 1 to 2 threads on the development machine; beyond 2
/// threads unmeasured).
pub fn seconds_per_example(per_vcpu_s: f64, memory_mb: u32) -> f64 {
    per_vcpu_s / vcpu_share(memory_mb.max(1))
}

/// Assumed seconds a worker invocation spends besides computing (start-up,
/// reading parameters, publishing, reducing): an assumption of the
/// planner, not a measurement on Lambda (`lml plan --worker-overhead`).
pub const DEFAULT_WORKER_OVERHEAD_S: f64 = 0.2;

/// Assumed seconds one combine invocation takes (`lml plan --combine`).
pub const DEFAULT_COMBINE_S: f64 = 0.5;

/// Unit prices in US dollars.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Prices {
    /// Lambda compute per GB-second, arm64.
    pub gb_second_arm64: f64,
    /// Lambda compute per GB-second, x86_64.
    pub gb_second_x86_64: f64,
    /// Lambda requests, per request.
    pub request: f64,
    /// DynamoDB on-demand write request unit.
    pub dynamodb_write: f64,
    /// DynamoDB on-demand read request unit.
    pub dynamodb_read: f64,
    /// EFS Standard storage per GB-month.
    pub efs_gb_month: f64,
    /// EFS elastic throughput, per GB read.
    pub efs_read_gb: f64,
    /// EFS elastic throughput, per GB written.
    pub efs_write_gb: f64,
    /// One interface VPC endpoint in one AZ, per hour.
    pub endpoint_az_hour: f64,
}

impl Default for Prices {
    fn default() -> Self {
        Prices {
            gb_second_arm64: 0.000_013_333_4,
            gb_second_x86_64: 0.000_016_666_7,
            request: 0.20 / 1e6,
            dynamodb_write: 0.625 / 1e6,
            dynamodb_read: 0.125 / 1e6,
            efs_gb_month: 0.30,
            efs_read_gb: 0.03,
            efs_write_gb: 0.06,
            endpoint_az_hour: 0.01,
        }
    }
}

/// A job to price.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobShape {
    pub workers: usize,
    pub memory_mb: u32,
    pub arm64: bool,
    /// Examples processed in total (epochs × training examples).
    pub examples: u64,
    /// Rounds (combines) in total.
    pub rounds: u64,
    /// Worker compute seconds per example at this memory size.
    pub seconds_per_example: f64,
    /// Seconds a worker invocation spends besides computing (start-up,
    /// reading parameters, publishing, reducing), per round.
    pub worker_overhead_s: f64,
    /// Seconds one combine invocation takes.
    pub combine_s: f64,
    /// Invocation time limit (s): long slices are split into continuations.
    pub time_limit_s: f64,
    /// Bytes read from EFS per example (an image, or a cached feature row).
    pub bytes_per_example: f64,
    /// Bytes of trainable parameters (each round reads and writes a few copies).
    pub parameter_bytes: f64,
    /// GB kept on EFS (data, weights, features) and for how many days.
    pub stored_gb: f64,
    pub stored_days: f64,
    /// AZs the Lambda interface endpoint spans.
    pub endpoint_azs: u32,
}

/// The estimate, item by item.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Estimate {
    /// Lambda GB-seconds billed.
    pub gb_seconds: f64,
    /// Lambda invocations (workers, continuations, combines, start).
    pub requests: u64,
    /// Wall-clock hours of the job (rounds run one after another).
    pub hours: f64,
    pub lambda_compute: f64,
    pub lambda_requests: f64,
    pub dynamodb: f64,
    pub efs_storage: f64,
    pub efs_throughput: f64,
    pub endpoint: f64,
    pub total: f64,
}

impl Estimate {
    /// The estimate with `total` the sum of its items.
    fn with_total(self) -> Estimate {
        let total = self.lambda_compute
            + self.lambda_requests
            + self.dynamodb
            + self.efs_storage
            + self.efs_throughput
            + self.endpoint;
        Estimate { total, ..self }
    }
}

impl JobShape {
    /// Prices the job.
    pub fn estimate(&self, p: &Prices) -> Estimate {
        let n = self.workers.max(1) as f64;
        let per_round_examples = self.examples as f64 / self.rounds.max(1) as f64;
        let worker_compute = per_round_examples / n * self.seconds_per_example;
        // A worker slice longer than the usable time limit continues itself.
        let usable = (self.time_limit_s * 0.9).max(1.0);
        let invocations_per_worker = (worker_compute / usable).ceil().max(1.0);
        let worker_s = worker_compute + self.worker_overhead_s * invocations_per_worker;
        let rounds = self.rounds as f64;
        let lambda_seconds = rounds * (n * worker_s + self.combine_s);
        let gb_seconds = lambda_seconds * f64::from(self.memory_mb) / 1024.0;
        let requests = (rounds * (n * invocations_per_worker + 1.0)) as u64 + 1;
        let hours = rounds * (worker_s + self.combine_s) / 3600.0;
        let gb_second = if self.arm64 { p.gb_second_arm64 } else { p.gb_second_x86_64 };
        // Per round: a worker record and a finished-set add per worker (≤ 1 KB
        // each: one write unit), a trigger claim, a round record; a few reads.
        let writes = rounds * (2.0 * n + 2.0);
        let reads = rounds * 2.0;
        let gb = 1e9;
        let read_gb = (self.examples as f64 * self.bytes_per_example + rounds * n * 3.0 * self.parameter_bytes) / gb;
        let write_gb = rounds * (2.0 * n + 2.0) * self.parameter_bytes / gb;
        let e = Estimate {
            gb_seconds,
            requests,
            hours,
            lambda_compute: gb_seconds * gb_second,
            lambda_requests: requests as f64 * p.request,
            dynamodb: writes * p.dynamodb_write + reads * p.dynamodb_read,
            efs_storage: self.stored_gb * p.efs_gb_month * self.stored_days / 30.0,
            efs_throughput: read_gb * p.efs_read_gb + write_gb * p.efs_write_gb,
            endpoint: hours.max(1.0).ceil() * f64::from(self.endpoint_azs) * p.endpoint_az_hour,
            total: 0.0,
        };
        e.with_total()
    }
}

/// Assumed EFS bytes per second one merge invocation copies (reading the
/// shards and writing the merged file): an assumption, not a measurement —
/// EFS elastic throughput allows more per client, a Lambda's network less
/// at small memory sizes.
pub const MERGE_BYTES_PER_S: f64 = 100e6;

/// An extraction job to price (`lml_lambda::extract`): the frozen VGG19 over
/// `images` on `workers`, in `shards` handed out so that the slowest worker
/// holds at most ⌈shards / workers⌉ of them, then one merge.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExtractionShape {
    pub workers: usize,
    pub memory_mb: u32,
    pub arm64: bool,
    pub images: u64,
    pub shards: u64,
    /// Worker compute seconds per image at this memory size.
    pub seconds_per_image: f64,
    /// Seconds each worker invocation spends besides computing (start-up,
    /// opening the weights and packing the filters, publishing).
    pub worker_overhead_s: f64,
    /// Invocation time limit (s): a worker continues itself before it.
    pub time_limit_s: f64,
    /// Bytes read per image, and feature bytes written per image.
    pub image_bytes: f64,
    pub feature_bytes: f64,
    pub stored_gb: f64,
    pub stored_days: f64,
    pub endpoint_azs: u32,
}

impl ExtractionShape {
    /// Prices the extraction.
    pub fn estimate(&self, p: &Prices) -> Estimate {
        let n = self.workers.max(1) as f64;
        let shards = self.shards.max(1) as f64;
        let per_shard = self.images as f64 / shards * self.seconds_per_image;
        let slowest = (shards / n).ceil() * per_shard;
        let usable = (self.time_limit_s * 0.9).max(1.0);
        let invocations_per_worker = (slowest / usable).ceil().max(1.0);
        let merge_s = 2.0 * self.images as f64 * self.feature_bytes / MERGE_BYTES_PER_S;
        let compute_s = self.images as f64 * self.seconds_per_image;
        let lambda_seconds = compute_s + n * invocations_per_worker * self.worker_overhead_s + merge_s;
        let gb_seconds = lambda_seconds * f64::from(self.memory_mb) / 1024.0;
        let requests = (n * invocations_per_worker) as u64 + 2;
        let hours = (slowest + invocations_per_worker * self.worker_overhead_s + merge_s) / 3600.0;
        let gb_second = if self.arm64 { p.gb_second_arm64 } else { p.gb_second_x86_64 };
        // A claim and a shard record per shard, a worker record per invocation, the job's.
        let writes = 2.0 * shards + n * invocations_per_worker + 2.0;
        let gb = 1e9;
        let features = self.images as f64 * self.feature_bytes;
        let read_gb = (self.images as f64 * self.image_bytes + features) / gb;
        let write_gb = 2.0 * features / gb;
        let e = Estimate {
            gb_seconds,
            requests,
            hours,
            lambda_compute: gb_seconds * gb_second,
            lambda_requests: requests as f64 * p.request,
            dynamodb: writes * p.dynamodb_write + 2.0 * p.dynamodb_read,
            efs_storage: self.stored_gb * p.efs_gb_month * self.stored_days / 30.0,
            efs_throughput: read_gb * p.efs_read_gb + write_gb * p.efs_write_gb,
            endpoint: hours.max(1.0).ceil() * f64::from(self.endpoint_azs) * p.endpoint_az_hour,
            total: 0.0,
        };
        e.with_total()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> JobShape {
        JobShape {
            workers: 4,
            memory_mb: 2048,
            arm64: true,
            examples: 4000,
            rounds: 10,
            seconds_per_example: 0.5,
            worker_overhead_s: 0.0,
            combine_s: 0.0,
            time_limit_s: 900.0,
            bytes_per_example: 0.0,
            parameter_bytes: 0.0,
            stored_gb: 0.0,
            stored_days: 0.0,
            endpoint_azs: 0,
        }
    }

    #[test]
    fn the_vcpu_rule_is_fractional_and_threads_cover_it() {
        assert_eq!(MAX_THREADS, 6);
        assert!((vcpu_share(1769) - 1.0).abs() < 1e-12);
        assert!((vcpu_share(10_240) - 5.788_581).abs() < 1e-6);
        assert!((vcpu_share(8192) - 4.630_865).abs() < 1e-6);
        assert_eq!(vcpu_share(20_000), vcpu_share(MAX_MEMORY_MB));
        let table = [(128, 1), (1769, 1), (1770, 2), (3538, 2), (5307, 3), (8192, 5), (10_240, 6), (20_000, 6)];
        for (mb, threads) in table {
            assert_eq!(compute_threads(mb), threads, "{mb} MB");
            assert!(threads as f64 >= vcpu_share(mb), "{mb} MB: fewer threads than the share");
        }
        // 0.5 s per example on one vCPU: twice as long at half a vCPU, 4.63× faster at 8 GB.
        assert!((seconds_per_example(0.5, 1769 / 2 + 1) - 0.5 / vcpu_share(885)).abs() < 1e-12);
        assert!((seconds_per_example(0.5, 8192) - 0.5 * 1769.0 / 8192.0).abs() < 1e-12);
    }

    /// Hand-computed: 4000 examples × 0.5 s = 2000 s of compute at 2 GB =
    /// 4000 GB-s; 10 rounds × (4 workers + 1 combine) + 1 start = 51 requests;
    /// each round's wall time is one worker's 100 examples × 0.5 s.
    #[test]
    fn compute_and_requests_by_hand() {
        let e = shape().estimate(&Prices::default());
        assert!((e.gb_seconds - 4000.0).abs() < 1e-9);
        assert_eq!(e.requests, 51);
        assert!((e.hours - 10.0 * 50.0 / 3600.0).abs() < 1e-12);
        assert!((e.lambda_compute - 4000.0 * 0.000_013_333_4).abs() < 1e-12);
        assert!((e.total - (e.lambda_compute + e.lambda_requests + e.dynamodb)).abs() < 1e-12);
    }

    /// Slices longer than the time limit continue themselves: more requests
    /// and overhead, same compute.
    #[test]
    fn long_slices_pay_for_continuations() {
        let long = JobShape { seconds_per_example: 30.0, worker_overhead_s: 1.0, ..shape() };
        let e = long.estimate(&Prices::default());
        // 100 examples × 30 s = 3000 s per worker per round: ceil(3000 / 810) = 4 invocations.
        assert_eq!(e.requests, 10 * (4 * 4 + 1) + 1);
        assert!((e.gb_seconds - 10.0 * 4.0 * (3000.0 + 4.0) * 2.0).abs() < 1e-6);
        let x86 = JobShape { arm64: false, ..long }.estimate(&Prices::default());
        assert!(x86.lambda_compute > e.lambda_compute * 1.24);
    }

    /// Hand-computed: 1000 images in 40 shards of 25 on 8 workers at 2 s an
    /// image; the slowest worker holds 5 shards = 250 s (one invocation);
    /// 2,000 s of compute + 8 × 1 s overhead + a merge copying 2 × 1000 ×
    /// 16 KB at 100 MB/s.
    #[test]
    fn extraction_by_hand() {
        let x = ExtractionShape {
            workers: 8,
            memory_mb: 1024,
            arm64: true,
            images: 1000,
            shards: 40,
            seconds_per_image: 2.0,
            worker_overhead_s: 1.0,
            time_limit_s: 900.0,
            image_bytes: 0.0,
            feature_bytes: 16_384.0,
            stored_gb: 0.0,
            stored_days: 0.0,
            endpoint_azs: 0,
        };
        let e = x.estimate(&Prices::default());
        let merge = 2.0 * 1000.0 * 16_384.0 / 100e6;
        assert!((e.gb_seconds - (2000.0 + 8.0 + merge)).abs() < 1e-9, "{e:?}");
        assert_eq!(e.requests, 8 + 2);
        assert!((e.hours - (250.0 + 1.0 + merge) / 3600.0).abs() < 1e-12);
        // Past the time limit the slowest worker continues itself: 4 invocations each.
        let slow = ExtractionShape { seconds_per_image: 25.0, ..x }.estimate(&Prices::default());
        assert_eq!(slow.requests, 8 * 4 + 2);
    }
}
