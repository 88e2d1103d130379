//! Replicas of `run` on one embedded API server, each with the mirror
//! test plugin and its grant, and what the tests read back: the mirrors,
//! the writes per replica from the request log, lease holders.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use reconcile_apiserver::{ApiServer, RequestRecord};
use serde_json::json;

use super::guest;
use super::host::HostProcess;

/// Short timings, so that a take-over by expiry takes seconds (the
/// defaults' timing logic is tested on a paused clock in the lease module).
pub const LEASE: f64 = 6.0;
const RENEW: &str = "4";
const RETRY: &str = "0.5";

pub struct Setup {
    pub server: ApiServer,
    pub client: kube::Client,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub plugins: PathBuf,
}

pub async fn setup() -> Setup {
    let server = ApiServer::start(Default::default()).await.unwrap();
    let client = server.client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig()).unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(guest("mirror"), plugins.join("mirror.wasm")).unwrap();
    std::fs::write(
        plugins.join("mirror.grants.toml"),
        r#"
        [[resources]]
        kind = "ConfigMap"
        verbs = ["get", "list", "watch", "patch"]
        [[resources]]
        group = "events.k8s.io"
        kind = "Event"
        verbs = ["get", "create", "patch", "delete"]
        "#,
    )
    .unwrap();
    Setup {
        server,
        client,
        dir,
        kubeconfig,
        plugins,
    }
}

impl Setup {
    /// `run --leader-elect-*` with the short timings, and `mode`
    /// (`--leader-elect`, `--shards N`, ...), as `identity` (POD_NAME).
    pub fn host(&self, identity: &str, mode: &[&str]) -> HostProcess {
        self.host_with(identity, mode, &[])
    }

    /// One [`host`](Self::host) per identity, by identity.
    pub fn hosts(&self, identities: &[&str], mode: &[&str]) -> BTreeMap<String, HostProcess> {
        identities
            .iter()
            .map(|id| ((*id).to_owned(), self.host(id, mode)))
            .collect()
    }

    /// [`host`](Self::host) with more environment variables.
    pub fn host_with(&self, identity: &str, mode: &[&str], env: &[(&str, String)]) -> HostProcess {
        let mut args: Vec<String> = ["run", "--plugins"].map(str::to_owned).to_vec();
        args.push(self.plugins.display().to_string());
        args.push("--kubeconfig".into());
        args.push(self.kubeconfig.display().to_string());
        args.extend(mode.iter().map(|s| (*s).to_owned()));
        args.extend(
            [
                "--leader-elect-lease-duration",
                &LEASE.to_string(),
                "--leader-elect-renew-deadline",
                RENEW,
                "--leader-elect-retry-period",
                RETRY,
            ]
            .map(str::to_owned),
        );
        if !mode.contains(&"--shutdown-grace") {
            args.extend(["--shutdown-grace".to_owned(), "5".to_owned()]);
        }
        let mut env: Vec<(&str, String)> = env.to_vec();
        env.push(("POD_NAME", identity.to_owned()));
        env.push(("POD_NAMESPACE", "default".to_owned()));
        HostProcess::spawn(&args, &env)
    }

    pub fn configmaps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), "default")
    }

    /// Creates `n` mirrored ConfigMaps with `v: 1`.
    pub async fn create(&self, n: usize) {
        for i in 0..n {
            let cm: ConfigMap = serde_json::from_value(json!({
                "metadata": {"name": format!("m-{i}"), "labels": {"mirror.reconcile.dev/enabled": "true"}},
                "data": {"v": "1"},
            }))
            .unwrap();
            self.configmaps()
                .create(&PostParams::default(), &cm)
                .await
                .unwrap();
        }
    }

    /// Sets `v` on every source.
    pub async fn set(&self, n: usize, v: &str) {
        for i in 0..n {
            self.configmaps()
                .patch(
                    &format!("m-{i}"),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {"v": v}})),
                )
                .await
                .unwrap();
        }
    }

    /// Waits until every mirror says `v`; how long it took.
    pub async fn mirrored(&self, n: usize, v: &str, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let mut done = 0;
            for i in 0..n {
                if let Some(m) = self
                    .configmaps()
                    .get_opt(&format!("m-{i}-mirror"))
                    .await
                    .unwrap()
                    && m.data.unwrap_or_default().get("v").map(String::as_str) == Some(v)
                {
                    done += 1;
                }
            }
            if done == n {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "{done} of {n} mirrors say v={v} after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The writes the replicas made, except to leases (and access reviews,
    /// which store nothing): (identity, record).
    pub fn writes(&self) -> Vec<(String, RequestRecord)> {
        let mut writes: Vec<(String, RequestRecord)> = self
            .server
            .faults()
            .requests()
            .into_iter()
            .filter(|r| {
                matches!(
                    r.verb.as_str(),
                    "create" | "update" | "patch" | "delete" | "deletecollection"
                ) && !matches!(
                    r.resource.as_deref(),
                    // Leases are how replicas coordinate; access reviews
                    // store nothing.
                    Some("leases" | "selfsubjectaccessreviews")
                )
            })
            .filter_map(|r| {
                let agent = r.user_agent.clone()?;
                let identity = agent
                    .strip_prefix("reconcile-host/")?
                    .split_once(" (")?
                    .1
                    .strip_suffix(')')?
                    .to_owned();
                Some((identity, r))
            })
            .collect();
        writes.sort_by_key(|(_, r)| r.received);
        writes
    }
}

/// The holder of the lease `name` in `default`, if held.
pub async fn holder(client: &kube::Client, name: &str) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(client.clone(), "default");
    api.get_opt(name)
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}
