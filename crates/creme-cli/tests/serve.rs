//! `creme serve` against plain TCP clients: files, ranges, roots that symlinks cannot leave (not
//! even swapped in mid-request), and the limits that keep idle, slow and oversized clients from
//! exhausting threads, memory and connection slots (issues 17 and 36).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `creme serve`, killed when dropped.
struct Server {
    child: Child,
    port: u16,
    _stdout: BufReader<ChildStdout>, // kept open: the server prints to it
}

impl Server {
    fn start(web: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_creme"));
        cmd.args(["serve", "--port", "0", "--web"])
            .arg(web)
            .args(args)
            .stdout(Stdio::piped());
        cmd.env_remove("CREME_SERVE_IDLE_SECS")
            .env_remove("CREME_SERVE_MAX_CONNS")
            .envs(env.iter().copied());
        let mut child = cmd.spawn().expect("starting creme serve");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        // The browser tests parse /127\.0\.0\.1:(\d+)/ from this line.
        let port = line
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok());
        let Some(port) = port else {
            let _ = child.kill();
            panic!("no port in {line:?}");
        };
        Server {
            child,
            port,
            _stdout: stdout,
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    /// One request on a fresh connection (closed after it): status, header block, body.
    fn get(&self, path: &str, headers: &str) -> Reply {
        self.request("GET", path, headers)
    }

    fn request(&self, method: &str, path: &str, headers: &str) -> Reply {
        let mut s = self.connect();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}\r\n"
        )
        .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("reading the reply (20 s)");
        Reply::parse(&raw)
    }

    fn status_field(&self, field: &str) -> u64 {
        self.proc_field("status", field)
    }

    /// A counter of /proc/PID/io (bytes read, written).
    fn io_field(&self, field: &str) -> u64 {
        self.proc_field("io", field)
    }

    fn proc_field(&self, file: &str, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id())).unwrap();
        let line = text.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn parse(raw: &[u8]) -> Reply {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
        let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        Reply {
            status,
            head,
            body: raw[split + 4..].to_vec(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")).map(str::trim))
    }
}

/// A scratch directory with web/ (index.html, data.bin), models/, datasets/, and a secret file
/// outside all of them.
struct Fixture {
    dir: PathBuf,
    data: Vec<u8>,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("creme-serve-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["web", "models", "datasets"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("web/index.html"), "<!doctype html>hello").unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(dir.join("web/data.bin"), &data).unwrap();
        std::fs::write(dir.join("models/m.gguf"), &data[..1000]).unwrap();
        std::fs::write(dir.join("secret.txt"), "root:SECRET:0:0\n").unwrap();
        Fixture { dir, data }
    }

    fn start(&self, env: &[(&str, &str)]) -> Server {
        let (models, datasets) = (self.dir.join("models"), self.dir.join("datasets"));
        Server::start(
            &self.dir.join("web"),
            &[
                "--models",
                models.to_str().unwrap(),
                "--dataset",
                datasets.to_str().unwrap(),
            ],
            env,
        )
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn files_ranges_head_and_digests() {
    let fx = Fixture::new("files");
    let srv = fx.start(&[]);
    let len = fx.data.len();

    let r = srv.get("/", "");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"<!doctype html>hello"[..])
    );
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let r = srv.get("/data.bin", "");
    assert_eq!(r.status, 200);
    assert!(
        r.body == fx.data,
        "whole file: {} bytes of {len}",
        r.body.len()
    );

    let r = srv.get("/data.bin", "Range: bytes=10-19\r\n");
    assert_eq!(
        (r.status, r.header("content-range")),
        (206, Some(format!("bytes 10-19/{len}").as_str()))
    );
    assert_eq!(r.body, &fx.data[10..20]);
    let r = srv.get("/data.bin", "Range: bytes=-5\r\n");
    assert_eq!((r.status, r.body.as_slice()), (206, &fx.data[len - 5..]));
    let r = srv.get("/data.bin", "Range: bytes=299990-\r\n");
    assert_eq!((r.status, r.body.as_slice()), (206, &fx.data[299_990..]));

    // Several ranges: the whole file (RFC 9110 lets a server ignore Range), never 416.
    let r = srv.get("/data.bin", "Range: bytes=0-1,5-9\r\n");
    assert_eq!(r.status, 200);
    assert!(r.body == fx.data);
    let r = srv.get("/data.bin", &format!("Range: bytes={len}-\r\n"));
    assert_eq!(
        (r.status, r.header("content-range")),
        (416, Some(format!("bytes */{len}").as_str()))
    );

    let r = srv.request("HEAD", "/data.bin", "");
    assert_eq!(
        (r.status, r.header("content-length"), r.body.len()),
        (200, Some(len.to_string().as_str()), 0)
    );
    assert_eq!(
        srv.request("POST", "/data.bin", "Content-Length: 0\r\n")
            .status,
        405
    );

    use sha2::Digest;
    let r = srv.get("/models/m.gguf.sha256", "");
    assert_eq!(r.status, 200);
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        format!("{:x}\n", sha2::Sha256::digest(&fx.data[..1000]))
    );
    assert_eq!(srv.get("/models/none.gguf.sha256", "").status, 404);
    assert_eq!(srv.get("/missing.html", "").status, 404);
}

