//! A perfect "flagship" for benchmarks: answers every chat request with the
//! reference answer of its prompt, looked up in a JSONL file of
//! `{"prompt": …, "answer": …}` lines: the longest known prompt the last
//! user message contains (a workflow may wrap it in a template).
//! A prompt it does not know gets an empty answer (counted wrong, never
//! invented). Reports token usage as ~4 characters a token, so the policy
//! prices it like the real model it stands in for.
//!
//!   cargo run -p fake-llm --example oracle -- ANSWERS.jsonl PORT
//!
//! Runs until killed; prints its base URL on the first line.

use std::io::Write;

use fake_llm::{FakeServer, Reply};
use serde_json::Value;

/// The largest answers file read: the benchmark's is ~60 KiB.
const MAX_BYTES: u64 = 16 * 1024 * 1024;

fn tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(port)) = (args.next(), args.next()) else {
        eprintln!("usage: oracle ANSWERS.jsonl PORT");
        std::process::exit(2);
    };
    let port: u16 = port.parse().unwrap_or_else(|_| {
        eprintln!("oracle: PORT must be a port number");
        std::process::exit(2);
    });
    let meta = std::fs::metadata(&path).unwrap_or_else(|e| {
        eprintln!("oracle: {path}: {e}");
        std::process::exit(2);
    });
    if !meta.is_file() || meta.len() > MAX_BYTES {
        eprintln!("oracle: {path}: not a regular file of at most {MAX_BYTES} bytes");
        std::process::exit(2);
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        eprintln!("oracle: {path}: {e}");
        std::process::exit(2);
    });
    let mut answers: Vec<(String, String)> = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| {
            eprintln!("oracle: {path}:{}: {e}", i + 1);
            std::process::exit(2);
        });
        match (v["prompt"].as_str(), v["answer"].as_str()) {
            (Some(p), Some(a)) => answers.push((p.to_owned(), a.to_owned())),
            _ => {
                eprintln!(
                    "oracle: {path}:{}: needs string `prompt` and `answer`",
                    i + 1
                );
                std::process::exit(2);
            }
        };
    }
    let fake = FakeServer::start_on(port).await;
    fake.set_handler(move |r| {
        let prompt = r.body["messages"]
            .as_array()
            .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default();
        let answer = answers
            .iter()
            .filter(|(p, _)| prompt.contains(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, a)| a.clone())
            .unwrap_or_default();
        let all: usize = r.body["messages"].as_array().map_or(0, |m| {
            m.iter()
                .filter_map(|m| m["content"].as_str())
                .map(str::len)
                .sum()
        });
        Reply::text(answer.clone()).usage((all as u64).div_ceil(4).max(1), tokens(&answer))
    });
    println!("{}", fake.base_url());
    let _ = std::io::stdout().flush();
    std::future::pending::<()>().await;
}
