//! `creme serve`: a static HTTP server on 127.0.0.1 (a secure context, so pages get WebGPU) for
//! the web app: `web/` at /, the model cache at /models/ and the dataset at /datasets/, with
//! Range requests (the app streams models by tensor and resumes downloads) and `<file>.sha256`
//! (computed once per file) for the app's integrity check.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::common::{self, Res};

pub struct Roots {
    pub web: PathBuf,
    pub models: PathBuf,
    pub datasets: Option<PathBuf>,
}

fn content_type(p: &Path) -> &'static str {
    match p.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript",
        "css" => "text/css",
        "wasm" => "application/wasm",
        "json" | "jsonl" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "sha256" | "txt" | "md" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The file a URL path names, never outside its root.
fn resolve(roots: &Roots, url_path: &str) -> Option<PathBuf> {
    let path = url_path.split(['?', '#']).next().unwrap_or("");
    let decoded = percent_decode(path)?;
    let (root, rel) = if let Some(r) = decoded.strip_prefix("/models/") {
        (roots.models.clone(), r.to_string())
    } else if let Some(r) = decoded.strip_prefix("/datasets/") {
        (roots.datasets.clone()?, r.to_string())
    } else {
        (roots.web.clone(), decoded.trim_start_matches('/').to_string())
    };
    let rel = Path::new(&rel);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let mut p = root.join(rel);
    if p.is_dir() {
        p = p.join("index.html");
    }
    Some(p)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Parse "bytes=a-b", "bytes=a-" or "bytes=-n" against a file of `len` bytes: [start, end].
pub fn parse_range(h: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = h.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let r = match (a.trim(), b.trim()) {
        ("", n) => n.parse::<u64>().ok().filter(|&n| n > 0).map(|n| (len.saturating_sub(n), len.saturating_sub(1))),
        (a, "") => a.parse::<u64>().ok().map(|a| (a, len.saturating_sub(1))),
        (a, b) => match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(a), Ok(b)) if a <= b => Some((a, b.min(len.saturating_sub(1)))),
            _ => None,
        },
    };
    Some(match r {
        Some((s, e)) if s < len && s <= e => Ok((s, e)),
        _ => Err(()),
    })
}

fn respond(mut s: &TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nconnection: close\r\ncache-control: no-store\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)
}

fn handle(stream: TcpStream, roots: &Roots, digests: &Mutex<HashMap<PathBuf, String>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    if method != "GET" && method != "HEAD" {
        return respond(&stream, "405 Method Not Allowed", &[], b"");
    }
    let Some(path) = resolve(roots, target) else { return respond(&stream, "403 Forbidden", &[], b"forbidden") };
    // <file>.sha256 for a file that exists: its digest, computed once.
    if !path.exists() && path.extension().is_some_and(|e| e == "sha256") {
        let of = path.with_extension("");
        if of.is_file() {
            let hex = {
                let known = digests.lock().unwrap().get(&of).cloned();
                match known {
                    Some(h) => h,
                    None => {
                        let h = common::sha256_file(&of).map_err(|e| std::io::Error::other(e.to_string()))?;
                        digests.lock().unwrap().insert(of.clone(), h.clone());
                        h
                    }
                }
            };
            let body = format!("{hex}\n");
            return respond(&stream, "200 OK", &[("content-type", "text/plain".into()), ("content-length", body.len().to_string())], if method == "HEAD" { b"" } else { body.as_bytes() });
        }
    }
    let Ok(mut file) = std::fs::File::open(&path) else { return respond(&stream, "404 Not Found", &[], b"not found") };
    let len = file.metadata()?.len();
    let ct = content_type(&path);
    let (status, start, end) = match range.as_deref().map(|r| parse_range(r, len)) {
        Some(Some(Ok((s, e)))) => ("206 Partial Content", s, e),
        Some(Some(Err(()))) => return respond(&stream, "416 Range Not Satisfiable", &[("content-range", format!("bytes */{len}"))], b""),
        _ => ("200 OK", 0, len.saturating_sub(1)),
    };
    let n = if len == 0 { 0 } else { end - start + 1 };
    let mut headers = vec![("content-type", ct.to_string()), ("accept-ranges", "bytes".into()), ("content-length", n.to_string())];
    if status.starts_with("206") {
        headers.push(("content-range", format!("bytes {start}-{end}/{len}")));
    }
    respond(&stream, status, &headers, b"")?;
    if method == "HEAD" {
        return Ok(());
    }
    file.seek(SeekFrom::Start(start))?;
    std::io::copy(&mut file.take(n), &mut &stream)?;
    Ok(())
}

pub fn run(roots: Roots, port: u16) -> Res {
    if !roots.web.join("index.html").exists() {
        return Err(format!("{} holds no index.html: pass --web DIR (the repository's web/)", roots.web.display()).into());
    }
    let listener = TcpListener::bind(("127.0.0.1", port)).map_err(|e| format!("binding 127.0.0.1:{port}: {e}"))?;
    let addr = listener.local_addr()?;
    println!("serving http://{addr}/ (web: {}, models: {}, datasets: {})", roots.web.display(), roots.models.display(), roots.datasets.as_ref().map(|d| d.display().to_string()).unwrap_or("-".into()));
    println!("app: http://{addr}/app.html   causal tracing lesson: http://{addr}/trace.html");
    std::io::stdout().flush()?;
    let roots = Arc::new(roots);
    let digests = Arc::new(Mutex::new(HashMap::new()));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let (roots, digests) = (roots.clone(), digests.clone());
        std::thread::spawn(move || {
            let _ = handle(stream, &roots, &digests);
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_like_http_says() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=95-200", 100), Some(Ok((95, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=9-3", 100), Some(Err(())));
        assert_eq!(parse_range("items=0-1", 100), None);
    }

    #[test]
    fn paths_never_leave_their_root() {
        let roots = Roots { web: "/srv/web".into(), models: "/srv/models".into(), datasets: None };
        assert_eq!(resolve(&roots, "/app.html?x=1"), Some(PathBuf::from("/srv/web/app.html")));
        assert_eq!(resolve(&roots, "/models/a.gguf"), Some(PathBuf::from("/srv/models/a.gguf")));
        assert_eq!(resolve(&roots, "/../etc/passwd"), None);
        assert_eq!(resolve(&roots, "/models/%2e%2e/secret"), None);
        assert_eq!(resolve(&roots, "/datasets/HumanEval.jsonl"), None);
    }
}
