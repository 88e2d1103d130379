//! `kind: Status` errors with the codes, reasons and messages real clients
//! match on.

use serde_json::{Value, json};

use crate::registry::ResourceDef;

/// One cause in `details.causes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldManagerConflict`, ...
    pub reason: String,
    /// Message.
    pub message: String,
    /// The field, such as `metadata.name`.
    pub field: String,
}

/// An API error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub code: u16,
    /// Reason.
    pub reason: &'static str,
    /// Message.
    pub message: String,
    details: Box<Details>,
}

/// `details` of a Status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Details {
    name: Option<String>,
    group: Option<String>,
    kind: Option<String>,
    causes: Vec<Cause>,
    retry_after: Option<u32>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: Box::default(),
        }
    }

    /// `details.causes`.
    pub fn causes(&self) -> &[Cause] {
        &self.details.causes
    }

    /// `Retry-After` seconds, if any.
    pub fn retry_after(&self) -> Option<u32> {
        self.details.retry_after
    }

    fn about(mut self, def: &ResourceDef, name: &str) -> Self {
        self.details.name = Some(name.to_owned());
        self.details.group = Some(def.group.clone());
        self.details.kind = Some(def.plural.clone());
        self
    }

    /// 404: the object does not exist.
    pub fn not_found(def: &ResourceDef, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", def.qualified()),
        )
        .about(def, name)
    }

    /// 404 for a namespace that does not exist.
    pub fn namespace_not_found(namespace: &str) -> Self {
        let mut e = Self::new(
            404,
            "NotFound",
            format!("namespaces \"{namespace}\" not found"),
        );
        e.details.name = Some(namespace.to_owned());
        e.details.group = Some(String::new());
        e.details.kind = Some("namespaces".into());
        e
    }

    /// 404 for a path the server does not serve.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    /// 409: the name is taken.
    pub fn already_exists(def: &ResourceDef, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", def.qualified()),
        )
        .about(def, name)
    }

    /// 409: a stale write.
    pub fn conflict(def: &ResourceDef, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                def.qualified()
            ),
        )
        .about(def, name)
    }

    /// 409: a server-side apply conflicted with other managers.
    pub fn apply_conflict(def: &ResourceDef, name: &str, conflicts: Vec<(String, String)>) -> Self {
        let api_version = def.api_version();
        let causes: Vec<Cause> = conflicts
            .iter()
            .map(|(manager, field)| Cause {
                reason: "FieldManagerConflict".into(),
                message: format!("conflict with \"{manager}\" using {api_version}"),
                field: field.clone(),
            })
            .collect();
        let n = causes.len();
        let list: Vec<String> = causes
            .iter()
            .map(|c| format!("- {}: {}", c.message, c.field))
            .collect();
        let mut e = Self::new(
            409,
            "Conflict",
            format!(
                "Apply failed with {n} conflict{}: {}",
                if n == 1 { "" } else { "s" },
                list.join("\n")
            ),
        )
        .about(def, name);
        e.details.causes = causes;
        e
    }

    /// 422: the object is invalid.
    pub fn invalid(kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let list: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let what = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {what}"),
        );
        e.details.name = Some(name.to_owned());
        e.details.kind = Some(kind.to_owned());
        e.details.causes = causes;
        e
    }

    /// 422 with one cause.
    pub fn invalid_field(
        kind: &str,
        name: &str,
        field: &str,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Self::invalid(
            kind,
            name,
            vec![Cause {
                reason: reason.into(),
                message: message.into(),
                field: field.into(),
            }],
        )
    }

    /// 403: refused.
    pub fn forbidden(def: &ResourceDef, name: &str, why: &str) -> Self {
        Self::new(
            403,
            "Forbidden",
            format!("{} \"{name}\" is forbidden: {why}", def.qualified()),
        )
        .about(def, name)
    }

    /// 403 from the authorizer: `user` may not `verb` the resource
    /// (`name` empty for a collection), in the real server's words.
    pub fn unauthorized(
        def: &ResourceDef,
        name: &str,
        subresource: &str,
        namespace: Option<&str>,
        user: &str,
        verb: &str,
    ) -> Self {
        let what = if name.is_empty() {
            def.qualified()
        } else {
            format!("{} \"{name}\"", def.qualified())
        };
        let resource = if subresource.is_empty() {
            def.plural.clone()
        } else {
            format!("{}/{subresource}", def.plural)
        };
        let scope = match namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_owned(),
        };
        Self::new(
            403,
            "Forbidden",
            format!(
                "{what} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{}\" {scope}",
                def.group
            ),
        )
        .about(def, name)
    }

    /// 400: a malformed request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 405.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// 410: the resource version is too old.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 413: the body is too large.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("the request body is larger than {limit} bytes"),
        )
    }

    /// 413 with its own message.
    pub fn too_large_message(message: impl Into<String>) -> Self {
        Self::new(413, "RequestEntityTooLarge", message)
    }

    /// 415: the patch type is not supported for this resource.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }

    /// 406.
    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(406, "NotAcceptable", message)
    }

    /// 504: the request did not complete in time.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "Timeout", message)
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// An error of any code, for fault injection.
    pub fn injected(code: u16, retry_after: Option<u32>) -> Self {
        let reason = match code {
            409 => "Conflict",
            429 => "TooManyRequests",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            404 => "NotFound",
            403 => "Forbidden",
            _ => "Unknown",
        };
        let mut e = Self::new(code, reason, format!("injected fault: {code} {reason}"));
        e.details.retry_after = retry_after;
        e
    }

    /// The `Status` object.
    pub fn to_json(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if self.details.name.is_some()
            || self.details.kind.is_some()
            || !self.details.causes.is_empty()
            || self.details.retry_after.is_some()
        {
            let mut details = serde_json::Map::new();
            if let Some(name) = &self.details.name {
                details.insert("name".into(), name.clone().into());
            }
            if let Some(group) = &self.details.group {
                details.insert("group".into(), group.clone().into());
            }
            if let Some(kind) = &self.details.kind {
                details.insert("kind".into(), kind.clone().into());
            }
            if !self.details.causes.is_empty() {
                let causes: Vec<Value> = self
                    .details
                    .causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
                details.insert("causes".into(), causes.into());
            }
            if let Some(seconds) = self.details.retry_after {
                details.insert("retryAfterSeconds".into(), seconds.into());
            }
            status["details"] = Value::Object(details);
        }
        status
    }
}

/// A success `Status` (delete of an object that is gone).
pub fn success(def: &ResourceDef, name: &str, uid: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "group": def.group, "kind": def.plural, "uid": uid},
    })
}
