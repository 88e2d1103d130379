//! A cluster for operator tests: the embedded API server, a kube client,
//! an engine harness with in-memory spans, and the operator's controllers.

use std::time::Duration;

use opentelemetry_sdk::trace::SpanData;
use reconcile_apiserver::ApiServer;
use reconcile_host::operator::{self, ControllerSettings, GrantPolicy, Operator};

use super::{Harness, attr, guest};

/// An embedded API server, a client, an engine harness and the operator.
pub struct Cluster {
    pub server: ApiServer,
    pub client: kube::Client,
    pub h: Harness,
    pub operator: Option<Operator>,
}

/// A fresh cluster with no plugins running.
pub async fn cluster() -> Cluster {
    let server = ApiServer::start(Default::default()).await.unwrap();
    let client = server.client().unwrap();
    Cluster {
        server,
        client,
        h: Harness::new(),
        operator: None,
    }
}

impl Cluster {
    pub async fn apply(&self, paths: &[&str]) {
        let root = xtask::project_root();
        let paths: Vec<_> = paths.iter().map(|p| root.join(p)).collect();
        let manifests = operator::manifests::read(&paths).unwrap();
        operator::manifests::apply(&self.client, &manifests)
            .await
            .unwrap();
    }

    pub async fn start(&mut self, plugins: Vec<reconcile_host::engine::Plugin>) {
        let settings = ControllerSettings {
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            ..Default::default()
        };
        self.operator = Some(Operator::start(
            self.client.clone(),
            plugins,
            settings,
            self.h.provider_tracer(),
        ));
    }

    pub async fn stop(&mut self) {
        if let Some(operator) = self.operator.take() {
            operator.stop().await;
        }
    }

    pub async fn plugin(&self, name: &str) -> reconcile_host::engine::Plugin {
        self.plugin_with(name, &GrantPolicy::AsRequested { http: vec![] })
            .await
    }

    /// Guest `name`, loaded with its grant found by `policy`.
    pub async fn plugin_with(
        &self,
        name: &str,
        policy: &GrantPolicy,
    ) -> reconcile_host::engine::Plugin {
        operator::load_plugin(&self.h.engine, &guest(name), policy)
            .await
            .unwrap()
    }

    pub fn roots(&self, name: &str) -> Vec<SpanData> {
        self.h
            .finished()
            .into_iter()
            .filter(|s| s.name == "reconcile" && attr(s, "k8s.name").as_deref() == Some(name))
            .collect()
    }

    pub fn children(&self, root: &SpanData) -> Vec<SpanData> {
        self.h
            .finished()
            .into_iter()
            .filter(|s| s.parent_span_id == root.span_context.span_id())
            .collect()
    }
}

/// Polls `check` every 25 ms for up to 10 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..400 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}
