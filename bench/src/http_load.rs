//! An open-loop HTTP/1.1 load generator for `meterline bench quota`.
//!
//! The benchmark shares two cores with the system it measures, so the load generator should
//! cost as little CPU as it can: every microsecond it spends is one the read path, Redis or the
//! write path does not get. A general HTTP client (reqwest: a connection pool behind a lock, a
//! task per connection and a channel between it and each request) spent about as much CPU per
//! request as the server answering it. Here the requests are built once, as bytes, and sent on
//! keep-alive connections driven by one thread that does nothing else:
//!
//! * a pacing thread wakes when request `i` is due (`start + i / rate`) and hands its index to
//!   the driver; a plain thread because Tokio's timer ticks in whole milliseconds;
//! * the driver, a current-thread runtime, gives it to an idle connection (opening one when none
//!   is idle, up to [`MAX_CONNECTIONS`], queueing beyond) and reads each answer as it comes. A
//!   connection is opened inside its first request's future, so a connect that takes long (a
//!   SYN dropped by the server's full accept queue is sent again only after a second) delays
//!   that request, not every request behind it: gateways do not stop sending while one of
//!   them connects;
//! * a request's latency counts from when it was due, not from when it was sent, so a stall
//!   anywhere shows in the percentiles instead of quietly lowering the rate (no coordinated
//!   omission).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::future::Either;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Connections held open at most; more requests than this in flight wait for one to free.
pub const MAX_CONNECTIONS: usize = 256;

/// A connection idle this long is closed rather than reused: servers close idle keep-alive
/// connections (ingest after `ingest.header_read_timeout_ms`, 10 s by default), and a request
/// written to one they just closed fails.
const IDLE_LIMIT: Duration = Duration::from_secs(5);

/// A `POST` of `body` to `path` with a bearer token, as bytes ready to write.
pub fn post_request(host: &str, path: &str, token: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Microseconds from when each successful request was due to when its answer was read.
    pub latencies_us: Vec<u64>,
    /// Answers other than 200, and requests whose connection failed.
    pub errors: u64,
    /// The errors by what went wrong ("status 503", "connection closed mid-answer", …).
    pub error_kinds: std::collections::BTreeMap<String, u64>,
    /// Connections opened.
    pub connections: usize,
}

/// Sends `total` requests to `addr` at `rate` per second, open loop, request `i` being
/// `requests[pick(i)]`. Blocks the calling thread until every answer is in.
pub fn run(
    addr: SocketAddr,
    requests: Vec<Vec<u8>>,
    rate: u64,
    total: u64,
    mut pick: impl FnMut(u64) -> usize + Send + 'static,
) -> Result<LoadResult> {
    anyhow::ensure!(rate > 0 && !requests.is_empty(), "nothing to send");
    let (due_tx, due_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let pacer = std::thread::Builder::new()
        .name("load-pacer".into())
        .spawn(move || {
            for i in 0..total {
                let due = started + period.mul_f64(i as f64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if due_tx.send((pick(i), due)).is_err() {
                    return;
                }
            }
        })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(drive(addr, &requests, due_rx, TcpStream::connect));
    pacer.join().expect("pacer thread");
    result
}

/// Hands each due request to a connection; `connect` opens one (`TcpStream::connect`, or a
/// slower one in a test).
async fn drive<C, F>(
    addr: SocketAddr,
    requests: &[Vec<u8>],
    mut due: tokio::sync::mpsc::UnboundedReceiver<(usize, Instant)>,
    connect: C,
) -> Result<LoadResult>
where
    C: Fn(SocketAddr) -> F,
    F: std::future::Future<Output = std::io::Result<TcpStream>>,
{
    let mut result = LoadResult::default();
    let mut idle: Vec<Connection> = Vec::new();
    let mut waiting: VecDeque<(usize, Instant)> = VecDeque::new();
    let mut in_flight = FuturesUnordered::new();
    let mut open = 0usize;
    let mut pacer_done = false;
    loop {
        // Start whatever can start: an idle connection, or a new one while under the cap.
        while let Some((which, at)) = waiting.pop_front() {
            // The most recently used first; one idle too long is dropped (and counted open no
            // more) in favour of a new one.
            let fresh = loop {
                match idle.pop() {
                    Some(c) if c.idle_since.elapsed() > IDLE_LIMIT => open -= 1,
                    other => break other,
                }
            };
            let exchange = match fresh {
                Some(c) => Either::Left(c.exchange(&requests[which], at)),
                None if open < MAX_CONNECTIONS => {
                    open += 1;
                    result.connections += 1;
                    let opening = connect(addr);
                    let request = &requests[which];
                    Either::Right(async move {
                        match Connection::open(opening).await {
                            Ok(c) => c.exchange(request, at).await,
                            Err(e) => (None, Err(e)),
                        }
                    })
                }
                None => {
                    waiting.push_front((which, at));
                    break;
                }
            };
            in_flight.push(exchange);
        }
        if pacer_done && waiting.is_empty() && in_flight.is_empty() {
            return Ok(result);
        }
        tokio::select! {
            next = due.recv(), if !pacer_done => match next {
                Some(request) => waiting.push_back(request),
                None => pacer_done = true,
            },
            Some((conn, outcome)) = in_flight.next(), if !in_flight.is_empty() => match outcome {
                Ok(elapsed) => {
                    result.latencies_us.push(elapsed.as_micros() as u64);
                    idle.extend(conn);
                }
                Err(e) => {
                    result.errors += 1;
                    *result.error_kinds.entry(e.to_string()).or_default() += 1;
                    open -= 1;
                }
            },
        }
    }
}

/// A keep-alive connection with its read buffers.
struct Connection {
    stream: BufReader<TcpStream>,
    head: Vec<u8>,
    body: Vec<u8>,
    /// When its last answer was read (or it was opened).
    idle_since: Instant,
}

impl Connection {
    async fn open(
        connecting: impl std::future::Future<Output = std::io::Result<TcpStream>>,
    ) -> Result<Self> {
        let stream = connecting.await.context("connecting")?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream: BufReader::new(stream),
            head: Vec::with_capacity(512),
            body: Vec::with_capacity(2048),
            idle_since: Instant::now(),
        })
    }

    /// Writes `request`, reads the whole answer and returns the time since `due`; an answer
    /// other than 200 is an error. The connection comes back to be used again (always `Some`;
    /// `None` is a connection that could not be opened).
    async fn exchange(mut self, request: &[u8], due: Instant) -> (Option<Self>, Result<Duration>) {
        let outcome = self.round_trip(request).await.and_then(|status| {
            if status == 200 {
                Ok(due.elapsed())
            } else {
                bail!("status {status}")
            }
        });
        self.idle_since = Instant::now();
        (Some(self), outcome)
    }

    async fn round_trip(&mut self, request: &[u8]) -> Result<u16> {
        self.stream.get_mut().write_all(request).await?;
        self.head.clear();
        loop {
            let n = self.stream.read_until(b'\n', &mut self.head).await?;
            if n == 0 {
                bail!("connection closed mid-answer");
            }
            if self.head.ends_with(b"\r\n\r\n") {
                break;
            }
        }
        let (status, length) = parse_head(&self.head)?;
        self.body.resize(length, 0);
        self.stream.read_exact(&mut self.body).await?;
        Ok(status)
    }
}

