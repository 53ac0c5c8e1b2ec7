//! Where an ingest job reads from: a small trait over an object store
//! ([`ObjectStore`]: S3 on Lambda, [`crate::aws::S3Objects`]), S3's rules
//! for ETags and checksums, and an in-memory store that follows those rules
//! ([`MemoryObjects`]) with faults for tests.

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Mutex;

use md5::{Digest, Md5};

use crate::error::{ProtocolError, Result};
use crate::services::lock;

/// A boxed future, as the object store's methods return (the store is used
/// as a trait object, so that [`Services`] need not name its type).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Receives the bytes of a read in order; `Ok(false)` stops the read there.
pub type Sink<'a> = dyn FnMut(&[u8]) -> Result<bool> + Send + 'a;

/// One object of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectEntry {
    pub key: String,
    pub size: u64,
    /// As S3 gives it, quotes included.
    pub etag: String,
}

/// What a `HEAD` says about an object (or, given a part number, one part of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectHead {
    /// Bytes of the object, or of the part asked for.
    pub size: u64,
    pub etag: String,
    /// Whether the ETag is something other than an MD5 (server-side
    /// encryption with KMS keys or with customer keys).
    pub etag_not_md5: bool,
    /// A full-object checksum S3 keeps: the algorithm (`sha256`,
    /// `crc64nvme`, …) and its value in base64.
    pub checksum: Option<(String, String)>,
}

/// Read access to S3, or to a stand-in for tests: what an ingest job needs.
pub trait ObjectStore: Send + Sync + 'static {
    /// Every object under `prefix`, in key order.
    fn list<'a>(&'a self, bucket: &'a str, prefix: &'a str) -> BoxFuture<'a, Result<Vec<ObjectEntry>>>;
    /// `HEAD` of `key` only if its ETag is still `etag`; given `part`
    /// (counted from 1), of that upload part, whose size is what matters
    /// (the store may skip the condition there: the reads that follow are
    /// conditional).
    fn head<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        etag: &'a str,
        part: Option<u32>,
    ) -> BoxFuture<'a, Result<ObjectHead>>;
    /// Streams bytes `range` of `key` into `sink` (stopping early if the
    /// sink says so), only if its ETag is still `etag`; returns the bytes
    /// delivered.
    fn read<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        etag: &'a str,
        range: Range<u64>,
        sink: &'a mut Sink<'a>,
    ) -> BoxFuture<'a, Result<u64>>;
}

