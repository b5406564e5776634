//! `truthgpt serve` as a process: it answers over TCP, streams, and on SIGTERM lets an in-flight
//! stream finish, then exits 0.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};

use common::truthgpt;

/// The imported GPT-2 fixture: a tiny model with a tokenizer.
fn model_dir(tmp: &Path) -> std::path::PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../interop/tests/fixtures/hf/gpt2");
    let out = tmp.join("model");
    let status = truthgpt(&["import", "hf", source.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    out
}

/// The server process, killed if the test fails before it exits.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the server on a free port; returns it and its address (read from its log).
fn start(model: &Path) -> (Server, String) {
    let mut child =
        truthgpt(&["serve", "--model", model.to_str().unwrap(), "--port", "0", "--drain-secs", "20"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("http://") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "the server exited before listening");
    }
    // Keep draining its log, so a full pipe can never block it.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let address =
        line.split("http://").nth(1).and_then(|s| s.split_whitespace().next()).expect(&line).to_string();
    (Server(child), address)
}

/// One HTTP/1.1 request on its own connection; returns (status, body).
fn request(address: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (status, body)
}

#[test]
fn serves_streams_and_drains_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path());
    let (mut server, address) = start(&model);

    let (status, body) = request(&address, "GET", "/v1/models", "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"model\""), "{body}");
    let (status, body) = request(
        &address,
        "POST",
        "/v1/completions",
        r#"{"prompt": "To be", "max_tokens": 5, "temperature": 0}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"text_completion\"") && body.contains("\"completion_tokens\""), "{body}");

    // A long stream is in flight when SIGTERM arrives: it still ends with [DONE].
    let streaming = {
        let address = address.clone();
        std::thread::spawn(move || {
            let body = r#"{"prompt": "To be", "max_tokens": 40, "stream": true, "seed": 1}"#;
            request(&address, "POST", "/v1/completions", body)
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(20));
    let status =
        std::process::Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap();
    assert!(status.success());
    let (status, body) = streaming.join().unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("data: [DONE]"), "the in-flight stream finished: {body}");
    let exit = server.0.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}");
}
