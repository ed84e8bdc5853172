//! `creme serve`: a static HTTP server on 127.0.0.1 (a secure context, so pages get WebGPU) for
//! the web app: `web/` at /, the model cache at /models/ and the dataset at /datasets/, with
//! Range requests (the app streams models by tensor and resumes downloads) and `<file>.sha256`
//! (computed once per file version) for the app's integrity check.
//!
//! HTTP/1.1 is hyper's; the rules below are ours (issue 17: an attacker test held one thread per
//! idle connection, grew the process by a 256 MiB header line and read files through symlinks).
//! - Bounded resources: 2 worker threads and at most 8 for disk I/O, whatever clients do; at most
//!   `CREME_SERVE_MAX_CONNS` (512) connections at once, later ones wait in the kernel's backlog;
//!   request headers must fit in 64 KiB (else 431) and file bodies stream from disk in 64 KiB
//!   chunks, so a connection's buffers stay within a few hundred KiB (a 16 MiB header line costs
//!   nothing more).
//! - Timeouts: a connection on which no byte moves either way for `CREME_SERVE_IDLE_SECS` (20 s)
//!   is closed (idle keep-alive, clients that stop reading), and a request's headers must arrive
//!   within that time (slow senders).
//! - Never exits on a client: accept errors (EMFILE) are logged and retried after a pause.
//! - Paths: percent-decoded, normal components only (no `..`), and the file must stay under its
//!   root once every symlink is resolved: a link leading out of a root is refused (403).
//! - Ranges: one range gets 206 with Content-Range, `bytes=N-` and `bytes=-N` included; several
//!   ranges get the whole file with 200 (RFC 9110 lets a server ignore Range); a range past the
//!   end gets 416 with `Content-Range: bytes */LEN`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::common::Res;

/// Request headers beyond this are refused with 431 (hyper's read buffer never grows past it).
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// File bodies are read and sent in chunks of this size.
const CHUNK_BYTES: usize = 64 * 1024;
/// Pause after a failed accept (EMFILE and the like) before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

pub struct Roots {
    pub web: PathBuf,
    pub models: PathBuf,
    pub datasets: Option<PathBuf>,
}

#[derive(Clone, Copy)]
struct Limits {
    idle: Duration,
    max_conns: usize,
}

impl Limits {
    fn from_env() -> Self {
        let num = |var: &str, default: u64| {
            std::env::var(var)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|&n| n > 0)
                .unwrap_or(default)
        };
        Limits {
            idle: Duration::from_secs(num("CREME_SERVE_IDLE_SECS", 20)),
            max_conns: num("CREME_SERVE_MAX_CONNS", 512) as usize,
        }
    }
}

type Body = UnsyncBoxBody<Bytes, io::Error>;

/// What the server shares between connections: the canonical roots and the digests computed.
struct State {
    roots: Roots,
    /// Held while a digest is computed, so concurrent `.sha256` requests hash a file once.
    digests: Mutex<HashMap<FileVersion, String>>,
}

