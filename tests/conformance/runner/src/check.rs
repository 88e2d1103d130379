//! The expectations, checked against what the case saw: the first broken
//! one is the case's failure, named with what was seen instead.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reconcile_apiserver::RequestRecord;
use serde_json::Value;

use crate::case::{
    Count, LogExpect, ObjectExpect, RequestExpect, RequestMatch, SpanExpect, TimingExpect,
};
use crate::otlp::Span;

/// A moment a `mark` step remembered.
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    /// When.
    pub at: SystemTime,
    /// How many host log lines had been read by then.
    pub log_lines: usize,
}

/// The marks of a case, by name.
pub type Marks = BTreeMap<String, Mark>;

fn mark<'a>(marks: &'a Marks, name: Option<&String>) -> Result<Option<&'a Mark>, String> {
    match name {
        None => Ok(None),
        Some(name) => marks
            .get(name)
            .map(Some)
            .ok_or_else(|| format!("since: the mark {name:?} was never reached")),
    }
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The runner's own requests (objects it applies, patches, deletes,
/// checks) are sent with this user agent and are not the host's traffic.
pub const USER_AGENT: &str = "reconcile-conformance";

/// Whether the runner sent this request.
pub fn by_runner(r: &RequestRecord) -> bool {
    r.user_agent
        .as_deref()
        .is_some_and(|ua| ua.starts_with(USER_AGENT))
}

fn count(what: &str, count: &Count, n: usize, seen: impl FnOnce() -> String) -> Result<(), String> {
    if count.allows(n)? {
        Ok(())
    } else {
        Err(format!("{what}: expected {count}, found {n}{}", seen()))
    }
}

/// `value` matches `pattern`: equal, or `~regex` matching.
pub(crate) fn matches(pattern: &str, value: &str) -> Result<bool, String> {
    match pattern.strip_prefix('~') {
        Some(re) => regex::Regex::new(re)
            .map(|re| re.is_match(value))
            .map_err(|e| format!("pattern {pattern:?}: {e}")),
        None => Ok(pattern == value),
    }
}

fn filtered<'a>(spans: &'a [Span], name: &str, filter: &BTreeMap<String, String>) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.name == name && filter.iter().all(|(k, v)| s.attributes.get(k) == Some(v)))
        .collect()
}

fn with_filter(name: &str, filter: &BTreeMap<String, String>) -> String {
    if filter.is_empty() {
        format!("span {name}")
    } else {
        let f: Vec<String> = filter.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("span {name} where {}", f.join(", "))
    }
}

