//! Newline-delimited JSON over an HTTP body (Ollama's streams), bounded
//! like the SSE reader ([`super::sse`]): every byte is counted as it
//! arrives, so neither the whole stream, nor one line that never ends, nor
//! an endless run of lines can grow memory past [`Limits`]; silence longer
//! than the idle timeout fails the stream. Failures are [`SseError`]s so the
//! clients classify them in one place ([`super::Common::stream_failure`]).

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::sse::{Limits, SseError};

type Body = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// The lines of a body, one JSON text each (blank lines skipped).
pub struct Lines {
    body: Body,
    idle: Duration,
    limits: Limits,
    /// Bytes after the last line end.
    pending: Vec<u8>,
    total: u64,
    lines: u64,
    /// The body ended (or failed): no more reads.
    done: bool,
}

pub fn lines<S>(bytes: S, idle: Duration, limits: Limits) -> Lines
where
    S: Stream<Item = Result<Bytes, String>> + Send + 'static,
{
    Lines {
        body: Box::pin(bytes),
        idle,
        limits,
        pending: Vec::new(),
        total: 0,
        lines: 0,
        done: false,
    }
}

impl Lines {
    /// The next non-blank line; `None` when the body ended. A last line
    /// without its `\n` is still a line (the server closed after it).
    pub async fn next(&mut self) -> Option<Result<String, SseError>> {
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let rest = self.pending.split_off(end + 1);
                let line = std::mem::replace(&mut self.pending, rest);
                match self.line(&line[..end]) {
                    Some(result) => return Some(result),
                    None => continue,
                }
            }
            if self.pending.len() as u64 > self.limits.max_line_bytes {
                return Some(self.fail(format!(
                    "a stream line is longer than {} bytes",
                    self.limits.max_line_bytes
                )));
            }
            if self.done {
                let last = std::mem::take(&mut self.pending);
                return self.line(&last);
            }
            match tokio::time::timeout(self.idle, self.body.next()).await {
                Err(_) => {
                    self.done = true;
                    self.pending.clear();
                    return Some(Err(SseError::Idle(self.idle)));
                }
                Ok(None) => self.done = true,
                Ok(Some(Err(e))) => {
                    self.done = true;
                    self.pending.clear();
                    return Some(Err(SseError::Transport(e)));
                }
                Ok(Some(Ok(chunk))) => {
                    self.total += chunk.len() as u64;
                    if self.total > self.limits.max_bytes {
                        return Some(self.fail(format!(
                            "the stream is longer than {} bytes",
                            self.limits.max_bytes
                        )));
                    }
                    self.pending.extend_from_slice(&chunk);
                }
            }
        }
    }

    /// One line's text, counted; `None` for a blank one.
    fn line(&mut self, raw: &[u8]) -> Option<Result<String, SseError>> {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        self.lines += 1;
        if self.lines > self.limits.max_events {
            return Some(self.fail(format!(
                "the stream has more than {} lines",
                self.limits.max_events
            )));
        }
        Some(match std::str::from_utf8(raw) {
            Ok(text) => Ok(text.to_owned()),
            Err(e) => Err(SseError::Decode(format!("a line is not UTF-8: {e}"))),
        })
    }

    fn fail(&mut self, what: String) -> Result<String, SseError> {
        self.done = true;
        self.pending = Vec::new();
        Err(SseError::TooLarge(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(chunks: &[&[u8]], limits: Limits) -> Lines {
        let owned: Vec<Result<Bytes, String>> = chunks
            .iter()
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        lines(futures::stream::iter(owned), Duration::from_secs(5), limits)
    }

    async fn all(mut l: Lines) -> Vec<Result<String, SseError>> {
        let mut out = Vec::new();
        while let Some(x) = l.next().await {
            out.push(x);
        }
        out
    }

    #[tokio::test]
    async fn lines_split_across_reads_blank_lines_and_a_last_unterminated_line() {
        let got = all(of(
            &[b"{\"a\":1}\n{\"b\"", b":2}\r\n\n", b"{\"c\":3}"],
            Limits::NONE,
        ))
        .await;
        assert_eq!(
            got,
            vec![
                Ok("{\"a\":1}".to_owned()),
                Ok("{\"b\":2}".to_owned()),
                Ok("{\"c\":3}".to_owned())
            ]
        );
    }

    #[tokio::test]
    async fn an_endless_line_fails_at_its_bound_and_stops() {
        let limits = Limits {
            max_line_bytes: 16,
            ..Limits::NONE
        };
        let chunk = [b'x'; 10];
        let got = all(of(&[&chunk, &chunk, &chunk, b"\n"], limits)).await;
        assert_eq!(got.len(), 1);
        assert!(matches!(&got[0], Err(SseError::TooLarge(w)) if w.contains("line")));
    }

    #[tokio::test]
    async fn too_many_lines_and_too_many_bytes_fail() {
        let limits = Limits {
            max_events: 2,
            ..Limits::NONE
        };
        let got = all(of(&[b"1\n2\n3\n4\n"], limits)).await;
        assert_eq!(got.len(), 3);
        assert!(matches!(&got[2], Err(SseError::TooLarge(_))));
        let limits = Limits {
            max_bytes: 5,
            ..Limits::NONE
        };
        let got = all(of(&[b"1\n", b"2\n", b"333\n"], limits)).await;
        assert!(matches!(got.last(), Some(Err(SseError::TooLarge(w))) if w.contains("bytes")));
    }
}
