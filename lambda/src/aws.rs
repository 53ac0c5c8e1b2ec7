//! The AWS side of the traits: workers invoked through the Lambda `Invoke`
//! API, progress kept in DynamoDB. Built with the `aws` feature (default).
//!
//! # DynamoDB table
//!
//! Partition key `job` (S), sort key `rec` (S), on-demand. Items:
//!
//! | `rec` | attributes | written with |
//! |---|---|---|
//! | `job` | `data` (the [`JobRecord`] as JSON: counts, class names, last evaluation, why it ended), `status` (`running`, `finished`, `stopped`, or `failed`: diverged, `data.reason` says what to change) | `PutItem` (replaces) |
//! | `round#000012` | `data` ([`RoundRecord`]) | `PutItem` if `attribute_not_exists(rec)` |
//! | `worker#000012#0003` | `data` ([`WorkerRecord`]) | `PutItem` if `attribute_not_exists(rec)` |
//! | `done#000012` | `workers` (NS) | `UpdateItem ADD workers :w`: idempotent under retries |
//! | `claim#combine#12` | `owner` (S) | `PutItem` if `attribute_not_exists(rec)`: the combine trigger's second guard |
//!
//! Reads are strongly consistent (`ConsistentRead`), so a claim's loser sees the winner.

use std::collections::BTreeSet;
use std::path::PathBuf;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use aws_smithy_types::error::display::DisplayErrorContext;

use crate::error::{ProtocolError, Result};
use crate::event::{Event, JobId};
use crate::layout::Claim;
use crate::progress::{JobRecord, Progress, ProgressStore, RoundRecord, WorkerRecord};
use crate::services::Invoker;

/// Invokes this function (or any named one) asynchronously: `InvocationType::Event`.
#[derive(Clone, Debug)]
pub struct LambdaInvoker {
    client: aws_sdk_lambda::Client,
    function: String,
}

impl LambdaInvoker {
    /// An invoker of `function` (name or ARN).
    pub fn new(client: aws_sdk_lambda::Client, function: impl Into<String>) -> Self {
        LambdaInvoker { client, function: function.into() }
    }
}

/// Largest asynchronous invocation payload Lambda accepts (1 MB; ours are a few hundred bytes).
pub const MAX_ASYNC_PAYLOAD: usize = 1 << 20;

impl Invoker for LambdaInvoker {
    async fn invoke(&self, event: &Event) -> Result<()> {
        let payload = serde_json::to_vec(&event.to_json()).expect("JSON values serialise");
        if payload.len() > MAX_ASYNC_PAYLOAD {
            return Err(ProtocolError::Invoke(format!("payload of {} bytes exceeds 1 MB", payload.len())));
        }
        let out = self
            .client
            .invoke()
            .function_name(&self.function)
            .invocation_type(InvocationType::Event)
            .payload(Blob::new(payload))
            .send()
            .await
            .map_err(|e| ProtocolError::Invoke(format!("{}: {}", event.describe(), DisplayErrorContext(&e))))?;
        // Lambda answers 202 to an accepted Event invoke; `cargo lambda watch`
        // runs it synchronously and answers 200.
        match out.status_code() {
            200 | 202 => Ok(()),
            s => Err(ProtocolError::Invoke(format!("{}: status {s}", event.describe()))),
        }
    }
}

/// Progress in a DynamoDB table (see the module docs for the item layout).
#[derive(Clone, Debug)]
pub struct DynamoProgress {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn store_err(what: &str, e: impl std::error::Error) -> ProtocolError {
    ProtocolError::Progress(format!("{what}: {}", DisplayErrorContext(e)))
}

impl DynamoProgress {
    /// A store over `table`.
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        DynamoProgress { client, table: table.into() }
    }

