//! The `reconcile:plugin@0.2.0` imports, served by the same implementation
//! as 0.1.0: each call's types are translated to 0.1.0's and back. What
//! 0.2.0 adds is handled here (typed log fields) or in the engine
//! (metadata and request fields, `wasi:http`).

use serde_json::Value;

use crate::engine::HostState;
use crate::engine::bindings::v0_2::{k8s, log, trace, types};
use crate::engine::bindings::{k8s as k8s1, trace as trace1, types as types1};

type K8sResult<T> = wasmtime::Result<Result<T, k8s::Error>>;

pub(crate) fn resource(r: types::ResourceType) -> types1::ResourceType {
    types1::ResourceType {
        group: r.group,
        version: r.version,
        kind: r.kind,
        plural: r.plural,
        namespaced: r.namespaced,
    }
}

fn status(s: k8s1::ApiStatus) -> k8s::ApiStatus {
    k8s::ApiStatus {
        code: s.code,
        reason: s.reason,
        message: s.message,
    }
}

fn error(e: k8s1::Error) -> k8s::Error {
    match e {
        k8s1::Error::NotFound(s) => k8s::Error::NotFound(status(s)),
        k8s1::Error::Conflict(s) => k8s::Error::Conflict(status(s)),
        k8s1::Error::Forbidden(s) => k8s::Error::Forbidden(status(s)),
        k8s1::Error::Invalid(s) => k8s::Error::Invalid(status(s)),
        k8s1::Error::Unavailable(s) => k8s::Error::Unavailable(status(s)),
        k8s1::Error::Other(s) => k8s::Error::Other(status(s)),
    }
}

fn back<T>(r: wasmtime::Result<Result<T, k8s1::Error>>) -> K8sResult<T> {
    r.map(|r| r.map_err(error))
}

fn patch(b: k8s::PatchBody) -> k8s1::PatchBody {
    match b {
        k8s::PatchBody::Merge(s) => k8s1::PatchBody::Merge(s),
        k8s::PatchBody::Json(s) => k8s1::PatchBody::Json(s),
    }
}

impl k8s::Host for HostState {
    async fn get(
        &mut self,
        r: types::ResourceType,
        ns: Option<String>,
        name: String,
    ) -> K8sResult<String> {
        back(k8s1::Host::get(self, resource(r), ns, name).await)
    }

    async fn list(
        &mut self,
        r: types::ResourceType,
        ns: Option<String>,
        o: k8s::ListOptions,
    ) -> K8sResult<String> {
        let o = k8s1::ListOptions {
            label_selector: o.label_selector,
            field_selector: o.field_selector,
            limit: o.limit,
            continue_token: o.continue_token,
        };
        back(k8s1::Host::list(self, resource(r), ns, o).await)
    }

    async fn create(
        &mut self,
        r: types::ResourceType,
        ns: Option<String>,
        object: String,
    ) -> K8sResult<String> {
        back(k8s1::Host::create(self, resource(r), ns, object).await)
    }

    async fn apply(
        &mut self,
        r: types::ResourceType,
        ns: Option<String>,
        name: String,
        object: String,
        force: bool,
    ) -> K8sResult<String> {
        back(k8s1::Host::apply(self, resource(r), ns, name, object, force).await)
    }

    async fn patch(
        &mut self,
        r: types::ResourceType,
        ns: Option<String>,
        name: String,
        body: k8s::PatchBody,
    ) -> K8sResult<String> {
        back(k8s1::Host::patch(self, resource(r), ns, name, patch(body)).await)
    }

    async fn replace(
        &mut self,
        r: types::ResourceType,
        ns: Option<String>,
        name: String,
        object: String,
    ) -> K8sResult<String> {
        back(k8s1::Host::replace(self, resource(r), ns, name, object).await)
    }

