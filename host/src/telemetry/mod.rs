//! Telemetry set up the OpenTelemetry way: a tracer provider configured from
//! the standard `OTEL_*` variables, and structured logs that carry trace ids.
//!
//! The exporter never blocks start-up or a reconcile: spans go to a batch
//! processor running on its own thread, OTLP connections are made lazily,
//! and [`Telemetry::shutdown`] flushes with a bounded wait.

pub mod export;
pub mod logs;
pub mod retain;
pub mod tree;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanExporter};

/// The name the host's tracer reports as its instrumentation scope.
pub const TRACER_NAME: &str = "reconcile-host";

/// Where spans go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TracesExporter {
    /// OTLP to a collector.
    Otlp(OtlpConfig),
    /// Pretty-printed to standard output, every field of every span
    /// (`OTEL_TRACES_EXPORTER=console`).
    Console,
    /// One indented line per span, a block per trace, with the log lines
    /// of each reconcile (`dev` and `call` by default).
    Tree(tree::TreeView),
    /// Nowhere.
    None,
}

/// The OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    HttpProtobuf,
}

/// OTLP exporter settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpConfig {
    /// Transport.
    pub protocol: OtlpProtocol,
    /// Full endpoint URL (for HTTP, including `/v1/traces`).
    pub endpoint: String,
    /// Extra request headers (authentication, tenancy).
    pub headers: Vec<(String, String)>,
    /// Export timeout.
    pub timeout: Duration,
    /// The variable the endpoint came from, for messages.
    pub variable: &'static str,
}

/// The head sampler.
#[derive(Clone, Debug, PartialEq)]
pub enum SamplerConfig {
    /// Sample everything.
    AlwaysOn,
    /// Sample nothing.
    AlwaysOff,
    /// Sample this fraction of traces by trace id.
    TraceIdRatio(f64),
    /// Follow the parent's decision; for roots, use the inner sampler.
    ParentBased(Box<SamplerConfig>),
}

impl SamplerConfig {
    /// The SDK sampler.
    pub fn build(&self) -> Sampler {
        match self {
            SamplerConfig::AlwaysOn => Sampler::AlwaysOn,
            SamplerConfig::AlwaysOff => Sampler::AlwaysOff,
            SamplerConfig::TraceIdRatio(ratio) => Sampler::TraceIdRatioBased(*ratio),
            SamplerConfig::ParentBased(root) => Sampler::ParentBased(Box::new(root.build())),
        }
    }
}

/// Telemetry settings, usually read from the environment with
/// [`TelemetryConfig::from_env`].
#[derive(Clone, Debug)]
pub struct TelemetryConfig {
    /// `service.name`.
    pub service_name: String,
    /// Resource attributes, `service.*` and `k8s.*` included.
    pub resource: Vec<(String, String)>,
    /// Where spans go.
    pub exporter: TracesExporter,
    /// True when `OTEL_TRACES_EXPORTER` was set (so a command's own default
    /// exporter must not replace it).
    pub exporter_from_env: bool,
    /// The head sampler.
    pub sampler: SamplerConfig,
    /// Traces kept beyond the head sampler's (failed and slow reconciles).
    pub retention: retain::RetentionConfig,
    /// How long shutdown waits for pending spans.
    pub shutdown_timeout: Duration,
    /// The batch processor's queue, when `OTEL_BSP_MAX_QUEUE_SIZE` was
    /// unusable (the SDK reads the variable itself otherwise).
    pub queue_size: Option<usize>,
    /// The batch size, when `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` was unusable.
    pub batch_size: Option<usize>,
    /// Problems found in the variables; each was replaced by its default.
    pub warnings: Vec<String>,
}

const DEFAULT_GRPC_ENDPOINT: &str = "http://localhost:4317";
const DEFAULT_HTTP_ENDPOINT: &str = "http://localhost:4318";

impl TelemetryConfig {
    /// Read the standard variables from the process environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Read the standard variables through `lookup` (tests pass a map).
    ///
    /// Unknown values are reported in [`warnings`](Self::warnings) and replaced
    /// by the default, as the OpenTelemetry specification asks.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let var = |key: &str| {
            lookup(key)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut warnings = Vec::new();