    /// A store over `table` with the credentials and region of the
    /// environment (profile, `AWS_REGION`, …), at `endpoint` if given (an
    /// emulator), as a command-line client needs it.
    pub async fn from_env(table: impl Into<String>, endpoint: Option<&str>) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(url) = endpoint {
            loader = loader.endpoint_url(url);
        }
        let sdk = loader.load().await;
        DynamoProgress::new(aws_sdk_dynamodb::Client::new(&sdk), table)
    }

    /// Creates the table (on-demand) if it does not exist: for emulators and
    /// tests; on AWS the stack creates it.
    ///
    /// # Errors
    /// [`ProtocolError::Progress`] if DynamoDB refuses.
    pub async fn ensure_table(&self) -> Result<()> {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        };
        let exists = self.client.describe_table().table_name(&self.table).send().await.is_ok();
        if exists {
            return Ok(());
        }
        let attr = |n: &str| {
            AttributeDefinition::builder()
                .attribute_name(n)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("complete")
        };
        let key = |n: &str, t| KeySchemaElement::builder().attribute_name(n).key_type(t).build().expect("complete");
        self.client
            .create_table()
            .table_name(&self.table)
            .attribute_definitions(attr("job"))
            .attribute_definitions(attr("rec"))
            .key_schema(key("job", KeyType::Hash))
            .key_schema(key("rec", KeyType::Range))
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
            .map_err(|e| store_err("create table", e))?;
        Ok(())
    }

    /// Puts `data` at `(job, rec)`, only if absent when `conditional`; `true` if written.
    async fn put(&self, job: &JobId, rec: &str, attrs: Vec<(&str, AttributeValue)>, conditional: bool) -> Result<bool> {
        let mut req = self.client.put_item().table_name(&self.table).item("job", s(job.as_str())).item("rec", s(rec));
        for (k, v) in attrs {
            req = req.item(k, v);
        }
        if conditional {
            req = req.condition_expression("attribute_not_exists(rec)");
        }
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => Ok(false),
            Err(e) => Err(store_err(&format!("put {rec}"), e)),
        }
    }

    async fn put_json(&self, job: &JobId, rec: &str, value: &impl serde::Serialize, conditional: bool) -> Result<bool> {
        let data = serde_json::to_string(value).map_err(|e| ProtocolError::Progress(e.to_string()))?;
        self.put(job, rec, vec![("data", s(data))], conditional).await
    }
}

fn data<T: for<'de> serde::Deserialize<'de>>(
    rec: &str,
    item: &std::collections::HashMap<String, AttributeValue>,
) -> Result<T> {
    let text = item
        .get("data")
        .and_then(|v| v.as_s().ok())
        .ok_or_else(|| ProtocolError::Progress(format!("{rec}: no data")))?;
    serde_json::from_str(text).map_err(|e| ProtocolError::Progress(format!("{rec}: malformed record: {e}")))
}

impl ProgressStore for DynamoProgress {
    async fn put_job(&self, job: &JobId, record: &JobRecord) -> Result<()> {
        let data = serde_json::to_string(record).map_err(|e| ProtocolError::Progress(e.to_string()))?;
        let status = serde_json::to_value(record.status).expect("serialisable");
        let status = status.as_str().unwrap_or("running").to_string();
        self.put(job, "job", vec![("data", s(data)), ("status", s(status))], false).await.map(|_| ())
    }

    async fn put_round(&self, job: &JobId, record: &RoundRecord) -> Result<bool> {
        self.put_json(job, &format!("round#{:06}", record.round), record, true).await
    }

    async fn put_worker(&self, job: &JobId, record: &WorkerRecord) -> Result<bool> {
        self.put_json(job, &format!("worker#{:06}#{:04}", record.round, record.workerno), record, true).await
    }

    async fn add_done(&self, job: &JobId, round: u64, worker: usize) -> Result<usize> {
        let rec = format!("done#{round:06}");
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("job", s(job.as_str()))
            .key("rec", s(&rec))
            .update_expression("ADD workers :w")
            .expression_attribute_values(":w", AttributeValue::Ns(vec![worker.to_string()]))
            // ALL_NEW, not UPDATED_NEW: an ADD that changes nothing (a retry) may
            // report no updated attribute (moto does), and the set is needed either way.
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| store_err(&format!("add to {rec}"), e))?;
        let set = out.attributes().and_then(|a| a.get("workers")).and_then(|v| v.as_ns().ok());
        Ok(set.map_or(0, |s| s.len()))
    }

    async fn claim(&self, job: &JobId, key: &str, owner: &str) -> Result<Claim> {
        let rec = format!("claim#{key}");
        if self.put(job, &rec, vec![("owner", s(owner))], true).await? {
            return Ok(Claim::Won);
        }
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("job", s(job.as_str()))
            .key("rec", s(&rec))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_err(&format!("get {rec}"), e))?;
        let owner = out.item().and_then(|i| i.get("owner")).and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
        Ok(Claim::Held(owner))
    }

    async fn load(&self, job: &JobId) -> Result<Progress> {
        let mut p = Progress::default();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("job = :j")
                .expression_attribute_values(":j", s(job.as_str()))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| store_err("query", e))?;
            for item in out.items() {
                let Some(rec) = item.get("rec").and_then(|v| v.as_s().ok()) else { continue };
                if rec == "job" {
                    p.job = Some(data(rec, item)?);
                } else if rec.starts_with("round#") {
                    let r: RoundRecord = data(rec, item)?;
                    p.rounds.insert(r.round, r);
                } else if rec.starts_with("worker#") {
                    let w: WorkerRecord = data(rec, item)?;
                    p.workers.insert((w.round, w.workerno), w);
                } else if let Some(k) = rec.strip_prefix("done#") {
                    let k: u64 = k.parse().map_err(|_| ProtocolError::Progress(format!("{rec}: bad round")))?;
                    let set: BTreeSet<usize> = item
                        .get("workers")
                        .and_then(|v| v.as_ns().ok())
                        .map(|ns| ns.iter().filter_map(|n| n.parse().ok()).collect())
                        .unwrap_or_default();
                    p.done.insert(k, set);
                }
            }
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        Ok(p)
    }
}

