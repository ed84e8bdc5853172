//! `creme serve`: a static HTTP server on 127.0.0.1 (a secure context, so pages get WebGPU) for
//! the web app: `web/` at /, the model cache at /models/ and the dataset at /datasets/, with
//! Range requests (the app streams models by tensor and resumes downloads) and `<file>.sha256`
//! (computed once per file version) for the app's integrity check.
//!
//! HTTP/1.1 is hyper's; the rules below are ours (issue 17: an attacker test held one thread per
//! idle connection, grew the process by a 256 MiB header line and read files through symlinks;
//! issue 36: a symlink swapped in between a path check and the open served `/etc/passwd`, idle
//! sockets holding every slot made a request wait 20 s, and one lock over all digests made a
//! 2 GiB file's hashing hold up every other digest).
//! - Bounded resources: 2 worker threads and at most 8 for disk I/O, whatever clients do; at most
//!   `CREME_SERVE_MAX_CONNS` (512) connections at once. When all are taken, a new connection takes
//!   the slot of the one idle the longest (no request in flight: a connection answering a request
//!   is never evicted); only when every connection is answering one does it wait in the kernel's
//!   backlog. Request headers must fit in 64 KiB (else 431) and file bodies stream from disk in
//!   64 KiB chunks, so a connection's buffers stay within a few hundred KiB.
//! - Timeouts: a connection on which no byte moves either way for `CREME_SERVE_IDLE_SECS` (20 s)
//!   is closed (idle keep-alive, clients that stop reading), and a request's headers must arrive
//!   within that time (slow senders).
//! - Never exits on a client: accept errors (EMFILE) are logged and retried after a pause.
//! - Paths: percent-decoded, normal components only (no `..`), and opened beneath a descriptor of
//!   their root taken at startup, so that no check-then-open window exists: `openat2` with
//!   `RESOLVE_BENEATH` makes the kernel refuse any resolution that leaves the root. Where it
//!   refuses a link that may still stay inside (an absolute one) or is missing (before Linux 5.6,
//!   seccomp filters), the path is opened `O_PATH` and kept only if the descriptor's own
//!   `/proc/self/fd` link lies under the root (refused when /proc cannot say). A link out of a
//!   root gets 403; a link that stays inside is served like a plain file.
//! - Digests: each file version (device, inode, length, times) is hashed once, by a task of its
//!   own that requests for it share, in 1 MiB jobs on the blocking pool that take turns with
//!   every other request's disk reads: hashing one file never holds up another request.
//! - Ranges: one range gets 206 with Content-Range, `bytes=N-` and `bytes=-N` included; several
//!   ranges get the whole file with 200 (RFC 9110 lets a server ignore Range); a range past the
//!   end gets 416 with `Content-Range: bytes */LEN`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::ffi::{CStr, CString};
use std::fs::{File, Metadata};
use std::future::Future;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{select, Either};
use futures_util::StreamExt;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::common::Res;

/// Request headers beyond this are refused with 431 (hyper's read buffer never grows past it).
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// File bodies are read and sent in chunks of this size.
const CHUNK_BYTES: usize = 64 * 1024;
/// A digest is computed in jobs of this many bytes, a few milliseconds each, so that a big file's
/// hashing takes turns on the blocking pool with other requests instead of holding a thread.
const HASH_CHUNK_BYTES: usize = 1 << 20;
/// Past this many digests remembered, the finished ones are forgotten (bounded memory however
/// many files come and go).
const MAX_DIGESTS: usize = 4096;
/// Pause after a failed accept (EMFILE and the like) before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The three trees served: `web/` at /, models at /models/, the dataset (if any) at /datasets/.
pub struct Tree<T> {
    pub web: T,
    pub models: T,
    pub datasets: Option<T>,
}

/// The roots as given on the command line.
pub type Roots = Tree<PathBuf>;

