//! The binary as scripts use it: `--listen 127.0.0.1:0`, the address on
//! the first stdout line, the token from the environment.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test]
async fn binary_prints_its_address_and_serves() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fly-emulator"))
        .args(["--listen", "127.0.0.1:0", "--no-rate-limits"])
        .env("FLY_EMULATOR_TOKEN", "binary-test-token")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start fly-emulator");
    let stdout = child.stdout.take().expect("stdout");
    let first_line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .expect("reader task")
    .expect("first line");
    let url = first_line
        .trim()
        .strip_prefix("listening on ")
        .expect("listening on …")
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .expect("client");
    let resp = http
        .get(format!("{url}/v1/apps?org_slug=personal"))
        .header("Authorization", "Bearer binary-test-token")
        .send()
        .await
        .expect("request");
    let status = resp.status();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, reqwest::StatusCode::OK);
}
