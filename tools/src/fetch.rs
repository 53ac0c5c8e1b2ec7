//! Downloading the official CIFAR-10 archives, resumably, with their
//! published MD5 checked.
//!
//! The download goes to `<file>.part`. If that exists, the request asks for
//! the remaining bytes (`Range: bytes=N-`); a server answering 206 is
//! appended to, one answering 200 restarts the file. When the server has sent
//! everything, the MD5 of the whole file is compared with the expected one
//! and only then is the file renamed into place; a mismatch deletes the
//! partial file (so the next run starts clean) and is an error.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

/// One downloadable archive.
#[derive(Clone, Copy, Debug)]
pub struct Remote {
    pub url: &'static str,
    pub file: &'static str,
    pub md5: &'static str,
}

/// The binary version (what `prepare-cifar10` reads fastest).
pub const CIFAR10_BINARY: Remote = Remote {
    url: "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    file: "cifar-10-binary.tar.gz",
    md5: "c32a1d4ab5d03f1284b67883e8d87530",
};

/// The python version.
pub const CIFAR10_PYTHON: Remote = Remote {
    url: "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    file: "cifar-10-python.tar.gz",
    md5: "c58f30108f718f92721af3b95e74349a",
};

/// What can go wrong downloading.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{}: MD5 {actual} does not match the published {expected}; the partial file was removed, run again to re-download", path.display())]
    Checksum { path: PathBuf, expected: String, actual: String },
}

/// Downloads `url` to `dest` (resuming `dest.part`), checks `md5` (hex), and
/// returns the bytes received in this call. An existing `dest` with the
/// right MD5 is kept without downloading.
///
/// # Errors
/// [`FetchError`]: I/O, HTTP status or connection failures (the partial file
/// is kept for the next attempt), or a checksum mismatch.
pub fn fetch(url: &str, dest: &Path, md5: &str, progress: &mut dyn FnMut(u64, Option<u64>)) -> Result<u64, FetchError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e| FetchError::Io { path, source: e }
    };
    if dest.exists() && file_md5(dest).map_err(io(dest))? == md5.to_ascii_lowercase() {
        return Ok(0);
    }
    let part = PathBuf::from(format!("{}.part", dest.display()));
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut request = agent.get(url);
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    let http = |reason: String| FetchError::Http { url: url.to_string(), reason };
    let response = request.call().map_err(|e| http(e.to_string()))?;
    let status = response.status().as_u16();
    let (append, start) = match status {
        206 => (true, have),
        200 => (false, 0),
        416 if have > 0 => (true, have), // nothing left to send: verify what we have
        _ => return Err(http(format!("HTTP status {status}"))),
    };
    let remaining: Option<u64> =
        response.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let total = remaining.map(|r| r + start);
    let mut file =
        OpenOptions::new().create(true).write(true).append(append).truncate(!append).open(&part).map_err(io(&part))?;
    let mut received = 0u64;
    if status != 416 {
        let mut body = response.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = body.read(&mut buf).map_err(|e| {
                http(format!("connection failed after {} bytes ({e}); run again to resume", start + received))
            })?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n]).map_err(io(&part))?;
            received += n as u64;
            progress(start + received, total);
        }
    }
    file.sync_all().map_err(io(&part))?;
    drop(file);
    if let Some(t) = total {
        if start + received < t {
            return Err(http(format!(
                "connection closed after {} of {t} bytes; run again to resume",
                start + received
            )));
        }
    }
    let actual = file_md5(&part).map_err(io(&part))?;
    if actual != md5.to_ascii_lowercase() {
        let _ = std::fs::remove_file(&part);
        return Err(FetchError::Checksum { path: dest.to_path_buf(), expected: md5.into(), actual });
    }
    std::fs::rename(&part, dest).map_err(io(dest))?;
    Ok(received)
}

/// Hex MD5 of a file, streamed.
pub fn file_md5(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
