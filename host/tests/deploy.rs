//! `deploy/` as a platform team uses it: `kubectl kustomize` renders the
//! base and the sharding overlay, `kubectl apply --dry-run=server -k`
//! accepts them on the embedded API server, the README's install commands
//! run there and put the compressed plugins in their ConfigMap, the RBAC
//! is exactly what `reconcile-host rbac` prints for the example plugins
//! and is enough for `run` as the ServiceAccount from the ConfigMaps'
//! files (the host's access check names what a smaller role lacks), and
//! the Collector config keeps errors and slow traces.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use reconcile_apiserver::ApiServer;
use serde_json::Value;
use support::host::{HostProcess, get};
use support::{guest, kubectl_binary};

fn root() -> PathBuf {
    xtask::project_root()
}

fn kubectl(kubeconfig: Option<&Path>, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(kubectl_binary());
    if let Some(k) = kubeconfig {
        command.arg("--kubeconfig").arg(k);
    }
    command.args(args).current_dir(root()).output().unwrap()
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn documents(yaml: &str) -> Vec<Value> {
    reconcile_host::operator::manifests::documents(yaml).unwrap()
}

/// The example plugins alone, in a directory of their own.
fn example_plugins(dir: &Path) -> PathBuf {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for name in ["demoapp", "uptime"] {
        std::fs::copy(guest(name), plugins.join(format!("{name}.wasm"))).unwrap();
    }
    plugins
}

/// `reconcile-host rbac` for the examples with deploy/'s grants.
fn rbac(plugins: &Path, extra: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_reconcile-host"))
        .arg("--cache-dir")
        .arg(root().join("target/test-compile-cache"))
        .arg("rbac")
        .arg("--plugins")
        .arg(plugins)
        .arg("--grants")
        .arg(root().join("deploy/base/grants"))
        .args(extra)
        .output()
        .unwrap();
    ok(&output)
}

fn rbac_documents(docs: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = docs
        .iter()
        .filter(|d| d["apiVersion"] == "rbac.authorization.k8s.io/v1")
        .cloned()
        .collect();
    out.sort_by_key(|d| format!("{}/{}", d["kind"], d["metadata"]["name"]));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_renders_applies_and_its_rbac_is_what_the_grants_need() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = example_plugins(dir.path());

    // The RBAC file is the command's output, byte for byte.
    let printed = rbac(&plugins, &[]);
    let file = std::fs::read_to_string(root().join("deploy/base/rbac.yaml")).unwrap();
    assert_eq!(
        file, printed,
        "deploy/base/rbac.yaml is stale: run `cargo run -p reconcile-host -- rbac --plugins target/plugins --grants deploy/base/grants > deploy/base/rbac.yaml`"
    );

    // Both render, and the rendered RBAC is the command's: the base with
    // leader election's Lease verbs, the overlay with sharding's.
    let base = documents(&ok(&kubectl(None, &["kustomize", "deploy/"])));
    let sharding = documents(&ok(&kubectl(
        None,
        &["kustomize", "deploy/overlays/sharding"],
    )));
    assert_eq!(rbac_documents(&base), rbac_documents(&documents(&printed)));
    assert_eq!(
        rbac_documents(&sharding),
        rbac_documents(&documents(&rbac(&plugins, &["--shards"])))
    );
    let deployment = |docs: &[Value]| {
        docs.iter()
            .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "reconcile-host")
            .cloned()
            .unwrap()
    };
    let d = deployment(&base);
    let args: Vec<&str> = d["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--leader-elect"), "{args:?}");
    assert_eq!(d["spec"]["replicas"], 2);
    let container = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(container["resources"]["limits"]["memory"].is_string());
    let env: Vec<&str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for name in [
        "POD_NAME",
        "POD_NAMESPACE",
        "OTEL_SERVICE_NAME",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
    ] {
        assert!(env.contains(&name), "{name} missing: {env:?}");
    }
    let s = deployment(&sharding);
    assert_eq!(s["spec"]["replicas"], 3);
    let args = s["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("--shards=6") && !args.contains("--leader-elect"),
        "{args}"
    );
    // Grants ride in a ConfigMap whose name does not change (hot reload).
    assert!(base.iter().any(|d| d["kind"] == "ConfigMap"
        && d["metadata"]["name"] == "reconcile-host-grants"
        && d["data"]["demoapp.grants.toml"].is_string()));

    // The API server accepts all of it in a dry run (the namespaces
    // first, as on a fresh cluster: a dry run creates nothing).
    let server = ApiServer::start(Default::default()).await.unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig()).unwrap();
    let k = Some(kubeconfig.as_path());
    ok(&kubectl(k, &["create", "namespace", "reconcile-host"]));
    ok(&kubectl(k, &["create", "namespace", "observability"]));
    for target in [
        "deploy/",
        "deploy/overlays/sharding",
        "deploy/otel-collector",
    ] {
        let out = ok(&kubectl(k, &["apply", "--dry-run=server", "-k", target]));
        assert!(out.contains("(server dry run)"), "{target}: {out}");
    }
    let crds = ok(&kubectl(k, &["get", "crds", "-o", "name"]));
    assert!(
        !crds.contains("demoapps"),
        "a dry run stores nothing: {crds}"
    );
    server.shutdown().await;
}

