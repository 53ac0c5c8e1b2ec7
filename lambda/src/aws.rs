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
//! | `extract` | `data` (an extraction job's [`ExtractRecord`]: images, shards, where the cache is), `status` | `PutItem` (replaces) |
//! | `shard#000003` | `data` ([`ShardRecord`]: images, worker, compute time, continuations) | `PutItem` if `attribute_not_exists(rec)` |
//! | `claim#merge` | `owner` (S) | `PutItem` if `attribute_not_exists(rec)`: the extraction merge trigger's second guard |
//! | `ingest` | `data` (an ingest job's [`IngestRecord`]: objects and bytes copied of how many), `status` | `PutItem` (replaces) |
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
use crate::objects::{BoxFuture, ObjectEntry, ObjectHead, ObjectStore, Sink};
use crate::progress::{
    ExtractRecord, IngestRecord, JobRecord, Progress, ProgressStore, RoundRecord, ShardRecord, WorkerRecord,
};
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
    crate::json::from_slice(text.as_bytes())
        .map_err(|e| ProtocolError::Progress(format!("{rec}: malformed record: {e}")))
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

    async fn put_extract(&self, job: &JobId, record: &ExtractRecord) -> Result<()> {
        let data = serde_json::to_string(record).map_err(|e| ProtocolError::Progress(e.to_string()))?;
        let status = serde_json::to_value(record.status).expect("serialisable");
        let status = status.as_str().unwrap_or("running").to_string();
        self.put(job, "extract", vec![("data", s(data)), ("status", s(status))], false).await.map(|_| ())
    }

    async fn put_shard(&self, job: &JobId, record: &ShardRecord) -> Result<bool> {
        self.put_json(job, &format!("shard#{:06}", record.shard), record, true).await
    }

    async fn put_ingest(&self, job: &JobId, record: &IngestRecord) -> Result<()> {
        let data = serde_json::to_string(record).map_err(|e| ProtocolError::Progress(e.to_string()))?;
        let status = serde_json::to_value(record.status).expect("serialisable");
        let status = status.as_str().unwrap_or("running").to_string();
        self.put(job, "ingest", vec![("data", s(data)), ("status", s(status))], false).await.map(|_| ())
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
                } else if rec == "extract" {
                    p.extract = Some(data(rec, item)?);
                } else if rec == "ingest" {
                    p.ingest = Some(data(rec, item)?);
                } else if rec.starts_with("shard#") {
                    let r: ShardRecord = data(rec, item)?;
                    p.shards.insert(r.shard, r);
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
    async fn put_extract(&self, job: &JobId, record: &ExtractRecord) -> Result<()> {
        match self {
            AnyProgress::Local(p) => p.put_extract(job, record).await,
            AnyProgress::Dynamo(p) => p.put_extract(job, record).await,
        }
    }
    async fn put_shard(&self, job: &JobId, record: &ShardRecord) -> Result<bool> {
        match self {
            AnyProgress::Local(p) => p.put_shard(job, record).await,
            AnyProgress::Dynamo(p) => p.put_shard(job, record).await,
        }
    }
    async fn put_ingest(&self, job: &JobId, record: &IngestRecord) -> Result<()> {
        match self {
            AnyProgress::Local(p) => p.put_ingest(job, record).await,
            AnyProgress::Dynamo(p) => p.put_ingest(job, record).await,
        }
    }
}

/// S3 as an ingest job's object store ([`ObjectStore`]): listings, `HEAD`s
/// (with checksums and part numbers) and ranged `GET`s, each conditional on
/// the listed ETag, the body streamed chunk by chunk into the sink.
#[derive(Clone, Debug)]
pub struct S3Objects {
    client: aws_sdk_s3::Client,
}

impl S3Objects {
    pub fn new(client: aws_sdk_s3::Client) -> Self {
        S3Objects { client }
    }
}