        let mut resource = parse_key_values(
            var("OTEL_RESOURCE_ATTRIBUTES").as_deref(),
            "OTEL_RESOURCE_ATTRIBUTES",
            &mut warnings,
        );
        let service_name = var("OTEL_SERVICE_NAME")
            .or_else(|| {
                resource
                    .iter()
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_else(|| "reconcile-host".to_owned());
        resource.retain(|(k, _)| k != "service.name");
        resource.insert(0, ("service.name".to_owned(), service_name.clone()));
        if !resource.iter().any(|(k, _)| k == "service.version") {
            resource.push((
                "service.version".to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            ));
        }
        for (variable, key) in [
            ("POD_NAME", "k8s.pod.name"),
            ("POD_NAMESPACE", "k8s.namespace.name"),
        ] {
            if let Some(value) = var(variable) {
                resource.retain(|(k, _)| k != key);
                resource.push((key.to_owned(), value));
            }
        }

        let disabled = match var("OTEL_SDK_DISABLED") {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(other) => {
                warnings.push(format!(
                    "OTEL_SDK_DISABLED={other} is not true or false; using false (spans are exported)"
                ));
                false
            }
        };
        let (mut queue_size, mut batch_size) = (None, None);
        for (variable, default) in [
            ("OTEL_BSP_MAX_QUEUE_SIZE", 2048usize),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512),
        ] {
            if let Some(value) = var(variable)
                && !value.parse::<usize>().is_ok_and(|n| n > 0)
            {
                warnings.push(format!(
                    "{variable}={value} is not a positive number (every span would be dropped); using {default}"
                ));
                if variable == "OTEL_BSP_MAX_QUEUE_SIZE" {
                    queue_size = Some(default);
                } else {
                    batch_size = Some(default);
                }
            }
        }
        let exporter_var = var("OTEL_TRACES_EXPORTER");
        let exporter_from_env = exporter_var.is_some() || disabled;
        let exporter = if disabled {
            TracesExporter::None
        } else {
            match exporter_var
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                None | Some("otlp") => TracesExporter::Otlp(otlp_config(&var, &mut warnings)),
                Some("console") | Some("stdout") => TracesExporter::Console,
                Some("none") => TracesExporter::None,
                Some(other) => {
                    warnings.push(format!(
                        "OTEL_TRACES_EXPORTER={other} is not supported (use otlp, console or none); using otlp"
                    ));
                    TracesExporter::Otlp(otlp_config(&var, &mut warnings))
                }
            }
        };

        let sampler = sampler_config(
            var("OTEL_TRACES_SAMPLER").as_deref(),
            var("OTEL_TRACES_SAMPLER_ARG").as_deref(),
            &mut warnings,
        );

        let retention = retention_config(&var, &sampler, &mut warnings);
        TelemetryConfig {
            service_name,
            resource,
            exporter,
            exporter_from_env,
            sampler,
            retention,
            shutdown_timeout: Duration::from_secs(5),
            queue_size,
            batch_size,
            warnings,
        }
    }

    /// Use `exporter` unless `OTEL_TRACES_EXPORTER` chose one (commands such
    /// as `call` default to the console).
    pub fn default_exporter(mut self, exporter: TracesExporter) -> Self {
        if !self.exporter_from_env {
            self.exporter = exporter;
        }
        self
    }
}

impl SamplerConfig {
    /// The fraction of root spans sampled, for ratio samplers.
    fn root_ratio(&self) -> Option<f64> {
        match self {
            SamplerConfig::TraceIdRatio(r) => Some(*r),
            SamplerConfig::ParentBased(root) => root.root_ratio(),
            SamplerConfig::AlwaysOn | SamplerConfig::AlwaysOff => None,
        }
    }
}