/// Checks the span expectations.
pub fn spans(expects: &[SpanExpect], spans: &[Span], marks: &Marks) -> Result<(), String> {
    for e in expects {
        let mut what = with_filter(&e.name, &e.filter);
        let mut found = filtered(spans, &e.name, &e.filter);
        if let Some(m) = mark(marks, e.since.as_ref())? {
            let after = unix_ns(m.at);
            found.retain(|s| s.start_ns >= after);
            what = format!("{what} since {}", e.since.as_deref().unwrap_or_default());
        }
        count(&what, &e.count, found.len(), || {
            let names: Vec<String> = spans.iter().map(Span::describe).collect();
            format!(" (spans seen: {})", names.join("; "))
        })?;
        for s in found {
            let at = format!("{what}: {}", s.describe());
            let took = Duration::from_nanos(s.end_ns.saturating_sub(s.start_ns));
            if let Some(ms) = e.min_duration_ms
                && took < Duration::from_millis(ms)
            {
                return Err(format!(
                    "{at}: expected to last at least {ms} ms, lasted {} ms",
                    took.as_millis()
                ));
            }
            if let Some(ms) = e.max_duration_ms
                && took > Duration::from_millis(ms)
            {
                return Err(format!(
                    "{at}: expected to last at most {ms} ms, lasted {} ms",
                    took.as_millis()
                ));
            }
            if let Some(kind) = &e.kind
                && kind != s.kind
            {
                return Err(format!("{at}: kind expected {kind}, found {}", s.kind));
            }
            if let Some(status) = &e.status
                && status != s.status
            {
                return Err(format!(
                    "{at}: status expected {status}, found {}",
                    s.status
                ));
            }
            if let Some(message) = &e.status_message
                && !matches(message, &s.status_message)?
            {
                return Err(format!(
                    "{at}: status message expected {message:?}, found {:?}",
                    s.status_message
                ));
            }
            if let Some(parent) = &e.parent {
                let actual = spans
                    .iter()
                    .find(|p| p.span_id == s.parent_span_id && !s.parent_span_id.is_empty())
                    .map(|p| p.name.as_str());
                let ok = match (parent.as_str(), actual) {
                    ("none", None) => s.parent_span_id.is_empty(),
                    (want, Some(found)) => want == found,
                    _ => false,
                };
                if !ok {
                    return Err(format!(
                        "{at}: parent expected {parent}, found {}",
                        actual.unwrap_or(if s.parent_span_id.is_empty() {
                            "none"
                        } else {
                            "a span not exported"
                        })
                    ));
                }
            }
            for (key, pattern) in &e.attributes {
                match s.attributes.get(key) {
                    Some(value) if matches(pattern, value)? => {}
                    Some(value) => {
                        return Err(format!(
                            "{at}: attribute {key} expected {pattern:?}, found {value:?}"
                        ));
                    }
                    None => return Err(format!("{at}: attribute {key} is missing")),
                }
            }
            for key in &e.absent_attributes {
                if let Some(value) = s.attributes.get(key) {
                    return Err(format!(
                        "{at}: attribute {key} must be absent, found {value:?}"
                    ));
                }
            }
            for event in &e.events {
                if !s.events.contains(event) {
                    return Err(format!(
                        "{at}: event {event} is missing (events: {:?})",
                        s.events
                    ));
                }
            }
            for child in &e.children {
                let has = spans
                    .iter()
                    .any(|c| c.parent_span_id == s.span_id && &c.name == child);
                if !has {
                    let children: Vec<&str> = spans
                        .iter()
                        .filter(|c| c.parent_span_id == s.span_id)
                        .map(|c| c.name.as_str())
                        .collect();
                    return Err(format!(
                        "{at}: child {child} is missing (children: {children:?})"
                    ));
                }
            }
        }
    }
    Ok(())
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.to_owned())
    })
}

fn request_matches(m: &RequestMatch, r: &RequestRecord) -> bool {
    m.verb.as_ref().is_none_or(|v| *v == r.verb)
        && m.resource
            .as_ref()
            .is_none_or(|x| Some(x) == r.resource.as_ref())
        && m.subresource
            .as_ref()
            .is_none_or(|x| Some(x) == r.subresource.as_ref())
        && m.name.as_ref().is_none_or(|n| Some(n) == r.name.as_ref())
        // `namespace: ""` is a request across all namespaces (or for a
        // cluster-scoped object).
        && m.namespace.as_ref().is_none_or(|n| {
            r.namespace.as_deref().unwrap_or_default() == n.as_str()
        })
}

fn describe_request(r: &RequestRecord) -> String {
    format!(
        "{} {}{}{}",
        r.verb,
        r.resource.as_deref().unwrap_or(&r.path),
        r.subresource
            .as_ref()
            .map(|s| format!("/{s}"))
            .unwrap_or_default(),
        r.name.as_ref().map(|n| format!(" {n}")).unwrap_or_default()
    )
}

/// The sampled flag of a W3C `traceparent`.
fn sampled_flag(header: &str) -> Option<bool> {
    let flags = header.split('-').nth(3)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(flags & 1 == 1)
}