#[cfg(unix)]
#[test]
fn symlinks_and_dot_dot_cannot_leave_a_root() {
    use std::os::unix::fs::symlink;
    let fx = Fixture::new("paths");
    let d = &fx.dir;
    symlink(d.join("secret.txt"), d.join("datasets/HumanEval.jsonl")).unwrap();
    symlink(d.join("secret.txt"), d.join("web/secret.txt")).unwrap();
    symlink(d, d.join("web/up")).unwrap();
    symlink(d.join("secret.txt"), d.join("models/x.gguf")).unwrap();
    symlink(d.join("web/index.html"), d.join("web/inside.html")).unwrap();
    let srv = fx.start(&[]);

    for path in [
        "/datasets/HumanEval.jsonl",
        "/secret.txt",
        "/up/secret.txt",
        "/models/x.gguf",
        "/models/x.gguf.sha256",
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/models/%2e%2e/secret.txt",
        "/up/",
    ] {
        let r = srv.get(path, "");
        assert!(matches!(r.status, 403 | 404), "{path}: {}", r.status);
        assert!(
            !String::from_utf8_lossy(&r.body).contains("SECRET"),
            "{path} leaked the file"
        );
    }
    // A link that stays inside its root is served, like a plain file.
    assert_eq!(srv.get("/inside.html", "").status, 200);
    assert_eq!(srv.get("/index.html", "").status, 200);
}

/// Issue 36: with every slot held by an idle socket a request waited 19.9 s; idle connections now
/// give way to new ones. 600 idle connections against 512 slots; the issue asks for under 1 s.
#[test]
fn idle_connections_do_not_starve_a_request() {
    let fx = Fixture::new("idle");
    let srv = fx.start(&[]);
    let idle: Vec<TcpStream> = (0..600).map(|_| srv.connect()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let r = srv.get("/data.bin", "");
    let took = t.elapsed();
    assert!(
        r.status == 200 && r.body == fx.data,
        "status {}, {} bytes",
        r.status,
        r.body.len()
    );
    eprintln!("answered in {took:?} with 600 idle connections open");
    assert!(took < Duration::from_secs(1), "answered in {took:?}");
    let threads = srv.status_field("Threads:");
    assert!(threads <= 16, "{threads} threads for 600 connections");
    drop(idle);
}

#[test]
fn past_the_connection_limit_idle_connections_give_way() {
    let fx = Fixture::new("limit");
    let srv = fx.start(&[
        ("CREME_SERVE_MAX_CONNS", "16"),
        ("CREME_SERVE_IDLE_SECS", "30"),
    ]);
    let idle: Vec<TcpStream> = (0..60).map(|_| srv.connect()).collect();
    let t = Instant::now();
    let r = srv.get("/", "");
    assert_eq!(r.status, 200);
    // Not a speed bound: without eviction no slot frees before the 30 s idle timeout.
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    // The oldest connection gave way first, and was closed (EOF), not left hanging.
    let mut oldest = idle.into_iter().next().unwrap();
    assert_eq!(
        oldest.read(&mut [0u8; 16]).unwrap(),
        0,
        "the oldest is open"
    );
}

/// Eviction takes idle connections only: with one slot, a connection still receiving a response
/// keeps it, and a new request waits until that response is sent in full.
#[test]
fn a_connection_answering_a_request_is_never_evicted() {
    let fx = Fixture::new("busy");
    let size = 64u64 << 20;
    std::fs::File::create(fx.dir.join("web/big.bin"))
        .unwrap()
        .set_len(size)
        .unwrap();
    let srv = fx.start(&[("CREME_SERVE_MAX_CONNS", "1")]);
    let mut busy = srv.connect();
    busy.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = busy.read(&mut buf).unwrap() as u64;

    let port = srv.port;
    let (done, answered) = std::sync::mpsc::channel();
    let later = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let _ = done.send(());
        raw
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        answered.try_recv().is_err(),
        "the new request was answered while the only slot was busy"
    );
    while let Ok(n @ 1..) = busy.read(&mut buf) {
        got += n as u64;
    }
    // The header block came too: at least the whole file arrived.
    assert!(got >= size, "the busy connection was cut after {got} bytes");
    let raw = later.join().unwrap();
    assert_eq!(Reply::parse(&raw).status, 200);
}

