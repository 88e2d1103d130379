//! Tries to reach outside its sandbox and logs each try as
//! `<probe>: refused` or `<probe>: reached`: the root directory, a file,
//! a write, the environment, the arguments, and a TCP connection to the
//! address in its ConfigMap's `data.connect` (a listening port).
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct Sandbox;

fn log(probe: &str, reached: bool) {
    let what = if reached { "reached" } else { "refused" };
    info!("{probe}: {what}");
}

impl Reconciler for Sandbox {
    fn metadata() -> Metadata {
        Metadata::new("cf-sandbox", "0.1.0")
            .reconciles::<ConfigMap>()
            .selector("cf=case")
    }

    fn reconcile(request: Request) -> Result<Action> {
        let connect = request
            .object::<ConfigMap>()?
            .and_then(|cm| cm.data)
            .and_then(|d| d.get("connect").cloned())
            .unwrap_or_default();
        log("read_dir", std::fs::read_dir("/").is_ok());
        log("read_file", std::fs::read_to_string("/etc/passwd").is_ok());
        log("write_file", std::fs::write("escape.txt", b"x").is_ok());
        log("env", std::env::vars().next().is_some());
        log("args", std::env::args().next().is_some());
        log("tcp_connect", std::net::TcpStream::connect(connect.as_str()).is_ok());
        Ok(Action::Done)
    }
}

reconcile_sdk::plugin!(Sandbox);