/// Retention from `RECONCILE_HOST_TRACES_*`: on by default (errors, and
/// reconciles slower than 2 s) when a ratio sampler samples under 1.0.
fn retention_config(
    var: &dyn Fn(&str) -> Option<String>,
    sampler: &SamplerConfig,
    warnings: &mut Vec<String>,
) -> retain::RetentionConfig {
    let default_on = sampler.root_ratio().is_some_and(|r| r < 1.0);
    let keep_errors = match var("RECONCILE_HOST_TRACES_KEEP_ERRORS") {
        None => default_on,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(other) => {
            warnings.push(format!(
                "RECONCILE_HOST_TRACES_KEEP_ERRORS={other} is not true or false; using {default_on}"
            ));
            default_on
        }
    };
    let default_slow = default_on.then_some(retain::DEFAULT_KEEP_SLOWER_THAN);
    let keep_slower_than = match var("RECONCILE_HOST_TRACES_KEEP_SLOWER_THAN_MS") {
        None => default_slow,
        Some(v) => match v.parse::<u64>() {
            Ok(0) => None,
            Ok(ms) => Some(Duration::from_millis(ms)),
            Err(_) => {
                warnings.push(format!(
                    "RECONCILE_HOST_TRACES_KEEP_SLOWER_THAN_MS={v} is not a number of milliseconds (0 turns it off); using {}",
                    default_slow.map_or(0, |d| d.as_millis())
                ));
                default_slow
            }
        },
    };
    let mut cap = |variable: &str, default: usize| match var(variable) {
        None => default,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                warnings.push(format!(
                    "{variable}={v} is not a positive number; using {default}"
                ));
                default
            }
        },
    };
    retain::RetentionConfig {
        keep_errors,
        keep_slower_than,
        max_spans_per_trace: cap(
            "RECONCILE_HOST_TRACES_MAX_SPANS_PER_TRACE",
            retain::DEFAULT_MAX_SPANS_PER_TRACE,
        ),
        max_spans: cap(
            "RECONCILE_HOST_TRACES_MAX_BUFFERED_SPANS",
            retain::DEFAULT_MAX_SPANS,
        ),
    }
}