impl<T> Tree<T> {
    fn map<U>(self, f: impl Fn(T) -> U) -> Tree<U> {
        Tree {
            web: f(self.web),
            models: f(self.models),
            datasets: self.datasets.map(f),
        }
    }
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

/// What the server shares between connections: the roots and the digests.
struct State {
    roots: Tree<Arc<Root>>,
    digests: Mutex<HashMap<FileVersion, DigestCell>>,
}

/// Flags of `creme serve`.
#[derive(clap::Args, Clone)]
pub struct ServeArgs {
    /// Port (0 = any free port; the address is printed)
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The web app directory (the repository's web/, built by scripts/build-web.sh)
    #[arg(long, default_value = "web")]
    pub web: PathBuf,
    /// Model directory served under /models/ (default: the model cache)
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Dataset directory served under /datasets/ (default: as `eval` finds it)
    #[arg(long)]
    pub dataset: Option<PathBuf>,
}

/// `creme serve`: the web app, the model cache and the datasets.
pub fn main(a: ServeArgs) -> Res {
    let models = a.models.unwrap_or_else(|| {
        crate::common::model_path(None)
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_default()
    });
    let datasets = crate::common::dataset_dir(a.dataset.as_deref()).ok();
    run(
        Roots {
            web: a.web,
            models,
            datasets,
        },
        a.port,
    )
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
        roots: roots.map(|p| Arc::new(Root::open(p))),
        digests: Mutex::new(HashMap::new()),
    });
    let conns = Arc::new(Conns::new(limits.max_conns));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("creme serve: accepting a connection: {e} (retrying)");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        // Listed before its task first runs, so that the next `slot()` can already evict it.
        let registered = conns.admit(conns.slot().await);
        drop(tokio::spawn(connection(
            stream,
            state.clone(),
            limits,
            registered,
        )));
    }
}

/// The open connections, so that a new one can take the slot of the one idle the longest.
struct Conns {
    slots: Arc<Semaphore>,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    /// Signalled when a connection's last request in flight is answered (it can be evicted now).
    idle_again: Notify,
}

/// One connection as eviction sees it.
struct Conn {
    activity: Mutex<Activity>,
    /// Signalled once the connection is evicted: its task then drops it, which closes it.
    evict: Notify,
}

struct Activity {
    /// Requests whose responses have not been sent in full.
    in_flight: usize,
    /// When a byte last moved either way (or the connection opened, or a response ended): a
    /// connection whose request has just arrived is the last one eviction would choose.
    last_active: Instant,
    evicted: bool,
}

impl Conns {
    fn new(max_conns: usize) -> Self {
        Conns {
            slots: Arc::new(Semaphore::new(max_conns)),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            idle_again: Notify::new(),
        }
    }

    /// A slot for a new connection: a free one, else that of the connection idle the longest,
    /// else (every connection answering a request) the first to come free.
    async fn slot(&self) -> OwnedSemaphorePermit {
        loop {
            if let Ok(slot) = self.slots.clone().try_acquire_owned() {
                return slot;
            }
            // An evicted connection's task ends at its next poll and hands its slot over.
            let freed = self.slots.clone().acquire_owned();
            if self.evict_longest_idle() {
                return freed.await.expect("the slots are never closed");
            }
            match select(pin!(freed), pin!(self.idle_again.notified())).await {
                Either::Left((slot, _)) => return slot.expect("the slots are never closed"),
                Either::Right(_) => continue,
            }
        }
    }

    /// Evict the connection idle the longest, if one has no request in flight.
    fn evict_longest_idle(&self) -> bool {
        let open = self.open.lock().unwrap();
        // A connection may start a request between the choice and the eviction: choose again.
        loop {
            let longest = open
                .values()
                .filter_map(|c| c.idle_since().map(|t| (t, c)))
                .min_by_key(|&(t, _)| t);
            match longest {
                None => return false,
                Some((_, c)) if c.try_evict() => return true,
                Some(_) => {}
            }
        }
    }

    /// List a new connection, holding `slot` for it until it ends.
    fn admit(self: &Arc<Self>, slot: OwnedSemaphorePermit) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            activity: Mutex::new(Activity {
                in_flight: 0,
                last_active: Instant::now(),
                evicted: false,
            }),
            evict: Notify::new(),
        });
        self.open.lock().unwrap().insert(id, conn.clone());
        Registered {
            conns: self.clone(),
            id,
            conn,
            _slot: slot,
        }
    }
}

impl Conn {
    /// Bytes moved on the connection.
    fn touch(&self) {
        self.activity.lock().unwrap().last_active = Instant::now();
    }

    /// When the connection went idle, if it is idle (and not evicted already).
    fn idle_since(&self) -> Option<Instant> {
        let a = self.activity.lock().unwrap();
        (a.in_flight == 0 && !a.evicted).then_some(a.last_active)
    }

    fn try_evict(&self) -> bool {
        let mut a = self.activity.lock().unwrap();
        if a.in_flight > 0 || a.evicted {
            return false;
        }
        a.evicted = true;
        self.evict.notify_one();
        true
    }
}