/// An S3 request's failure: refused (the object is gone, changed, out of
/// range, or access is denied: a 4xx other than timeout and throttling) or
/// retryable (5xx, throttling, no response at all).
fn s3_err<E: std::error::Error + Send + Sync + 'static>(
    bucket: &str,
    key: &str,
    what: &str,
    e: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> ProtocolError {
    let status = e.raw_response().map(|r| r.status().as_u16());
    let retryable = !matches!(status, Some(400..=499)) || matches!(status, Some(408 | 429));
    let status = status.map_or(String::new(), |s| format!("{s} "));
    ProtocolError::Object {
        bucket: bucket.into(),
        key: key.into(),
        reason: format!("{what}: {status}{}", DisplayErrorContext(&e)),
        retryable,
    }
}

impl ObjectStore for S3Objects {
    fn list<'a>(&'a self, bucket: &'a str, prefix: &'a str) -> BoxFuture<'a, Result<Vec<ObjectEntry>>> {
        Box::pin(async move {
            let mut out = Vec::new();
            let mut token = None;
            loop {
                let page = self
                    .client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(prefix)
                    .set_continuation_token(token)
                    .send()
                    .await
                    .map_err(|e| s3_err(bucket, prefix, "list", e))?;
                for o in page.contents() {
                    let key = o.key().unwrap_or_default().to_string();
                    let size = o.size().and_then(|s| u64::try_from(s).ok()).ok_or_else(|| ProtocolError::Object {
                        bucket: bucket.into(),
                        key: key.clone(),
                        reason: format!("listed without a valid size ({:?})", o.size()),
                        retryable: false,
                    })?;
                    out.push(ObjectEntry { key, size, etag: o.e_tag().unwrap_or_default().to_string() });
                }
                match page.next_continuation_token() {
                    Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                    _ => break,
                }
            }
            Ok(out)
        })
    }

    fn head<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        etag: &'a str,
        part: Option<u32>,
    ) -> BoxFuture<'a, Result<ObjectHead>> {
        Box::pin(async move {
            use aws_sdk_s3::types::{ChecksumMode, ServerSideEncryption};
            let part_number = part.map(|p| i32::try_from(p).unwrap_or(i32::MAX));
            // A part's HEAD is not made conditional: it only gives the
            // part's size, and every read after it is (moto compares
            // If-Match with the part's own ETag, where S3 uses the object's).
            let h = self
                .client
                .head_object()
                .bucket(bucket)
                .key(key)
                .set_if_match(part.is_none().then(|| etag.to_string()))
                .set_part_number(part_number)
                .checksum_mode(ChecksumMode::Enabled)
                .send()
                .await
                .map_err(|e| s3_err(bucket, key, "HEAD", e))?;
            let size = h.content_length().and_then(|s| u64::try_from(s).ok()).ok_or_else(|| ProtocolError::Object {
                bucket: bucket.into(),
                key: key.into(),
                reason: format!("HEAD gave no valid length ({:?})", h.content_length()),
                retryable: false,
            })?;
            let kms = matches!(
                h.server_side_encryption(),
                Some(ServerSideEncryption::AwsKms | ServerSideEncryption::AwsKmsDsse)
            );
            let etag_not_md5 = kms || h.sse_customer_algorithm().is_some();
            // A composite checksum (of the parts' checksums) ends in `-N`.
            let full = |v: Option<&str>| v.filter(|v| !v.contains('-')).map(str::to_string);
            let checksum = [
                ("sha256", full(h.checksum_sha256())),
                ("crc64nvme", full(h.checksum_crc64_nvme())),
                ("crc32c", full(h.checksum_crc32_c())),
                ("crc32", full(h.checksum_crc32())),
                ("sha1", full(h.checksum_sha1())),
            ]
            .into_iter()
            .find_map(|(a, v)| v.map(|v| (a.to_string(), v)));
            Ok(ObjectHead { size, etag: h.e_tag().unwrap_or_default().to_string(), etag_not_md5, checksum })
        })
    }

    fn read<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        etag: &'a str,
        range: std::ops::Range<u64>,
        sink: &'a mut Sink<'a>,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            if range.is_empty() {
                return Ok(0);
            }
            let out = self
                .client
                .get_object()
                .bucket(bucket)
                .key(key)
                .if_match(etag)
                .range(format!("bytes={}-{}", range.start, range.end - 1))
                .send()
                .await
                .map_err(|e| s3_err(bucket, key, "GET", e))?;
            let want = range.end - range.start;
            if out.content_length().and_then(|n| u64::try_from(n).ok()) != Some(want) {
                return Err(ProtocolError::Object {
                    bucket: bucket.into(),
                    key: key.into(),
                    reason: format!("GET of {want} bytes answered {:?}", out.content_length()),
                    retryable: true,
                });
            }
            let mut body = out.body;
            let mut sent = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| ProtocolError::Object {
                    bucket: bucket.into(),
                    key: key.into(),
                    reason: format!("GET body after {sent} bytes: {}", DisplayErrorContext(&e)),
                    retryable: true,
                })?;
                sent += chunk.len() as u64;
                if !sink(&chunk)? {
                    break;
                }
            }
            Ok(sent)
        })
    }
}