fn otlp_config(var: &dyn Fn(&str) -> Option<String>, warnings: &mut Vec<String>) -> OtlpConfig {
    let protocol_var =
        var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"));
    let protocol = match protocol_var.as_deref() {
        None | Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
        Some("grpc") => OtlpProtocol::Grpc,
        Some(other) => {
            warnings.push(format!(
                "OTLP protocol {other:?} is not supported (use grpc or http/protobuf); using http/protobuf"
            ));
            OtlpProtocol::HttpProtobuf
        }
    };
    let default = match protocol {
        OtlpProtocol::HttpProtobuf => format!("{DEFAULT_HTTP_ENDPOINT}/v1/traces"),
        OtlpProtocol::Grpc => DEFAULT_GRPC_ENDPOINT.to_owned(),
    };
    let (endpoint, variable) = match (
        var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        protocol,
    ) {
        (Some(traces), _, _) => (traces, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        (None, Some(base), OtlpProtocol::HttpProtobuf) => (
            format!("{}/v1/traces", base.trim_end_matches('/')),
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
        (None, Some(base), OtlpProtocol::Grpc) => (base, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        (None, None, _) => (default.clone(), "OTEL_EXPORTER_OTLP_ENDPOINT"),
    };
    let endpoint = match endpoint_error(&endpoint) {
        None => endpoint,
        Some(why) => {
            warnings.push(format!(
                "{variable}={endpoint:?} is not usable ({why}); exporting to {default}"
            ));
            default
        }
    };
    if protocol == OtlpProtocol::HttpProtobuf && endpoint.contains(":4317") {
        warnings.push(format!(
            "the OTLP endpoint {endpoint} uses port 4317, the OTLP/gRPC port, but the protocol is http/protobuf; \
             set OTEL_EXPORTER_OTLP_PROTOCOL=grpc if the collector expects gRPC"
        ));
    }
    let headers_var =
        var("OTEL_EXPORTER_OTLP_TRACES_HEADERS").or_else(|| var("OTEL_EXPORTER_OTLP_HEADERS"));
    let headers = parse_key_values(
        headers_var.as_deref(),
        "OTEL_EXPORTER_OTLP_HEADERS",
        warnings,
    );
    let timeout_var =
        var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT").or_else(|| var("OTEL_EXPORTER_OTLP_TIMEOUT"));
    let timeout = match timeout_var.as_deref().map(str::parse::<u64>) {
        None => Duration::from_secs(10),
        Some(Ok(ms)) => Duration::from_millis(ms),
        Some(Err(_)) => {
            warnings.push(format!(
                "OTLP timeout {:?} is not a number of milliseconds; using 10000",
                timeout_var.unwrap_or_default()
            ));
            Duration::from_secs(10)
        }
    };
    OtlpConfig {
        protocol,
        endpoint,
        headers,
        timeout,
        variable,
    }
}

/// Why an OTLP endpoint cannot work, if it cannot: an http(s) URL with a
/// host and a port that exists.
fn endpoint_error(endpoint: &str) -> Option<String> {
    let uri: http::Uri = match endpoint.parse() {
        Ok(uri) => uri,
        Err(e) => return Some(format!("not a URL: {e}")),
    };
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Some(format!("the scheme is {other}, not http or https")),
        None => return Some("no scheme: write http://host:port".into()),
    }
    let Some(authority) = uri.authority() else {
        return Some("no host".into());
    };
    if authority.host().is_empty() {
        return Some("no host".into());
    }
    if let Some(port) = authority.as_str().rsplit_once(':').map(|(_, p)| p)
        && !authority.as_str().ends_with(']')
        && port.parse::<u16>().is_err()
    {
        return Some(format!("the port {port} is not between 0 and 65535"));
    }
    None
}

fn sampler_config(
    name: Option<&str>,
    arg: Option<&str>,
    warnings: &mut Vec<String>,
) -> SamplerConfig {
    let mut ratio = || match arg.map(str::parse::<f64>) {
        None => 1.0,
        Some(Ok(r)) if (0.0..=1.0).contains(&r) => r,
        Some(_) => {
            warnings.push(format!(
                "OTEL_TRACES_SAMPLER_ARG={:?} is not a ratio between 0 and 1; using 1.0",
                arg.unwrap_or_default()
            ));
            1.0
        }
    };
    let parent_based = |root: SamplerConfig| SamplerConfig::ParentBased(Box::new(root));
    match name {
        None | Some("parentbased_always_on") => parent_based(SamplerConfig::AlwaysOn),
        Some("always_on") => SamplerConfig::AlwaysOn,
        Some("always_off") => SamplerConfig::AlwaysOff,
        Some("traceidratio") => SamplerConfig::TraceIdRatio(ratio()),
        Some("parentbased_always_off") => parent_based(SamplerConfig::AlwaysOff),
        Some("parentbased_traceidratio") => parent_based(SamplerConfig::TraceIdRatio(ratio())),
        Some(other) => {
            warnings.push(format!(
                "OTEL_TRACES_SAMPLER={other} is not supported (use always_on, always_off, traceidratio, \
                 parentbased_always_on, parentbased_always_off or parentbased_traceidratio); using parentbased_always_on"
            ));
            parent_based(SamplerConfig::AlwaysOn)
        }
    }
}

/// Parses `k=v,k2=v2` with percent-encoded values (W3C Baggage style, as the
/// specification defines for `OTEL_RESOURCE_ATTRIBUTES` and headers).
fn parse_key_values(
    value: Option<&str>,
    variable: &str,
    warnings: &mut Vec<String>,
) -> Vec<(String, String)> {
    let Some(value) = value else {
        return Vec::new();
    };
    let mut pairs = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                pairs.push((k.trim().to_owned(), percent_decode(v.trim())));
            }
            _ => warnings.push(format!(
                "{variable}: ignoring {item:?}, which is not key=value"
            )),
        }
    }
    pairs
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Chooses ring as the process's TLS crypto provider, once. The OTLP
/// exporters (and kube) use rustls, which otherwise panics when it finds no
/// provider or two.
pub fn install_crypto_provider() {
    // An error only means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Errors building the tracer provider.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built (a malformed endpoint, say).
    #[error("cannot build the OTLP exporter for {endpoint}: {error}; check {variable}")]
    Exporter {
        /// The endpoint in use.
        endpoint: String,
        /// The variable it came from.
        variable: &'static str,
        /// What went wrong.
        error: opentelemetry_otlp::ExporterBuildError,
    },
}

