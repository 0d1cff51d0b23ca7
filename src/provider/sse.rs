//! Server-sent events over an HTTP body, with an idle timeout.
//!
//! The line grammar (`\n`, `\r\n` and `\r` line ends, `:` comments,
//! multi-line `data:` joined with `\n`, fields split across reads) is
//! delegated to the maintained `sse-stream` crate; the tests below pin the
//! behaviour this layer relies on, so a regression in the crate shows up
//! here rather than as a mysterious provider failure.
//!
//! What is added here is the idle timeout: it is measured on *bytes*, not
//! on events, because providers keep slow connections alive with comment
//! lines (`: OPENROUTER PROCESSING`, llama.cpp's `: ping`) which carry no
//! event but do prove that the server is alive.
//!
//! And bounds ([`Limits`], [`events_bounded`]): every byte is counted
//! *before* it reaches the parser, so neither the stream as a whole, nor one
//! line that never ends, nor an endless run of events can make the parser's
//! buffers grow past the limits. Past a limit the stream ends with
//! [`SseError::TooLarge`] and nothing more is read.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sse_stream::{Sse, SseByteStream};

/// One SSE event; `event` is `None` for the default `message` type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
}

/// Why an event stream failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("the stream sent nothing for {0:?}")]
    Idle(Duration),
    #[error("the stream broke: {0}")]
    Transport(String),
    #[error("the stream is not valid SSE: {0}")]
    Decode(String),
    /// A bound of [`Limits`] was reached; says which.
    #[error("{0}")]
    TooLarge(String),
}

/// How much of a stream is read before it fails with [`SseError::TooLarge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes in all, comments and keep-alives included.
    pub max_bytes: u64,
    /// Events (blocks with `data:`).
    pub max_events: u64,
    /// Bytes of one line, and of one event's data.
    pub max_line_bytes: u64,
}

impl Limits {
    /// No bounds (the behaviour of [`events`]).
    pub const NONE: Limits = Limits {
        max_bytes: u64::MAX,
        max_events: u64::MAX,
        max_line_bytes: u64::MAX,
    };
}

/// The byte-level failure fed into `sse-stream`, recovered by downcasting.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("idle for {0:?}")]
    Idle(Duration),
    #[error("{0}")]
    Transport(String),
    #[error("{0}")]
    TooLarge(String),
}

type Inner = Pin<Box<dyn Stream<Item = Result<Sse, sse_stream::Error>> + Send>>;

/// A stream of SSE events.
pub struct EventStream {
    inner: Inner,
    limits: Limits,
    events: u64,
    /// Set once the stream failed: nothing more is read.
    over: bool,
}

/// Parse `bytes` as SSE, without bounds. Transport errors must already be
/// strings, so that callers decide what may be shown (reqwest's errors
/// carry the URL).
pub fn events<S>(bytes: S, idle: Duration) -> EventStream
where
    S: Stream<Item = Result<Bytes, String>> + Send + 'static,
{
    events_bounded(bytes, idle, Limits::NONE)
}

/// Byte counts of a stream so far, checked before each chunk is parsed.
#[derive(Default)]
struct Counted {
    total: u64,
    /// Bytes since the last line end.
    line: u64,
}

impl Counted {
    /// Count `chunk`; the limit it crosses, if any.
    fn add(&mut self, chunk: &[u8], limits: &Limits) -> Option<String> {
        self.total += chunk.len() as u64;
        if self.total > limits.max_bytes {
            return Some(format!(
                "the stream is longer than {} bytes",
                limits.max_bytes
            ));
        }
        let mut pieces = chunk.split(|b| *b == b'\n' || *b == b'\r');
        // The first piece continues the current line; every later one
        // starts a new line.
        let first = pieces.next().map_or(0, <[u8]>::len) as u64;
        let mut longest = self.line + first;
        let mut last = longest;
        for piece in pieces {
            last = piece.len() as u64;
            longest = longest.max(last);
        }
        self.line = last;
        (longest > limits.max_line_bytes).then(|| {
            format!(
                "a stream line is longer than {} bytes",
                limits.max_line_bytes
            )
        })
    }
}

/// [`events`] within `limits`: past one, the stream ends with
/// [`SseError::TooLarge`], having read at most one chunk past it.
pub fn events_bounded<S>(bytes: S, idle: Duration, limits: Limits) -> EventStream
where
    S: Stream<Item = Result<Bytes, String>> + Send + 'static,
{
    let state = Some((Box::pin(bytes), Counted::default()));
    let guarded = futures::stream::unfold(state, move |state| async move {
        let (mut bytes, mut counted) = state?;
        match tokio::time::timeout(idle, bytes.next()).await {
            Err(_) => Some((Err(BodyError::Idle(idle)), None)),
            Ok(None) => None,
            Ok(Some(Ok(chunk))) => match counted.add(&chunk, &limits) {
                Some(what) => Some((Err(BodyError::TooLarge(what)), None)),
                None => Some((Ok(chunk), Some((bytes, counted)))),
            },
            Ok(Some(Err(e))) => Some((Err(BodyError::Transport(e)), None)),
        }
    });
    EventStream {
        inner: Box::pin(SseByteStream::new(guarded)),
        limits,
        events: 0,
        over: false,
    }
}