/// Either progress store: DynamoDB when the function is given a table, else
/// the files in the job folder on EFS.
#[derive(Clone, Debug)]
pub enum AnyProgress {
    Local(crate::progress::LocalProgress),
    Dynamo(DynamoProgress),
}

impl ProgressStore for AnyProgress {
    async fn put_job(&self, job: &JobId, record: &JobRecord) -> Result<()> {
        match self {
            AnyProgress::Local(p) => p.put_job(job, record).await,
            AnyProgress::Dynamo(p) => p.put_job(job, record).await,
        }
    }
    async fn put_round(&self, job: &JobId, record: &RoundRecord) -> Result<bool> {
        match self {
            AnyProgress::Local(p) => p.put_round(job, record).await,
            AnyProgress::Dynamo(p) => p.put_round(job, record).await,
        }
    }
    async fn put_worker(&self, job: &JobId, record: &WorkerRecord) -> Result<bool> {
        match self {
            AnyProgress::Local(p) => p.put_worker(job, record).await,
            AnyProgress::Dynamo(p) => p.put_worker(job, record).await,
        }
    }
    async fn add_done(&self, job: &JobId, round: u64, worker: usize) -> Result<usize> {
        match self {
            AnyProgress::Local(p) => p.add_done(job, round, worker).await,
            AnyProgress::Dynamo(p) => p.add_done(job, round, worker).await,
        }
    }
    async fn claim(&self, job: &JobId, key: &str, owner: &str) -> Result<Claim> {
        match self {
            AnyProgress::Local(p) => p.claim(job, key, owner).await,
            AnyProgress::Dynamo(p) => p.claim(job, key, owner).await,
        }
    }
    async fn load(&self, job: &JobId) -> Result<Progress> {
        match self {
            AnyProgress::Local(p) => p.load(job).await,
            AnyProgress::Dynamo(p) => p.load(job).await,
        }
    }
}

