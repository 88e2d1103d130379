//! An OTLP trace receiver on 127.0.0.1: HTTP/protobuf (`/v1/traces`) and
//! gRPC, each on its own port, keeping every span it is sent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;

/// A span as received, with what the expectations look at.
#[derive(Clone, Debug)]
pub struct Span {
    /// Hex trace id.
    pub trace_id: String,
    /// Hex span id.
    pub span_id: String,
    /// Hex parent span id; empty for a root.
    pub parent_span_id: String,
    /// Name.
    pub name: String,
    /// `internal`, `server`, `client`, `producer`, `consumer`, `unspecified`.
    pub kind: &'static str,
    /// `unset`, `ok`, `error`.
    pub status: &'static str,
    /// The status message (empty when none).
    pub status_message: String,
    /// Attributes, as text.
    pub attributes: BTreeMap<String, String>,
    /// Event names.
    pub events: Vec<String>,
    /// Start, in nanoseconds since the Unix epoch.
    pub start_ns: u64,
    /// End, in nanoseconds since the Unix epoch.
    pub end_ns: u64,
}

impl Span {
    /// A short description for messages.
    pub fn describe(&self) -> String {
        let keys = ["k8s.name", "k8s.verb", "k8s.resource", "reconcile.reason"];
        let shown: Vec<String> = keys
            .iter()
            .filter_map(|k| self.attributes.get(*k).map(|v| format!("{k}={v}")))
            .collect();
        format!("{} [{}] {}", self.name, shown.join(" "), self.span_id)
    }
}

fn text(value: Option<&AnyValue>) -> String {
    match value {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<Span> {
    let mut out = Vec::new();
    for rs in request.resource_spans {
        for ss in rs.scope_spans {
            for s in ss.spans {
                let attributes = s
                    .attributes
                    .iter()
                    .map(|kv| {
                        (
                            kv.key.clone(),
                            text(kv.value.as_ref().and_then(|v| v.value.as_ref())),
                        )
                    })
                    .collect();
                out.push(Span {
                    trace_id: hex::encode(&s.trace_id),
                    span_id: hex::encode(&s.span_id),
                    parent_span_id: hex::encode(&s.parent_span_id),
                    name: s.name.clone(),
                    start_ns: s.start_time_unix_nano,
                    end_ns: s.end_time_unix_nano,
                    kind: match s.kind {
                        1 => "internal",
                        2 => "server",
                        3 => "client",
                        4 => "producer",
                        5 => "consumer",
                        _ => "unspecified",
                    },
                    status: match s.status.as_ref().map(|st| st.code) {
                        Some(1) => "ok",
                        Some(2) => "error",
                        _ => "unset",
                    },
                    status_message: s
                        .status
                        .as_ref()
                        .map(|st| st.message.clone())
                        .unwrap_or_default(),
                    attributes,
                    events: s.events.iter().map(|e| e.name.clone()).collect(),
                });
            }
        }
    }
    out
}

/// The spans received so far.
#[derive(Clone, Debug, Default)]
pub struct Spans(Arc<Mutex<Vec<Span>>>);

impl Spans {
    fn add(&self, request: ExportTraceServiceRequest) {
        let spans = flatten(request);
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(spans);
    }

    /// Every span received so far.
    pub fn all(&self) -> Vec<Span> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many have arrived.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none has.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone)]
struct Grpc(Spans);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A running receiver.
#[derive(Debug)]
pub struct Receiver {
    /// What it received.
    pub spans: Spans,
    /// The HTTP/protobuf endpoint's address.
    pub http: SocketAddr,
    /// The gRPC endpoint's address.
    pub grpc: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Receiver {
    /// Starts both endpoints on 127.0.0.1.
    pub async fn start() -> std::io::Result<Self> {
        let spans = Spans::default();
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let http = http_listener.local_addr()?;
        let kept = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(request) => {
                            kept.add(request);
                            (
                                axum::http::StatusCode::OK,
                                ExportTraceServiceResponse::default().encode_to_vec(),
                            )
                        }
                        Err(_) => (axum::http::StatusCode::BAD_REQUEST, Vec::new()),
                    }
                }
            }),
        );
        let http_task = tokio::spawn(async move {
            let _ = axum::serve(http_listener, app).await;
        });
        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let grpc = grpc_listener.local_addr()?;
        let service = TraceServiceServer::new(Grpc(spans.clone()));
        let incoming = futures::stream::unfold(grpc_listener, |listener| async move {
            let accepted = listener.accept().await.map(|(stream, _)| stream);
            Some((accepted, listener))
        });
        let grpc_task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(Receiver {
            spans,
            http,
            grpc,
            tasks: vec![http_task, grpc_task],
        })
    }
}