    async fn delete(
        &mut self,
        r: types::ResourceType,
        ns: Option<String>,
        name: String,
        propagation: Option<k8s::Propagation>,
    ) -> K8sResult<Option<String>> {
        let propagation = propagation.map(|p| match p {
            k8s::Propagation::Background => k8s1::Propagation::Background,
            k8s::Propagation::Foreground => k8s1::Propagation::Foreground,
            k8s::Propagation::Orphan => k8s1::Propagation::Orphan,
        });
        back(k8s1::Host::delete(self, resource(r), ns, name, propagation).await)
    }

    async fn get_status(
        &mut self,
        r: types::ResourceType,
        ns: Option<String>,
        name: String,
    ) -> K8sResult<String> {
        back(k8s1::Host::get_status(self, resource(r), ns, name).await)
    }

    async fn apply_status(
        &mut self,
        r: types::ResourceType,
        ns: Option<String>,
        name: String,
        object: String,
        force: bool,
    ) -> K8sResult<String> {
        back(k8s1::Host::apply_status(self, resource(r), ns, name, object, force).await)
    }

    async fn patch_status(
        &mut self,
        r: types::ResourceType,
        ns: Option<String>,
        name: String,
        body: k8s::PatchBody,
    ) -> K8sResult<String> {
        back(k8s1::Host::patch_status(self, resource(r), ns, name, patch(body)).await)
    }

    async fn replace_status(
        &mut self,
        r: types::ResourceType,
        ns: Option<String>,
        name: String,
        object: String,
    ) -> K8sResult<String> {
        back(k8s1::Host::replace_status(self, resource(r), ns, name, object).await)
    }
}

fn level(l: log::Level) -> crate::telemetry::logs::Level {
    use crate::telemetry::logs::Level;
    match l {
        log::Level::Trace => Level::Trace,
        log::Level::Debug => Level::Debug,
        log::Level::Info => Level::Info,
        log::Level::Warn => Level::Warn,
        log::Level::Error => Level::Error,
    }
}

impl log::Host for HostState {
    fn enabled(&mut self, l: log::Level) -> wasmtime::Result<bool> {
        Ok(self.log.logger.plugin_enabled(level(l)))
    }

    fn log(
        &mut self,
        l: log::Level,
        message: String,
        fields: Vec<(String, types::Value)>,
    ) -> wasmtime::Result<()> {
        self.plugin_log(level(l), message, fields, |v| match v {
            types::Value::String(s) => Value::from(
                crate::caps::trace::truncate(s, crate::caps::log::MAX_MESSAGE_BYTES).into_owned(),
            ),
            types::Value::Int(i) => Value::from(i),
            // JSON has no NaN or infinities: those are written as text.
            types::Value::Float(f) => serde_json::Number::from_f64(f)
                .map_or_else(|| Value::from(f.to_string()), Value::Number),
            types::Value::Boolean(b) => Value::from(b),
        });
        Ok(())
    }
}

fn value(v: types::Value) -> trace1::Value {
    match v {
        types::Value::String(s) => trace1::Value::String(s),
        types::Value::Int(i) => trace1::Value::Int(i),
        types::Value::Float(f) => trace1::Value::Float(f),
        types::Value::Boolean(b) => trace1::Value::Boolean(b),
    }
}

impl trace::Host for HostState {
    fn add_event(
        &mut self,
        name: String,
        attributes: Vec<trace::Attribute>,
    ) -> wasmtime::Result<()> {
        let attributes = attributes
            .into_iter()
            .map(|a| trace1::Attribute {
                key: a.key,
                value: value(a.value),
            })
            .collect();
        trace1::Host::add_event(self, name, attributes)
    }

    fn set_attribute(&mut self, key: String, v: types::Value) -> wasmtime::Result<()> {
        trace1::Host::set_attribute(self, key, value(v))
    }

    fn start_span(&mut self, name: String) -> wasmtime::Result<u64> {
        trace1::Host::start_span(self, name)
    }

    fn end_span(&mut self, span: u64, error: Option<String>) -> wasmtime::Result<()> {
        trace1::Host::end_span(self, span, error)
    }
}

impl types::Host for HostState {}