// ----- what S3 says of an object -------------------------------------------

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Standard base64 with padding (how S3 writes checksums).
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The ETag S3 gives an object of these upload parts (`parts` holds the
/// content's MD5 per part): the MD5 itself for one part, else the MD5 of
/// the concatenated MD5s and `-N`. Without quotes.
pub fn etag_of_parts(part_md5: &[[u8; 16]]) -> String {
    match part_md5 {
        [one] => hex(one),
        many => {
            let mut h = Md5::new();
            for d in many {
                h.update(d);
            }
            format!("{}-{}", hex(&h.finalize()), many.len())
        }
    }
}

/// The ETag without its quotes, lower-cased.
pub fn bare_etag(etag: &str) -> String {
    etag.trim().trim_matches('"').to_ascii_lowercase()
}

/// Upload parts the ETag says the object has: `Some(1)` for a plain MD5,
/// `Some(N)` for `md5-N`, `None` if it is neither.
pub fn etag_parts(etag: &str) -> Option<u32> {
    let e = bare_etag(etag);
    let (md5, n) = match e.split_once('-') {
        Some((md5, n)) => (md5, n.parse::<u32>().ok().filter(|&n| n >= 1)?),
        None => (e.as_str(), 1),
    };
    (md5.len() == 32 && md5.chars().all(|c| c.is_ascii_hexdigit())).then_some(n)
}

// ----- a stand-in store -------------------------------------------------------

/// An in-memory object store that follows S3's rules for what matters here
/// (ETags of single and multipart uploads, `If-Match`, ranges, part
/// `HEAD`s, full-object checksums), with faults for tests: corrupted bytes,
/// reads that fail part-way, objects replaced behind the listing.
#[derive(Debug)]
pub struct MemoryObjects {
    /// Bytes per chunk a read delivers to its sink.
    chunk: usize,
    objects: Mutex<std::collections::BTreeMap<(String, String), MemoryObject>>,
    faults: Mutex<MemoryFaults>,
    reads: Mutex<Vec<(String, Range<u64>)>>,
    delivered: std::sync::atomic::AtomicU64,
}

#[derive(Clone, Debug)]
struct MemoryObject {
    data: Vec<u8>,
    parts: Vec<u64>,
    etag: String,
    etag_not_md5: bool,
    checksum: Option<(String, String)>,
}

#[derive(Debug, Default)]
struct MemoryFaults {
    /// Reads whose first byte is flipped.
    corrupt: usize,
    /// The next read fails (retryably) after this many bytes.
    fail_after: Option<u64>,
}

impl MemoryObjects {
    /// An empty store whose reads deliver `chunk` bytes at a time.
    pub fn new(chunk: usize) -> Self {
        MemoryObjects {
            chunk: chunk.max(1),
            objects: Mutex::new(Default::default()),
            faults: Mutex::new(MemoryFaults::default()),
            reads: Mutex::new(Vec::new()),
            delivered: Default::default(),
        }
    }

    /// Puts `data` at `key` as an upload in parts of `part_size` bytes (one
    /// part if `part_size` is 0 or at least the size), with the ETag S3 gives it.
    pub fn put(&self, bucket: &str, key: &str, data: Vec<u8>, part_size: usize) {
        let parts: Vec<u64> = if part_size == 0 || part_size >= data.len() {
            vec![data.len() as u64]
        } else {
            data.chunks(part_size).map(|c| c.len() as u64).collect()
        };
        let md5s: Vec<[u8; 16]> = if parts.len() == 1 {
            vec![Md5::digest(&data).into()]
        } else {
            data.chunks(part_size).map(|c| Md5::digest(c).into()).collect()
        };
        let etag = format!("\"{}\"", etag_of_parts(&md5s));
        let o = MemoryObject { data, parts, etag, etag_not_md5: false, checksum: None };
        lock(&self.objects).insert((bucket.into(), key.into()), o);
    }

    /// Puts `data` at `key` as an object encrypted with a KMS key (an ETag
    /// that is no MD5) uploaded with a full-object `sha256` checksum, or
    /// without any when `checksum` is false.
    pub fn put_kms(&self, bucket: &str, key: &str, data: Vec<u8>, checksum: bool) {
        let sha = base64(&sha2::Sha256::digest(&data));
        let etag = format!("\"{}\"", hex(&Md5::digest(sha.as_bytes())));
        let checksum = checksum.then(|| ("sha256".to_string(), sha));
        let o = MemoryObject { parts: vec![data.len() as u64], data, etag, etag_not_md5: true, checksum };
        lock(&self.objects).insert((bucket.into(), key.into()), o);
    }

    /// Flips the first byte delivered by each of the next `reads` reads.
    pub fn corrupt_next_reads(&self, reads: usize) {
        lock(&self.faults).corrupt = reads;
    }

    /// Makes the next read fail (retryably) after delivering `bytes` bytes.
    pub fn fail_next_read_after(&self, bytes: u64) {
        lock(&self.faults).fail_after = Some(bytes);
    }

    /// Bytes delivered to sinks so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every range read so far, in order.
    pub fn reads(&self) -> Vec<(String, Range<u64>)> {
        lock(&self.reads).clone()
    }

    fn get(&self, bucket: &str, key: &str, etag: &str) -> Result<MemoryObject> {
        let err = |reason: &str, retryable| ProtocolError::Object {
            bucket: bucket.into(),
            key: key.into(),
            reason: reason.into(),
            retryable,
        };
        let o = lock(&self.objects).get(&(bucket.to_string(), key.to_string())).cloned();
        let o = o.ok_or_else(|| err("404 NoSuchKey", false))?;
        if o.etag != etag {
            return Err(err("412 PreconditionFailed: the object changed since it was listed", false));
        }
        Ok(o)
    }
}

impl ObjectStore for MemoryObjects {
    fn list<'a>(&'a self, bucket: &'a str, prefix: &'a str) -> BoxFuture<'a, Result<Vec<ObjectEntry>>> {
        let objects = lock(&self.objects);
        let out = objects
            .iter()
            .filter(|((b, k), _)| b == bucket && k.starts_with(prefix))
            .map(|((_, k), o)| ObjectEntry { key: k.clone(), size: o.data.len() as u64, etag: o.etag.clone() })
            .collect();
        Box::pin(std::future::ready(Ok(out)))
    }

    fn head<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        etag: &'a str,
        part: Option<u32>,
    ) -> BoxFuture<'a, Result<ObjectHead>> {
        let out = self.get(bucket, key, etag).and_then(|o| {
            let size = match part {
                None => o.data.len() as u64,
                Some(k) => *o.parts.get((k as usize).wrapping_sub(1)).ok_or_else(|| ProtocolError::Object {
                    bucket: bucket.into(),
                    key: key.into(),
                    reason: format!("416: no part {k}"),
                    retryable: false,
                })?,
            };
            Ok(ObjectHead { size, etag: o.etag, etag_not_md5: o.etag_not_md5, checksum: o.checksum })
        });
        Box::pin(std::future::ready(out))
    }

    fn read<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        etag: &'a str,
        range: Range<u64>,
        sink: &'a mut Sink<'a>,
    ) -> BoxFuture<'a, Result<u64>> {
        lock(&self.reads).push((key.to_string(), range.clone()));
        let mut run = move || -> Result<u64> {
            let o = self.get(bucket, key, etag)?;
            if range.start > range.end || range.end > o.data.len() as u64 {
                return Err(ProtocolError::Object {
                    bucket: bucket.into(),
                    key: key.into(),
                    reason: format!("416: range {range:?} of {} bytes", o.data.len()),
                    retryable: false,
                });
            }
            let mut bytes = o.data[range.start as usize..range.end as usize].to_vec();
            let fail_after = {
                let mut f = lock(&self.faults);
                if f.corrupt > 0 && !bytes.is_empty() {
                    f.corrupt -= 1;
                    bytes[0] ^= 0xff;
                }
                f.fail_after.take()
            };
            let mut sent = 0u64;
            let mut deliver = |c: &[u8], sent: &mut u64| -> Result<bool> {
                *sent += c.len() as u64;
                self.delivered.fetch_add(c.len() as u64, std::sync::atomic::Ordering::Relaxed);
                sink(c)
            };
            for c in bytes.chunks(self.chunk) {
                if let Some(limit) = fail_after {
                    if sent + c.len() as u64 > limit {
                        let n = (limit - sent) as usize;
                        if n > 0 {
                            deliver(&c[..n], &mut sent)?;
                        }
                        return Err(ProtocolError::Object {
                            bucket: bucket.into(),
                            key: key.into(),
                            reason: format!("connection reset after {sent} bytes (injected)"),
                            retryable: true,
                        });
                    }
                }
                if !deliver(c, &mut sent)? {
                    break;
                }
            }
            Ok(sent)
        };
        Box::pin(std::future::ready(run()))
    }
}
