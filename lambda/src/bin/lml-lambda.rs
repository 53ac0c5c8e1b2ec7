//! The AWS Lambda function: one binary serving every event kind (start,
//! worker, combine, resume, stop, as in the seed's paper; extract; ingest).
//!
//! Configuration comes from the environment ([`lml_lambda::aws::FunctionEnv`]);
//! SDK clients are built once per sandbox and shared by its invocations.
//! Errors a retry can cure are returned to Lambda (which retries an
//! asynchronous event twice); a bad event is logged and answered, not retried.

use std::sync::Arc;

use aws_config::retry::RetryConfig;
use aws_config::BehaviorVersion;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use lml_lambda::aws::{serve, AnyProgress, DynamoProgress, FunctionEnv, LambdaInvoker, S3Objects};
use lml_lambda::progress::LocalProgress;
use lml_lambda::services::{lambda_threads, Invocation, Services, SystemClock};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let env = FunctionEnv::from_vars(|k| std::env::var(k).ok())?;
    // Standard retries with backoff, 3 attempts: an invoke or a table write
    // that still fails is the invocation's failure, and Lambda's own retry
    // of the whole (idempotent) event takes over.
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .load()
        .await;
    let invoker = LambdaInvoker::new(aws_sdk_lambda::Client::new(&sdk), &env.function);
    let progress = match &env.table {
        Some(table) => AnyProgress::Dynamo(DynamoProgress::new(aws_sdk_dynamodb::Client::new(&sdk), table)),
        None => AnyProgress::Local(LocalProgress::new(&env.root)),
    };
    let objects = Arc::new(S3Objects::new(aws_sdk_s3::Client::new(&sdk)));
    let svc = Arc::new(
        Services::new(&env.root, invoker, progress, SystemClock, lambda_threads(env.memory_mb)).with_objects(objects),
    );
    tracing::info!(root = %env.root.display(), table = ?env.table, function = %env.function, memory_mb = env.memory_mb, "ready");
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let svc = svc.clone();
        async move {
            let inv =
                Invocation { request_id: event.context.request_id.clone(), deadline_ms: Some(event.context.deadline) };
            // Time left at the start, as the runtime reported it (logged: emulators send odd deadlines).
            let left = event.context.deadline as i64 - lml_lambda::services::Clock::now_ms(&SystemClock) as i64;
            let out = serve(&svc, &event.payload, &inv).await;
            match &out {
                Ok(v) if v.get("error").is_some() => {
                    tracing::error!(event = %event.payload, result = %v, deadline_in_ms = left, "rejected")
                }
                Ok(v) => tracing::info!(event = %event.payload, result = %v, deadline_in_ms = left, "done"),
                Err(e) => tracing::warn!(event = %event.payload, error = %e, deadline_in_ms = left, "failed; Lambda will retry"),
            }
            out.map_err(Error::from)
        }
    }))
    .await
}