/// A connection listed in `Conns::open`, and its slot, until its task ends.
struct Registered {
    conns: Arc<Conns>,
    id: u64,
    conn: Arc<Conn>,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.conns.open.lock().unwrap().remove(&self.id);
    }
}

/// A request in flight, from its head to the end of its response: the response body holds it,
/// and hyper drops the body after its last byte (or with the connection).
struct InFlight {
    conns: Arc<Conns>,
    conn: Arc<Conn>,
}

impl InFlight {
    fn begin(conns: &Arc<Conns>, conn: &Arc<Conn>) -> InFlight {
        let mut a = conn.activity.lock().unwrap();
        a.in_flight += 1;
        a.last_active = Instant::now();
        InFlight {
            conns: conns.clone(),
            conn: conn.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut a = self.conn.activity.lock().unwrap();
        a.in_flight -= 1;
        a.last_active = Instant::now();
        if a.in_flight == 0 {
            self.conns.idle_again.notify_one();
        }
    }
}

/// A response body holding its request's `InFlight` until hyper drops it; everything else is the
/// body's own (its size included, so that hyper still sends Content-Length).
struct Holding {
    body: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Holding {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// One client connection, holding one of the server's slots until it ends or is evicted.
async fn connection(stream: TcpStream, state: Arc<State>, limits: Limits, registered: Registered) {
    let (conns, conn) = (registered.conns.clone(), registered.conn.clone());
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(IdleTimeout::new(stream, limits.idle, conn.clone()));
    let service = hyper::service::service_fn(move |req| {
        let in_flight = InFlight::begin(&conns, &conn);
        let state = state.clone();
        async move {
            let response = respond(&state, req).await;
            Ok::<_, Infallible>(response.map(|body| Holding {
                body,
                _in_flight: in_flight,
            }))
        }
    });
    let serving = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(io, service);
    // A client's errors (reset, timeout, malformed request) end its connection only; eviction
    // drops it, which closes the socket.
    let _ = select(pin!(serving), pin!(registered.conn.evict.notified())).await;
}

async fn respond(state: &Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            &[(header::ALLOW, "GET, HEAD".into())],
            empty(),
        );
    }
    let Some((root, rel)) = resolve(&state.roots, req.uri().path()) else {
        return text(StatusCode::FORBIDDEN, "forbidden");
    };
    let digest_of = rel
        .extension()
        .is_some_and(|e| e == "sha256")
        .then(|| rel.with_extension(""));
    match lookup(root, rel).await {
        Lookup::File(found) => serve_file(*found, req.headers(), head).await,
        Lookup::Refused => text(StatusCode::FORBIDDEN, "forbidden"),
        Lookup::Missing => match digest_of {
            Some(of) => serve_digest(state, root, of, head).await,
            None => text(StatusCode::NOT_FOUND, "not found"),
        },
    }
}

/// The root a URL path falls under and the path it names there, relative and made of normal
/// components only.
fn resolve<'a, T>(roots: &'a Tree<T>, url_path: &str) -> Option<(&'a T, PathBuf)> {
    let path = url_path.split(['?', '#']).next().unwrap_or("");
    let decoded = percent_decode(path)?;
    let (root, rel) = if let Some(r) = decoded.strip_prefix("/models/") {
        (&roots.models, r)
    } else if let Some(r) = decoded.strip_prefix("/datasets/") {
        (roots.datasets.as_ref()?, r)
    } else {
        (&roots.web, decoded.trim_start_matches('/'))
    };
    let rel = Path::new(rel);
    if rel.components().any(|c| !matches!(c, Component::Normal(_)))
        || rel.as_os_str().as_encoded_bytes().contains(&0)
    {
        return None;
    }
    Some((root, rel.to_path_buf()))
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

/// A served root: its canonical path and a descriptor of it that every file is opened beneath.
struct Root {
    path: PathBuf,
    /// None when the root is not a directory that could be opened: it holds nothing.
    dir: Option<OwnedFd>,
}

/// A regular file found beneath a root, open, and the name it was asked by.
struct Found {
    file: File,
    meta: Metadata,
    rel: PathBuf,
}

enum Lookup {
    /// Boxed: an open file and its metadata are large next to the other outcomes.
    File(Box<Found>),
    Missing,
    /// It resolves to somewhere outside the root.
    Refused,
}

/// The flags every served file is opened with: O_NONBLOCK so that a FIFO never blocks a thread
/// (regular files ignore it), O_NOCTTY so that a terminal never becomes ours.
const READ_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY;

impl Root {
    fn open(given: PathBuf) -> Root {
        let path = std::fs::canonicalize(&given).unwrap_or(given);
        let dir = File::open(&path)
            .ok()
            .filter(|f| f.metadata().is_ok_and(|m| m.is_dir()))
            .map(OwnedFd::from);
        Root { path, dir }
    }

    /// The regular file `rel` names beneath the root; a directory stands for its index.html.
    fn lookup(&self, rel: PathBuf) -> Lookup {
        let mut rel = rel;
        for _ in 0..2 {
            let file = match self.open_beneath(&rel) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Lookup::Refused,
                Err(_) => return Lookup::Missing,
            };
            match file.metadata() {
                Ok(meta) if meta.is_file() => {
                    return Lookup::File(Box::new(Found { file, meta, rel }))
                }
                Ok(meta) if meta.is_dir() => rel.push("index.html"),
                _ => return Lookup::Missing,
            }
        }
        Lookup::Missing
    }

    /// `rel` opened for reading with every symlink resolved beneath the root; PermissionDenied
    /// when the resolution leaves it. The descriptor is what is checked, never a path that could
    /// change between a check and the open.
    fn open_beneath(&self, rel: &Path) -> io::Result<File> {
        let dir = self.dir.as_ref().ok_or(io::ErrorKind::NotFound)?;
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let rel = CString::new(rel.as_os_str().as_bytes())?;
        match openat2_beneath(dir, &rel) {
            // EXDEV: a link out of the root, or an absolute link (which RESOLVE_BENEATH refuses
            // wherever it leads); ENOSYS / EPERM: no openat2 (Linux < 5.6, seccomp filters);
            // EAGAIN: a rename raced the resolution. The descriptor check decides these.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EXDEV | libc::ENOSYS | libc::EPERM | libc::EAGAIN)
                ) =>
            {
                self.open_verified(dir, &rel)
            }
            opened => opened,
        }
    }

    /// Open `rel` with symlinks followed anywhere, but only as an O_PATH descriptor (nothing
    /// outside the root is really opened: no FIFO, device or read access), keep it only if the
    /// file it holds lies under the root, then reopen that same file for reading.
    fn open_verified(&self, dir: &OwnedFd, rel: &CStr) -> io::Result<File> {
        let pinned = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                rel.as_ptr(),
                libc::O_PATH | libc::O_CLOEXEC,
            )
        };
        if pinned < 0 {
            return Err(io::Error::last_os_error());
        }
        let pinned = unsafe { OwnedFd::from_raw_fd(pinned) };
        let link = format!("/proc/self/fd/{}", pinned.as_raw_fd());
        let real = std::fs::read_link(&link).map_err(|e| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("cannot tell where {link} leads ({e}): refused"),
            )
        })?;
        if !real.starts_with(&self.path) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} is outside {}", real.display(), self.path.display()),
            ));
        }
        let link = CString::new(link)?;
        let fd = unsafe { libc::open(link.as_ptr(), READ_FLAGS) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(unsafe { File::from_raw_fd(fd) })
    }
}