/// The OTLP exporter `otlp` describes.
fn otlp_exporter(otlp: &OtlpConfig) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    let error = |error| TelemetryError::Exporter {
        endpoint: otlp.endpoint.clone(),
        variable: otlp.variable,
        error,
    };
    match otlp.protocol {
        OtlpProtocol::Grpc => {
            let mut metadata = tonic::metadata::MetadataMap::new();
            for (k, v) in &otlp.headers {
                if let (Ok(k), Ok(v)) = (
                    tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()),
                    v.parse(),
                ) {
                    metadata.insert(k, v);
                }
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(&otlp.endpoint)
                .with_timeout(otlp.timeout)
                .with_metadata(metadata)
                .build()
                .map_err(error)
        }
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(&otlp.endpoint)
            .with_timeout(otlp.timeout)
            .with_headers(otlp.headers.iter().cloned().collect::<HashMap<_, _>>())
            .build()
            .map_err(error),
    }
}

/// What a provider is built with, besides its processor.
struct Parts {
    drops: Arc<export::Drops>,
    retention: Arc<retain::RetentionStats>,
    retaining: bool,
}

impl Parts {
    /// The builder with resource and sampler (wrapped for retention when
    /// it is on and spans go somewhere).
    fn new(config: &TelemetryConfig) -> (opentelemetry_sdk::trace::TracerProviderBuilder, Self) {
        install_crypto_provider();
        let resource = Resource::builder_empty()
            .with_detector(Box::new(
                opentelemetry_sdk::resource::TelemetryResourceDetector,
            ))
            .with_attributes(
                config
                    .resource
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .build();
        // Nothing to retain for when nothing is exported.
        let retaining = config.retention.enabled() && config.exporter != TracesExporter::None;
        let builder = SdkTracerProvider::builder().with_resource(resource);
        let builder = if retaining {
            builder.with_sampler(retain::RetainingSampler::new(config.sampler.build()))
        } else {
            builder.with_sampler(config.sampler.build())
        };
        let parts = Parts {
            drops: Arc::default(),
            retention: Arc::default(),
            retaining,
        };
        (builder, parts)
    }

    fn retain<'a>(
        &'a self,
        config: &'a TelemetryConfig,
    ) -> Option<(&'a retain::RetentionConfig, &'a Arc<retain::RetentionStats>)> {
        self.retaining
            .then_some((&config.retention, &self.retention))
    }

    fn finish(
        self,
        builder: opentelemetry_sdk::trace::TracerProviderBuilder,
        exports: bool,
    ) -> Telemetry {
        let provider = builder.build();
        let tracer = provider.tracer(TRACER_NAME);
        Telemetry {
            provider,
            tracer,
            drops: self.drops,
            retention: self.retention,
            exports,
        }
    }
}

/// The batch processor of `exporter`, with the queue and batch sizes of
/// `config` where the SDK could not read them.
fn batch<E: SpanExporter + 'static>(
    config: &TelemetryConfig,
    exporter: E,
) -> opentelemetry_sdk::trace::BatchSpanProcessor {
    let mut batch = opentelemetry_sdk::trace::BatchConfigBuilder::default();
    if let Some(size) = config.queue_size {
        batch = batch.with_max_queue_size(size);
    }
    if let Some(size) = config.batch_size {
        batch = batch.with_max_export_batch_size(size);
    }
    opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch.build())
        .build()
}

/// Adds the exporting `processor`, behind retention when it is on.
fn add_processor<P: opentelemetry_sdk::trace::SpanProcessor + 'static>(
    builder: opentelemetry_sdk::trace::TracerProviderBuilder,
    processor: P,
    retain: Option<(&retain::RetentionConfig, &Arc<retain::RetentionStats>)>,
) -> opentelemetry_sdk::trace::TracerProviderBuilder {
    match retain {
        Some((config, stats)) => builder.with_span_processor(retain::Retaining::new(
            processor,
            config.clone(),
            stats.clone(),
        )),
        None => builder.with_span_processor(processor),
    }
}

