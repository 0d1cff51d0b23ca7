//! A loopback server that misbehaves on purpose, for the tests that check
//! a client stays safe and bounded against a hostile or broken server.
//!
//! Every behaviour is bounded in count and time on the server side too
//! (a cap on the bytes it will ever send per answer, a cap on drips), so a
//! client that failed to stop cannot make a test run forever: it fails on
//! its assertions instead. The server stops sending as soon as the client
//! goes away, and counts what it sent, so a test can check that the client
//! stopped reading early without timing anything.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;

use crate::Api;

/// What the server does with every request.
#[derive(Debug, Clone, PartialEq)]
pub enum Misbehaviour {
    /// Answer `status` (301, 302, 303, 307, 308) with `location: {location}`
    /// and an empty body.
    Redirect { status: u16, location: String },
    /// A 200 `application/json` body of `bytes` bytes that never closes its
    /// JSON (an answer text of `a`s), without a `content-length`.
    HugeBody { bytes: u64 },
    /// Like [`Misbehaviour::HugeBody`] but announcing its length.
    HugeBodyWithLength { bytes: u64 },
    /// A 200 event stream of content events in the request's dialect that
    /// never ends (until [`MAX_BYTES`] or the client leaves); NDJSON lines
    /// on Ollama's `/api/chat`.
    EndlessStream,
    /// A 200 event stream whose first line, `data: …`, never ends (on
    /// Ollama's `/api/chat`, an NDJSON line).
    HugeLine,
    /// A 200 event stream that sends one keep-alive comment every `every`
    /// (at most [`MAX_DRIPS`]) and nothing else.
    SlowDrip { every: Duration },
    /// A `status` answer whose JSON error body is `bytes` long.
    HugeErrorBody { status: u16, bytes: u64 },
}

/// The most bytes one answer will ever carry (4 GiB): more than any limit
/// under test, less than forever.
pub const MAX_BYTES: u64 = 4 << 30;

/// The most keep-alives [`Misbehaviour::SlowDrip`] sends.
pub const MAX_DRIPS: u64 = 100_000;

/// A request as the hostile server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
}

struct Shared {
    behaviour: Mutex<Misbehaviour>,
    seen: Mutex<Vec<Seen>>,
    sent: AtomicU64,
}