/// A file as it is now: a digest is recomputed when the file changes.
#[derive(Hash, PartialEq, Eq)]
struct FileVersion {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

pub fn run(roots: Roots, port: u16) -> Res {
    if !roots.web.join("index.html").exists() {
        return Err(format!(
            "{} holds no index.html: pass --web DIR (the repository's web/)",
            roots.web.display()
        )
        .into());
    }
    raise_open_file_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()?;
    rt.block_on(serve(roots, port, Limits::from_env()))
}

async fn serve(roots: Roots, port: u16, limits: Limits) -> Res {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("binding 127.0.0.1:{port}: {e}"))?;
    let addr = listener.local_addr()?;
    // The browser tests parse the port from the first line: keep its form.
    let mut out = io::stdout();
    let datasets = roots
        .datasets
        .as_ref()
        .map(|d| d.display().to_string())
        .unwrap_or("-".into());
    let _ = writeln!(
        out,
        "serving http://{addr}/ (web: {}, models: {}, datasets: {datasets})",
        roots.web.display(),
        roots.models.display()
    );
    let _ = writeln!(
        out,
        "app: http://{addr}/app.html   causal tracing lesson: http://{addr}/trace.html"
    );
    let _ = out.flush();
    let state = Arc::new(State {
        roots: roots.canonical(),
        digests: Mutex::new(HashMap::new()),
    });
    let slots = Arc::new(Semaphore::new(limits.max_conns));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        match listener.accept().await {
            Ok((stream, _)) => drop(tokio::spawn(connection(
                stream,
                state.clone(),
                limits,
                slot,
            ))),
            Err(e) => {
                eprintln!("creme serve: accepting a connection: {e} (retrying)");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// One client connection, holding one of the server's slots until it ends.
async fn connection(
    stream: TcpStream,
    state: Arc<State>,
    limits: Limits,
    _slot: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(IdleTimeout::new(stream, limits.idle));
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(respond(&state, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(io, service);
    // A client's errors (reset, timeout, malformed request) end its connection only.
    let _ = conn.await;
}

async fn respond(state: &State, req: Request<Incoming>) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            &[(header::ALLOW, "GET, HEAD".into())],
            empty(),
        );
    }
    let Some((root, path)) = resolve(&state.roots, req.uri().path()) else {
        return text(StatusCode::FORBIDDEN, "forbidden");
    };
    match lookup(root, &path).await {
        Lookup::File(p) => serve_file(&p, req.headers(), head).await,
        Lookup::Refused => text(StatusCode::FORBIDDEN, "forbidden"),
        Lookup::Missing => match path.extension().is_some_and(|e| e == "sha256") {
            true => serve_digest(state, root, &path.with_extension(""), head).await,
            false => text(StatusCode::NOT_FOUND, "not found"),
        },
    }
}

impl Roots {
    /// The roots with every symlink resolved (a root that does not exist is kept as given: it
    /// holds nothing).
    fn canonical(self) -> Roots {
        let c = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
        Roots {
            web: c(self.web),
            models: c(self.models),
            datasets: self.datasets.map(c),
        }
    }
}

/// The root a URL path falls under and the path it names there, made of normal components only.
fn resolve<'a>(roots: &'a Roots, url_path: &str) -> Option<(&'a Path, PathBuf)> {
    let path = url_path.split(['?', '#']).next().unwrap_or("");
    let decoded = percent_decode(path)?;
    let (root, rel) = if let Some(r) = decoded.strip_prefix("/models/") {
        (roots.models.as_path(), r)
    } else if let Some(r) = decoded.strip_prefix("/datasets/") {
        (roots.datasets.as_deref()?, r)
    } else {
        (roots.web.as_path(), decoded.trim_start_matches('/'))
    };
    let rel = Path::new(rel);
    if rel.components().any(|c| !matches!(c, Component::Normal(_)))
        || rel.as_os_str().as_encoded_bytes().contains(&0)
    {
        return None;
    }
    Some((root, root.join(rel)))
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

enum Lookup {
    /// A regular file under the root, every symlink resolved.
    File(PathBuf),
    Missing,
    /// It resolves to somewhere outside the root.
    Refused,
}

/// The file `path` names, if it stays under `root` (canonical) with its symlinks resolved; a
/// directory stands for its index.html.
async fn lookup(root: &Path, path: &Path) -> Lookup {
    let mut p = path.to_path_buf();
    for _ in 0..2 {
        let Ok(real) = tokio::fs::canonicalize(&p).await else {
            return Lookup::Missing;
        };
        if !real.starts_with(root) {
            return Lookup::Refused;
        }
        match tokio::fs::metadata(&real).await {
            Ok(m) if m.is_file() => return Lookup::File(real),
            Ok(m) if m.is_dir() => p = real.join("index.html"),
            _ => return Lookup::Missing,
        }
    }
    Lookup::Missing
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

/// Parse a Range header against a file of `len` bytes: None to ignore it (not bytes, or several
/// ranges: the whole file is sent), Some(Ok([start, end])) for one range, Some(Err) when
/// unsatisfiable or malformed (416).
pub fn parse_range(h: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = h.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let r = match (a.trim(), b.trim()) {
        ("", n) => n
            .parse::<u64>()
            .ok()
            .filter(|&n| n > 0)
            .map(|n| (len.saturating_sub(n), len.saturating_sub(1))),
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

async fn serve_file(path: &Path, headers: &HeaderMap, head: bool) -> Response<Body> {
    let (mut file, len) = match open_file(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return text(StatusCode::NOT_FOUND, "not found")
        }
        Err(_) => return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file"),
    };
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| parse_range(r, len));
    let (status, start, n) = match range {
        Some(Ok((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        Some(Err(())) => {
            return reply(
                StatusCode::RANGE_NOT_SATISFIABLE,
                &[(header::CONTENT_RANGE, format!("bytes */{len}"))],
                empty(),
            )
        }
        None => (StatusCode::OK, 0, len),
    };
    let mut fields = vec![
        (header::CONTENT_TYPE, content_type(path).to_string()),
        (header::ACCEPT_RANGES, "bytes".into()),
        (header::CONTENT_LENGTH, n.to_string()),
    ];
    if status == StatusCode::PARTIAL_CONTENT {
        fields.push((
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", start + n - 1),
        ));
    }
    if head {
        return reply(status, &fields, empty());
    }
    if file.seek(io::SeekFrom::Start(start)).await.is_err() {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file");
    }
    reply(status, &fields, file_body(file, n))
}

/// A regular file and its length; the last component must not be a symlink (the path is
/// canonical: one that is has been swapped in since).
async fn open_file(path: &Path) -> io::Result<(tokio::fs::File, u64)> {
    let mut options = tokio::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    options.custom_flags(libc::O_NOFOLLOW);
    let file = options.open(path).await?;
    let meta = file.metadata().await?;
    if !meta.is_file() {
        return Err(io::ErrorKind::NotFound.into());
    }
    Ok((file, meta.len()))
}

/// `n` bytes from the file's position, read as they are sent.
fn file_body(file: tokio::fs::File, n: u64) -> Body {
    let chunks = tokio_util::io::ReaderStream::with_capacity(file.take(n), CHUNK_BYTES);
    StreamBody::new(chunks.map(|c| c.map(Frame::data))).boxed_unsync()
}

/// `<file>.sha256` for a file under the root: its hex digest, computed once per version of it.
async fn serve_digest(state: &State, root: &Path, of: &Path, head: bool) -> Response<Body> {
    let Lookup::File(of) = lookup(root, of).await else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    let hex = match digest(state, of).await {
        Ok(h) => h,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &format!("hashing: {e}")),
    };
    let body = format!("{hex}\n");
    let fields = [
        (header::CONTENT_TYPE, "text/plain".to_string()),
        (header::CONTENT_LENGTH, body.len().to_string()),
    ];
    reply(
        StatusCode::OK,
        &fields,
        if head { empty() } else { full(body) },
    )
}

async fn digest(state: &State, path: PathBuf) -> io::Result<String> {
    let meta = tokio::fs::metadata(&path).await?;
    let version = FileVersion {
        path,
        len: meta.len(),
        modified: meta.modified().ok(),
    };
    let mut known = state.digests.lock().await;
    if let Some(h) = known.get(&version) {
        return Ok(h.clone());
    }
    let path = version.path.clone();
    let hex = tokio::task::spawn_blocking(move || sha256_streamed(&path))
        .await
        .map_err(io::Error::other)??;
    known.insert(version, hex.clone());
    Ok(hex)
}

/// SHA-256 of a file read in chunks (models are hundreds of MiB).
fn sha256_streamed(path: &Path) -> io::Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(format!("{:x}", hasher.finalize()))
}

fn empty() -> Body {
    full(Bytes::new())
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    reply(
        status,
        &[(header::CONTENT_TYPE, "text/plain; charset=utf-8".into())],
        full(msg.to_string()),
    )
}

fn reply(status: StatusCode, fields: &[(HeaderName, String)], body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (name, value) in fields {
        if let Ok(v) = HeaderValue::try_from(value.as_str()) {
            r.headers_mut().insert(name.clone(), v);
        }
    }
    r
}

/// A stream that fails with TimedOut once no byte has moved either way for `idle`, so idle
/// keep-alive connections and clients that stop reading a response give their slot back.
struct IdleTimeout<S> {
    inner: S,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<S> IdleTimeout<S> {
    fn new(inner: S, idle: Duration) -> Self {
        IdleTimeout {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    /// After a poll of the inner stream: bytes that moved push the deadline back; a stream
    /// still waiting past the deadline fails.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
        moved: bool,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(Ok(_)) if moved => self.deadline.as_mut().reset(Instant::now() + self.idle),
            Poll::Pending if self.deadline.as_mut().poll(cx).is_ready() => {
                return Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
            }
            _ => {}
        }
        polled
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let moved = buf.filled().len() > before;
        this.watch(cx, polled, moved)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        let moved = matches!(polled, Poll::Ready(Ok(n)) if n > 0);
        this.watch(cx, polled, moved)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        let moved = matches!(polled, Poll::Ready(Ok(n)) if n > 0);
        this.watch(cx, polled, moved)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, polled, false)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, polled, false)
    }
}

/// Lift the soft limit on open files to the hard one: each connection holds a socket and, while
/// it sends, a file. Past the limit accepts fail and are retried, which is slower but safe.
fn raise_open_file_limit() {
    #[cfg(unix)]
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max.min(65536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_like_http_says() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=-200", 100), Some(Ok((0, 99))));
        assert_eq!(parse_range("bytes=95-200", 100), Some(Ok((95, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=9-3", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,5-9", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }

    #[test]
    fn paths_never_leave_their_root() {
        let roots = Roots {
            web: "/srv/web".into(),
            models: "/srv/models".into(),
            datasets: None,
        };
        let at = |u: &str| resolve(&roots, u).map(|(root, p)| (root.to_path_buf(), p));
        assert_eq!(
            at("/app.html?x=1"),
            Some(("/srv/web".into(), "/srv/web/app.html".into()))
        );
        assert_eq!(
            at("/models/a.gguf"),
            Some(("/srv/models".into(), "/srv/models/a.gguf".into()))
        );
        assert_eq!(at("/../etc/passwd"), None);
        assert_eq!(at("/models/%2e%2e/secret"), None);
        assert_eq!(at("/models/a%00b"), None);
        assert_eq!(at("/datasets/HumanEval.jsonl"), None);
    }
}