/// The deployed function, as a command-line client calls it: events sent
/// synchronously (`RequestResponse`), the function's answer returned.
#[derive(Clone, Debug)]
pub struct FunctionClient {
    client: aws_sdk_lambda::Client,
    function: String,
}

impl FunctionClient {
    /// A client of `function` (name or ARN) with the region and credentials
    /// of the environment (profile, `AWS_REGION`, …), at `endpoint` if given
    /// (else the SDK's own: `AWS_ENDPOINT_URL_LAMBDA`, `AWS_ENDPOINT_URL`,
    /// the profile's `endpoint_url`, or AWS's).
    pub async fn from_env(function: impl Into<String>, endpoint: Option<&str>) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(url) = endpoint {
            loader = loader.endpoint_url(url);
        }
        let sdk = loader.load().await;
        FunctionClient { client: aws_sdk_lambda::Client::new(&sdk), function: function.into() }
    }

    /// Sends `event` and waits for the function's answer: its result, or
    /// the error it reports (`{"error": ...}` for a bad event, a function
    /// error for a failure a retry may cure).
    ///
    /// # Errors
    /// [`ProtocolError::Invoke`] naming the event: the call failed, or the
    /// function answered with an error (its message inside).
    pub async fn call(&self, event: &Event) -> Result<serde_json::Value> {
        let payload = serde_json::to_vec(&event.to_json()).expect("JSON values serialise");
        let out = self
            .client
            .invoke()
            .function_name(&self.function)
            .invocation_type(InvocationType::RequestResponse)
            .payload(Blob::new(payload))
            .send()
            .await
            .map_err(|e| ProtocolError::Invoke(format!("{}: {}", event.describe(), DisplayErrorContext(&e))))?;
        let body = out.payload().map(|b| b.as_ref().to_vec()).unwrap_or_default();
        let answer: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned()));
        if let Some(kind) = out.function_error() {
            let msg = answer.get("errorMessage").and_then(|m| m.as_str()).map_or(answer.to_string(), str::to_string);
            return Err(ProtocolError::Invoke(format!("{}: function error ({kind}): {msg}", event.describe())));
        }
        if let Some(e) = answer.get("error") {
            let msg = e.as_str().map_or(e.to_string(), str::to_string);
            return Err(ProtocolError::Invoke(format!("{}: {msg}", event.describe())));
        }
        Ok(answer)
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
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::DynamoProgress;

    /// A port of 127.0.0.1 free now.
    pub fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free local port").port()
    }

    fn wait_listening(port: u16, child: &mut Child, what: &str, limit: Duration) {
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{what} exited ({status}) before listening on {port}");
            }
            assert!(t.elapsed() < limit, "{what} did not listen on {port} within {limit:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

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
            Moto::start_with(&[])
        }

        /// As [`start`](Self::start), with environment variables for moto
        /// (e.g. `S3_UPLOAD_PART_MIN_SIZE`, so that tests can upload small parts).
        ///
        /// # Panics
        /// As [`start`](Self::start).
        pub fn start_with(env: &[(&str, &str)]) -> Moto {
            let port = free_port();
            let serve = format!(
                "import moto.server as m; r = m.run_simple; \
                 m.run_simple = lambda *a, **k: r(*a, **dict(k, threaded=False)); \
                 m.main(['-H', '127.0.0.1', '-p', '{port}'])"
            );
            let mut child = Command::new("python3")
                .args(["-c", &serve])
                .envs(env.iter().copied())
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

    /// `cargo lambda watch` serving the `lml-lambda` binary on a port of
    /// 127.0.0.1 (the Lambda runtime and Invoke APIs), killed on drop.
    pub struct Watch {
        child: Child,
        pub port: u16,
    }

    impl Watch {
        /// Builds the function (dev profile) and serves it on `port` with `env`
        /// (`KEY=VALUE` each). The build shares the workspace's target
        /// directory (`CARGO_TARGET_DIR` if set): `-p lml-lambda` alone
        /// resolves ~40 crates' features differently from the workspace build
        /// (serde, rustls, the AWS SDK above them), and cargo keeps both sets
        /// side by side without invalidating either; the other ~190 of its
        /// ~230 crates are reused. `.ci/run` builds it in its build step, so this build is then
        /// a no-op. Built here first, so that watch (which would build on the
        /// first invoke) answers at once.
        ///
        /// # Panics
        /// If the build fails, or `cargo lambda` (PyPI `cargo-lambda`) is
        /// missing or does not listen within 120 s.
        pub fn start(workspace: &Path, port: u16, env: &[String]) -> Watch {
            let built = Command::new("cargo")
                .current_dir(workspace)
                .args(["build", "-p", "lml-lambda", "--bin", "lml-lambda"])
                .status()
                .expect("cargo runs");
            assert!(built.success(), "building the function failed");
            let mut cmd = Command::new("cargo");
            cmd.current_dir(workspace)
                .args(["lambda", "watch", "--quiet", "--ignore-changes", "-p", "lml-lambda", "--bin", "lml-lambda"])
                .args(["--invoke-address", "127.0.0.1", "--invoke-port", &port.to_string(), "--concurrency", "16"]);
            for e in env {
                cmd.args(["--env-var", e]);
            }
            let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap_or_else(|e| {
                panic!("cannot run `cargo lambda watch` ({e}): pip install cargo-lambda (.ci/run does)")
            });
            wait_listening(port, &mut child, "cargo lambda watch", Duration::from_secs(120));
            Watch { child, port }
        }
    }

    impl Drop for Watch {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Counts of the asynchronous invokes [`AsyncInvokes`] handled.
    #[derive(Debug, Default)]
    pub struct InvokeStats {
        pub accepted: AtomicUsize,
        pub delivered: AtomicUsize,
        pub retried: AtomicUsize,
        pub failed: AtomicUsize,
    }

    impl InvokeStats {
        /// `(accepted, delivered, retried, failed)`.
        pub fn counts(&self) -> (usize, usize, usize, usize) {
            let l = |a: &AtomicUsize| a.load(Ordering::SeqCst);
            (l(&self.accepted), l(&self.delivered), l(&self.retried), l(&self.failed))
        }
    }

    /// Lambda's asynchronous invocation in front of `cargo lambda watch`,
    /// which runs `Event` invokes synchronously and answers a handler error
    /// with 500: an `Event` invoke is answered 202 at once and delivered in
    /// the background, a failed delivery retried twice, as Lambda does;
    /// other invokes are passed through (their answer and `x-amz-*` headers
    /// returned). Runs until the process ends.
    pub struct AsyncInvokes {
        /// `http://127.0.0.1:PORT`: the Lambda endpoint to give clients.
        pub url: String,
        pub stats: Arc<InvokeStats>,
    }

    /// One HTTP/1.1 message: the first line, lower-cased headers, the body.
    struct Message {
        first: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Message {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
        }
    }

    /// Reads a message with a `Content-Length` or chunked body (or, for a
    /// response without either, a body to the end of the stream).
    fn read_message(r: &mut impl BufRead, response: bool) -> Option<Message> {
        let mut first = String::new();
        if r.read_line(&mut first).ok()? == 0 {
            return None;
        }
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).ok()?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (n, v) = h.split_once(':')?;
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let mut m = Message { first: first.trim_end().to_string(), headers, body: Vec::new() };
        if m.header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            loop {
                let mut size = String::new();
                r.read_line(&mut size).ok()?;
                let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
                let mut chunk = vec![0; n + 2];
                r.read_exact(&mut chunk).ok()?;
                if n == 0 {
                    break;
                }
                m.body.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(len) = m.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            m.body = vec![0; len];
            r.read_exact(&mut m.body).ok()?;
        } else if response {
            r.read_to_end(&mut m.body).ok()?;
        }
        Some(m)
    }

    /// POSTs `body` to `127.0.0.1:port` + `path` as a synchronous invoke.
    fn post(port: u16, path: &str, body: &[u8]) -> std::io::Result<Message> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
             X-Amz-Invocation-Type: RequestResponse\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        read_message(&mut BufReader::new(s), true).ok_or_else(|| std::io::Error::other("malformed response"))
    }

    fn status(m: &Message) -> u16 {
        m.first.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
    }

    impl AsyncInvokes {
        /// Starts the layer in front of watch at `127.0.0.1:watch_port`.
        pub fn start(watch_port: u16) -> AsyncInvokes {
            let listener = TcpListener::bind("127.0.0.1:0").expect("a free local port");
            let url = format!("http://{}", listener.local_addr().expect("bound"));
            let stats = Arc::new(InvokeStats::default());
            let st = stats.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { return };
                    let stats = st.clone();
                    std::thread::spawn(move || serve_connection(conn, watch_port, &stats));
                }
            });
            AsyncInvokes { url, stats }
        }
    }

    fn serve_connection(conn: TcpStream, port: u16, stats: &Arc<InvokeStats>) {
        let Ok(mut w) = conn.try_clone() else { return };
        let mut r = BufReader::new(conn);
        while let Some(req) = read_message(&mut r, false) {
            let path = req.first.split_whitespace().nth(1).unwrap_or("/").to_string();
            if req.header("x-amz-invocation-type") == Some("Event") {
                stats.accepted.fetch_add(1, Ordering::SeqCst);
                let resp = "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nx-amzn-RequestId: async\r\n\r\n";
                if w.write_all(resp.as_bytes()).is_err() {
                    return;
                }
                let stats = stats.clone();
                std::thread::spawn(move || {
                    // Lambda: the first attempt plus two retries of a failed event.
                    for attempt in 0..3 {
                        match post(port, &path, &req.body) {
                            Ok(m) if status(&m) == 200 && m.header("x-amz-function-error").is_none() => {
                                stats.delivered.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            _ if attempt < 2 => {
                                stats.retried.fetch_add(1, Ordering::SeqCst);
                                std::thread::sleep(Duration::from_millis(200));
                            }
                            _ => {
                                stats.failed.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                });
            } else {
                let (code, headers, body) = match post(port, &path, &req.body) {
                    Ok(m) => {
                        let keep: Vec<(String, String)> = m
                            .headers
                            .iter()
                            .filter(|(n, _)| n.starts_with("x-amz") || n == "content-type")
                            .cloned()
                            .collect();
                        (status(&m), keep, m.body)
                    }
                    Err(_) => (502, Vec::new(), Vec::new()),
                };
                let mut head = format!("HTTP/1.1 {code} X\r\nContent-Length: {}\r\n", body.len());
                for (n, v) in headers {
                    head.push_str(&format!("{n}: {v}\r\n"));
                }
                head.push_str("\r\n");
                if w.write_all(head.as_bytes()).is_err() || w.write_all(&body).is_err() {
                    return;
                }
            }
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
