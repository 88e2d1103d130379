//! The embedded API server answers bad requests as a real kube-apiserver
//! does: the status code, the reason, and the field named.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use reconcile_apiserver::{ApiServer, ApiServerConfig};
use serde_json::{Value, json};
use support::{raw, raw_with_head};

async fn server() -> ApiServer {
    ApiServer::start(ApiServerConfig::default()).await.unwrap()
}

fn configmaps(server: &ApiServer) -> String {
    format!("{}/api/v1/namespaces/default/configmaps", server.url())
}

/// POSTs `body` as JSON; the status code and the Status's reason and message.
async fn post(url: &str, body: &Value) -> (u16, String, String) {
    let (code, text) = raw("POST", url, "application/json", body.to_string().as_bytes()).await;
    let status: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    (
        code,
        status["reason"].as_str().unwrap_or_default().to_owned(),
        status["message"].as_str().unwrap_or_default().to_owned(),
    )
}

fn cm(name: &str, extra: Value) -> Value {
    let mut object = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}});
    merge(&mut object, extra);
    object
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

#[tokio::test]
async fn built_in_objects_are_decoded_against_their_types() {
    let server = server().await;
    let url = configmaps(&server);
    for (extra, field) in [
        (json!({"data": [1]}), "data"),
        (json!({"data": {"a": 1}}), "data.a"),
        (
            json!({"metadata": {"ownerReferences": "x"}}),
            "metadata.ownerReferences",
        ),
        (
            json!({"metadata": {"finalizers": "x"}}),
            "metadata.finalizers",
        ),
        (
            json!({"metadata": {"annotations": {"a": 5}}}),
            "metadata.annotations.a",
        ),
    ] {
        let (code, reason, message) = post(&url, &cm("typed", extra.clone())).await;
        assert_eq!(
            (code, reason.as_str()),
            (400, "BadRequest"),
            "{extra}: {message}"
        );
        assert!(
            message.starts_with("ConfigMap in version \"v1\" cannot be handled as a ConfigMap: "),
            "{message}"
        );
        assert!(message.contains(field), "{extra}: {message}");
    }
    // A Deployment's replicas must be a number.
    let deployments = format!(
        "{}/apis/apps/v1/namespaces/default/deployments",
        server.url()
    );
    let (code, _, message) = post(
        &deployments,
        &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"replicas": "three", "selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
    )
    .await;
    assert_eq!(code, 400, "{message}");
    assert!(message.contains("spec.replicas"), "{message}");
    // A patch that breaks the type is refused the same way.
    let (code, _, _) = post(&url, &cm("patched", json!({"data": {"a": "1"}}))).await;
    assert_eq!(code, 201);
    let (code, text) = raw(
        "PATCH",
        &format!("{url}/patched"),
        "application/merge-patch+json",
        br#"{"data": {"a": 1}}"#,
    )
    .await;
    assert_eq!(code, 400, "{text}");
}

#[tokio::test]
async fn invalid_metadata_and_data_get_422_naming_the_field() {
    let server = server().await;
    let url = configmaps(&server);
    let long_key = format!("example.com/{}", "k".repeat(64));
    let cases = [
        (
            json!({"metadata": {"labels": {long_key.clone(): "v"}}}),
            "metadata.labels",
        ),
        (
            json!({"metadata": {"annotations": {"bad key!": "v"}}}),
            "metadata.annotations",
        ),
        (json!({"data": {"../x": "v"}}), "data[../x]"),
        (
            json!({"metadata": {"finalizers": ["bad finalizer"]}}),
            "metadata.finalizers[0]",
        ),
        (
            json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o"}]}}),
            "metadata.ownerReferences.uid",
        ),
        (
            json!({"metadata": {"ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "a", "uid": "1", "controller": true},
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "b", "uid": "2", "controller": true}]}}),
            "metadata.ownerReferences",
        ),
        (
            json!({"data": {"big": "x".repeat(1024 * 1024 + 1)}}),
            "data",
        ),
        (
            json!({"metadata": {"resourceVersion": "5"}}),
            "metadata.resourceVersion",
        ),
    ];
    for (i, (extra, field)) in cases.into_iter().enumerate() {
        let (code, reason, message) = post(&url, &cm(&format!("c{i}"), extra.clone())).await;
        let shown = &extra.to_string()[..extra.to_string().len().min(120)];
        assert_eq!(
            (code, reason.as_str()),
            (422, "Invalid"),
            "{shown}: {message}"
        );
        assert!(message.contains(field), "{shown}: {message}");
    }
    // A ConfigMap name may be any DNS subdomain: 64 characters in one label.
    let (code, _, message) = post(&url, &cm(&"a".repeat(64), json!({}))).await;
    assert_eq!(code, 201, "{message}");
    let (code, _, _) = post(&url, &cm(&"a".repeat(254), json!({}))).await;
    assert_eq!(code, 422);

    // A field manager longer than 128 characters.
    let (code, text) = raw(
        "POST",
        &format!("{url}?fieldManager={}", "m".repeat(129)),
        "application/json",
        cm("managed", json!({})).to_string().as_bytes(),
    )
    .await;
    assert_eq!(code, 422, "{text}");
    assert!(text.contains("fieldManager"), "{text}");
}