/// `openat2(dir, rel)` with RESOLVE_BENEATH: the kernel fails it (EXDEV) if any step of the
/// resolution, `..` or symlink, leaves `dir`; RESOLVE_NO_MAGICLINKS keeps /proc links out.
fn openat2_beneath(dir: &OwnedFd, rel: &CStr) -> io::Result<File> {
    // libc marks open_how non_exhaustive: zeroed (the kernel's "nothing asked"), then filled.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = READ_FLAGS as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            rel.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { File::from_raw_fd(fd as libc::c_int) })
}

/// `Root::lookup` on the blocking pool (path resolution is disk I/O).
async fn lookup(root: &Arc<Root>, rel: PathBuf) -> Lookup {
    let root = root.clone();
    tokio::task::spawn_blocking(move || root.lookup(rel))
        .await
        .unwrap_or(Lookup::Missing)
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

async fn serve_file(found: Found, headers: &HeaderMap, head: bool) -> Response<Body> {
    let len = found.meta.len();
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
        (header::CONTENT_TYPE, content_type(&found.rel).to_string()),
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
    let mut file = tokio::fs::File::from_std(found.file);
    if file.seek(io::SeekFrom::Start(start)).await.is_err() {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file");
    }
    reply(status, &fields, file_body(file, n))
}

/// `n` bytes from the file's position, read as they are sent.
fn file_body(file: tokio::fs::File, n: u64) -> Body {
    let chunks = tokio_util::io::ReaderStream::with_capacity(file.take(n), CHUNK_BYTES);
    StreamBody::new(chunks.map(|c| c.map(Frame::data))).boxed_unsync()
}

/// `<file>.sha256` for a file beneath the root: its hex digest, computed once per version of it.
async fn serve_digest(
    state: &Arc<State>,
    root: &Arc<Root>,
    of: PathBuf,
    head: bool,
) -> Response<Body> {
    let Lookup::File(found) = lookup(root, of).await else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    let hex = match digest(state, *found).await {
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

/// A file as it is now, by identity rather than name (two names of one file share a digest): a
/// digest is recomputed when the file changes.
#[derive(Clone, Hash, PartialEq, Eq)]
struct FileVersion {
    dev: u64,
    ino: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl FileVersion {
    fn of(m: &Metadata) -> Self {
        FileVersion {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            modified: (m.mtime(), m.mtime_nsec()),
            changed: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// A digest being computed (None) or its outcome, as the requests waiting for it see it.
type DigestCell = watch::Receiver<Option<Result<String, String>>>;

/// The file's hex SHA-256. The first request for a version starts a task that computes it and
/// the later ones wait for that task; the map's lock is held only to look the version up, never
/// while hashing. The task runs on when its requests go, so a client that hangs up cannot make
/// the server start over.
async fn digest(state: &Arc<State>, found: Found) -> Result<String, String> {
    let version = FileVersion::of(&found.meta);
    let mut cell = {
        let mut known = state.digests.lock().unwrap();
        match known.get(&version) {
            Some(cell) => cell.clone(),
            None => {
                if known.len() >= MAX_DIGESTS {
                    known.retain(|_, cell| cell.borrow().is_none());
                }
                let (tx, cell) = watch::channel(None);
                known.insert(version.clone(), cell.clone());
                drop(tokio::spawn(compute_digest(
                    state.clone(),
                    version,
                    found.file,
                    tx,
                )));
                cell
            }
        }
    };
    let outcome = cell
        .wait_for(Option::is_some)
        .await
        .map_err(|_| "the hashing task ended without a digest".to_string())?;
    outcome.clone().expect("waited for an outcome")
}

async fn compute_digest(
    state: Arc<State>,
    version: FileVersion,
    file: File,
    tx: watch::Sender<Option<Result<String, String>>>,
) {
    let outcome = sha256_in_chunks(file).await.map_err(|e| e.to_string());
    if outcome.is_err() {
        // Not remembered: the next request tries again.
        state.digests.lock().unwrap().remove(&version);
    }
    tx.send_replace(Some(outcome));
}

/// SHA-256 of a file, one `HASH_CHUNK_BYTES` job on the blocking pool at a time.
async fn sha256_in_chunks(file: File) -> io::Result<String> {
    let file = Arc::new(file);
    let mut hasher = sha2::Sha256::new();
    let mut at = 0u64;
    loop {
        let f = file.clone();
        let (h, n) = tokio::task::spawn_blocking(move || hash_chunk(&f, hasher, at))
            .await
            .map_err(io::Error::other)??;
        if n == 0 {
            return Ok(format!("{:x}", h.finalize()));
        }
        (hasher, at) = (h, at + n);
    }
}

/// Hash up to `HASH_CHUNK_BYTES` of the file from `at`: the hasher and the bytes read (0 at the
/// end of the file).
fn hash_chunk(file: &File, mut hasher: sha2::Sha256, at: u64) -> io::Result<(sha2::Sha256, u64)> {
    // One buffer per blocking thread (at most 8), not an allocation per chunk.
    thread_local!(static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; HASH_CHUNK_BYTES]));
    BUF.with_borrow_mut(|buf| loop {
        match file.read_at(buf, at) {
            Ok(n) => {
                hasher.update(&buf[..n]);
                return Ok((hasher, n as u64));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    })
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
/// keep-alive connections and clients that stop reading a response give their slot back. Bytes
/// that move are also reported to the connection's `Conn`, which ranks it for eviction.
struct IdleTimeout<S> {
    inner: S,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    conn: Arc<Conn>,
}

impl<S> IdleTimeout<S> {
    fn new(inner: S, idle: Duration, conn: Arc<Conn>) -> Self {
        IdleTimeout {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            conn,
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
            Poll::Ready(Ok(_)) if moved => {
                self.deadline.as_mut().reset(Instant::now() + self.idle);
                self.conn.touch();
            }
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
            Some(("/srv/web".into(), "app.html".into()))
        );
        assert_eq!(
            at("/models/a.gguf"),
            Some(("/srv/models".into(), "a.gguf".into()))
        );
        assert_eq!(at("/../etc/passwd"), None);
        assert_eq!(at("/models/%2e%2e/secret"), None);
        assert_eq!(at("/models/a%00b"), None);
        assert_eq!(at("/datasets/HumanEval.jsonl"), None);
    }

    /// A scratch root with links in and out of it; removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            use std::os::unix::fs::symlink;
            let dir =
                std::env::temp_dir().join(format!("creme-serve-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let root = dir.join("root");
            std::fs::create_dir_all(root.join("sub")).unwrap();
            std::fs::create_dir_all(dir.join("outside")).unwrap();
            std::fs::write(root.join("a.txt"), "a").unwrap();
            std::fs::write(root.join("sub/index.html"), "index").unwrap();
            std::fs::write(dir.join("outside/secret"), "SECRET").unwrap();
            symlink(root.join("a.txt"), root.join("in_abs")).unwrap();
            symlink("sub/index.html", root.join("in_rel")).unwrap();
            symlink("../outside/secret", root.join("out_rel")).unwrap();
            symlink(dir.join("outside/secret"), root.join("out_abs")).unwrap();
            symlink("../outside", root.join("out_dir")).unwrap();
            Scratch(dir)
        }

        fn root(&self) -> Root {
            Root::open(self.0.join("root"))
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn content(found: Lookup) -> Result<String, &'static str> {
        match found {
            Lookup::File(f) => Ok(io::read_to_string(f.file).unwrap()),
            Lookup::Missing => Err("missing"),
            Lookup::Refused => Err("refused"),
        }
    }

    #[test]
    fn files_open_beneath_their_root_only() {
        let scratch = Scratch::new("beneath");
        let root = scratch.root();
        let at = |rel: &str| content(root.lookup(rel.into()));
        assert_eq!(at("a.txt"), Ok("a".into()));
        assert_eq!(at(""), Err("missing")); // the root holds no index.html
        assert_eq!(at("sub"), Ok("index".into()));
        assert_eq!(at("in_abs"), Ok("a".into()));
        assert_eq!(at("in_rel"), Ok("index".into()));
        assert_eq!(at("out_rel"), Err("refused"));
        assert_eq!(at("out_abs"), Err("refused"));
        assert_eq!(at("out_dir/secret"), Err("refused"));
        assert_eq!(at("none"), Err("missing"));
        assert_eq!(at("out_dir/none"), Err("missing"));
    }

    /// Each of the two openers on its own: openat2 refuses what leaves the root (and absolute
    /// links), the descriptor check refuses what leaves it once opened.
    #[test]
    fn both_openers_refuse_a_way_out() {
        let scratch = Scratch::new("openers");
        let root = scratch.root();
        let dir = root.dir.as_ref().unwrap();
        let c = |s: &str| CString::new(s).unwrap();
        let read = |f: io::Result<File>| f.map(|f| io::read_to_string(f).unwrap());
        let errno = |f: io::Result<File>| f.err().and_then(|e| e.raw_os_error());
        match openat2_beneath(dir, &c("a.txt")) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                eprintln!("no openat2 here: only the descriptor check is tested")
            }
            opened => {
                assert_eq!(read(opened).unwrap(), "a");
                assert_eq!(read(openat2_beneath(dir, &c("in_rel"))).unwrap(), "index");
                assert_eq!(
                    errno(openat2_beneath(dir, &c("out_rel"))),
                    Some(libc::EXDEV)
                );
                assert_eq!(
                    errno(openat2_beneath(dir, &c("out_dir/secret"))),
                    Some(libc::EXDEV)
                );
                assert_eq!(errno(openat2_beneath(dir, &c("in_abs"))), Some(libc::EXDEV));
            }
        }
        assert_eq!(read(root.open_verified(dir, &c("in_abs"))).unwrap(), "a");
        assert_eq!(
            read(root.open_verified(dir, &c("in_rel"))).unwrap(),
            "index"
        );
        for out in ["out_rel", "out_abs", "out_dir/secret"] {
            let e = root.open_verified(dir, &c(out)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{out}: {e}");
        }
    }
}
