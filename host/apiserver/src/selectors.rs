//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`) and
//! field selectors (`=`, `==`, `!=`) on the field labels each type serves
//! ([`ResourceDef::field_labels`](crate::registry::ResourceDef::field_labels)).

use std::collections::BTreeMap;

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

/// Splits on commas outside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl LabelSelector {
    /// Parses a selector; the error names what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in split_top(s) {
            let words: Vec<&str> = part.split_whitespace().collect();
            let req = if words.len() >= 2 && (words[1] == "in" || words[1] == "notin") {
                let rest = part
                    .split_once(words[1])
                    .map(|x| x.1)
                    .unwrap_or_default()
                    .trim();
                let inner = rest
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| {
                        format!(
                            "unable to parse requirement: {part:?}: values must be in parentheses"
                        )
                    })?;
                let values: Vec<String> = inner
                    .split(',')
                    .map(|v| v.trim().to_owned())
                    .filter(|v| !v.is_empty())
                    .collect();
                if values.iter().any(|v| !valid_value(v)) {
                    return Err(format!(
                        "unable to parse requirement: invalid label value in {part:?}"
                    ));
                }
                let key = words[0].to_owned();
                if words[1] == "in" {
                    Requirement::In(key, values)
                } else {
                    Requirement::NotIn(key, values)
                }
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            let (key, value) = match &req {
                Requirement::Equals(k, v) | Requirement::NotEquals(k, v) => (k, Some(v)),
                Requirement::In(k, _)
                | Requirement::NotIn(k, _)
                | Requirement::Exists(k)
                | Requirement::NotExists(k) => (k, None),
            };
            if !valid_key(key) {
                return Err(format!(
                    "unable to parse requirement: invalid label key {key:?}"
                ));
            }
            if value.is_some_and(|v| !valid_value(v)) {
                return Err(format!(
                    "unable to parse requirement: invalid label value in {part:?}"
                ));
            }
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether `labels` match.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }

    /// Whether the object's labels match.
    pub fn matches_object(&self, object: &Value) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let labels: BTreeMap<String, String> = object["metadata"]["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        self.matches(&labels)
    }
}

/// One requirement of a field selector: the path of the field in the
/// object, `=` or `!=`, the value, and what a missing field reads as.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FieldRequirement {
    path: String,
    equal: bool,
    value: String,
    missing: String,
}

/// A parsed field selector.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<FieldRequirement>);

fn split_requirement(part: &str) -> Result<(&str, bool, &str), String> {
    let (field, equal, value) = if let Some((k, v)) = part.split_once("!=") {
        (k, false, v)
    } else if let Some((k, v)) = part.split_once("==") {
        (k, true, v)
    } else if let Some((k, v)) = part.split_once('=') {
        (k, true, v)
    } else {
        return Err(format!("invalid selector: {part:?}; can't understand it"));
    };
    Ok((field.trim(), equal, value.trim()))
}

impl FieldSelector {
    /// Parses a selector on any field path (`spec.nodeName=a`), as a cache
    /// that serves every field would.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in split_top(s) {
            let (field, equal, value) = split_requirement(part)?;
            if field.is_empty() {
                return Err(format!("invalid selector: {part:?}; the field is empty"));
            }
            reqs.push(FieldRequirement {
                path: field.to_owned(),
                equal,
                value: value.to_owned(),
                missing: String::new(),
            });
        }
        Ok(FieldSelector(reqs))
    }

    /// Parses a selector on the field labels a type serves: `(label, path
    /// in the object, value of a missing field)`. Other labels are refused
    /// as the real server refuses them.
    pub fn parse_for(s: &str, labels: &[(&str, &str, &str)]) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in split_top(s) {
            let (field, equal, value) = split_requirement(part)?;
            let (_, path, missing) = labels
                .iter()
                .find(|(label, _, _)| *label == field)
                .ok_or_else(|| format!("field label not supported: {field}"))?;
            reqs.push(FieldRequirement {
                path: (*path).to_owned(),
                equal,
                value: value.to_owned(),
                missing: (*missing).to_owned(),
            });
        }
        Ok(FieldSelector(reqs))
    }

    /// Whether it reads only `metadata.name` and `metadata.namespace`.
    pub fn metadata_only(&self) -> bool {
        self.0
            .iter()
            .all(|r| r.path == "metadata.name" || r.path == "metadata.namespace")
    }

    /// Whether an object of this name and namespace matches a selector on
    /// `metadata.name` and `metadata.namespace` (see [`metadata_only`](Self::metadata_only)).
    pub fn matches(&self, name: &str, namespace: &str) -> bool {
        self.0.iter().all(|r| {
            let actual = match r.path.as_str() {
                "metadata.name" => name,
                "metadata.namespace" => namespace,
                _ => return !r.equal,
            };
            (actual == r.value) == r.equal
        })
    }

    /// Whether the object matches.
    pub fn matches_object(&self, object: &Value) -> bool {
        self.0.iter().all(|r| {
            // `a|b`: the first of the paths that is set (core Events'
            // `source` falls back to `reportingComponent`).
            let actual = r
                .path
                .split('|')
                .find_map(|path| {
                    let node = path.split('.').try_fold(object, |node, key| node.get(key));
                    match node {
                        None | Some(Value::Null) => None,
                        Some(Value::String(s)) if s.is_empty() => None,
                        Some(Value::String(s)) => Some(s.clone()),
                        Some(Value::Bool(b)) => Some(b.to_string()),
                        Some(Value::Number(n)) => Some(n.to_string()),
                        Some(other) => Some(other.to_string()),
                    }
                })
                .unwrap_or_else(|| r.missing.clone());
            (actual == r.value) == r.equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn every_operator() {
        let o = obj(json!({"app": "web", "tier": "front"}));
        for (s, want) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app in (web, db)", true),
            ("app notin (web)", false),
            ("app,tier", true),
            ("!app", false),
            ("!missing", true),
            ("missing notin (x)", true),
            ("app=web,tier in (back)", false),
            ("", true),
        ] {
            assert_eq!(
                LabelSelector::parse(s).unwrap().matches_object(&o),
                want,
                "{s}"
            );
        }
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("bad key=1").is_err());
    }

    #[test]
    fn fields() {
        let o = obj(json!({}));
        assert!(
            FieldSelector::parse("metadata.name=a")
                .unwrap()
                .matches_object(&o)
        );
        assert!(
            !FieldSelector::parse("metadata.namespace!=ns")
                .unwrap()
                .matches_object(&o)
        );
        let labels = [("metadata.name", "metadata.name", "")];
        assert!(
            FieldSelector::parse_for("spec.nodeName=x", &labels)
                .unwrap_err()
                .contains("field label not supported: spec.nodeName")
        );
        let event =
            json!({"involvedObject": {"name": "web"}, "count": 2, "metadata": {"name": "e"}});
        let labels = [
            ("involvedObject.name", "involvedObject.name", ""),
            ("spec.flag", "spec.flag", "false"),
        ];
        let s =
            FieldSelector::parse_for("involvedObject.name=web,spec.flag=false", &labels).unwrap();
        assert!(!s.metadata_only());
        assert!(s.matches_object(&event));
        assert!(
            !FieldSelector::parse("count!=2")
                .unwrap()
                .matches_object(&event)
        );
        assert!(
            !FieldSelector::parse("involvedObject.name=db")
                .unwrap()
                .matches_object(&json!({}))
        );
    }
}
