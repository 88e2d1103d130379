//! Kubernetes protobuf request bodies, for the simple built-in types that
//! kubectl's typed `create` commands send that way (`kubectl create
//! namespace|configmap|secret|serviceaccount|role|rolebinding|clusterrole|
//! clusterrolebinding`, and `kubectl auth can-i`'s SelfSubjectAccessReview).
//! Other kinds get a 415 that says to send JSON.
//!
//! The envelope is the magic `k8s\0` and a `runtime.Unknown` message
//! (`typeMeta`, `raw`); `raw` is the object in the type's `generated.proto`
//! form. Decoding is table-driven: each table maps field numbers to JSON
//! names and wire shapes. Unknown fields are skipped, as protobuf allows.

use base64::Engine as _;
use serde_json::{Map, Value};

/// The wire shape of a field and its JSON name.
#[derive(Clone, Copy)]
enum Field {
    Str(&'static str),
    Int(&'static str),
    Bool(&'static str),
    Msg(&'static str, Schema),
    RepStr(&'static str),
    RepMsg(&'static str, Schema),
    MapStr(&'static str),
    /// Values are bytes, base64 in JSON.
    MapBytes(&'static str),
}

type Schema = &'static [(u32, Field)];

const OWNER_REFERENCE: Schema = &[
    (1, Field::Str("kind")),
    (3, Field::Str("name")),
    (4, Field::Str("uid")),
    (5, Field::Str("apiVersion")),
    (6, Field::Bool("controller")),
    (7, Field::Bool("blockOwnerDeletion")),
];

const OBJECT_META: Schema = &[
    (1, Field::Str("name")),
    (2, Field::Str("generateName")),
    (3, Field::Str("namespace")),
    (5, Field::Str("uid")),
    (6, Field::Str("resourceVersion")),
    (7, Field::Int("generation")),
    (11, Field::MapStr("labels")),
    (12, Field::MapStr("annotations")),
    (13, Field::RepMsg("ownerReferences", OWNER_REFERENCE)),
    (14, Field::RepStr("finalizers")),
];

const CONFIG_MAP: Schema = &[
    (1, Field::Msg("metadata", OBJECT_META)),
    (2, Field::MapStr("data")),
    (3, Field::MapBytes("binaryData")),
    (4, Field::Bool("immutable")),
];

const SECRET: Schema = &[
    (1, Field::Msg("metadata", OBJECT_META)),
    (2, Field::MapBytes("data")),
    (3, Field::Str("type")),
    (4, Field::MapStr("stringData")),
    (5, Field::Bool("immutable")),
];

const NAMESPACE_SPEC: Schema = &[(1, Field::RepStr("finalizers"))];

const NAMESPACE: Schema = &[
    (1, Field::Msg("metadata", OBJECT_META)),
    (2, Field::Msg("spec", NAMESPACE_SPEC)),
];

const OBJECT_REFERENCE: Schema = &[
    (1, Field::Str("kind")),
    (2, Field::Str("namespace")),
    (3, Field::Str("name")),
    (4, Field::Str("uid")),
    (5, Field::Str("apiVersion")),
    (6, Field::Str("resourceVersion")),
    (7, Field::Str("fieldPath")),
];

const LOCAL_OBJECT_REFERENCE: Schema = &[(1, Field::Str("name"))];

const SERVICE_ACCOUNT: Schema = &[
    (1, Field::Msg("metadata", OBJECT_META)),
    (2, Field::RepMsg("secrets", OBJECT_REFERENCE)),
    (3, Field::RepMsg("imagePullSecrets", LOCAL_OBJECT_REFERENCE)),
    (4, Field::Bool("automountServiceAccountToken")),
];

const POLICY_RULE: Schema = &[
    (1, Field::RepStr("verbs")),
    (2, Field::RepStr("apiGroups")),
    (3, Field::RepStr("resources")),
    (4, Field::RepStr("resourceNames")),
    (5, Field::RepStr("nonResourceURLs")),
];

const ROLE: Schema = &[
    (1, Field::Msg("metadata", OBJECT_META)),
    (2, Field::RepMsg("rules", POLICY_RULE)),
];

const SUBJECT: Schema = &[
    (1, Field::Str("kind")),
    (2, Field::Str("apiGroup")),
    (3, Field::Str("name")),
    (4, Field::Str("namespace")),
];

const ROLE_REF: Schema = &[
    (1, Field::Str("apiGroup")),
    (2, Field::Str("kind")),
    (3, Field::Str("name")),
];

const ROLE_BINDING: Schema = &[
    (1, Field::Msg("metadata", OBJECT_META)),
    (2, Field::RepMsg("subjects", SUBJECT)),
    (3, Field::Msg("roleRef", ROLE_REF)),
];

const RESOURCE_ATTRIBUTES: Schema = &[
    (1, Field::Str("namespace")),
    (2, Field::Str("verb")),
    (3, Field::Str("group")),
    (4, Field::Str("version")),
    (5, Field::Str("resource")),
    (6, Field::Str("subresource")),
    (7, Field::Str("name")),
];

const NON_RESOURCE_ATTRIBUTES: Schema = &[(1, Field::Str("path")), (2, Field::Str("verb"))];

const SELF_SUBJECT_ACCESS_REVIEW_SPEC: Schema = &[
    (1, Field::Msg("resourceAttributes", RESOURCE_ATTRIBUTES)),
    (
        2,
        Field::Msg("nonResourceAttributes", NON_RESOURCE_ATTRIBUTES),
    ),
];

/// `kubectl auth can-i` sends its review this way.
const SELF_SUBJECT_ACCESS_REVIEW: Schema = &[
    (1, Field::Msg("metadata", OBJECT_META)),
    (2, Field::Msg("spec", SELF_SUBJECT_ACCESS_REVIEW_SPEC)),
];

const TYPE_META: Schema = &[(1, Field::Str("apiVersion")), (2, Field::Str("kind"))];

fn schema_of(api_version: &str, kind: &str) -> Option<Schema> {
    match (api_version, kind) {
        ("v1", "ConfigMap") => Some(CONFIG_MAP),
        ("v1", "Secret") => Some(SECRET),
        ("v1", "Namespace") => Some(NAMESPACE),
        ("v1", "ServiceAccount") => Some(SERVICE_ACCOUNT),
        ("rbac.authorization.k8s.io/v1", "Role" | "ClusterRole") => Some(ROLE),
        ("rbac.authorization.k8s.io/v1", "RoleBinding" | "ClusterRoleBinding") => {
            Some(ROLE_BINDING)
        }
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => Some(SELF_SUBJECT_ACCESS_REVIEW),
        _ => None,
    }
}

/// Reads protobuf wire format.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.bytes.get(self.at).ok_or("truncated varint")?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint too long".into())
    }

    fn chunk(&mut self) -> Result<&'a [u8], String> {
        let len = usize::try_from(self.varint()?).map_err(|_| "length too large")?;
        let end = self
            .at
            .checked_add(len)
            .filter(|e| *e <= self.bytes.len())
            .ok_or("truncated field")?;
        let chunk = &self.bytes[self.at..end];
        self.at = end;
        Ok(chunk)
    }

    fn skip(&mut self, wire: u64) -> Result<(), String> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.advance(8),
            2 => self.chunk().map(|_| ()),
            5 => self.advance(4),
            other => Err(format!("unsupported wire type {other}")),
        }
    }

    fn advance(&mut self, n: usize) -> Result<(), String> {
        self.at = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or("truncated field")?;
        Ok(())
    }

    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }
}

fn text(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "a string field is not UTF-8".to_owned())
}

/// A map entry message: key = 1, value = 2.
fn entry(bytes: &[u8]) -> Result<(String, Vec<u8>), String> {
    let mut r = Reader { bytes, at: 0 };
    let (mut key, mut value) = (String::new(), Vec::new());
    while !r.done() {
        let tag = r.varint()?;
        match (tag >> 3, tag & 7) {
            (1, 2) => key = text(r.chunk()?)?,
            (2, 2) => value = r.chunk()?.to_vec(),
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok((key, value))
}

fn message(schema: Schema, bytes: &[u8]) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    let mut r = Reader { bytes, at: 0 };
    while !r.done() {
        let tag = r.varint()?;
        let (number, wire) = (tag >> 3, tag & 7);
        let Some((_, field)) = schema.iter().find(|(n, _)| u64::from(*n) == number) else {
            r.skip(wire)?;
            continue;
        };
        match (*field, wire) {
            (Field::Str(name), 2) => {
                // Empty strings are left out, as the API server's JSON
                // (omitempty) does.
                let value = text(r.chunk()?)?;
                if !value.is_empty() {
                    out.insert(name.into(), value.into());
                }
            }
            (Field::Int(name), 0) => {
                out.insert(name.into(), (r.varint()? as i64).into());
            }
            (Field::Bool(name), 0) => {
                out.insert(name.into(), (r.varint()? != 0).into());
            }
            (Field::Msg(name, inner), 2) => {
                out.insert(name.into(), Value::Object(message(inner, r.chunk()?)?));
            }
            (Field::RepStr(name), 2) => {
                let item = text(r.chunk()?)?;
                push(&mut out, name, item.into());
            }
            (Field::RepMsg(name, inner), 2) => {
                let item = Value::Object(message(inner, r.chunk()?)?);
                push(&mut out, name, item);
            }
            (Field::MapStr(name), 2) => {
                let (k, v) = entry(r.chunk()?)?;
                map_insert(&mut out, name, k, text(&v)?.into());
            }
            (Field::MapBytes(name), 2) => {
                let (k, v) = entry(r.chunk()?)?;
                map_insert(
                    &mut out,
                    name,
                    k,
                    base64::engine::general_purpose::STANDARD.encode(v).into(),
                );
            }
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok(out)
}

fn push(out: &mut Map<String, Value>, name: &str, item: Value) {
    match out.entry(name).or_insert_with(|| Value::Array(Vec::new())) {
        Value::Array(list) => list.push(item),
        other => *other = Value::Array(vec![item]),
    }
}

fn map_insert(out: &mut Map<String, Value>, name: &str, key: String, value: Value) {
    match out.entry(name).or_insert_with(|| Value::Object(Map::new())) {
        Value::Object(map) => {
            map.insert(key, value);
        }
        other => *other = Value::Object(Map::from_iter([(key, value)])),
    }
}

/// Why a protobuf body was not decoded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not valid protobuf (400, as the real server).
    #[error("{0}")]
    Malformed(String),
    /// Valid, of a kind this server does not decode from protobuf (415).
    #[error("{0}")]
    Unsupported(String),
}

impl From<String> for DecodeError {
    fn from(message: String) -> Self {
        DecodeError::Malformed(message)
    }
}

impl From<&str> for DecodeError {
    fn from(message: &str) -> Self {
        DecodeError::Malformed(message.to_owned())
    }
}

/// Decodes a `application/vnd.kubernetes.protobuf` body to JSON.
pub fn decode(body: &[u8]) -> Result<Value, DecodeError> {
    let envelope = body
        .strip_prefix(b"k8s\0")
        .ok_or("the body lacks the k8s protobuf magic")?;
    let mut r = Reader {
        bytes: envelope,
        at: 0,
    };
    let (mut type_meta, mut raw) = (Map::new(), &[][..]);
    while !r.done() {
        let tag = r.varint()?;
        match (tag >> 3, tag & 7) {
            (1, 2) => type_meta = message(TYPE_META, r.chunk()?)?,
            (2, 2) => raw = r.chunk()?,
            (_, wire) => r.skip(wire)?,
        }
    }
    let api_version = type_meta
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let kind = type_meta
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let schema = schema_of(&api_version, &kind).ok_or_else(|| {
        DecodeError::Unsupported(format!("this server decodes protobuf bodies only for simple core and RBAC kinds, not {api_version} {kind}; send JSON (kubectl create -f, kubectl apply)"))
    })?;
    let mut object = message(schema, raw)?;
    object.insert("apiVersion".into(), api_version.into());
    object.insert("kind".into(), kind.into());
    Ok(Value::Object(object))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(number: u32, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![((number << 3) | 2) as u8, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn a_config_map() {
        let meta = [
            field(1, b"settings"),
            field(11, &[field(1, b"app"), field(2, b"web")].concat()),
        ]
        .concat();
        let raw = [
            field(1, &meta),
            field(2, &[field(1, b"a"), field(2, b"1")].concat()),
            vec![(4 << 3), 1],
        ]
        .concat();
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let body = [b"k8s\0".to_vec(), field(1, &type_meta), field(2, &raw)].concat();
        let v = decode(&body).unwrap();
        assert_eq!(v["kind"], "ConfigMap");
        assert_eq!(v["metadata"]["name"], "settings");
        assert_eq!(v["metadata"]["labels"]["app"], "web");
        assert_eq!(v["data"]["a"], "1");
        assert_eq!(v["immutable"], true);
    }

    #[test]
    fn refusals_name_the_problem() {
        assert!(decode(b"{}").unwrap_err().to_string().contains("magic"));
        let type_meta = [field(1, b"apps/v1"), field(2, b"Deployment")].concat();
        let body = [b"k8s\0".to_vec(), field(1, &type_meta)].concat();
        let unsupported = decode(&body).unwrap_err();
        assert!(matches!(unsupported, DecodeError::Unsupported(_)));
        assert!(unsupported.to_string().contains("not apps/v1 Deployment"));
        let truncated = [b"k8s\0".to_vec(), vec![0x0a, 0x50, 0x01]].concat();
        assert!(matches!(decode(&truncated), Err(DecodeError::Malformed(_))));
    }
}