/// Checks the API traffic expectations.
pub fn requests(
    expects: &[RequestExpect],
    requests: &[RequestRecord],
    spans: &[Span],
    marks: &Marks,
) -> Result<(), String> {
    let requests: Vec<&RequestRecord> = requests.iter().filter(|r| !by_runner(r)).collect();
    for e in expects {
        let after = mark(marks, e.since.as_ref())?.map(|m| m.at);
        let found: Vec<&RequestRecord> = requests
            .iter()
            .copied()
            .filter(|r| after.is_none_or(|t| r.received >= t))
            .filter(|r| request_matches(&e.matcher, r))
            .filter(|r| {
                e.field_manager
                    .as_ref()
                    .is_none_or(|m| query_param(&r.query, "fieldManager").as_ref() == Some(m))
            })
            .collect();
        let what = format!(
            "requests {} {}{}{}{}{}{}",
            e.matcher.verb.as_deref().unwrap_or("*"),
            e.matcher.resource.as_deref().unwrap_or("*"),
            e.matcher
                .subresource
                .as_ref()
                .map(|s| format!("/{s}"))
                .unwrap_or_default(),
            e.matcher
                .name
                .as_ref()
                .map(|n| format!(" {n}"))
                .unwrap_or_default(),
            e.field_manager
                .as_ref()
                .map(|m| format!(" as {m}"))
                .unwrap_or_default(),
            e.matcher
                .namespace
                .as_ref()
                .map(|n| format!(" in {n}"))
                .unwrap_or_default(),
            e.since
                .as_ref()
                .map(|m| format!(" since {m}"))
                .unwrap_or_default(),
        );
        count(&what, &e.count, found.len(), || {
            let seen: Vec<String> = requests
                .iter()
                .filter(|r| r.verb != "discovery")
                .map(|r| describe_request(r))
                .collect();
            format!(" (requests seen: {})", seen.join("; "))
        })?;
        if let Some(want) = e.sampled {
            for r in &found {
                let flag = r.traceparent.as_deref().and_then(sampled_flag);
                if flag != Some(want) {
                    return Err(format!(
                        "{what}: {} carries traceparent {:?}, expected one {}",
                        describe_request(r),
                        r.traceparent,
                        if want { "sampled" } else { "not sampled" }
                    ));
                }
            }
        }
        if let Some(span_name) = &e.traceparent_of {
            for r in found {
                traceparent_names(
                    &what,
                    &describe_request(r),
                    r.traceparent.as_deref(),
                    span_name,
                    spans,
                )?;
            }
        }
    }
    Ok(())
}

/// A request's `traceparent` names an exported span called `span_name`.
fn traceparent_names(
    what: &str,
    request: &str,
    header: Option<&str>,
    span_name: &str,
    spans: &[Span],
) -> Result<(), String> {
    let Some(header) = header else {
        return Err(format!("{what}: {request} has no traceparent"));
    };
    let parts: Vec<&str> = header.split('-').collect();
    let (trace, parent) = match parts.as_slice() {
        [_, trace, parent, _] => (*trace, *parent),
        _ => return Err(format!("{what}: traceparent {header:?} is not W3C")),
    };
    match spans
        .iter()
        .find(|s| s.trace_id == trace && s.span_id == parent)
    {
        Some(s) if matches(span_name, &s.name)? => Ok(()),
        Some(s) => Err(format!(
            "{what}: traceparent {header} names span {}, expected {span_name}",
            s.name
        )),
        None => Err(format!(
            "{what}: traceparent {header} names no exported span"
        )),
    }
}

/// Checks what the case's HTTP server received: (path, traceparent).
pub fn http_requests(
    expects: &[crate::case::HttpExpect],
    seen: &[(String, Option<String>)],
    spans: &[Span],
) -> Result<(), String> {
    for e in expects {
        let found: Vec<&(String, Option<String>)> = seen
            .iter()
            .filter(|(path, _)| e.path.as_ref().is_none_or(|p| p == path))
            .collect();
        let what = format!(
            "HTTP requests to {}",
            e.path.as_deref().unwrap_or("any path")
        );
        count(&what, &e.count, found.len(), || {
            let paths: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
            format!(" (paths seen: {paths:?})")
        })?;
        if let Some(span_name) = &e.traceparent_of {
            for (path, header) in found {
                traceparent_names(&what, path, header.as_deref(), span_name, spans)?;
            }
        }
    }
    Ok(())
}

/// Whether `actual` contains `expected` (objects: every key, recursively;
/// arrays and scalars: equal).
pub fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => e
            .iter()
            .all(|(k, ev)| a.get(k).is_some_and(|av| contains(av, ev))),
        // Each element expected is contained in some element found (a
        // condition by its type and status, say), in any order.
        (Value::Array(a), Value::Array(e)) => {
            e.iter().all(|ev| a.iter().any(|av| contains(av, ev)))
        }
        _ => actual == expected,
    }
}