/// The status code and `content-length` of an HTTP/1.1 answer's head (through the blank line).
/// Answers without a length (chunked) are not expected from the read path and are refused.
fn parse_head(head: &[u8]) -> Result<(u16, usize)> {
    let text = std::str::from_utf8(head).context("answer head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP/1.1 status line: {status_line:?}"))?;
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.trim().parse::<usize>())
        .context("answer has no content-length")?
        .context("content-length is not a number")?;
    Ok((status, length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_give_their_status_and_length() {
        let head =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 42\r\n\r\n";
        assert_eq!(parse_head(head).unwrap(), (200, 42));
        let refused = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(parse_head(refused).unwrap(), (503, 0));
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        assert!(parse_head(chunked).is_err());
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }

    #[test]
    fn requests_carry_their_length_and_token() {
        let r = post_request("h:1", "/v1/quota/check", "tok", r#"{"a":1}"#);
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("POST /v1/quota/check HTTP/1.1\r\n"));
        assert!(text.contains("authorization: Bearer tok\r\n"));
        assert!(text.ends_with("content-length: 7\r\n\r\n{\"a\":1}"));
    }

    /// A local server that answers every request with 200, `delay` after reading it.
    fn answering_server(delay: Duration) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                std::thread::spawn(move || {
                    use std::io::{BufRead, Read, Write};
                    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                    loop {
                        let mut length = 0;
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).unwrap() == 0 {
                                return;
                            }
                            if let Some(v) = line.strip_prefix("content-length: ") {
                                length = v.trim().parse().unwrap();
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut body = vec![0; length];
                        reader.read_exact(&mut body).unwrap();
                        std::thread::sleep(delay);
                        stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .unwrap();
                    }
                });
            }
        });
        addr
    }

    /// Against a local server that answers every request with 200 after reading it: every
    /// request is answered, at the asked rate, on few connections.
    #[test]
    fn every_request_is_sent_and_timed_from_when_it_was_due() {
        let addr = answering_server(Duration::ZERO);
        let requests = vec![
            post_request("x", "/", "t", "{}"),
            post_request("x", "/", "t", "[]"),
        ];
        let started = Instant::now();
        let result = run(addr, requests, 500, 250, |i| (i % 2) as usize).unwrap();
        assert_eq!(result.latencies_us.len(), 250, "errors {}", result.errors);
        assert_eq!(result.errors, 0);
        // 250 requests at 500/s take half a second: the pacer neither bunched nor skipped them.
        assert!(started.elapsed() >= Duration::from_millis(490));
        assert!(result.connections >= 1 && result.connections < 250);
    }

    /// A connection that takes long to open (here 1.5 s, as a SYN dropped by a full accept
    /// queue does) delays the one request it was opened for; the requests due meanwhile go on
    /// the other connections. With the connect awaited in the driver's loop, every request due
    /// in that time waited for it.
    #[test]
    fn a_slow_connect_delays_only_its_own_request() {
        // Each answer takes 20 ms and a request is due every 5 ms, so several connections are
        // open at once; the second one opened is the slow one.
        let addr = answering_server(Duration::from_millis(20));
        let requests = vec![post_request("x", "/", "t", "{}")];
        let (due_tx, due_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
        let started = Instant::now();
        let pacer = std::thread::spawn(move || {
            for i in 0..40u32 {
                let due = started + Duration::from_millis(5) * i;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                due_tx.send((0, due)).unwrap();
            }
        });
        let opened = std::sync::atomic::AtomicUsize::new(0);
        let connect = |addr: SocketAddr| {
            let n = opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move {
                if n == 1 {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
                TcpStream::connect(addr).await
            }
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let result = runtime
            .block_on(drive(addr, &requests, due_rx, connect))
            .unwrap();
        pacer.join().unwrap();
        assert_eq!(result.latencies_us.len(), 40, "errors {}", result.errors);
        let slow: Vec<u64> = result
            .latencies_us
            .iter()
            .copied()
            .filter(|us| *us >= 900_000)
            .collect();
        assert_eq!(
            slow.len(),
            1,
            "only the request the slow connection was opened for waited for it: {slow:?}"
        );
        assert!(slow[0] >= 1_500_000, "{slow:?}");
    }
}