/// Issue 36: a directory swapped for a symlink between the server's path check and its open
/// served `/etc/passwd` in 2,630 of 16,663 requests. Here one thread swaps two directories inside
/// the root with links out of it (one absolute, one relative) while 10,000 requests, files and
/// digests, go through them on keep-alive connections.
#[cfg(target_os = "linux")]
#[test]
fn a_directory_swapped_for_a_symlink_never_leads_out() {
    use sha2::Digest;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let fx = Fixture::new("race");
    let (web, outside) = (fx.dir.join("web"), fx.dir.join("outside"));
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("passwd"), "root:SECRET:0:0\n").unwrap();
    for d in ["a", "b"] {
        std::fs::create_dir(web.join(d)).unwrap();
        std::fs::write(web.join(d).join("passwd"), "inside\n").unwrap();
    }
    std::os::unix::fs::symlink(&outside, web.join("a.swap")).unwrap();
    std::os::unix::fs::symlink("../outside", web.join("b.swap")).unwrap();
    let inside_hex = format!("{:x}\n", sha2::Sha256::digest(b"inside\n"));
    let secret_hex = format!("{:x}\n", sha2::Sha256::digest(b"root:SECRET:0:0\n"));
    let srv = fx.start(&[]);

    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, web) = (stop.clone(), web.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for d in ["a", "b"] {
                    exchange(&web.join(d), &web.join(format!("{d}.swap")));
                    swaps += 1;
                }
                // Thousands of swaps a second, not a core spent on them: renames in a tight
                // loop slow every path lookup on the machine.
                std::thread::sleep(Duration::from_micros(50));
            }
            swaps
        })
    };
    let port = srv.port;
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (inside_hex, secret_hex) = (inside_hex.clone(), secret_hex.clone());
            std::thread::spawn(move || {
                let mut client = KeepAlive::new(port);
                let (mut inside, mut refused) = (0u32, 0u32);
                for i in 0..2500 {
                    let path = [
                        "/a/passwd",
                        "/b/passwd",
                        "/a/passwd.sha256",
                        "/b/passwd.sha256",
                    ][(i + c) % 4];
                    let r = client.get(path);
                    let body = String::from_utf8_lossy(&r.body);
                    assert!(
                        !body.contains("SECRET") && body != secret_hex,
                        "{path} served the file outside the root (request {i})"
                    );
                    match r.status {
                        200 if body == "inside\n" || body == inside_hex => inside += 1,
                        403 | 404 => refused += 1,
                        s => panic!("{path}: {s} {body:?}"),
                    }
                }
                (inside, refused)
            })
        })
        .collect();
    let outcomes: Vec<(u32, u32)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    let (inside, refused) = outcomes
        .iter()
        .fold((0, 0), |(a, b), &(i, r)| (a + i, b + r));
    eprintln!("{inside} served from inside, {refused} refused, {swaps} swaps");
    assert_eq!(inside + refused, 10_000);
    // Both sides of the swap were seen: the race was really run.
    assert!(
        inside > 0 && refused > 0,
        "{inside} inside, {refused} refused"
    );
}

/// Swap two paths atomically (a directory and a symlink here).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let (a, b) = (c(a), c(b));
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(rc, 0, "renameat2: {}", std::io::Error::last_os_error());
}

/// Requests one after another on one connection, reconnecting when the server closes it.
struct KeepAlive {
    port: u16,
    conn: Option<BufReader<TcpStream>>,
}

impl KeepAlive {
    fn new(port: u16) -> Self {
        KeepAlive { port, conn: None }
    }

    fn get(&mut self, path: &str) -> Reply {
        for _ in 0..3 {
            if let Some(r) = self.try_get(path) {
                return r;
            }
            self.conn = None;
        }
        panic!("{path}: no reply in three connections");
    }

    fn try_get(&mut self, path: &str) -> Option<Reply> {
        let conn = match &mut self.conn {
            Some(c) => c,
            None => {
                let s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
                s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
                self.conn.insert(BufReader::new(s))
            }
        };
        // One write: in pieces, Nagle and delayed ACKs would cost 40 ms a request.
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        conn.get_mut().write_all(request.as_bytes()).ok()?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            if conn.read_until(b'\n', &mut head).ok()? == 0 {
                return None;
            }
        }
        let mut reply = Reply::parse(&head);
        let len: usize = reply.header("content-length")?.parse().ok()?;
        reply.body.resize(len, 0);
        conn.read_exact(&mut reply.body).ok()?;
        Some(reply)
    }
}

