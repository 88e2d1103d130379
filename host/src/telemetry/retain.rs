//! Error- and latency-biased retention: with a ratio sampler, the host
//! still exports the whole trace of every reconcile that fails or is slow.
//!
//! The head sampler decides first, as usual: a sampled trace is exported
//! as it ends. With retention on, a trace the ratio did not pick is not
//! dropped but recorded (`SamplingDecision::RecordOnly`, see
//! [`RetainingSampler`]): its spans reach [`Retaining::on_end`], which keeps
//! them in memory until the trace's root ends. A root that failed (status
//! `Error`) or took at least the threshold is exported with every span
//! buffered under it, each marked sampled and carrying `reconcile.retained`
//! (`error` or `slow`); any other is dropped with its buffer. A span that
//! ends after its root follows the root's decision.
//!
//! Memory is bounded: at most `max_spans_per_trace` spans are buffered per
//! trace and `max_spans` in all; what goes over is dropped and counted
//! ([`RetentionStats::spans_dropped`], and `reconcile.retained.dropped_spans`
//! on the root of a trace that lost some). The root is never dropped, so a
//! kept trace always has its root; the spans kept are the first to end,
//! so under a cap a kept span's parent may be among the dropped.
//!
//! This is the Collector's tail sampling (`tail_sampling` with
//! `status_code` and `latency` policies) done in the process, for one
//! process's own traces: no extra component, and no spans sent only to be
//! dropped. The Collector's is the better choice when a decision needs spans
//! from several services, or policies beyond errors and latency.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceId,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    Sampler, SamplingDecision, SamplingResult, ShouldSample, Span, SpanData, SpanProcessor,
};

/// The attribute of a retained span: why its trace was kept.
pub const RETAINED_ATTRIBUTE: &str = "reconcile.retained";

/// The attribute of a retained root whose trace lost spans to the caps.
pub const DROPPED_ATTRIBUTE: &str = "reconcile.retained.dropped_spans";

/// What retention keeps, and its memory bounds.
#[derive(Clone, Debug, PartialEq)]
pub struct RetentionConfig {
    /// Keep the traces whose root failed.
    pub keep_errors: bool,
    /// Keep the traces whose root took at least this long.
    pub keep_slower_than: Option<Duration>,
    /// Spans buffered per trace, its root excepted.
    pub max_spans_per_trace: usize,
    /// Spans buffered in all.
    pub max_spans: usize,
}

impl RetentionConfig {
    /// Retention off.
    pub fn off() -> Self {
        RetentionConfig {
            keep_errors: false,
            keep_slower_than: None,
            max_spans_per_trace: DEFAULT_MAX_SPANS_PER_TRACE,
            max_spans: DEFAULT_MAX_SPANS,
        }
    }

    /// Whether anything is retained.
    pub fn enabled(&self) -> bool {
        self.keep_errors || self.keep_slower_than.is_some()
    }
}

/// Default of `RECONCILE_HOST_TRACES_KEEP_SLOWER_THAN_MS`.
pub const DEFAULT_KEEP_SLOWER_THAN: Duration = Duration::from_secs(2);
/// Default of `RECONCILE_HOST_TRACES_MAX_SPANS_PER_TRACE`.
pub const DEFAULT_MAX_SPANS_PER_TRACE: usize = 512;
/// Default of `RECONCILE_HOST_TRACES_MAX_BUFFERED_SPANS`.
pub const DEFAULT_MAX_SPANS: usize = 16_384;

/// How long a trace's spans wait for their root (one lost without ending,
/// or decided so long ago that the decision is forgotten) before a sweep
/// drops them.
const STALE: Duration = Duration::from_secs(120);

/// Recent decisions remembered, for spans that end after their root and
/// for [`RetentionStats::retained`].
const DECISIONS: usize = 4096;

/// Why a trace was kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    /// Its root failed.
    Error,
    /// Its root was slower than the threshold.
    Slow,
}

impl Kept {
    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Kept::Error => "error",
            Kept::Slow => "slow",
        }
    }
}

/// What retention did, shared with the metrics.
#[derive(Debug, Default)]
pub struct RetentionStats {
    kept_errors: AtomicU64,
    kept_slow: AtomicU64,
    discarded: AtomicU64,
    spans_dropped: AtomicU64,
    buffered: AtomicU64,
    decisions: Mutex<Decisions>,
}

#[derive(Debug, Default)]
struct Decisions {
    order: VecDeque<TraceId>,
    kept: HashMap<TraceId, Option<Kept>>,
}

impl Decisions {
    fn insert(&mut self, trace: TraceId, kept: Option<Kept>) {
        if self.kept.insert(trace, kept).is_none() {
            self.order.push_back(trace);
            while self.order.len() > DECISIONS {
                if let Some(old) = self.order.pop_front() {
                    self.kept.remove(&old);
                }
            }
        }
    }
}

