//! `reconcile-host` as a child process with its JSON log lines collected.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncBufReadExt as _;

/// A running host.
pub struct HostProcess {
    pub child: tokio::process::Child,
    pub lines: Arc<Mutex<Vec<Value>>>,
}

impl HostProcess {
    /// Starts the host binary with `args` (after `--log-format json`) and
    /// `env`; metrics and probes on free ports unless `args` say otherwise.
    pub fn spawn(args: &[String], env: &[(&str, String)]) -> Self {
        let root = xtask::project_root();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_reconcile-host"));
        command
            .args(["--log-format", "json", "--cache-dir"])
            .arg(root.join("target/test-compile-cache"))
            .args(args)
            .env("RECONCILE_HOST_METRICS_BIND_ADDRESS", "127.0.0.1:0")
            .env("RECONCILE_HOST_HEALTH_PROBE_BIND_ADDRESS", "127.0.0.1:0")
            .env("OTEL_TRACES_EXPORTER", "none")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let lines: Arc<Mutex<Vec<Value>>> = Arc::default();
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                sink.lock().unwrap().push(value);
            }
        });
        HostProcess { child, lines }
    }

    /// The first log line whose message starts with `prefix`, waiting up
    /// to 60 s for it.
    pub async fn line(&self, prefix: &str) -> Value {
        for _ in 0..600 {
            if let Some(line) = self.find(prefix) {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "no log line {prefix:?} after 60 s: {:#?}",
            self.lines.lock().unwrap()
        );
    }

    /// The first log line whose message starts with `prefix`, if any yet.
    pub fn find(&self, prefix: &str) -> Option<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l["message"].as_str().is_some_and(|m| m.starts_with(prefix)))
            .cloned()
    }

    /// The base URL of its probes.
    pub async fn probes(&self) -> String {
        self.line("serving /healthz and /readyz at").await["url"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id().unwrap();
        // The shell's own `kill`: no procps needed.
        std::process::Command::new("sh")
            .args(["-c", &format!("kill -TERM {pid}")])
            .status()
            .unwrap();
    }

    /// Waits up to `limit` for the exit; its status.
    pub async fn exit_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "still running after {limit:?}: {:#?}",
                    self.lines.lock().unwrap()
                )
            })
            .unwrap()
    }

    /// Everything it logged, one line each.
    pub fn log(&self) -> String {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// GET `url`: the status code and body (a probe, say).
pub async fn get(url: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_owned())
}
