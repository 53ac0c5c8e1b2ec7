//! What `lml train` and `lml status` print about a job: one line per
//! round, the class list, the summary.

use lml_lambda::progress::{JobStatus, Progress, RoundRecord};

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

/// The job's status, last round and held-out accuracy.
pub fn print_summary(p: &Progress) {
    let Some(job) = &p.job else {
        println!("no job record yet");
        return;
    };
    let status = match job.status {
        JobStatus::Running => "running",
        JobStatus::Finished => "finished",
        JobStatus::Stopped => "stopped",
        JobStatus::Failed => "failed",
    };
    let last = p.rounds.values().last();
    println!(
        "job {}: {status}{}, {} of {} rounds ({} workers, {} examples)",
        job.job,
        job.reason.as_deref().map_or(String::new(), |r| format!(" ({r})")),
        p.rounds.len(),
        job.total_rounds,
        job.workers,
        job.examples
    );
    if job.classes > 0 {
        println!("{}", classes_line(job.classes, &job.class_names));
    }
    if let Some(r) = last {
        println!("last round: training loss {:.4}, accuracy {:.3}", r.train.loss, r.train.accuracy);
    }
    match job.eval.or_else(|| p.rounds.values().rev().find_map(|r| r.eval)) {
        Some(e) => println!(
            "{} accuracy {:.3} (loss {:.4}) on {} held-out examples",
            if job.status == JobStatus::Running { "latest" } else { "final" },
            e.accuracy,
            e.loss,
            e.examples
        ),
        None => println!("no held-out evaluation (no test split)"),
    }
}