impl RetentionStats {
    /// Traces kept because their root failed.
    pub fn kept_errors(&self) -> u64 {
        self.kept_errors.load(Ordering::Relaxed)
    }

    /// Traces kept because their root was slow.
    pub fn kept_slow(&self) -> u64 {
        self.kept_slow.load(Ordering::Relaxed)
    }

    /// Traces recorded and dropped at their root's end.
    pub fn discarded(&self) -> u64 {
        self.discarded.load(Ordering::Relaxed)
    }

    /// Spans dropped over the buffer caps.
    pub fn spans_dropped(&self) -> u64 {
        self.spans_dropped.load(Ordering::Relaxed)
    }

    /// Spans waiting in the buffer now.
    pub fn buffered(&self) -> u64 {
        self.buffered.load(Ordering::Relaxed)
    }

    /// Whether the trace was kept by retention (among the recent ones).
    pub fn retained(&self, trace: TraceId) -> Option<Kept> {
        self.decided(trace).flatten()
    }

    fn decide(&self, trace: TraceId, kept: Option<Kept>) {
        match kept {
            Some(Kept::Error) => &self.kept_errors,
            Some(Kept::Slow) => &self.kept_slow,
            None => &self.discarded,
        }
        .fetch_add(1, Ordering::Relaxed);
        self.decisions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(trace, kept);
    }

    fn decided(&self, trace: TraceId) -> Option<Option<Kept>> {
        self.decisions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .kept
            .get(&trace)
            .copied()
    }
}

/// The head sampler with retention: where `inner` drops a trace, it is
/// recorded instead, so that its spans reach the processor. A child follows
/// its local parent: sampled, recorded, or dropped with it.
#[derive(Clone, Debug)]
pub struct RetainingSampler {
    inner: Sampler,
}

impl RetainingSampler {
    /// Wraps the configured head sampler.
    pub fn new(inner: Sampler) -> Self {
        RetainingSampler { inner }
    }
}

impl ShouldSample for RetainingSampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        if let Some(cx) = parent_context.filter(|cx| cx.span().span_context().is_valid()) {
            let span = cx.span();
            let parent = span.span_context();
            if !parent.is_remote() {
                let decision = if parent.is_sampled() {
                    SamplingDecision::RecordAndSample
                } else if span.is_recording() {
                    SamplingDecision::RecordOnly
                } else {
                    SamplingDecision::Drop
                };
                return SamplingResult {
                    decision,
                    attributes: Vec::new(),
                    trace_state: parent.trace_state().clone(),
                };
            }
        }
        let mut result =
            self.inner
                .should_sample(parent_context, trace_id, name, span_kind, attributes, links);
        if result.decision == SamplingDecision::Drop {
            result.decision = SamplingDecision::RecordOnly;
        }
        result
    }
}

#[derive(Debug)]
struct Buffered {
    spans: Vec<SpanData>,
    since: Instant,
    /// Spans of the trace dropped over the caps.
    dropped: u32,
}

#[derive(Debug)]
struct Buffers {
    traces: HashMap<TraceId, Buffered>,
    total: usize,
    /// When stale traces were last looked for.
    swept: Instant,
}

impl Default for Buffers {
    fn default() -> Self {
        Buffers {
            traces: HashMap::new(),
            total: 0,
            swept: Instant::now(),
        }
    }
}

/// How often the buffer is swept for traces whose root never came (a
/// span ending long after its root, once its decision is forgotten).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The processor of retention, in front of the exporting one.
#[derive(Debug)]
pub struct Retaining<P> {
    inner: P,
    config: RetentionConfig,
    buffers: Mutex<Buffers>,
    stats: Arc<RetentionStats>,
}

