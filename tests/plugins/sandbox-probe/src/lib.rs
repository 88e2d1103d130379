//! Tries to escape the sandbox: files, environment, arguments, sockets. Each
//! probe is logged; any that succeeds fails the reconcile. The address to
//! connect to comes from the ConfigMap's `data.connect`.
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct Probe;

fn probe(name: &str, reached: bool, detail: String, escapes: &mut Vec<String>) {
    info!(probe = name, reached = reached; "{detail}");
    if reached {
        escapes.push(format!("{name}: {detail}"));
    }
}

impl Reconciler for Probe {
    fn metadata() -> Metadata {
        Metadata::new("sandbox-probe", "0.1.0").reconciles::<ConfigMap>()
    }

    fn reconcile(request: Request) -> Result<Action> {
        let cm = request
            .object::<ConfigMap>()?
            .ok_or_else(|| Error::new("no object"))?;
        let connect = cm
            .data
            .unwrap_or_default()
            .get("connect")
            .cloned()
            .unwrap_or_default();
        let mut escapes = Vec::new();
        let root = std::fs::read_dir("/");
        probe(
            "read_dir",
            root.is_ok(),
            format!("{root:?}").chars().take(200).collect(),
            &mut escapes,
        );
        let passwd = std::fs::read_to_string("/etc/passwd");
        probe(
            "read_file",
            passwd.is_ok(),
            format!("{:?}", passwd.map(|s| s.len())),
            &mut escapes,
        );
        let write = std::fs::write("escape.txt", b"x");
        probe(
            "write_file",
            write.is_ok(),
            format!("{write:?}"),
            &mut escapes,
        );
        let vars: Vec<(String, String)> = std::env::vars().collect();
        probe(
            "env",
            !vars.is_empty(),
            format!("{} variables", vars.len()),
            &mut escapes,
        );
        let args: Vec<String> = std::env::args().collect();
        probe(
            "args",
            !args.is_empty(),
            format!("{} arguments", args.len()),
            &mut escapes,
        );
        let tcp = std::net::TcpStream::connect(connect.as_str());
        probe(
            "tcp_connect",
            tcp.is_ok(),
            format!("{connect}: {tcp:?}"),
            &mut escapes,
        );
        let udp =
            std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| s.send_to(b"x", connect.as_str()));
        probe(
            "udp_send",
            udp.is_ok(),
            format!("{connect}: {udp:?}"),
            &mut escapes,
        );
        let dns = std::net::ToSocketAddrs::to_socket_addrs("localhost:80");
        probe(
            "dns",
            dns.is_ok(),
            format!("{:?}", dns.map(|a| a.count())),
            &mut escapes,
        );
        if escapes.is_empty() {
            Ok(Action::Done)
        } else {
            Err(Error::new(format!(
                "sandbox escape: {}",
                escapes.join("; ")
            )))
        }
    }
}

reconcile_sdk::plugin!(Probe);