/// A kubeconfig for `server` that impersonates the host's ServiceAccount.
fn impersonating(server: &ApiServer) -> String {
    let kubeconfig = server.kubeconfig();
    let mut doc = documents(&kubeconfig).remove(0);
    for user in doc["users"].as_array_mut().unwrap() {
        user["user"]["as"] = "system:serviceaccount:reconcile-host:reconcile-host".into();
    }
    serde_json::to_string(&doc).unwrap()
}

/// The commands of the README's "Install in a cluster", in order.
fn install_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("\n## Install in a cluster\n")
        .nth(1)
        .expect("the README has an Install in a cluster section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("it starts with a sh block");
    block
        .lines()
        .map(|l| l.split("   #").next().unwrap().trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// What the kubelet makes of ConfigMap `name` in a volume: the keys as
/// files in a timestamped directory, `..data` linking to it, and each key
/// a link through `..data` (the layout whose atomic swap the host's
/// reload follows).
fn project_configmap(kubeconfig: &Path, name: &str, into: &Path) -> PathBuf {
    use base64::Engine as _;
    let json = ok(&kubectl(
        Some(kubeconfig),
        &[
            "-n",
            "reconcile-host",
            "get",
            "configmap",
            name,
            "-o",
            "json",
        ],
    ));
    let object: Value = serde_json::from_str(&json).unwrap();
    let volume = into.join(name);
    let data = volume.join("..2026_12_03_00_00_00.000000001");
    std::fs::create_dir_all(&data).unwrap();
    let mut keys = Vec::new();
    for (key, value) in object["data"].as_object().into_iter().flatten() {
        std::fs::write(data.join(key), value.as_str().unwrap()).unwrap();
        keys.push(key.clone());
    }
    for (key, value) in object["binaryData"].as_object().into_iter().flatten() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().unwrap())
            .unwrap();
        std::fs::write(data.join(key), bytes).unwrap();
        keys.push(key.clone());
    }
    std::os::unix::fs::symlink(data.file_name().unwrap(), volume.join("..data")).unwrap();
    for key in &keys {
        std::os::unix::fs::symlink(format!("..data/{key}"), volume.join(key)).unwrap();
    }
    volume
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_installs_the_plugins_and_the_rbac_is_enough_for_run() {
    let dir = tempfile::tempdir().unwrap();
    guest("demoapp");
    let server = ApiServer::start(Default::default()).await.unwrap();
    let admin = dir.path().join("admin.kubeconfig");
    std::fs::write(&admin, server.kubeconfig()).unwrap();
    let a = Some(admin.as_path());

    // The README's commands, as written, with the embedded server as the
    // cluster. Three cannot run here and are left out, by name: the
    // plugins are already built (`guest` built them, compressed
    // copies included), no machine here has a container engine, and the
    // embedded server runs no Deployment controller to roll out.
    let kubectl_dir = kubectl_binary().parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        kubectl_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut left_out = Vec::new();
    for command in install_commands() {
        if command == "cargo xtask plugins"
            || command.starts_with("podman build ")
            || command.contains(" rollout status ")
        {
            left_out.push(command);
            continue;
        }
        assert!(command.starts_with("kubectl "), "{command}");
        let output = std::process::Command::new("sh")
            .args(["-c", &command])
            .env("PATH", &path)
            .env("KUBECONFIG", &admin)
            .current_dir(root())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{command}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_eq!(left_out.len(), 3, "{left_out:?}");

    // Both plugins are in the ConfigMap, compressed, within its 1 MiB.
    let volumes = dir.path().join("volumes");
    let plugin_volume = project_configmap(&admin, "reconcile-host-plugins", &volumes);
    let grant_volume = project_configmap(&admin, "reconcile-host-grants", &volumes);
    let mut packed = 0;
    for name in ["demoapp", "uptime"] {
        let file = plugin_volume.join(format!("{name}.wasm.gz"));
        packed += std::fs::metadata(&file).unwrap().len();
        assert_eq!(
            reconcile_host::files::read_plugin(&file).unwrap(),
            std::fs::read(guest(name)).unwrap(),
            "{name}"
        );
    }
    assert!(packed < 1024 * 1024, "{packed} bytes");
    // A plugin too large for one is refused with the real server's words.
    let big = dir.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    for name in ["demoapp", "uptime"] {
        std::fs::copy(guest(name), big.join(format!("{name}.wasm"))).unwrap();
    }
    let too_large = kubectl(
        a,
        &[
            "-n",
            "reconcile-host",
            "create",
            "configmap",
            "uncompressed",
            &format!("--from-file={}/", big.display()),
        ],
    );
    assert!(!too_large.status.success());
    assert!(
        String::from_utf8_lossy(&too_large.stderr).contains("must have at most 1048576 bytes"),
        "{}",
        String::from_utf8_lossy(&too_large.stderr)
    );

    let sa = dir.path().join("sa.kubeconfig");
    std::fs::write(&sa, impersonating(&server)).unwrap();
    // Impersonated reviews follow the RBAC: the ServiceAccount may patch
    // Deployments but not Secrets.
    let can = |args: &[&str]| {
        let out = kubectl(Some(&sa), &[&["auth", "can-i"], args].concat());
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(can(&["patch", "deployments.apps", "-A"]), "yes");
    assert_eq!(can(&["get", "secrets", "-n", "default"]), "no");
    assert_eq!(
        can(&[
            "update",
            "leases.coordination.k8s.io",
            "-n",
            "reconcile-host"
        ]),
        "yes"
    );
    assert_eq!(
        can(&["update", "leases.coordination.k8s.io", "-n", "default"]),
        "no"
    );

    let run = |kubeconfig: &Path| {
        let args: Vec<String> = [
            "run",
            "--leader-elect",
            "--plugins",
            plugin_volume.to_str().unwrap(),
            "--grants",
            grant_volume.to_str().unwrap(),
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec();
        HostProcess::spawn(&args, &[("POD_NAMESPACE", "reconcile-host".to_owned())])
    };
    // With the generated RBAC: both plugins run, and the replica is ready.
    let host = run(&sa);
    let url = host.probes().await;
    let start = Instant::now();
    while get(&format!("{url}/readyz")).await.0 != 200 {
        assert!(start.elapsed() < Duration::from_secs(30), "{}", host.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(host.find("plugin did not load").is_none(), "{}", host.log());
    assert!(
        host.find("2 plugins did not load").is_none(),
        "{}",
        host.log()
    );
    let running = host.line("plugins running: demoapp 0.1.0").await;
    assert!(
        running["message"]
            .as_str()
            .unwrap()
            .contains(", uptime 0.1.0"),
        "{running}"
    );
    // The plugin from the compressed file reconciles: the example
    // DemoApp gets its Deployment.
    ok(&kubectl(
        a,
        &["apply", "-f", "deploy/examples/demoapp.yaml"],
    ));
    let start = Instant::now();
    loop {
        let out = kubectl(
            a,
            &["-n", "default", "get", "deployment", "hello", "-o", "json"],
        );
        if out.status.success() {
            let d: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(d["metadata"]["ownerReferences"][0]["kind"], "DemoApp");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{}", host.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The server enforces the RBAC on the impersonated requests, and
    // the generated role is enough for all of it: the status, the
    // finalizer, the Event, the Leases, with no 403 on the way.
    let start = Instant::now();
    loop {
        let app: Value = serde_json::from_str(&ok(&kubectl(
            a,
            &["-n", "default", "get", "demoapp", "hello", "-o", "json"],
        )))
        .unwrap();
        let events: Value = serde_json::from_str(&ok(&kubectl(
            a,
            &["-n", "default", "get", "events.events.k8s.io", "-o", "json"],
        )))
        .unwrap();
        let reported = events["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["regarding"]["name"] == "hello");
        if app["status"]["conditions"].is_array()
            && app["metadata"]["finalizers"].is_array()
            && reported
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{app}\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // (A refusal would be logged with the server's message.)
    let log = host.log();
    assert!(!log.contains("is forbidden"), "{log}");
    drop(host);

    // Without patch and create on Deployments, and without create on
    // Services: demoapp is refused at start-up with what is missing;
    // uptime runs.
    let role = std::fs::read_to_string(root().join("deploy/base/rbac.yaml")).unwrap();
    let smaller = role
        .replacen(
            "  - deployments\n  verbs:\n  - get\n  - list\n  - watch\n  - create\n  - patch",
            "  - deployments\n  verbs:\n  - get\n  - list\n  - watch",
            1,
        )
        .replacen(
            "  - services\n  verbs:\n  - get\n  - list\n  - watch\n  - create\n  - patch",
            "  - services\n  verbs:\n  - get\n  - list\n  - watch\n  - patch",
            1,
        );
    assert_eq!(
        smaller.matches("  - create\n").count() + 2,
        role.matches("  - create\n").count()
    );
    let file = dir.path().join("smaller.yaml");
    std::fs::write(&file, smaller).unwrap();
    ok(&kubectl(a, &["apply", "-f", file.to_str().unwrap()]));
    // The server refuses what the role no longer allows, as a real one.
    let refused = kubectl(
        Some(&sa),
        &[
            "-n",
            "default",
            "patch",
            "deployment",
            "hello",
            "--type=merge",
            "-p",
            r#"{"metadata":{"labels":{"by":"hand"}}}"#,
        ],
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(
            r#"deployments.apps "hello" is forbidden: User "system:serviceaccount:reconcile-host:reconcile-host" cannot patch resource "deployments" in API group "apps" in the namespace "default""#
        ),
        "{stderr}"
    );
    // A server-side apply that would create a Service needs create (as on
    // a real API server); one that changes the existing Service needs
    // patch only.
    let service = |name: &str| {
        let file = dir.path().join(format!("{name}.json"));
        std::fs::write(
            &file,
            serde_json::to_string(&serde_json::json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": "default", "labels": {"by": "hand"}},
                "spec": {"ports": [{"port": 80}]},
            }))
            .unwrap(),
        )
        .unwrap();
        kubectl(
            Some(&sa),
            &[
                "apply",
                "--server-side",
                "--field-manager=by-hand",
                "--force-conflicts",
                "-f",
                file.to_str().unwrap(),
            ],
        )
    };
    let created = service("by-hand");
    assert!(!created.status.success());
    let stderr = String::from_utf8_lossy(&created.stderr);
    assert!(
        stderr.contains(
            r#"services "by-hand" is forbidden: User "system:serviceaccount:reconcile-host:reconcile-host" cannot create resource "services" in API group "" in the namespace "default""#
        ),
        "{stderr}"
    );
    ok(&service("hello"));
    // A namespace is in itself, as the real request info has it.
    let namespace = kubectl(Some(&sa), &["get", "namespace", "default"]);
    assert!(
        String::from_utf8_lossy(&namespace.stderr).contains(
            r#"namespaces "default" is forbidden: User "system:serviceaccount:reconcile-host:reconcile-host" cannot get resource "namespaces" in API group "" in the namespace "default""#
        ),
        "{}",
        String::from_utf8_lossy(&namespace.stderr)
    );
    let listed = kubectl(Some(&sa), &["get", "secrets", "-A"]);
    assert!(
        String::from_utf8_lossy(&listed.stderr).contains(
            r#"secrets is forbidden: User "system:serviceaccount:reconcile-host:reconcile-host" cannot list resource "secrets" in API group "" at the cluster scope"#
        ),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let host = run(&sa);
    let line = host
        .line("plugin did not load: the host may not do what the grant of demoapp allows")
        .await;
    let message = line["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("patch deployments.apps (all namespaces)")
            && message.contains("create deployments.apps (all namespaces)")
            && message.contains("create services (all namespaces)")
            && message.contains("reconcile-host rbac"),
        "{message}"
    );
    host.line("caches synced").await;
    assert!(
        host.find("plugin did not load: the host may not do what the grant of uptime")
            .is_none(),
        "{}",
        host.log()
    );
    drop(host);
    server.shutdown().await;
}

#[test]
fn the_collector_keeps_errors_and_reconciles_slower_than_2_s() {
    let text = std::fs::read_to_string(root().join("deploy/otel-collector/config.yaml")).unwrap();
    let config: Value = serde_saphyr::from_str(&text).unwrap();
    let policies = config["processors"]["tail_sampling"]["policies"]
        .as_array()
        .unwrap();
    let policy = |kind: &str| {
        policies
            .iter()
            .find(|p| p["type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} policy: {policies:?}"))
    };
    assert_eq!(
        policy("status_code")["status_code"]["status_codes"][0],
        "ERROR"
    );
    assert_eq!(policy("latency")["latency"]["threshold_ms"], 2000);
    let pipeline = &config["service"]["pipelines"]["traces"];
    assert_eq!(pipeline["receivers"][0], "otlp");
    let processors: Vec<&str> = pipeline["processors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        processors.contains(&"tail_sampling") && processors.last() == Some(&"batch"),
        "{processors:?}"
    );
    assert_eq!(pipeline["exporters"][0], "otlp");
    assert!(config["exporters"]["otlp"]["endpoint"].is_string());
    assert!(config["receivers"]["otlp"]["protocols"]["grpc"].is_object());
}