impl<P: SpanProcessor> Retaining<P> {
    /// Retention under `config`, exporting through `inner`.
    pub fn new(inner: P, config: RetentionConfig, stats: Arc<RetentionStats>) -> Self {
        Retaining {
            inner,
            config,
            buffers: Mutex::default(),
            stats,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffers> {
        self.buffers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why the trace of this finished root is kept, if it is.
    fn keeps(&self, root: &SpanData) -> Option<Kept> {
        if self.config.keep_errors && matches!(root.status, Status::Error { .. }) {
            return Some(Kept::Error);
        }
        let took = root
            .end_time
            .duration_since(root.start_time)
            .unwrap_or_default();
        match self.config.keep_slower_than {
            Some(threshold) if took >= threshold => Some(Kept::Slow),
            _ => None,
        }
    }

    fn export(&self, mut span: SpanData, kept: Kept) {
        let sc = &span.span_context;
        span.span_context = SpanContext::new(
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().with_sampled(true),
            sc.is_remote(),
            sc.trace_state().clone(),
        );
        span.attributes
            .push(KeyValue::new(RETAINED_ATTRIBUTE, kept.as_str()));
        self.inner.on_end(span);
    }

    fn drop_span(&self) {
        self.stats.spans_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Buffers a span of an undecided trace, within the caps; or, if its
    /// root was decided meanwhile, follows that decision.
    fn buffer(&self, span: SpanData) {
        let trace = span.span_context.trace_id();
        let mut buffers = self.lock();
        // Decided under this lock by `finish`: no span lands in a buffer
        // that its root has already collected.
        if let Some(decided) = self.stats.decided(trace) {
            drop(buffers);
            if let Some(kept) = decided {
                self.export(span, kept);
            }
            return;
        }
        if buffers.swept.elapsed() >= SWEEP_EVERY {
            buffers.swept = Instant::now();
            evict_stale(&mut buffers, &self.stats);
        }
        let full = buffers.total >= self.config.max_spans;
        let per_trace = self.config.max_spans_per_trace;
        let entry = buffers.traces.entry(trace).or_insert_with(|| Buffered {
            spans: Vec::new(),
            since: Instant::now(),
            dropped: 0,
        });
        if full || entry.spans.len() >= per_trace {
            entry.dropped = entry.dropped.saturating_add(1);
            drop(buffers);
            return self.drop_span();
        }
        entry.spans.push(span);
        buffers.total += 1;
        self.stats
            .buffered
            .store(buffers.total as u64, Ordering::Relaxed);
    }

    /// A root ended: its trace is exported or dropped.
    fn finish(&self, root: SpanData) {
        let trace = root.span_context.trace_id();
        let kept = self.keeps(&root);
        let (spans, dropped) = {
            let mut buffers = self.lock();
            let (spans, dropped) = buffers
                .traces
                .remove(&trace)
                .map(|b| (b.spans, b.dropped))
                .unwrap_or_default();
            buffers.total = buffers.total.saturating_sub(spans.len());
            self.stats
                .buffered
                .store(buffers.total as u64, Ordering::Relaxed);
            // With the buffer still locked (see `buffer`).
            self.stats.decide(trace, kept);
            (spans, dropped)
        };
        if let Some(kept) = kept {
            for span in spans {
                self.export(span, kept);
            }
            let mut root = root;
            // The trace is not whole: say how much is missing.
            if dropped > 0 {
                root.attributes
                    .push(KeyValue::new(DROPPED_ATTRIBUTE, i64::from(dropped)));
            }
            self.export(root, kept);
        }
    }
}

/// Drops the spans of traces that have waited for their root too long.
fn evict_stale(buffers: &mut Buffers, stats: &RetentionStats) {
    let mut evicted = 0usize;
    buffers.traces.retain(|_, b| {
        let stale = b.since.elapsed() >= STALE;
        if stale {
            evicted += b.spans.len();
        }
        !stale
    });
    buffers.total = buffers.total.saturating_sub(evicted);
    stats
        .spans_dropped
        .fetch_add(evicted as u64, Ordering::Relaxed);
    stats
        .buffered
        .store(buffers.total as u64, Ordering::Relaxed);
}

/// The local root of a trace: no parent, or a parent in another process.
fn is_root(span: &SpanData) -> bool {
    span.parent_span_id == SpanId::INVALID || span.parent_span_is_remote
}

impl<P: SpanProcessor> SpanProcessor for Retaining<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            return self.inner.on_end(span);
        }
        if is_root(&span) {
            return self.finish(span);
        }
        // Its root has ended already: its decision holds.
        match self.stats.decided(span.span_context.trace_id()) {
            Some(Some(kept)) => self.export(span, kept),
            Some(None) => {}
            None => self.buffer(span),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SimpleSpanProcessor};

    fn provider(
        config: RetentionConfig,
    ) -> (SdkTracerProvider, InMemorySpanExporter, Arc<RetentionStats>) {
        let exporter = InMemorySpanExporter::default();
        let stats = Arc::new(RetentionStats::default());
        let provider = SdkTracerProvider::builder()
            .with_sampler(RetainingSampler::new(Sampler::AlwaysOff))
            .with_span_processor(Retaining::new(
                SimpleSpanProcessor::new(exporter.clone()),
                config,
                stats.clone(),
            ))
            .build();
        (provider, exporter, stats)
    }

    fn config() -> RetentionConfig {
        RetentionConfig {
            keep_errors: true,
            keep_slower_than: Some(Duration::from_secs(60)),
            ..RetentionConfig::off()
        }
    }

    #[test]
    fn a_failed_root_exports_its_children_even_one_that_ends_after_it() {
        let (provider, exporter, stats) = provider(config());
        let tracer = provider.tracer("t");
        let root = tracer.start("reconcile");
        let cx = Context::current_with_span(root);
        let early = tracer.start_with_context("early", &cx);
        drop(early);
        let late = tracer.start_with_context("late", &cx);
        cx.span().set_status(Status::error("failed"));
        cx.span().end();
        drop(late);
        let spans = exporter.get_finished_spans().unwrap();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names, ["early", "reconcile", "late"]);
        let root = &spans[1];
        for span in &spans {
            assert!(span.span_context.is_sampled());
            assert_eq!(span.span_context.trace_id(), root.span_context.trace_id());
            assert!(span.attributes.iter().any(|kv| kv.key.as_str() == RETAINED_ATTRIBUTE
                && kv.value.as_str() == "error"));
        }
        assert_eq!(spans[0].parent_span_id, root.span_context.span_id());
        assert_eq!(stats.kept_errors(), 1);
        assert_eq!(
            stats.retained(root.span_context.trace_id()),
            Some(Kept::Error)
        );
    }

    #[test]
    fn the_sampler_follows_parents_and_records_what_the_head_sampler_drops() {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceState};
        let sampler = RetainingSampler::new(Sampler::ParentBased(Box::new(
            Sampler::TraceIdRatioBased(1.0),
        )));
        let decide = |cx: Option<&Context>| {
            sampler
                .should_sample(
                    cx,
                    TraceId::from(7u128),
                    "reconcile",
                    &SpanKind::Internal,
                    &[],
                    &[],
                )
                .decision
        };
        let remote = |flags| {
            Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from(7u128),
                SpanId::from(9u64),
                flags,
                true,
                TraceState::default(),
            ))
        };
        // A root: the ratio (1.0) samples it.
        assert_eq!(decide(None), SamplingDecision::RecordAndSample);
        assert_eq!(
            decide(Some(&Context::new())),
            SamplingDecision::RecordAndSample
        );
        // A remote parent that sampled: sampled; one that did not: recorded,
        // so that a failure is still kept.
        assert_eq!(
            decide(Some(&remote(TraceFlags::SAMPLED))),
            SamplingDecision::RecordAndSample
        );
        assert_eq!(
            decide(Some(&remote(TraceFlags::default()))),
            SamplingDecision::RecordOnly
        );
        // A local child follows its parent.
        let (provider, _, _) = provider(config());
        let tracer = provider.tracer("t");
        let recorded = Context::current_with_span(tracer.start("reconcile"));
        assert!(!recorded.span().span_context().is_sampled());
        assert_eq!(decide(Some(&recorded)), SamplingDecision::RecordOnly);
    }

    #[test]
    fn a_root_that_is_neither_failed_nor_slow_is_dropped_with_its_children() {
        let (provider, exporter, stats) = provider(config());
        let tracer = provider.tracer("t");
        let root = tracer.start("reconcile");
        let cx = Context::current_with_span(root);
        drop(tracer.start_with_context("child", &cx));
        cx.span().end();
        let late = tracer.start_with_context("late", &cx);
        drop(late);
        assert!(exporter.get_finished_spans().unwrap().is_empty());
        assert_eq!(stats.discarded(), 1);
        assert_eq!(stats.buffered(), 0);
    }

    #[test]
    fn over_the_caps_spans_are_dropped_and_counted_the_root_never() {
        let (provider, exporter, stats) = provider(RetentionConfig {
            max_spans_per_trace: 3,
            max_spans: 4,
            ..config()
        });
        let tracer = provider.tracer("t");
        let roots: Vec<Context> = (0..2)
            .map(|_| Context::current_with_span(tracer.start("reconcile")))
            .collect();
        for cx in &roots {
            for _ in 0..5 {
                drop(tracer.start_with_context("child", cx));
            }
        }
        // 3 of the first trace's 5, then 1 of the second's before the
        // total cap of 4.
        assert_eq!(stats.buffered(), 4);
        assert_eq!(stats.spans_dropped(), 6);
        for cx in &roots {
            cx.span().set_status(Status::error("failed"));
            cx.span().end();
        }
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 6, "4 children and both roots");
        let dropped: Vec<i64> = spans
            .iter()
            .filter(|s| s.name == "reconcile")
            .map(|s| {
                s.attributes
                    .iter()
                    .find(|kv| kv.key.as_str() == DROPPED_ATTRIBUTE)
                    .map(|kv| match kv.value {
                        opentelemetry::Value::I64(n) => n,
                        _ => -1,
                    })
                    .unwrap_or(0)
            })
            .collect();
        assert_eq!(dropped, [2, 4]);
    }
}