#[tokio::test]
async fn invalid_custom_resource_definitions_get_422() {
    let server = server().await;
    let url = format!(
        "{}/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        server.url()
    );
    let crd = |group: &str, kind: &str, versions: Value, annotations: Value| {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("things.{group}"), "annotations": annotations},
            "spec": {"group": group, "scope": "Namespaced",
                "names": {"plural": "things", "singular": "thing", "kind": kind},
                "versions": versions}})
    };
    let version = |name: &str, storage: bool| {
        json!({"name": name, "served": true, "storage": storage,
            "schema": {"openAPIV3Schema": {"type": "object"}}})
    };
    let one = json!([version("v1", true)]);
    for (body, field) in [
        (crd("apps", "Thing", one.clone(), json!({})), "spec.group"),
        (
            crd("things.k8s.io", "Thing", one.clone(), json!({})),
            "api-approved.kubernetes.io",
        ),
        (
            crd("example.com", "Thing", json!([]), json!({})),
            "spec.versions",
        ),
        (
            crd(
                "example.com",
                "Thing",
                json!([version("v1", true), version("v2", true)]),
                json!({}),
            ),
            "spec.versions",
        ),
        (
            crd("example.com", "My Thing", one.clone(), json!({})),
            "spec.names.kind",
        ),
    ] {
        let (code, reason, message) = post(&url, &body).await;
        assert_eq!(
            (code, reason.as_str()),
            (422, "Invalid"),
            "{body}: {message}"
        );
        assert!(message.contains(field), "{field}: {message}");
    }
    // Approved, a protected group is fine.
    let approved = crd(
        "things.k8s.io",
        "Thing",
        one,
        json!({"api-approved.kubernetes.io": "https://github.com/kubernetes/enhancements/pull/1111"}),
    );
    let (code, _, message) = post(&url, &approved).await;
    assert_eq!(code, 201, "{message}");
}

#[tokio::test]
async fn patches_of_fields_the_server_owns_are_refused_as_the_real_server_does() {
    let server = server().await;
    let client = server.client().unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let created = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(cm("owned", json!({"data": {"a": "1"}}))).unwrap(),
        )
        .await
        .unwrap();
    let merge = |patch: Value| {
        let api = api.clone();
        async move {
            match api
                .patch("owned", &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => (200, String::new()),
                Err(kube::Error::Api(status)) => (status.code, status.message),
                Err(e) => panic!("{e}"),
            }
        }
    };
    let (code, message) = merge(json!({"metadata": {"namespace": "other"}})).await;
    assert_eq!(code, 400, "{message}");
    assert!(message.contains("namespace"), "{message}");
    let (code, message) = merge(json!({"metadata": {"uid": "changed"}})).await;
    assert_eq!(code, 422, "{message}");
    assert!(
        message.contains("metadata.uid") && message.contains("immutable"),
        "{message}"
    );
    let (code, message) =
        merge(json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}})).await;
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("metadata.deletionTimestamp"), "{message}");
    let (code, message) = merge(json!({"kind": "Secret"})).await;
    assert_eq!(code, 400, "{message}");
    // As in the real server, a changed creationTimestamp is ignored.
    let (code, _) = merge(json!({"metadata": {"creationTimestamp": "2001-01-01T00:00:00Z"}})).await;
    assert_eq!(code, 200);
    let now = api.get("owned").await.unwrap();
    assert_eq!(
        now.metadata.creation_timestamp,
        created.metadata.creation_timestamp
    );

    // Patches that do not leave an object.
    let url = format!("{}/owned", configmaps(&server));
    let (code, text) = raw(
        "PATCH",
        &url,
        "application/json-patch+json",
        br#"[{"op": "replace", "path": "", "value": "x"}]"#,
    )
    .await;
    assert_eq!(code, 400, "{text}");
    assert!(!text.contains("metadata.name"), "{text}");
    let (code, text) = raw("PATCH", &url, "application/merge-patch+json", b"[1, 2]").await;
    assert_eq!(code, 400, "{text}");
    assert!(!text.contains("metadata.name"), "{text}");
}

#[tokio::test]
async fn unknown_content_types_get_415_and_unacceptable_accepts_406() {
    let server = server().await;
    let url = configmaps(&server);
    let body = cm("typed", json!({})).to_string();
    for content_type in [
        "text/plain",
        "application/xml",
        "multipart/form-data; boundary=x",
    ] {
        let (code, text) = raw("POST", &url, content_type, body.as_bytes()).await;
        assert_eq!(code, 415, "{content_type}: {text}");
    }
    // No content type at all is read as JSON, as the real server does.
    let (code, text) = raw("POST", &url, "", body.as_bytes()).await;
    assert_eq!(code, 201, "{text}");

    let (code, _, text) = accept(&format!("{url}/typed"), "application/xml").await;
    assert_eq!(code, 406, "{text}");
    for ok in ["application/json", "*/*", "application/json, */*;q=0.8", ""] {
        let (code, _, text) = accept(&format!("{url}/typed"), ok).await;
        assert_eq!(code, 200, "{ok}: {text}");
    }

    // Malformed protobuf is a bad request.
    let (code, text) = raw(
        "POST",
        &url,
        "application/vnd.kubernetes.protobuf",
        b"k8s\x00\xff\xff\xff",
    )
    .await;
    assert_eq!(code, 400, "{text}");
}

/// A GET with an Accept header.
async fn accept(url: &str, accept: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let accept = if accept.is_empty() {
        String::new()
    } else {
        format!("Accept: {accept}\r\n")
    };
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{accept}\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (code, head.to_owned(), body.to_owned())
}

#[tokio::test]
async fn a_bad_chunk_size_is_a_bad_request() {
    let server = server().await;
    let url = configmaps(&server);
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    stream
        .write_all(format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    let _ = raw_with_head;
}
