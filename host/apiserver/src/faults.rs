//! Fault injection for tests: fail or delay requests that match a verb and
//! resource, cut open watch streams; and a log of every request received.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

/// How many requests the log keeps.
pub const REQUEST_LOG: usize = 10_000;

/// Which requests a rule applies to; `None` matches anything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Match {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
    pub verb: Option<String>,
    /// The resource plural, such as `configmaps`.
    pub resource: Option<String>,
    /// The subresource, such as `status`.
    pub subresource: Option<String>,
    /// The object's name.
    pub name: Option<String>,
    /// Only requests whose `Content-Type` starts with this (a patch's
    /// type: `application/apply-patch` for server-side apply).
    pub content_type: Option<String>,
    /// Not requests with this `User-Agent` (a test's own).
    pub not_user_agent: Option<String>,
    /// Only requests whose `User-Agent` contains this (one client of
    /// several, such as one replica by the identity its agent names).
    pub user_agent_contains: Option<String>,
}

impl Match {
    /// Every request.
    pub fn any() -> Self {
        Match::default()
    }

    /// Only this verb.
    pub fn verb(mut self, verb: &str) -> Self {
        self.verb = Some(verb.to_owned());
        self
    }

    /// Only this resource (plural).
    pub fn resource(mut self, resource: &str) -> Self {
        self.resource = Some(resource.to_owned());
        self
    }

    /// Only this subresource.
    pub fn subresource(mut self, subresource: &str) -> Self {
        self.subresource = Some(subresource.to_owned());
        self
    }

    /// Only requests for the object of this name.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Only requests whose `Content-Type` starts with `prefix`.
    pub fn content_type(mut self, prefix: &str) -> Self {
        self.content_type = Some(prefix.to_owned());
        self
    }

    /// Only the requests whose `User-Agent` contains `part`.
    pub fn user_agent_contains(mut self, part: &str) -> Self {
        self.user_agent_contains = Some(part.to_owned());
        self
    }

    /// Not the requests sent with `user_agent`.
    pub fn not_user_agent(mut self, user_agent: &str) -> Self {
        self.not_user_agent = Some(user_agent.to_owned());
        self
    }

    fn matches(&self, request: &RequestRecord) -> bool {
        self.content_type.as_ref().is_none_or(|c| {
            request
                .content_type
                .as_deref()
                .is_some_and(|t| t.starts_with(c.as_str()))
        }) && self
            .not_user_agent
            .as_ref()
            .is_none_or(|u| request.user_agent.as_ref() != Some(u))
            && self.user_agent_contains.as_ref().is_none_or(|part| {
                request
                    .user_agent
                    .as_deref()
                    .is_some_and(|a| a.contains(part.as_str()))
            })
            && self.verb.as_ref().is_none_or(|v| *v == request.verb)
            && self
                .resource
                .as_ref()
                .is_none_or(|r| Some(r) == request.resource.as_ref())
            && self
                .subresource
                .as_ref()
                .is_none_or(|s| Some(s) == request.subresource.as_ref())
            && self
                .name
                .as_ref()
                .is_none_or(|n| Some(n) == request.name.as_ref())
    }
}

/// One request the server received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Query string.
    pub query: String,
    /// API verb (`get`, `list`, `watch`, ...; `discovery` for the rest).
    pub verb: String,
    /// Resource plural, for resource requests.
    pub resource: Option<String>,
    /// Subresource.
    pub subresource: Option<String>,
    /// Namespace.
    pub namespace: Option<String>,
    /// Object name.
    pub name: Option<String>,
    /// The W3C `traceparent` header, if the client sent one.
    pub traceparent: Option<String>,
    /// The `User-Agent` header.
    pub user_agent: Option<String>,
    /// The `Content-Type` header (a patch's type).
    pub content_type: Option<String>,
    /// When it arrived.
    pub received: std::time::SystemTime,
}

#[derive(Clone, Debug)]
enum Action {
    Fail {
        status: u16,
        retry_after: Option<u32>,
    },
    Delay(Duration),
}

#[derive(Clone, Debug)]
struct Rule {
    matcher: Match,
    action: Action,
    remaining: Option<u32>,
}

/// What the server does to a request before serving it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Injection {
    Fail {
        status: u16,
        retry_after: Option<u32>,
    },
    Delay(Duration),
}

/// The server's fault injection and request log.
#[derive(Debug)]
pub struct Faults {
    rules: Mutex<Vec<Rule>>,
    requests: Mutex<VecDeque<RequestRecord>>,
    cut: watch::Sender<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            rules: Mutex::default(),
            requests: Mutex::default(),
            cut: watch::channel(0).0,
        }
    }
}

impl Faults {
    /// Fail the next `times` matching requests with `status` (409, 429, 500, 503, ...).
    pub fn fail(&self, matcher: Match, times: u32, status: u16) {
        self.push(Rule {
            matcher,
            action: Action::Fail {
                status,
                retry_after: None,
            },
            remaining: Some(times),
        });
    }

    /// Fail the next `times` matching requests with `status`, and a
    /// `Retry-After` header of that many seconds if given.
    pub fn fail_with(&self, matcher: Match, times: u32, status: u16, retry_after: Option<u32>) {
        self.push(Rule {
            matcher,
            action: Action::Fail {
                status,
                retry_after,
            },
            remaining: Some(times),
        });
    }

    /// Fail the next `times` matching requests with 429 and `Retry-After`.
    pub fn throttle(&self, matcher: Match, times: u32, retry_after_seconds: u32) {
        self.push(Rule {
            matcher,
            action: Action::Fail {
                status: 429,
                retry_after: Some(retry_after_seconds),
            },
            remaining: Some(times),
        });
    }

    /// Delay every matching request by `delay` until [`clear`](Self::clear).
    pub fn delay(&self, matcher: Match, delay: Duration) {
        self.push(Rule {
            matcher,
            action: Action::Delay(delay),
            remaining: None,
        });
    }

    /// Remove every rule.
    pub fn clear(&self) {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// End every open watch stream now (clients see the connection close).
    pub fn cut_watches(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// The requests received, the most recent [`REQUEST_LOG`] of them.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Requests received that match.
    pub fn requests_matching(&self, matcher: &Match) -> Vec<RequestRecord> {
        self.requests()
            .into_iter()
            .filter(|r| matcher.matches(r))
            .collect()
    }

    /// Forget the request log.
    pub fn clear_requests(&self) {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn push(&self, rule: Rule) {
        self.rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(rule);
    }

    pub(crate) fn cut_signal(&self) -> watch::Receiver<u64> {
        self.cut.subscribe()
    }

    /// Logs a request and returns what to do to it.
    pub(crate) fn on_request(&self, request: RequestRecord) -> Vec<Injection> {
        let mut injections = Vec::new();
        {
            let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
            for rule in rules.iter_mut() {
                if rule.remaining == Some(0) || !rule.matcher.matches(&request) {
                    continue;
                }
                if let Some(n) = &mut rule.remaining {
                    *n -= 1;
                }
                injections.push(match rule.action {
                    Action::Fail {
                        status,
                        retry_after,
                    } => Injection::Fail {
                        status,
                        retry_after,
                    },
                    Action::Delay(d) => Injection::Delay(d),
                });
            }
            rules.retain(|r| r.remaining != Some(0));
        }
        let mut log = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() == REQUEST_LOG {
            log.pop_front();
        }
        log.push_back(request);
        injections
    }
}