/// The function's configuration, from its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionEnv {
    /// `LML_ROOT`: the storage root, where EFS is mounted (default `/mnt/lml`).
    pub root: PathBuf,
    /// `LML_TABLE`: the DynamoDB progress table; progress files on EFS if unset.
    pub table: Option<String>,
    /// `LML_FUNCTION`, else `AWS_LAMBDA_FUNCTION_NAME` (set by Lambda): whom workers invoke.
    pub function: String,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` (set by Lambda), in MB: sets the compute threads.
    pub memory_mb: u32,
}

/// Where EFS is mounted when `LML_ROOT` is not set (the stack's access point mount).
pub const DEFAULT_ROOT: &str = "/mnt/lml";

impl FunctionEnv {
    /// Reads the configuration through `var` (e.g. `|k| std::env::var(k).ok()`).
    ///
    /// # Errors
    /// [`ProtocolError::BadSpec`] naming the variable that is missing or malformed.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let function = var("LML_FUNCTION").or_else(|| var("AWS_LAMBDA_FUNCTION_NAME")).ok_or_else(|| {
            ProtocolError::spec("AWS_LAMBDA_FUNCTION_NAME", "unset: not running on Lambda? set LML_FUNCTION")
        })?;
        let memory_mb = match var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") {
            None => 1769,
            Some(m) => m.trim().parse().map_err(|_| {
                ProtocolError::spec("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", format!("{m:?} is not a number of MB"))
            })?,
        };
        let table = var("LML_TABLE").filter(|t| !t.is_empty());
        let root = PathBuf::from(var("LML_ROOT").unwrap_or_else(|| DEFAULT_ROOT.into()));
        Ok(FunctionEnv { root, table, function, memory_mb })
    }
}

/// What the function tells Lambda about one invocation: an error only when
/// a retry can help (Lambda retries a failed asynchronous event twice);
/// otherwise a result, with the error inside when the event was bad.
///
/// # Errors
/// The handler's error when [`ProtocolError::is_retryable`].
pub async fn serve<I: Invoker, P: ProgressStore, C: crate::services::Clock>(
    svc: &crate::services::Services<I, P, C>,
    payload: &serde_json::Value,
    inv: &crate::services::Invocation,
) -> Result<serde_json::Value> {
    match crate::roles::handle(svc, payload, inv).await {
        Ok(outcome) => Ok(serde_json::json!({"ok": format!("{outcome:?}")})),
        Err(e) if e.is_retryable() => Err(e),
        Err(e) => Ok(serde_json::json!({"error": e.to_string(), "retryable": false})),
    }
}

/// Local stand-ins for AWS services, for tests and trying things out.
pub mod emulator {
    use std::net::TcpListener;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::DynamoProgress;

    /// A `moto_server` on a free port, killed on drop.
    pub struct Moto {
        child: Child,
        /// `http://127.0.0.1:PORT`.
        pub url: String,
    }

    impl Moto {
        /// Starts `moto_server` on a free port of 127.0.0.1 and waits until it listens.
        ///
        /// The server answers one request at a time: moto applies an
        /// `UpdateItem` as read, modify, write, so concurrent `ADD`s to one
        /// set lose elements when its threaded server (the `moto_server`
        /// default) interleaves them (measured: 5 of 320 lost, 16 clients at
        /// once), while DynamoDB applies each update atomically. Serialising
        /// the requests gives the emulator DynamoDB's semantics.
        ///
        /// # Panics
        /// If `moto[server]` (PyPI) is not installed or does not listen within 30 s.
        pub fn start() -> Moto {
            let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free local port").port();
            let serve = format!(
                "import moto.server as m; r = m.run_simple; \
                 m.run_simple = lambda *a, **k: r(*a, **dict(k, threaded=False)); \
                 m.main(['-H', '127.0.0.1', '-p', '{port}'])"
            );
            let mut child = Command::new("python3")
                .args(["-c", &serve])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start python3 for moto ({e})"));
            let t = Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("moto exited ({status}): pip install 'moto[server]' (.ci/run does)");
                }
                assert!(t.elapsed() < Duration::from_secs(30), "moto did not listen on {port} within 30 s");
                std::thread::sleep(Duration::from_millis(100));
            }
            Moto { child, url: format!("http://127.0.0.1:{port}") }
        }

        /// A DynamoDB store on this emulator (test credentials, region us-east-1).
        pub fn store(&self, table: &str) -> DynamoProgress {
            use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
            let conf = aws_sdk_dynamodb::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .credentials_provider(Credentials::new("test", "test", None, None, "test"))
                .endpoint_url(&self.url)
                .build();
            DynamoProgress::new(aws_sdk_dynamodb::Client::from_conf(conf), table)
        }
    }

    impl Drop for Moto {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn function_env_reads_lambdas_variables_with_defaults() {
        let env = FunctionEnv::from_vars(vars(&[
            ("AWS_LAMBDA_FUNCTION_NAME", "lml"),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "8192"),
        ]))
        .unwrap();
        assert_eq!(
            env,
            FunctionEnv { root: DEFAULT_ROOT.into(), table: None, function: "lml".into(), memory_mb: 8192 }
        );
        let env = FunctionEnv::from_vars(vars(&[
            ("AWS_LAMBDA_FUNCTION_NAME", "lml"),
            ("LML_FUNCTION", "other"),
            ("LML_TABLE", "t"),
            ("LML_ROOT", "/mnt/x"),
        ]))
        .unwrap();
        assert_eq!((env.function.as_str(), env.table.as_deref(), env.memory_mb), ("other", Some("t"), 1769));
        let err = FunctionEnv::from_vars(vars(&[])).unwrap_err();
        assert!(err.to_string().contains("AWS_LAMBDA_FUNCTION_NAME"), "{err}");
        let err = FunctionEnv::from_vars(vars(&[
            ("AWS_LAMBDA_FUNCTION_NAME", "f"),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "lots"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("\"lots\""), "{err}");
    }

    /// Bad events are answered (Lambda must not retry them); failures a
    /// retry can cure are returned as errors (Lambda retries them).
    #[tokio::test]
    async fn only_retryable_failures_are_errors_to_lambda() {
        let dir = tempfile::tempdir().unwrap();
        let svc = crate::services::Services::new(
            dir.path(),
            crate::services::RecordingInvoker::default(),
            crate::progress::LocalProgress::new(dir.path()),
            crate::services::SystemClock,
            1,
        );
        let inv = crate::services::Invocation::default();
        let bad = serve(&svc, &serde_json::json!({"workerno": 5, "workers": 2}), &inv).await.unwrap();
        assert_eq!(bad["retryable"], false);
        assert!(bad["error"].as_str().unwrap().contains("workerno"));
        // A job folder that cannot be created: I/O, retryable.
        std::fs::write(dir.path().join("jobs"), b"not a directory").unwrap();
        std::fs::create_dir_all(dir.path().join("features")).unwrap();
        let x = ndarray::Array2::<f32>::zeros((4, 2));
        let y = ndarray::Array1::<u32>::from(vec![0, 1, 0, 1]);
        lml_kernel::npy::write_npy_atomic(dir.path().join("features/train_features.npy"), &x).unwrap();
        lml_kernel::npy::write_npy_atomic(dir.path().join("features/train_y.npy"), &y).unwrap();
        let err = serve(&svc, &serde_json::json!({"start": true, "workers": 2}), &inv).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
    }
}