/// The running server; dropping it stops it.
pub struct HostileServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl HostileServer {
    /// Start on 127.0.0.1 with a random port, inside the current runtime.
    pub async fn start(behaviour: Misbehaviour) -> HostileServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let shared = Arc::new(Shared {
            behaviour: Mutex::new(behaviour),
            seen: Mutex::new(Vec::new()),
            sent: AtomicU64::new(0),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        HostileServer { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, behaviour: Misbehaviour) {
        *self.shared.behaviour.lock().unwrap() = behaviour;
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Body bytes handed to the connection so far, all answers together.
    pub fn bytes_sent(&self) -> u64 {
        self.shared.sent.load(Ordering::SeqCst)
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    // The request body is read (and dropped) so the client sees an answer,
    // not a reset, whatever it sent.
    let _ = axum::body::to_bytes(body, 64 << 20).await;
    let path = parts.uri.path().to_owned();
    shared.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path: path.clone(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    });
    let behaviour = shared.behaviour.lock().unwrap().clone();
    match behaviour {
        Misbehaviour::Redirect { status, location } => {
            let mut r = response(status, "text/plain", Body::empty());
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert("location", v);
            }
            r
        }
        Misbehaviour::HugeBody { bytes } => response(
            200,
            "application/json",
            counted(&shared, huge_json(bytes.min(MAX_BYTES))),
        ),
        Misbehaviour::HugeBodyWithLength { bytes } => {
            let bytes = bytes.min(MAX_BYTES);
            let mut r = response(200, "application/json", counted(&shared, huge_json(bytes)));
            r.headers_mut()
                .insert("content-length", HeaderValue::from(bytes));
            r
        }
        Misbehaviour::EndlessStream => {
            let api = Api::of_path(&path);
            let event = content_event(api);
            let stream = futures::stream::iter(std::iter::repeat_n(
                Bytes::from(event.repeat(64)),
                usize::try_from(MAX_BYTES / (event.len() as u64 * 64)).unwrap_or(0),
            ));
            response(200, stream_type(api), counted(&shared, stream))
        }
        Misbehaviour::HugeLine => {
            let api = Api::of_path(&path);
            let head: &'static [u8] = if api == Api::Ollama {
                b"{\"message\":{\"role\":\"assistant\",\"content\":\""
            } else {
                b"data: {\"x\":\""
            };
            let head = futures::stream::iter([Bytes::from_static(head)]);
            let rest = filler(MAX_BYTES);
            response(
                200,
                stream_type(api),
                counted(&shared, futures::StreamExt::chain(head, rest)),
            )
        }
        Misbehaviour::SlowDrip { every } => {
            let stream = futures::stream::unfold(0u64, move |n| async move {
                if n >= MAX_DRIPS {
                    return None;
                }
                if n > 0 {
                    tokio::time::sleep(every).await;
                }
                Some((Bytes::from_static(b": drip\n"), n + 1))
            });
            response(200, "text/event-stream", counted(&shared, stream))
        }
        Misbehaviour::HugeErrorBody { status, bytes } => {
            let head = futures::stream::iter([Bytes::from_static(
                b"{\"error\":{\"type\":\"server_error\",\"message\":\"",
            )]);
            let rest = filler(bytes.min(MAX_BYTES));
            let tail = futures::stream::iter([Bytes::from_static(b"\"}}")]);
            let stream = futures::StreamExt::chain(futures::StreamExt::chain(head, rest), tail);
            response(status, "application/json", counted(&shared, stream))
        }
    }
}

/// `n` bytes of `a`, in 64 KiB writes.
fn filler(n: u64) -> impl futures::Stream<Item = Bytes> + Send + 'static {
    const CHUNK: u64 = 64 * 1024;
    let block = Bytes::from(vec![b'a'; CHUNK as usize]);
    futures::stream::unfold(0u64, move |done| {
        let block = block.clone();
        async move {
            if done >= n {
                return None;
            }
            let len = CHUNK.min(n - done);
            Some((block.slice(..len as usize), done + len))
        }
    })
}

/// A JSON answer whose text is `bytes` long in all and never closes.
fn huge_json(bytes: u64) -> impl futures::Stream<Item = Bytes> + Send + 'static {
    let head: &'static [u8] = b"{\"choices\":[{\"message\":{\"content\":\"";
    futures::StreamExt::chain(
        futures::stream::iter([Bytes::from_static(head)]),
        filler(bytes.saturating_sub(head.len() as u64)),
    )
}

/// The content type of a stream in the dialect the path speaks.
fn stream_type(api: Api) -> &'static str {
    if api == Api::Ollama {
        "application/x-ndjson"
    } else {
        "text/event-stream"
    }
}

/// One content event of the dialect the path speaks.
fn content_event(api: Api) -> String {
    match api {
        Api::Ollama => "{\"model\":\"m\",\"created_at\":\"2026-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"a\"},\"done\":false}\n".to_owned(),
        Api::Anthropic => "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"a\"}}\n\n".to_owned(),
        Api::Gemini => "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"a\"}]}}]}\n\n".to_owned(),
        _ => "data: {\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":null}]}\n\n".to_owned(),
    }
}

/// The body, counting each write into `sent` as it is handed over.
fn counted<S>(shared: &Arc<Shared>, stream: S) -> Body
where
    S: futures::Stream<Item = Bytes> + Send + 'static,
{
    let shared = Arc::clone(shared);
    Body::from_stream(futures::StreamExt::map(stream, move |b| {
        shared.sent.fetch_add(b.len() as u64, Ordering::SeqCst);
        Ok::<Bytes, std::io::Error>(b)
    }))
}

fn response(status: u16, content_type: &'static str, body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    r
}
