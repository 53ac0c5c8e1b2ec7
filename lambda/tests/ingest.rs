//! The ingest job against a real S3 emulator (`moto_server`, started here on
//! 127.0.0.1): objects uploaded in one part, in several parts (multipart
//! ETag), and KMS-encrypted with a SHA-256 checksum, copied through
//! [`S3Objects`] in small ranges under a time limit that forces a
//! continuation inside an object, and checked byte for byte.
#![cfg(feature = "aws")]

use std::ops::Range;
use std::sync::{Arc, Mutex};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use lml_lambda::aws::emulator::Moto;
use lml_lambda::aws::S3Objects;
use lml_lambda::event::JobId;
use lml_lambda::objects::{BoxFuture, ObjectEntry, ObjectHead, ObjectStore, Sink};
use lml_lambda::progress::{JobStatus, LocalProgress, ProgressStore};
use lml_lambda::services::{Invocation, RecordingInvoker, Services, TickClock};
use lml_lambda::{Outcome, Result};
use serde_json::json;

/// S3 with every ranged read and every chunk's size recorded.
struct Recorded {
    s3: S3Objects,
    reads: Mutex<Vec<Range<u64>>>,
    largest_chunk: Mutex<usize>,
}

impl ObjectStore for Recorded {
    fn list<'a>(&'a self, bucket: &'a str, prefix: &'a str) -> BoxFuture<'a, Result<Vec<ObjectEntry>>> {
        self.s3.list(bucket, prefix)
    }
    fn head<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        etag: &'a str,
        part: Option<u32>,
    ) -> BoxFuture<'a, Result<ObjectHead>> {
        self.s3.head(bucket, key, etag, part)
    }
    fn read<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        etag: &'a str,
        range: Range<u64>,
        sink: &'a mut Sink<'a>,
    ) -> BoxFuture<'a, Result<u64>> {
        self.reads.lock().unwrap().push(range.clone());
        Box::pin(async move {
            let mut inner = |b: &[u8]| {
                let mut l = self.largest_chunk.lock().unwrap();
                *l = (*l).max(b.len());
                sink(b)
            };
            self.s3.read(bucket, key, etag, range, &mut inner).await
        })
    }
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) ^ (i >> 9) as u8).collect()
}

fn client(moto: &Moto) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(&moto.url)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

async fn multipart(s3: &aws_sdk_s3::Client, key: &str, data: &[u8], part: usize) {
    let up = s3.create_multipart_upload().bucket("data").key(key).send().await.unwrap();
    let id = up.upload_id().unwrap();
    let mut parts = Vec::new();
    for (i, chunk) in data.chunks(part).enumerate() {
        let n = i as i32 + 1;
        let out = s3
            .upload_part()
            .bucket("data")
            .key(key)
            .upload_id(id)
            .part_number(n)
            .body(ByteStream::from(chunk.to_vec()))
            .send()
            .await
            .unwrap();
        parts.push(CompletedPart::builder().part_number(n).e_tag(out.e_tag().unwrap()).build());
    }
    // moto completes the upload but answers with a root element
    // (`CompleteMultipartUploadResponse`) the SDK refuses: the error is
    // ignored, and the caller checks the object's multipart ETag instead.
    let _ = s3
        .complete_multipart_upload()
        .bucket("data")
        .key(key)
        .upload_id(id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_is_copied_from_s3_in_ranges_across_continuations() {
    let moto = Moto::start_with(&[("S3_UPLOAD_PART_MIN_SIZE", "1024")]);
    let s3 = client(&moto);
    s3.create_bucket().bucket("data").send().await.unwrap();
    let (one, many, kms) = (bytes(300_000, 1), bytes(250_000, 2), bytes(70_000, 3));
    s3.put_object()
        .bucket("data")
        .key("lml/cifar10/train_x.npy")
        .body(ByteStream::from(one.clone()))
        .send()
        .await
        .unwrap();
    multipart(&s3, "lml/vgg19/conv.npy", &many, 64 * 1024).await;
    s3.put_object()
        .bucket("data")
        .key("lml/secret.bin")
        .server_side_encryption(ServerSideEncryption::AwsKms)
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .body(ByteStream::from(kms.clone()))
        .send()
        .await
        .unwrap();
    s3.put_object().bucket("data").key("elsewhere").body(ByteStream::from(vec![1, 2, 3])).send().await.unwrap();
    let etag = s3.head_object().bucket("data").key("lml/vgg19/conv.npy").send().await.unwrap();
    assert!(etag.e_tag().unwrap().ends_with("-4\""), "a 4-part ETag: {:?}", etag.e_tag());

    let root = tempfile::tempdir().unwrap();
    let store = Arc::new(Recorded {
        s3: S3Objects::new(s3.clone()),
        reads: Mutex::new(Vec::new()),
        largest_chunk: Mutex::new(0),
    });
    // Each clock reading advances 1 ms: an invocation has 10 ms and keeps 5
    // in reserve, so it stops after a range or two.
    let svc = Services::new(
        root.path(),
        RecordingInvoker::default(),
        LocalProgress::new(root.path()),
        TickClock::new(1_000_000, 1),
        1,
    )
    .with_objects(store.clone());
    let start = json!({"ingest": "start", "job": "data-1",
                       "spec": {"bucket": "data", "prefix": "lml/", "dest": "efs",
                                "range_bytes": 40000, "time_limit_ms": 10, "safety_ms": 5}});
    lml_lambda::handle(&svc, &start, &Invocation::default()).await.unwrap();
    let mut done = 0;
    let mut outcomes = Vec::new();
    while let Some(e) = svc.invoker.events().get(done).cloned() {
        done += 1;
        outcomes.push(lml_lambda::handle(&svc, &e.to_json(), &Invocation::default()).await.unwrap());
    }
    let total = (one.len() + many.len() + kms.len()) as u64;
    assert_eq!(outcomes.last(), Some(&Outcome::Ingested { objects: 3, bytes: total, stopped: false }));
    let continued = outcomes.iter().filter(|o| matches!(o, Outcome::IngestContinued { .. })).count();
    let at: Vec<usize> = outcomes
        .iter()
        .filter_map(|o| if let Outcome::IngestContinued { object, .. } = o { Some(*object) } else { None })
        .collect();
    assert!(at.windows(2).any(|w| w[0] == w[1]), "no object spans two continuations: {outcomes:?}");
    assert_eq!(std::fs::read(root.path().join("efs/cifar10/train_x.npy")).unwrap(), one);
    assert_eq!(std::fs::read(root.path().join("efs/vgg19/conv.npy")).unwrap(), many);
    assert_eq!(std::fs::read(root.path().join("efs/secret.bin")).unwrap(), kms);
    assert!(!root.path().join("efs/elsewhere").exists());
    let reads = store.reads.lock().unwrap().clone();
    assert!(reads.iter().all(|r| r.end - r.start <= 40000), "{reads:?}");
    let largest = *store.largest_chunk.lock().unwrap();
    assert!(largest <= 40000, "a chunk of {largest} bytes");
    let r = svc.progress.load(&JobId::new("data-1").unwrap()).await.unwrap().ingest.unwrap();
    assert_eq!((r.status, r.objects_done, r.bytes_done), (JobStatus::Finished, 3, total));
    assert_eq!(r.invocations as usize, continued + 1);
    println!("{} ranged reads, largest chunk {largest} bytes, {continued} continuations", reads.len());
}
