//! Resumable, checksummed download against a local HTTP server on
//! 127.0.0.1 (no test reaches the internet).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::thread;

use lml_tools::fetch::{fetch, file_md5, FetchError};

/// Serves `body` to `connections` requests, honouring `Range: bytes=N-`;
/// the first response is cut after `cut_first` bytes of body if given.
fn serve(body: Vec<u8>, connections: usize, cut_first: Option<usize>) -> (String, thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/cifar-10-binary.tar.gz", listener.local_addr().unwrap());
    let handle = thread::spawn(move || {
        let mut ranges = Vec::new();
        for i in 0..connections {
            let (mut stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut start = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    start = r.trim().trim_end_matches('-').parse().unwrap();
                    ranges.push(line.trim().to_string());
                }
            }
            let part = &body[start.min(body.len())..];
            let head = if start > 0 {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
                    part.len(),
                    body.len() - 1,
                    body.len()
                )
            } else {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", part.len())
            };
            stream.write_all(head.as_bytes()).unwrap();
            let send = if i == 0 { cut_first.unwrap_or(part.len()).min(part.len()) } else { part.len() };
            let _ = stream.write_all(&part[..send]);
        }
        ranges
    });
    (url, handle)
}

fn archive_bytes(dir: &Path) -> (Vec<u8>, String) {
    let p = dir.join("src.tar.gz");
    lml_tools::cifar::write_binary_archive(&p, 40, 1).unwrap();
    (std::fs::read(&p).unwrap(), file_md5(&p).unwrap())
}

#[test]
fn downloads_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let (body, md5) = archive_bytes(tmp.path());
    let (url, server) = serve(body.clone(), 1, None);
    let dest = tmp.path().join("out.tar.gz");
    let got = fetch(&url, &dest, &md5, &mut |_, _| {}).unwrap();
    assert_eq!(got, body.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert!(server.join().unwrap().is_empty());
    // Already there with the right MD5: nothing is downloaded (no server now).
    assert_eq!(fetch("http://127.0.0.1:9/unused", &dest, &md5, &mut |_, _| {}).unwrap(), 0);
}

#[test]
fn interrupted_download_resumes_with_a_range_request() {
    let tmp = tempfile::tempdir().unwrap();
    let (body, md5) = archive_bytes(tmp.path());
    let cut = body.len() / 3;
    let (url, server) = serve(body.clone(), 2, Some(cut));
    let dest = tmp.path().join("out.tar.gz");
    let err = fetch(&url, &dest, &md5, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, FetchError::Http { .. }) && err.to_string().contains("resume"), "{err}");
    assert!(!dest.exists());
    let part = tmp.path().join("out.tar.gz.part");
    assert_eq!(std::fs::metadata(&part).unwrap().len(), cut as u64);
    let got = fetch(&url, &dest, &md5, &mut |_, _| {}).unwrap();
    assert_eq!(got, (body.len() - cut) as u64, "only the rest is downloaded");
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert!(!part.exists());
    let ranges: Vec<String> = server.join().unwrap().iter().map(|r| r.to_ascii_lowercase()).collect();
    assert_eq!(ranges, vec![format!("range: bytes={cut}-")]);
}

#[test]
fn wrong_checksum_is_refused_and_cleaned_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (body, _) = archive_bytes(tmp.path());
    let (url, server) = serve(body, 1, None);
    let dest = tmp.path().join("out.tar.gz");
    let err = fetch(&url, &dest, "00000000000000000000000000000000", &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, FetchError::Checksum { .. }), "{err}");
    assert!(!dest.exists() && !tmp.path().join("out.tar.gz.part").exists());
    server.join().unwrap();
}

#[test]
fn http_errors_and_refused_connections_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        while r.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
            line.clear();
        }
        s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    });
    let dest = tmp.path().join("x.tar.gz");
    let err = fetch(&format!("http://{addr}/missing"), &dest, "00", &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    server.join().unwrap();
    // Nothing listens on this port any more.
    let err = fetch(&format!("http://{addr}/gone"), &dest, "00", &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}
