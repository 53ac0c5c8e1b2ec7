//! What `lml train`, `lml status` and `lml aws status` print about a job:
//! one line per round, the class list, the summary; an extraction's shards;
//! an ingest's objects.

use std::collections::BTreeMap;

use lml_lambda::progress::{JobStatus, Progress, RoundRecord, Score};

/// `10 classes: airplane, automobile, …` (at most 20 names shown).
pub fn classes_line(count: usize, names: &[String]) -> String {
    const SHOWN: usize = 20;
    if names.is_empty() {
        return format!("{count} classes");
    }
    let more = if names.len() > SHOWN { format!(", … ({} more)", names.len() - SHOWN) } else { String::new() };
    format!("{count} classes: {}{more}", names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", "))
}

/// One round: loss, accuracy, held-out score, throughput, combine time.
pub fn round_line(r: &RoundRecord) -> String {
    let eval = r.eval.map_or(String::new(), |e| format!("  eval loss {:.4} acc {:.3}", e.loss, e.accuracy));
    format!(
        "round {:>4} (epoch {:>2})  loss {:.4}  acc {:.3}{eval}  {:>6.0} img/s  combine {} ms",
        r.round,
        r.epoch,
        r.train.loss,
        r.train.accuracy,
        r.train.examples as f64 / (r.round_ms.max(1) as f64 / 1e3),
        r.combine_ms
    )
}

/// The job's status, last round and held-out accuracy ([`summary_lines`]), printed.
pub fn print_summary(p: &Progress) {
    for line in summary_lines(p) {
        println!("{line}");
    }
}

/// The job's status, last round and held-out accuracy, one line each, as
/// `lml status` prints them and `lml report` shows them.
pub fn summary_lines(p: &Progress) -> Vec<String> {
    let Some(job) = &p.job else {
        return vec!["no job record yet".into()];
    };
    let status = status_word(job.status);
    let last = p.rounds.values().last();
    let mut lines = vec![format!(
        "job {}: {status}{}, {} of {} rounds ({} workers, {} examples)",
        job.job,
        job.reason.as_deref().map_or(String::new(), |r| format!(" ({r})")),
        p.rounds.len(),
        job.total_rounds,
        job.workers,
        job.examples
    )];
    if job.classes > 0 {
        lines.push(classes_line(job.classes, &job.class_names));
    }
    if let Some(r) = last {
        lines.push(format!("last round: training loss {:.4}, accuracy {:.3}", r.train.loss, r.train.accuracy));
    }
    lines.push(match held_out(p) {
        Some(e) => format!(
            "{} accuracy {:.3} (loss {:.4}) on {} held-out examples",
            if job.status == JobStatus::Running { "latest" } else { "final" },
            e.accuracy,
            e.loss,
            e.examples
        ),
        None => "no held-out evaluation (no test split)".into(),
    });
    lines
}

/// The job's final held-out score, else the latest round's.
pub fn held_out(p: &Progress) -> Option<Score> {
    p.job.as_ref().and_then(|j| j.eval).or_else(|| p.rounds.values().rev().find_map(|r| r.eval))
}

/// The job's status in one word (`running`, `finished`, …).
pub fn status_word(s: JobStatus) -> &'static str {
    match s {
        JobStatus::Running => "running",
        JobStatus::Finished => "finished",
        JobStatus::Stopped => "stopped",
        JobStatus::Failed => "failed",
    }
}

/// An extraction job's state from its records: shards done of the total,
/// images per second (images in published shards over the time from start
/// to the last shard, or to `now_ms` while none is published), each
/// worker's VGG19 compute time, and the cache once merged. `None` when
/// `p` holds no extraction record.
pub fn extract_lines(p: &Progress, now_ms: u64) -> Option<Vec<String>> {
    let x = p.extract.as_ref()?;
    let images: usize = p.shards.values().map(|s| s.images).sum();
    let last = p.shards.values().map(|s| s.finished_ms).max().or(x.finished_ms).unwrap_or(now_ms);
    let secs = last.saturating_sub(x.started_ms).max(1) as f64 / 1e3;
    let mut lines = vec![
        format!(
            "extraction {}: {}, {} of {} shards ({} of {} images, {} features each) on {} workers",
            x.job,
            status_word(x.status),
            p.shards.len(),
            x.shards,
            images,
            x.images,
            x.dim,
            x.workers
        ),
        format!("{:.1} images/s over {secs:.1} s", images as f64 / secs),
    ];
    let mut per_worker: BTreeMap<usize, (u64, usize, usize)> = BTreeMap::new();
    for s in p.shards.values() {
        let e = per_worker.entry(s.workerno).or_default();
        e.0 += s.compute_ms;
        e.1 += 1;
        e.2 += usize::from(s.stolen);
    }
    for (w, (ms, shards, stolen)) in per_worker {
        lines.push(format!(
            "worker {w:>3}: {shards} shard(s) ({stolen} taken from others), {:.1} s of VGG19 compute",
            ms as f64 / 1e3
        ));
    }
    match &x.cache {
        Some(c) => lines.push(format!("cache: {c}")),
        None => lines.push("cache: not merged yet".into()),
    }
    Some(lines)
}

/// An ingest job's state from its record: objects and bytes copied of the
/// total, where from and to, invocations, and why it failed. `None` when
/// `p` holds no ingest record.
pub fn ingest_lines(p: &Progress) -> Option<Vec<String>> {
    let r = p.ingest.as_ref()?;
    let mb = |b: u64| b as f64 / 1e6;
    let percent = if r.bytes == 0 { 100.0 } else { r.bytes_done as f64 * 100.0 / r.bytes as f64 };
    let dest = if r.dest.is_empty() { "the storage root".to_string() } else { format!("{}/", r.dest) };
    let mut lines = vec![
        format!(
            "ingest {}: {}, {} of {} objects, {:.1} of {:.1} MB ({percent:.0}%)",
            r.job,
            status_word(r.status),
            r.objects_done,
            r.objects,
            mb(r.bytes_done),
            mb(r.bytes)
        ),
        format!("s3://{}/{} → {dest}, {} copy invocation(s)", r.bucket, r.prefix, r.invocations),
    ];
    if let Some(why) = &r.reason {
        lines.push(format!("failed: {why}"));
    }
    Some(lines)
}