/// Issue 36: one lock over all digests made hashing a 2 GiB file hold up every other digest for
/// 9.5 s. While a big file's digest is being computed, a small file's is answered first.
#[test]
fn hashing_a_big_file_does_not_hold_up_another_digest() {
    use sha2::Digest;
    let fx = Fixture::new("digests");
    // Sparse: no disk, but 2 GiB to read and hash, several seconds on any machine.
    std::fs::File::create(fx.dir.join("models/big.gguf"))
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let srv = fx.start(&[]);
    let read_before = srv.io_field("rchar:");
    let port = srv.port;
    let (done, big_answered) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _ = s.write_all(b"GET /models/big.gguf.sha256 HTTP/1.1\r\nHost: x\r\n\r\n");
        let _ = s.read(&mut [0u8; 256]); // the reply, or the end when the server is killed
        let _ = done.send(());
    });
    // Hashing is under way once the server has read 256 MiB of the big file.
    let t = Instant::now();
    while srv.io_field("rchar:") - read_before < 256 << 20 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the big digest never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let t = Instant::now();
    let r = srv.get("/models/m.gguf.sha256", "");
    let took = t.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        format!("{:x}\n", sha2::Sha256::digest(&fx.data[..1000]))
    );
    eprintln!("small digest answered in {took:?} while the big one was computed");
    assert!(
        big_answered.try_recv().is_err(),
        "the small digest came only after the big one ({took:?})"
    );
}

#[test]
fn idle_and_slow_connections_are_closed() {
    let fx = Fixture::new("timeout");
    let srv = fx.start(&[("CREME_SERVE_IDLE_SECS", "2")]);
    let closed_within = |mut s: TcpStream, limit: Duration| {
        let t = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {} // a reply (408 or the response) before the close
            }
        }
        assert!(t.elapsed() < limit, "open for {:?}", t.elapsed());
    };
    // Connected, sending nothing.
    closed_within(srv.connect(), Duration::from_secs(8));

    // Keep-alive after one full reply.
    let mut s = srv.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    closed_within(s, Duration::from_secs(8));

    // Headers trickling in, a line every 0.5 s: each line resets the idle timer, not the header one.
    let s = srv.connect();
    let writer = s.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        let mut w = writer;
        let _ = w.write_all(b"GET / HTTP/1.1\r\n");
        for i in 0..20 {
            std::thread::sleep(Duration::from_millis(500));
            if w.write_all(format!("X-{i}: y\r\n").as_bytes()).is_err() {
                break;
            }
        }
    });
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    closed_within(s, Duration::from_secs(8));
    trickle.join().unwrap();

    assert_eq!(srv.get("/", "").status, 200);
}

#[test]
fn a_client_that_stops_reading_is_dropped() {
    let fx = Fixture::new("stall");
    // Larger than the socket buffers on both sides, so the server's writes stall.
    let big = std::fs::File::create(fx.dir.join("web/big.bin")).unwrap();
    big.set_len(256 << 20).unwrap();
    let srv = fx.start(&[("CREME_SERVE_IDLE_SECS", "2")]);
    let mut s = srv.connect();
    s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    while let Ok(n @ 1..) = s.read(&mut buf) {
        got += n as u64;
    }
    assert!(got < 256 << 20, "the whole file came after a 5 s stall");
    assert_eq!(srv.get("/", "").status, 200);
}

#[test]
fn a_huge_header_is_refused_in_bounded_memory() {
    let fx = Fixture::new("header");
    let srv = fx.start(&[]);
    assert_eq!(srv.get("/", "").status, 200);
    let rss_before = srv.status_field("VmRSS:");
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let mut s = srv.connect();
            std::thread::spawn(move || {
                let mut line = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
                line.resize(line.len() + (16 << 20), b'a');
                // The server closes the connection early: a failed write is expected.
                let _ = s.write_all(&line).and_then(|_| s.write_all(b"\r\n\r\n"));
                let mut reply = Vec::new();
                let _ = s.read_to_end(&mut reply);
                reply
            })
        })
        .collect();
    for t in senders {
        let reply = t.join().unwrap();
        let status = String::from_utf8_lossy(&reply[..reply.len().min(12)]).to_string();
        assert!(
            reply.is_empty() || status.starts_with("HTTP/1.1 431"),
            "replied {status:?}"
        );
    }
    // The peak, not just the end state: before hyper's buffer limit it grew by the line's size.
    let grown_kib = srv.status_field("VmHWM:").saturating_sub(rss_before);
    assert!(
        grown_kib < 16 * 1024,
        "peaked {grown_kib} KiB above the start"
    );
    assert_eq!(srv.get("/", "").status, 200);
}