/// Checks the object expectations.
pub async fn objects(expects: &[ObjectExpect], client: &kube::Client) -> Result<(), String> {
    for e in expects {
        let key = &e.object;
        let what = format!("object {} {}", key.kind, key.name);
        let found = crate::api_of(client, key)
            .await?
            .get_opt(&key.name)
            .await
            .map_err(|err| format!("{what}: cannot read it: {err}"))?;
        match (found, e.absent) {
            (Some(_), true) => return Err(format!("{what}: must not exist, but does")),
            (None, true) => {}
            (None, false) => return Err(format!("{what}: does not exist")),
            (Some(obj), false) => {
                if let Some(has) = &e.has {
                    let value = serde_json::to_value(&obj).map_err(|err| err.to_string())?;
                    if !contains(&value, has) {
                        return Err(format!("{what}: expected to contain {has}, found {value}"));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Whether log line `i` was written after `mark`: by its `timestamp` (the
/// runner may not have read every line written before the mark), else by
/// its place.
fn after_mark(line: &Value, i: usize, mark: &Mark) -> bool {
    let written = line["timestamp"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let marked = jiff::Timestamp::try_from(mark.at).ok();
    match (written, marked) {
        (Some(written), Some(marked)) => written >= marked,
        _ => i >= mark.log_lines,
    }
}

/// Checks the log expectations on the host's lines (those that are not
/// JSON are `Value::Null`, so that marks count every line).
pub fn logs(
    expects: &[LogExpect],
    lines: &[Value],
    spans: &[Span],
    marks: &Marks,
) -> Result<(), String> {
    for e in expects {
        let since = mark(marks, e.since.as_ref())?;
        let mut found = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            if let Some(m) = since
                && !after_mark(l, i, m)
            {
                continue;
            }
            if let Some(m) = l["message"].as_str()
                && matches(&e.message, m)?
            {
                found.push(l);
            }
        }
        let what = match &e.since {
            Some(m) => format!("log lines {:?} since {m}", e.message),
            None => format!("log lines {:?}", e.message),
        };
        count(&what, &e.count, found.len(), || {
            let messages: Vec<&str> = lines
                .iter()
                .filter_map(|l| l["message"].as_str())
                .filter(|m| !m.is_empty())
                .collect();
            let shown: Vec<&str> = messages.iter().rev().take(20).rev().copied().collect();
            format!(" (last messages: {shown:?})")
        })?;
        for (key, pattern) in &e.fields {
            for line in &found {
                let value = match &line[key.as_str()] {
                    Value::String(s) => s.clone(),
                    Value::Null => {
                        return Err(format!("{what}: the line {line} has no field {key}"));
                    }
                    other => other.to_string(),
                };
                if !matches(pattern, &value)? {
                    return Err(format!(
                        "{what}: field {key} expected {pattern:?}, found {value:?} in {line}"
                    ));
                }
            }
        }
        if e.traced {
            let hex = |v: &Value, n: usize| {
                v.as_str().is_some_and(|s| {
                    s.len() == n
                        && s.bytes().all(|b| b.is_ascii_hexdigit())
                        && s.bytes().any(|b| b != b'0')
                })
            };
            if let Some(line) = found
                .iter()
                .find(|l| !hex(&l["trace_id"], 32) || !hex(&l["span_id"], 16))
            {
                return Err(format!(
                    "{what}: the line {line} has no valid trace_id and span_id"
                ));
            }
        }
        if let Some(span_name) = &e.in_span {
            for line in found {
                let trace = line["trace_id"].as_str().unwrap_or_default();
                let span = line["span_id"].as_str().unwrap_or_default();
                let named = spans
                    .iter()
                    .find(|s| s.trace_id == trace && s.span_id == span)
                    .map(|s| s.name.as_str());
                if named != Some(span_name.as_str()) {
                    return Err(format!(
                        "{what}: the line {line} carries trace_id {trace:?} span_id {span:?}, which is {}, expected a {span_name} span",
                        named.map_or("no exported span".to_owned(), |n| format!("span {n}"))
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Checks the timing expectations.
pub fn timing(expects: &[TimingExpect], spans: &[Span]) -> Result<(), String> {
    for e in expects {
        let what = format!("timing of {}", with_filter(&e.name, &e.filter));
        let mut found = filtered(spans, &e.name, &e.filter);
        found.sort_by_key(|s| s.start_ns);
        if found.len() < e.first {
            return Err(format!(
                "{what}: expected at least {} spans, found {}",
                e.first,
                found.len()
            ));
        }
        let gaps: Vec<i128> = found[..e.first]
            .windows(2)
            .map(|w| (i128::from(w[1].start_ns) - i128::from(w[0].end_ns)) / 1_000_000)
            .collect();
        for (i, gap) in gaps.iter().enumerate() {
            let shown = || format!("{what}: gaps in ms {gaps:?}: gap {} ", i + 1);
            if let Some(min) = e.min_gap_ms
                && *gap < i128::from(min)
            {
                return Err(format!("{}is under {min} ms", shown()));
            }
            if let Some(max) = e.max_gap_ms
                && *gap > i128::from(max)
            {
                return Err(format!("{}is over {max} ms", shown()));
            }
            if e.growing && i > 0 && *gap <= gaps[i - 1] {
                return Err(format!("{}is not longer than the one before", shown()));
            }
            if let Some(factor) = e.min_growth
                && i > 0
                && (*gap as f64) < factor * gaps[i - 1] as f64
            {
                return Err(format!("{}is not {factor} times the one before", shown()));
            }
        }
        if let Some(bound) = &e.max_overlap {
            let most = max_overlap(&found);
            if !bound.allows(most)? {
                return Err(format!(
                    "{what}: at most {most} ran at once, expected {bound}"
                ));
            }
        }
    }
    Ok(())
}

/// The most spans open at one time (a span ending as another starts
/// does not overlap it).
fn max_overlap(spans: &[&Span]) -> usize {
    let mut edges: Vec<(u64, i32)> = spans
        .iter()
        .flat_map(|s| [(s.start_ns, 1), (s.end_ns, -1)])
        .collect();
    // Ends before starts at the same instant.
    edges.sort();
    let (mut open, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        open += step;
        most = most.max(open);
    }
    usize::try_from(most).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_patterns() {
        assert!(Count::Exactly(2).allows(2).unwrap());
        assert!(!Count::Exactly(2).allows(3).unwrap());
        assert!(Count::Bound(">=1".into()).allows(4).unwrap());
        assert!(!Count::Bound("<=1".into()).allows(2).unwrap());
        assert!(Count::Bound("~3".into()).allows(3).is_err());
        assert!(matches("~^sha256:[0-9a-f]+$", "sha256:ab").unwrap());
        assert!(!matches("x", "y").unwrap());
        let actual = serde_json::json!({"a": {"b": 1, "c": 2}, "d": [1]});
        assert!(contains(&actual, &serde_json::json!({"a": {"b": 1}})));
        assert!(!contains(&actual, &serde_json::json!({"a": {"b": 2}})));
        assert!(!contains(&actual, &serde_json::json!({"e": 1})));
        let conditions = serde_json::json!([{"type": "A", "status": "False", "reason": "x"}, {"type": "Ready", "status": "True", "reason": "y"}]);
        assert!(contains(
            &conditions,
            &serde_json::json!([{"type": "Ready", "status": "True"}])
        ));
        assert!(!contains(
            &conditions,
            &serde_json::json!([{"type": "Ready", "status": "False"}])
        ));
    }

    #[test]
    fn overlap_counts_spans_open_together() {
        let span = |start_ns, end_ns| Span {
            trace_id: String::new(),
            span_id: String::new(),
            parent_span_id: String::new(),
            name: "reconcile".to_owned(),
            kind: "internal",
            status: "unset",
            status_message: String::new(),
            attributes: Default::default(),
            events: Vec::new(),
            start_ns,
            end_ns,
        };
        // One after another (touching ends): never two at once.
        assert_eq!(
            max_overlap(&[&span(0, 10), &span(10, 20), &span(20, 30)]),
            1
        );
        assert_eq!(max_overlap(&[&span(0, 10), &span(5, 20), &span(6, 7)]), 3);
        assert_eq!(max_overlap(&[]), 0);
    }
}