impl EventStream {
    /// The next event; `None` when the server closed the stream.
    pub async fn next(&mut self) -> Option<Result<Event, SseError>> {
        if self.over {
            return None;
        }
        loop {
            let item = self.inner.next().await?;
            let result = match item {
                Ok(sse) => match sse.data {
                    Some(data) => {
                        self.events += 1;
                        if self.events > self.limits.max_events {
                            Err(SseError::TooLarge(format!(
                                "the stream has more than {} events",
                                self.limits.max_events
                            )))
                        } else if data.len() as u64 > self.limits.max_line_bytes {
                            Err(SseError::TooLarge(format!(
                                "a stream event is longer than {} bytes",
                                self.limits.max_line_bytes
                            )))
                        } else {
                            Ok(Event {
                                event: sse.event,
                                data,
                            })
                        }
                    }
                    // A block with only `id:`/`retry:`/`event:` carries
                    // nothing for a chat client.
                    None => continue,
                },
                Err(sse_stream::Error::Body(e)) => Err(match e.downcast_ref::<BodyError>() {
                    Some(BodyError::Idle(d)) => SseError::Idle(*d),
                    Some(BodyError::Transport(t)) => SseError::Transport(t.clone()),
                    Some(BodyError::TooLarge(t)) => SseError::TooLarge(t.clone()),
                    None => SseError::Transport(e.to_string()),
                }),
                Err(e) => Err(SseError::Decode(e.to_string())),
            };
            if matches!(result, Err(SseError::TooLarge(_))) {
                self.over = true;
            }
            return Some(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_chunks(chunks: &[&[u8]]) -> EventStream {
        let owned: Vec<Result<Bytes, String>> = chunks
            .iter()
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        events(futures::stream::iter(owned), Duration::from_secs(5))
    }

    async fn collect(mut s: EventStream) -> Vec<Result<Event, SseError>> {
        let mut out = Vec::new();
        while let Some(e) = s.next().await {
            out.push(e);
        }
        out
    }

    fn data(d: &str) -> Result<Event, SseError> {
        Ok(Event {
            event: None,
            data: d.to_string(),
        })
    }

    fn named(name: &str, d: &str) -> Result<Event, SseError> {
        Ok(Event {
            event: Some(name.to_string()),
            data: d.to_string(),
        })
    }

    #[tokio::test]
    async fn all_three_line_endings() {
        for text in [
            "data: a\n\ndata: b\n\n",
            "data: a\r\n\r\ndata: b\r\n\r\n",
            "data: a\r\rdata: b\r\r",
        ] {
            let got = collect(from_chunks(&[text.as_bytes()])).await;
            assert_eq!(got, vec![data("a"), data("b")], "{text:?}");
        }
    }

    #[tokio::test]
    async fn crlf_split_between_reads() {
        let got = collect(from_chunks(&[b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"])).await;
        assert_eq!(got, vec![data("a"), data("b")]);
    }

    #[tokio::test]
    async fn comments_are_skipped() {
        let got = collect(from_chunks(&[
            b": OPENROUTER PROCESSING\n\n: ping\ndata: x\n\n:\n\n",
        ]))
        .await;
        assert_eq!(got, vec![data("x")]);
    }

    #[tokio::test]
    async fn multi_line_data_is_joined_with_newline() {
        let got = collect(from_chunks(&[b"data: {\"a\":\ndata: 1}\ndata:\n\n"])).await;
        assert_eq!(got, vec![data("{\"a\":\n1}\n")]);
    }

    #[tokio::test]
    async fn event_names_and_no_space_after_colon() {
        let got = collect(from_chunks(&[
            b"event: message_start\ndata: {}\n\nevent:ping\ndata:{\"type\":\"ping\"}\n\n",
        ]))
        .await;
        assert_eq!(
            got,
            vec![
                named("message_start", "{}"),
                named("ping", "{\"type\":\"ping\"}")
            ]
        );
    }

    #[tokio::test]
    async fn utf8_and_fields_split_across_reads() {
        let text = "event: delta\ndata: {\"t\":\"héllo ✓\"}\n\n".as_bytes();
        // One byte per read splits `é` and `✓` and every field name.
        let chunks: Vec<&[u8]> = text.chunks(1).collect();
        let got = collect(from_chunks(&chunks)).await;
        assert_eq!(got, vec![named("delta", "{\"t\":\"héllo ✓\"}")]);
    }

    #[tokio::test]
    async fn several_events_in_one_read() {
        let got = collect(from_chunks(&[b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n"])).await;
        assert_eq!(got, vec![data("1"), data("2"), data("[DONE]")]);
    }

    #[tokio::test]
    async fn an_unterminated_last_event_is_dropped() {
        // A cut connection must not turn half an event into a whole one.
        let got = collect(from_chunks(&[b"data: 1\n\ndata: {\"partial"])).await;
        assert_eq!(got, vec![data("1")]);
    }

    #[tokio::test]
    async fn silence_is_an_idle_error_but_comments_keep_it_alive() {
        let idle = Duration::from_millis(1000);
        // Comments every 100 ms for 1.5 s — more than one idle period in
        // all, but never one without a byte — then an event, then silence.
        let chunks = futures::stream::unfold(0u32, move |i| async move {
            match i {
                0..15 => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Some((Ok(Bytes::from_static(b": keep-alive\n")), i + 1))
                }
                15 => Some((Ok(Bytes::from_static(b"data: x\n\n")), i + 1)),
                _ => {
                    std::future::pending::<()>().await;
                    None
                }
            }
        });
        let mut s = events(chunks, idle);
        assert_eq!(s.next().await, Some(data("x")));
        assert_eq!(s.next().await, Some(Err(SseError::Idle(idle))));
        assert_eq!(s.next().await, None);
    }

    fn bounded(chunks: Vec<Vec<u8>>, limits: Limits) -> EventStream {
        let owned: Vec<Result<Bytes, String>> =
            chunks.into_iter().map(|c| Ok(Bytes::from(c))).collect();
        events_bounded(futures::stream::iter(owned), Duration::from_secs(5), limits)
    }

    const ROOMY: Limits = Limits {
        max_bytes: 1000,
        max_events: 100,
        max_line_bytes: 100,
    };

    fn too_large(got: &[Result<Event, SseError>]) -> bool {
        matches!(got.last(), Some(Err(SseError::TooLarge(_))))
    }

    #[tokio::test]
    async fn a_stream_past_its_byte_limit_fails_and_stops() {
        let chunks = vec![b"data: 1\n\n".to_vec(); 500];
        let got = collect(bounded(chunks, ROOMY)).await;
        assert!(too_large(&got), "{got:?}");
        // Events before the limit were delivered, nothing after it.
        assert!(got.len() <= 1000 / 10 + 1, "{}", got.len());
    }

    #[tokio::test]
    async fn a_line_that_never_ends_fails_without_an_end_of_line() {
        // 40 bytes a read, never a newline: the line limit, not the total.
        let mut chunks = vec![b"data: ".to_vec()];
        chunks.extend(std::iter::repeat_n(vec![b'a'; 40], 20));
        let got = collect(bounded(chunks, ROOMY)).await;
        assert_eq!(got.len(), 1);
        assert!(
            matches!(&got[0], Err(SseError::TooLarge(m)) if m.contains("line")),
            "{got:?}"
        );
        // A long line inside one read is caught too, and short lines that
        // add up across reads are not.
        let one = vec![[b"data: x\n".as_slice(), &[b'b'; 150], b"\n\n"].concat()];
        assert!(too_large(&collect(bounded(one, ROOMY)).await));
        let split = vec![b"data: ".to_vec(), vec![b'c'; 60], b"\n\n".to_vec()];
        assert_eq!(collect(bounded(split, ROOMY)).await.len(), 1);
    }

    #[tokio::test]
    async fn too_many_events_fail() {
        let limits = Limits {
            max_events: 3,
            ..ROOMY
        };
        let got = collect(bounded(vec![b"data: 1\n\n".to_vec(); 10], limits)).await;
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(too_large(&got));
        // A multi-line event larger than a line is refused as a whole.
        let limits = Limits {
            max_line_bytes: 10,
            ..ROOMY
        };
        let got = collect(bounded(
            vec![b"data: 123456\ndata: 123456\n\n".to_vec()],
            limits,
        ))
        .await;
        assert!(too_large(&got), "{got:?}");
    }

    #[tokio::test]
    async fn transport_errors_end_the_stream() {
        let items: Vec<Result<Bytes, String>> = vec![
            Ok(Bytes::from_static(b"data: 1\n\n")),
            Err("connection reset".to_string()),
            Ok(Bytes::from_static(b"data: 2\n\n")),
        ];
        let got = collect(events(futures::stream::iter(items), Duration::from_secs(5))).await;
        assert_eq!(
            got,
            vec![
                data("1"),
                Err(SseError::Transport("connection reset".to_string()))
            ]
        );
    }
}
