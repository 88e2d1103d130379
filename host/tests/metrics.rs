//! The metrics endpoint of `dev`, scraped after demoapp ran each way a
//! reconcile can end (success, requeue, a failure that is retried, a
//! terminal failure, a trap): controller-runtime's series with their
//! labels and values, the host's own, exemplars that point at exported
//! traces, both formats read by a real OpenMetrics/Prometheus parser, and
//! no object name, namespace or UID in any label.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::host::HostProcess;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use openmetrics_parser::{
    MetricsExposition, OpenMetricsType, OpenMetricsValue, PrometheusType, PrometheusValue,
};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Scrapes `url` (`http://host:port/metrics`), as an OpenMetrics scraper
/// or as a plain one: the content type and the body.
pub async fn scrape(url: &str, openmetrics: bool) -> (String, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_once('/').unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let accept = if openmetrics {
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    } else {
        "*/*"
    };
    let request = format!(
        "GET /{path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap();
    (content_type, body.to_owned())
}

type OpenMetrics = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

/// One sample's number, for a counter or gauge family with these labels.
fn value(m: &OpenMetrics, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let family = m.families.get(family)?;
    family
        .iter_samples()
        .find(|s| {
            let set = s.get_labelset().unwrap();
            labels
                .iter()
                .all(|(k, v)| set.get_label_value(k) == Some(*v))
        })
        .map(|s| match &s.value {
            OpenMetricsValue::Counter(c) => c.value.as_f64(),
            OpenMetricsValue::Gauge(g) => g.as_f64(),
            OpenMetricsValue::Histogram(h) => h.count.unwrap_or_default() as f64,
            other => panic!("{other:?}"),
        })
}

fn counter(m: &OpenMetrics, family: &str, labels: &[(&str, &str)]) -> f64 {
    value(m, family, labels).unwrap_or_else(|| panic!("no {family} {labels:?}"))
}

/// The trace ids of every exemplar of `family`.
fn exemplar_traces(m: &OpenMetrics, family: &str) -> BTreeSet<String> {
    let mut traces = BTreeSet::new();
    for sample in m.families[family].iter_samples() {
        let exemplars: Vec<&openmetrics_parser::Exemplar> = match &sample.value {
            OpenMetricsValue::Histogram(h) => h
                .buckets
                .iter()
                .filter_map(|b| b.exemplar.as_ref())
                .collect(),
            OpenMetricsValue::Counter(c) => c.exemplar.iter().collect(),
            _ => Vec::new(),
        };
        for e in exemplars {
            traces.insert(e.labels["trace_id"].clone());
        }
    }
    traces
}

/// `dev` with demoapp, exporting to `otlp`, its metrics on a free port.
fn start_host(dir: &Path, otlp: std::net::SocketAddr) -> HostProcess {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(support::guest("demoapp"), plugins.join("demoapp.wasm")).unwrap();
    std::fs::copy(support::guest("uptime"), plugins.join("uptime.wasm")).unwrap();
    let root = xtask::project_root();
    let args: Vec<String> = [
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--example-http",
        "127.0.0.1:0",
        "--metrics-bind-address",
        "127.0.0.1:0",
        "--max-backoff-s",
        "1",
        "--plugins",
        plugins.to_str().unwrap(),
        "--apply",
        root.join("deploy/crds").to_str().unwrap(),
        "--kubeconfig",
        dir.join("kubeconfig").to_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec();
    HostProcess::spawn(
        &args,
        &[
            ("OTEL_TRACES_EXPORTER", "otlp".to_owned()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            // Half the traces head-sampled; the failed ones retained: the
            // exemplars must point at exported traces either way.
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".to_owned()),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5".to_owned()),
        ],
    )
}

fn demoapps() -> ApiResource {
    ApiResource {
        group: "demo.reconcile.dev".into(),
        version: "v1alpha1".into(),
        api_version: "demo.reconcile.dev/v1alpha1".into(),
        kind: "DemoApp".into(),
        plural: "demoapps".into(),
    }
}

fn demoapp(name: &str, image: &str, simulate: Option<&str>) -> DynamicObject {
    let mut metadata = json!({"name": name, "namespace": "default"});
    if let Some(simulate) = simulate {
        metadata["annotations"] = json!({"demo.reconcile.dev/simulate": simulate});
    }
    serde_json::from_value(json!({
        "apiVersion": "demo.reconcile.dev/v1alpha1",
        "kind": "DemoApp",
        "metadata": metadata,
        "spec": {"image": image, "replicas": 1},
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_serves_controller_runtime_metrics_with_exemplars_of_exported_traces() {
    let (otlp, received) = support::otlp::Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut host = start_host(dir.path(), otlp);
    let url = host.line("serving metrics at").await["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    host.line("embedded API server running").await;
    let kubeconfig = kube::config::Kubeconfig::read_from(dir.path().join("kubeconfig")).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let api_host = config.cluster_url.authority().unwrap().to_string();
    let client = kube::Client::try_from(config).unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(client, "default", &demoapps());
    let example = host.line("example HTTP server running").await["url"]
        .as_str()
        .unwrap()
        .to_owned();
    host.line("caches synced").await;
    let checks = ApiResource {
        kind: "UptimeCheck".into(),
        plural: "uptimechecks".into(),
        ..demoapps()
    };
    let checks: Api<DynamicObject> =
        Api::namespaced_with(api.clone().into_client(), "default", &checks);
    for (name, url) in [
        ("check-ok", format!("{example}/healthz")),
        // A private address that only the example server's is granted.
        ("check-denied", "http://10.255.255.1:9/".to_owned()),
    ] {
        let check: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "demo.reconcile.dev/v1alpha1",
            "kind": "UptimeCheck",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"url": url, "intervalSeconds": 3600},
        }))
        .unwrap();
        checks.create(&PostParams::default(), &check).await.unwrap();
    }

    let image = "ghcr.io/reconcile-host/hello:1.0.0";
    for object in [
        demoapp("app-ok", image, None),
        demoapp("app-requeue", image, Some("requeue")),
        demoapp("app-error", image, Some("error")),
        demoapp("app-trap", image, Some("panic")),
        demoapp("app-bad", "", None),
    ] {
        api.create(&PostParams::default(), &object).await.unwrap();
    }

    // Until each way of ending has been seen (the failing ones retried).
    let mut scraped = None;
    for _ in 0..300 {
        let (_, body) = scrape(&url, true).await;
        let m = openmetrics_parser::openmetrics::parse_openmetrics(&body).unwrap();
        let c = |result| {
            value(
                &m,
                "controller_runtime_reconcile",
                &[("controller", "demoapp"), ("result", result)],
            )
        };
        let panics = value(
            &m,
            "controller_runtime_reconcile_panics",
            &[("controller", "demoapp")],
        );
        let http = |outcome| {
            value(
                &m,
                "reconcile_host_plugin_calls",
                &[
                    ("plugin", "uptime"),
                    ("kind", "http"),
                    ("verb", "GET"),
                    ("outcome", outcome),
                ],
            )
        };
        if c("success") >= Some(1.0)
            && http("ok") >= Some(1.0)
            && http("access_denied") >= Some(1.0)
            && c("requeue_after") >= Some(1.0)
            && c("error") >= Some(5.0)
            && panics >= Some(2.0)
        {
            scraped = Some((body, m));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (body, m) = scraped.expect("every kind of result within 30 s");
    let demoapp = [("controller", "demoapp")];
    let result = |r| {
        counter(
            &m,
            "controller_runtime_reconcile",
            &[("controller", "demoapp"), ("result", r)],
        )
    };
    // `requeue` (Requeue: true without a delay) is not in the contract:
    // present, as controller-runtime's, at zero.
    assert_eq!(result("requeue"), 0.0);
    let total = result("success") + result("error") + result("requeue_after") + result("requeue");
    // Reconciles keep running while the scrape is encoded: series read a
    // moment apart differ by the reconciles that ended in between, at most
    // the 4 that run at once.
    let close =
        |a: f64, b: f64, what: &str| assert!((a - b).abs() <= 4.0, "{what}: {a} against {b}");
    let errors = counter(&m, "controller_runtime_reconcile_errors", &demoapp);
    close(
        errors,
        result("error"),
        "errors_total against reconcile_total{result=error}",
    );
    // Only app-bad's empty image is terminal: it is not retried (it runs
    // again once, woken by its own finalizer being added).
    let terminal = counter(&m, "controller_runtime_terminal_reconcile_errors", &demoapp);
    assert!((1.0..=2.0).contains(&terminal), "{terminal}");
    let panics = counter(&m, "controller_runtime_reconcile_panics", &demoapp);
    assert!(panics >= 2.0, "the trap, and its retry");
    close(
        counter(&m, "controller_runtime_reconcile_time_seconds", &demoapp),
        total,
        "reconcile_time_seconds_count",
    );
    assert_eq!(
        counter(&m, "controller_runtime_max_concurrent_reconciles", &demoapp),
        4.0
    );
    assert!(value(&m, "controller_runtime_active_workers", &demoapp).is_some());
    // The reconcile time histogram has controller-runtime's buckets.
    let family = &m.families["controller_runtime_reconcile_time_seconds"];
    let sample = family.iter_samples().next().unwrap();
    let OpenMetricsValue::Histogram(histogram) = &sample.value else {
        panic!("a histogram")
    };
    let bounds: Vec<f64> = histogram.buckets.iter().map(|b| b.upper_bound).collect();
    assert_eq!(bounds.len(), 41, "{bounds:?}");
    assert_eq!(&bounds[..4], &[0.005, 0.01, 0.025, 0.05]);
    assert_eq!(bounds[39], 60.0);

    let queue = [("name", "demoapp"), ("controller", "demoapp")];
    assert!(counter(&m, "workqueue_adds", &queue) >= 5.0);
    // Every retried failure and every requeue is retried through the queue.
    let retries = counter(&m, "workqueue_retries", &queue);
    close(
        retries,
        errors - terminal,
        "every failure but the terminal ones is retried",
    );
    close(
        counter(&m, "workqueue_work_duration_seconds", &queue),
        total,
        "work_duration_seconds_count",
    );
    assert!(value(&m, "workqueue_unfinished_work_seconds", &queue).is_some());
    assert!(value(&m, "workqueue_longest_running_processor_seconds", &queue).is_some());
    // Not observable behind kube-runtime's scheduler: not made up.
    assert!(!m.families.contains_key("workqueue_depth"));
    assert!(!m.families.contains_key("workqueue_queue_duration_seconds"));

    // The API client's requests, watches and plugin calls alike.
    let rest = |code: &str, method: &str| {
        value(
            &m,
            "rest_client_requests",
            &[("code", code), ("method", method), ("host", &api_host)],
        )
    };
    assert!(rest("200", "GET") >= Some(1.0), "lists and watches");
    assert!(
        rest("201", "PATCH") >= Some(1.0) || rest("200", "PATCH") >= Some(1.0),
        "applies"
    );
    assert!(
        !m.families
            .contains_key("rest_client_request_duration_seconds"),
        "behind a flag"
    );

    // The host's own.
    let first_digest = plugin_info(&m, "demoapp");
    assert!(first_digest.starts_with("sha256:"));
    assert_eq!(
        m.families["reconcile_host_plugin_info"]
            .iter_samples()
            .count(),
        2,
        "one version of each plugin"
    );
    let calls = |verb, outcome| {
        value(
            &m,
            "reconcile_host_plugin_calls",
            &[
                ("plugin", "demoapp"),
                ("kind", "k8s"),
                ("verb", verb),
                ("outcome", outcome),
            ],
        )
    };
    assert!(
        calls("apply", "ok") >= Some(2.0),
        "the Deployment and Service of app-ok"
    );
    assert!(calls("patch", "ok") >= Some(1.0), "the status");
    let plugin = [("plugin", "demoapp")];
    assert!(counter(&m, "reconcile_host_plugin_duration_seconds", &plugin) >= total);
    assert!(counter(&m, "reconcile_host_plugin_memory_peak_bytes", &plugin) >= total);
    let failures = |t| {
        value(
            &m,
            "reconcile_host_reconcile_failures",
            &[("controller", "demoapp"), ("error_type", t)],
        )
    };
    close(
        failures("trap").unwrap_or_default(),
        panics,
        "failures of type trap",
    );
    close(
        failures("plugin").unwrap_or_default(),
        errors - panics,
        "failures of type plugin",
    );
    assert_eq!(
        counter(&m, "reconcile_host_plugin_loads", &[("result", "success")]),
        2.0
    );
    let compiled = value(&m, "reconcile_host_compile_cache_hits", &[]).unwrap_or_default()
        + value(&m, "reconcile_host_compile_cache_misses", &[]).unwrap_or_default();
    assert_eq!(compiled, 2.0);
    assert!(value(&m, "reconcile_host_spans_exported", &[]).is_some());
    assert_eq!(
        counter(&m, "reconcile_host_spans_dropped", &[("reason", "export")]),
        0.0
    );

    // Reloads: a file that does not load, and a new demoapp (the same
    // component with a custom section appended: another digest).
    let plugins = dir.path().join("plugins");
    std::fs::write(plugins.join("broken.wasm"), b"not a component").unwrap();
    let mut bytes = std::fs::read(plugins.join("demoapp.wasm")).unwrap();
    bytes.extend_from_slice(&[0x00, 0x04, 0x02, b'v', b'2', b'x']);
    std::fs::write(plugins.join("demoapp.wasm.tmp"), &bytes).unwrap();
    std::fs::rename(
        plugins.join("demoapp.wasm.tmp"),
        plugins.join("demoapp.wasm"),
    )
    .unwrap();
    let mut reloaded = None;
    for _ in 0..300 {
        let (_, body) = scrape(&url, true).await;
        let m = openmetrics_parser::openmetrics::parse_openmetrics(&body).unwrap();
        if value(
            &m,
            "reconcile_host_plugin_reloads",
            &[("result", "swapped")],
        ) == Some(1.0)
            && value(&m, "reconcile_host_plugin_loads", &[("result", "failure")]) >= Some(1.0)
        {
            reloaded = Some(m);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = reloaded.expect("the reload and the failed load counted within 30 s");
    assert_eq!(
        counter(&r, "reconcile_host_plugin_loads", &[("result", "success")]),
        3.0
    );
    let digest = plugin_info(&r, "demoapp");
    assert_ne!(
        digest, first_digest,
        "the new version replaces the old one's series"
    );
    assert_eq!(
        r.families["reconcile_host_plugin_info"]
            .iter_samples()
            .count(),
        2
    );

    // Bounded labels: no object name, namespace or UID anywhere.
    let uids: Vec<String> = api
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|o| o.metadata.uid.clone())
        .collect();
    for family in m.families.values() {
        for sample in family.iter_samples() {
            for value in sample.get_labelset().unwrap().iter_values() {
                assert!(
                    !value.starts_with("app-")
                        && !value.starts_with("check-")
                        && value != "default"
                        && !uids.contains(value),
                    "{} has the label value {value}",
                    family.family_name
                );
            }
        }
    }

    // Exemplars, on OpenMetrics scrapes only.
    let mut exemplars = exemplar_traces(&m, "controller_runtime_reconcile_time_seconds");
    assert!(!exemplars.is_empty(), "{body}");
    let error_exemplars = exemplar_traces(&m, "controller_runtime_reconcile_errors");
    assert_eq!(error_exemplars.len(), 1, "the latest error's trace");
    exemplars.extend(error_exemplars);
    let (content_type, plain) = scrape(&url, false).await;
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert!(
        !plain.contains("trace_id"),
        "no exemplars in the 0.0.4 format"
    );
    let p: MetricsExposition<PrometheusType, PrometheusValue> =
        openmetrics_parser::prometheus::parse_prometheus(&plain).unwrap();
    assert!(
        p.families
            .contains_key("controller_runtime_reconcile_total")
    );
    assert!(
        p.families
            .contains_key("controller_runtime_reconcile_time_seconds")
    );

    // A clean stop flushes the spans: each exemplar is an exported trace.
    let pid = host.child.id().unwrap();
    // SAFETY: signalling the child we spawned.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let status = tokio::time::timeout(Duration::from_secs(30), host.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let exported: HashMap<String, usize> =
        support::otlp::spans(&received)
            .iter()
            .fold(HashMap::new(), |mut seen, span| {
                *seen.entry(hex(&span.trace_id)).or_default() += 1;
                seen
            });
    for trace in &exemplars {
        assert!(
            exported.contains_key(trace),
            "exemplar {trace} was not exported"
        );
    }
}

/// The digest of the one running version of `plugin`, checking its labels.
fn plugin_info(m: &OpenMetrics, plugin: &str) -> String {
    let infos: Vec<_> = m.families["reconcile_host_plugin_info"]
        .iter_samples()
        .filter(|s| s.get_labelset().unwrap().get_label_value("plugin") == Some(plugin))
        .collect();
    assert_eq!(infos.len(), 1, "one running version of {plugin}");
    let labels = infos[0].get_labelset().unwrap();
    assert!(
        labels
            .get_label_value("contract")
            .unwrap()
            .starts_with("reconcile:plugin@0.")
    );
    assert!(!labels.get_label_value("version").unwrap().is_empty());
    labels.get_label_value("digest").unwrap().to_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
