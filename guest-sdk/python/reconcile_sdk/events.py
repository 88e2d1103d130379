"""Kubernetes Events (events.k8s.io/v1), counted on one Event when repeated, as the Rust SDK does."""
from datetime import datetime, timezone

from .k8s import Api
from .plugin import EVENT

SERIES_WINDOW_SECONDS = 6 * 60


def _fnv1a(parts) -> int:
    h = 0xcbf29ce484222325
    for p in parts:
        for b in p.encode() + b"\0":
            h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def _micro(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(s: str) -> float:
    s = s.rstrip("Z")
    fmt = "%Y-%m-%dT%H:%M:%S.%f" if "." in s else "%Y-%m-%dT%H:%M:%S"
    return datetime.strptime(s, fmt).replace(tzinfo=timezone.utc).timestamp()


def record(regarding: dict, controller: str, type_: str, reason: str, action: str, note: str) -> dict:
    """type_ is "Normal" or "Warning"."""
    meta = regarding.get("metadata", {})
    namespace = meta.get("namespace") or "default"
    name = meta.get("name", "")
    kind = regarding.get("kind", "")
    identity = meta.get("uid") or f"{kind}/{namespace}/{name}"
    key = _fnv1a([identity, controller, type_, reason, action, note])
    prefix = name[: 253 - 17].rstrip("-.")
    event_name = f"{prefix}.{key:016x}"
    api = Api(EVENT, namespace)
    now = datetime.now(timezone.utc)
    existing = api.get_opt(event_name)
    if existing is not None:
        last = (existing.get("series") or {}).get("lastObservedTime") or existing.get("eventTime")
        if last and now.timestamp() - _parse(last) <= SERIES_WINDOW_SECONDS:
            count = (existing.get("series") or {}).get("count", 1) + 1
            return api.patch(event_name, {
                "metadata": {"resourceVersion": existing["metadata"].get("resourceVersion")},
                "series": {"count": count, "lastObservedTime": _micro(now)}})
        from .k8s import K8sError
        try:
            api.delete(event_name)
        except K8sError as e:
            if not e.is_not_found:
                raise
    return api.create({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": event_name, "namespace": namespace},
        "eventTime": _micro(now), "reportingController": controller, "reportingInstance": controller,
        "action": action, "reason": reason, "note": note, "type": type_,
        "regarding": {"apiVersion": regarding.get("apiVersion"), "kind": kind, "name": name,
                      "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                      "resourceVersion": meta.get("resourceVersion")},
    })