/// The running tracer provider. Shut it down before exit to flush spans.
#[derive(Clone)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    drops: Arc<export::Drops>,
    retention: Arc<retain::RetentionStats>,
    exports: bool,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Build the tracer provider. Must run inside a Tokio runtime (the gRPC
    /// exporter's connection lives there). Never waits for the collector.
    pub fn init(config: &TelemetryConfig) -> Result<Self, TelemetryError> {
        let (builder, parts) = Parts::new(config);
        let retain = parts.retain(config);
        let mut exports = matches!(
            config.exporter,
            TracesExporter::Console | TracesExporter::Tree(_)
        );
        let builder = match &config.exporter {
            TracesExporter::None => builder,
            TracesExporter::Console => add_processor(
                builder,
                opentelemetry_sdk::trace::BatchSpanProcessor::builder(
                    opentelemetry_stdout::SpanExporter::default(),
                )
                .build(),
                retain,
            ),
            TracesExporter::Tree(view) => add_processor(builder, view.processor(), retain),
            TracesExporter::Otlp(otlp) => match otlp_exporter(otlp) {
                Ok(exporter) => {
                    exports = true;
                    let exporter = export::Observed::new(
                        exporter,
                        &otlp.endpoint,
                        otlp.variable,
                        parts.drops.clone(),
                    );
                    add_processor(builder, batch(config, exporter), retain)
                }
                // Telemetry never stops the host: say so and run without it.
                Err(e) => {
                    tracing::warn!("{e}; spans are not exported");
                    builder
                }
            },
        };
        Ok(parts.finish(builder, exports))
    }

    /// As [`init`](Self::init), spans going to `exporter` through the batch
    /// processor (and retention, when on) instead of the configured one;
    /// benchmarks use an exporter that discards.
    pub fn init_with_exporter<E: SpanExporter + 'static>(
        config: &TelemetryConfig,
        exporter: E,
    ) -> Self {
        let (builder, parts) = Parts::new(config);
        let exporter =
            export::Observed::new(exporter, "(given)", "the exporter", parts.drops.clone());
        let builder = add_processor(builder, batch(config, exporter), parts.retain(config));
        parts.finish(builder, true)
    }

    /// Wrap an existing provider (tests use an in-memory exporter).
    pub fn from_provider(provider: SdkTracerProvider) -> Self {
        let tracer = provider.tracer(TRACER_NAME);
        Telemetry {
            provider,
            tracer,
            drops: Arc::default(),
            retention: Arc::default(),
            exports: true,
        }
    }

    /// Whether spans go anywhere (an exporter was configured and built).
    pub fn exports(&self) -> bool {
        self.exports
    }

    /// Spans the exporter could not deliver so far.
    pub fn dropped_spans(&self) -> u64 {
        self.drops.spans()
    }

    /// Spans the exporter delivered so far.
    pub fn exported_spans(&self) -> u64 {
        self.drops.exported()
    }

    /// What retention kept, dropped and holds.
    pub fn retention(&self) -> &Arc<retain::RetentionStats> {
        &self.retention
    }

    /// The host's tracer.
    pub fn tracer(&self) -> SdkTracer {
        self.tracer.clone()
    }

    /// The provider.
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// Flush pending spans and stop, waiting at most `timeout` (an unreachable
    /// collector must not hold the process). Returns what went wrong, if anything.
    pub fn shutdown(&self, timeout: Duration) -> Result<(), String> {
        self.provider
            .shutdown_with_timeout(timeout)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> TelemetryConfig {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        TelemetryConfig::from_lookup(|k| map.get(k).cloned())
    }

    fn attr<'a>(c: &'a TelemetryConfig, key: &str) -> Option<&'a str> {
        c.resource
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn defaults() {
        let c = config(&[]);
        assert_eq!(c.service_name, "reconcile-host");
        assert_eq!(attr(&c, "service.version"), Some(env!("CARGO_PKG_VERSION")));
        assert_eq!(attr(&c, "k8s.pod.name"), None);
        assert_eq!(
            c.sampler,
            SamplerConfig::ParentBased(Box::new(SamplerConfig::AlwaysOn))
        );
        assert!(!c.exporter_from_env);
        let TracesExporter::Otlp(otlp) = &c.exporter else {
            panic!("default exporter is otlp")
        };
        assert_eq!(otlp.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(otlp.endpoint, "http://localhost:4318/v1/traces");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn service_resource_and_downward_api() {
        let c = config(&[
            ("OTEL_SERVICE_NAME", "demo-operator"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=ignored,deployment.environment=prod,team=a%20b",
            ),
            ("POD_NAME", "op-0"),
            ("POD_NAMESPACE", "ops"),
        ]);
        assert_eq!(c.service_name, "demo-operator");
        assert_eq!(attr(&c, "service.name"), Some("demo-operator"));
        assert_eq!(attr(&c, "deployment.environment"), Some("prod"));
        assert_eq!(attr(&c, "team"), Some("a b"));
        assert_eq!(attr(&c, "k8s.pod.name"), Some("op-0"));
        assert_eq!(attr(&c, "k8s.namespace.name"), Some("ops"));
    }

    #[test]
    fn service_name_from_resource_attributes() {
        let c = config(&[("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs")]);
        assert_eq!(c.service_name, "from-attrs");
    }

    #[test]
    fn endpoints_per_protocol() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
        ]);
        assert_eq!(
            c.exporter,
            TracesExporter::Otlp(OtlpConfig {
                protocol: OtlpProtocol::Grpc,
                endpoint: "http://collector:4317".into(),
                headers: vec![],
                timeout: Duration::from_secs(10),
                variable: "OTEL_EXPORTER_OTLP_ENDPOINT",
            })
        );
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-token=abc"),
        ]);
        let TracesExporter::Otlp(otlp) = c.exporter else {
            panic!("otlp")
        };
        assert_eq!(otlp.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(otlp.headers, vec![("x-token".to_owned(), "abc".to_owned())]);
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:9999/custom",
            ),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ]);
        let TracesExporter::Otlp(otlp) = c.exporter else {
            panic!("otlp")
        };
        assert_eq!(otlp.endpoint, "http://traces:9999/custom");
        assert_eq!(otlp.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn unusable_values_warn_naming_their_variable_and_fall_back() {
        for (variable, value, why) in [
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "ftp://collector/x",
                "scheme is ftp",
            ),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://collector:99999",
                "port 99999",
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url", "not a URL"),
        ] {
            let c = config(&[(variable, value)]);
            let TracesExporter::Otlp(otlp) = &c.exporter else {
                panic!("otlp")
            };
            assert_eq!(otlp.endpoint, "http://localhost:4318/v1/traces");
            assert!(
                c.warnings
                    .iter()
                    .any(|w| w.starts_with(&format!("{variable}=")) && w.contains(why)),
                "{variable}: {:?}",
                c.warnings
            );
        }
        let c = config(&[("OTEL_SDK_DISABLED", "maybe")]);
        assert!(matches!(c.exporter, TracesExporter::Otlp(_)));
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("OTEL_SDK_DISABLED=maybe"))
        );
        let c = config(&[("OTEL_BSP_MAX_QUEUE_SIZE", "0")]);
        assert_eq!(c.queue_size, Some(2048));
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("OTEL_BSP_MAX_QUEUE_SIZE=0"))
        );
        assert_eq!(
            config(&[("OTEL_BSP_MAX_QUEUE_SIZE", "100")]).queue_size,
            None
        );
    }

    #[test]
    fn grpc_port_with_http_protocol_warns() {
        let c = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]);
        assert!(
            c.warnings.iter().any(|w| w.contains("4317")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn exporters() {
        assert_eq!(
            config(&[("OTEL_TRACES_EXPORTER", "console")]).exporter,
            TracesExporter::Console
        );
        assert_eq!(
            config(&[("OTEL_TRACES_EXPORTER", "none")]).exporter,
            TracesExporter::None
        );
        assert_eq!(
            config(&[("OTEL_SDK_DISABLED", "true")]).exporter,
            TracesExporter::None
        );
        let c = config(&[("OTEL_TRACES_EXPORTER", "zipkin")]);
        assert!(matches!(c.exporter, TracesExporter::Otlp(_)));
        assert!(c.warnings[0].contains("zipkin"));
        // A command's default applies only when the variable is unset.
        assert_eq!(
            config(&[])
                .default_exporter(TracesExporter::Console)
                .exporter,
            TracesExporter::Console
        );
        assert_eq!(
            config(&[("OTEL_TRACES_EXPORTER", "none")])
                .default_exporter(TracesExporter::Console)
                .exporter,
            TracesExporter::None
        );
    }

    #[test]
    fn retention_is_on_by_default_under_a_ratio_below_one() {
        let r = |vars: &[(&str, &str)]| config(vars).retention;
        let off = r(&[]);
        assert!(!off.enabled(), "{off:?}");
        assert!(!r(&[("OTEL_TRACES_SAMPLER", "always_off")]).enabled());
        assert!(!r(&[("OTEL_TRACES_SAMPLER", "traceidratio")]).enabled());
        let on = r(&[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
        ]);
        assert!(on.keep_errors);
        assert_eq!(on.keep_slower_than, Some(Duration::from_secs(2)));
        let tuned = r(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
            ("RECONCILE_HOST_TRACES_KEEP_ERRORS", "false"),
            ("RECONCILE_HOST_TRACES_KEEP_SLOWER_THAN_MS", "500"),
            ("RECONCILE_HOST_TRACES_MAX_SPANS_PER_TRACE", "10"),
        ]);
        assert!(!tuned.keep_errors);
        assert_eq!(tuned.keep_slower_than, Some(Duration::from_millis(500)));
        assert_eq!(tuned.max_spans_per_trace, 10);
        // Asked for explicitly, it works with any sampler.
        assert!(r(&[("RECONCILE_HOST_TRACES_KEEP_ERRORS", "true")]).keep_errors);
        let bad = config(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
            ("RECONCILE_HOST_TRACES_KEEP_ERRORS", "yes"),
            ("RECONCILE_HOST_TRACES_KEEP_SLOWER_THAN_MS", "2s"),
            ("RECONCILE_HOST_TRACES_MAX_BUFFERED_SPANS", "0"),
        ]);
        assert_eq!(bad.warnings.len(), 3, "{:?}", bad.warnings);
        assert!(bad.retention.keep_errors);
        assert_eq!(bad.retention.max_spans, retain::DEFAULT_MAX_SPANS);
    }

    #[test]
    fn samplers() {
        let s = |name: &str, arg: Option<&str>| {
            let mut vars = vec![("OTEL_TRACES_SAMPLER", name)];
            if let Some(arg) = arg {
                vars.push(("OTEL_TRACES_SAMPLER_ARG", arg));
            }
            config(&vars)
        };
        assert_eq!(s("always_on", None).sampler, SamplerConfig::AlwaysOn);
        assert_eq!(s("always_off", None).sampler, SamplerConfig::AlwaysOff);
        assert_eq!(
            s("traceidratio", Some("0.25")).sampler,
            SamplerConfig::TraceIdRatio(0.25)
        );
        assert_eq!(
            s("traceidratio", None).sampler,
            SamplerConfig::TraceIdRatio(1.0)
        );
        assert_eq!(
            s("parentbased_always_off", None).sampler,
            SamplerConfig::ParentBased(Box::new(SamplerConfig::AlwaysOff))
        );
        assert_eq!(
            s("parentbased_traceidratio", Some("0.01")).sampler,
            SamplerConfig::ParentBased(Box::new(SamplerConfig::TraceIdRatio(0.01)))
        );
        let bad = s("traceidratio", Some("2"));
        assert_eq!(bad.sampler, SamplerConfig::TraceIdRatio(1.0));
        assert_eq!(bad.warnings.len(), 1);
        let unknown = s("jaeger_remote", None);
        assert_eq!(
            unknown.sampler,
            SamplerConfig::ParentBased(Box::new(SamplerConfig::AlwaysOn))
        );
        assert_eq!(unknown.warnings.len(), 1);
    }
}
