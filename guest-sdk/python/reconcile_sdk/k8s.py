"""The Kubernetes API served by the host. Objects are dicts (JSON)."""
from __future__ import annotations

import json
from typing import Optional

from componentize_py_types import Err
from wit_world.imports import k8s as _k8s
from .plugin import ResourceType

_NAMES = {
    _k8s.Error_NotFound: "not found", _k8s.Error_Conflict: "conflict",
    _k8s.Error_Forbidden: "forbidden", _k8s.Error_Invalid: "invalid",
    _k8s.Error_Unavailable: "unavailable", _k8s.Error_Other: "error",
}


class K8sError(Exception):
    def __init__(self, error):
        self.error = error
        self.status = error.value  # ApiStatus(code, reason, message)
        s = self.status
        super().__init__(f"{_NAMES[type(error)]} ({s.code} {s.reason}): {s.message}")

    @property
    def is_not_found(self) -> bool:
        return isinstance(self.error, _k8s.Error_NotFound)

    @property
    def is_conflict(self) -> bool:
        return isinstance(self.error, _k8s.Error_Conflict)

    @property
    def is_forbidden(self) -> bool:
        return isinstance(self.error, _k8s.Error_Forbidden)


def _call(f, *args):
    try:
        return f(*args)
    except Err as e:
        raise K8sError(e.value) from None


def _body(patch) -> _k8s.PatchBody:
    if isinstance(patch, (_k8s.PatchBody_Merge, _k8s.PatchBody_Json)):
        return patch
    return _k8s.PatchBody_Merge(json.dumps(patch))  # dict: a JSON merge patch


def json_patch(ops: list) -> _k8s.PatchBody:
    return _k8s.PatchBody_Json(json.dumps(ops))


class Api:
    def __init__(self, resource: ResourceType, namespace: Optional[str] = None):
        self.resource, self.namespace = resource, namespace
        self._rt = resource._wit()

    def get(self, name: str) -> dict:
        return json.loads(_call(_k8s.get, self._rt, self.namespace, name))

    def get_opt(self, name: str) -> Optional[dict]:
        try:
            return self.get(name)
        except K8sError as e:
            if e.is_not_found:
                return None
            raise

    def list(self, label_selector=None, field_selector=None, limit=None, continue_token=None) -> dict:
        opts = _k8s.ListOptions(label_selector, field_selector, limit, continue_token)
        return json.loads(_call(_k8s.list, self._rt, self.namespace, opts))

    def create(self, obj: dict) -> dict:
        return json.loads(_call(_k8s.create, self._rt, self.namespace, json.dumps(obj)))

    def apply(self, obj: dict, force: bool = True) -> dict:
        """Server-side apply; force=True takes over conflicting fields, as a controller should."""
        obj = {"apiVersion": self.resource.api_version, "kind": self.resource.kind, **obj}
        name = obj["metadata"]["name"]
        return json.loads(_call(_k8s.apply, self._rt, self.namespace, name, json.dumps(obj), force))

    def patch(self, name: str, patch) -> dict:
        return json.loads(_call(_k8s.patch, self._rt, self.namespace, name, _body(patch)))

    def replace(self, name: str, obj: dict) -> dict:
        return json.loads(_call(_k8s.replace, self._rt, self.namespace, name, json.dumps(obj)))

    def delete(self, name: str, propagation: Optional[str] = None) -> Optional[dict]:
        p = None if propagation is None else _k8s.Propagation[propagation.upper()]
        out = _call(_k8s.delete, self._rt, self.namespace, name, p)
        return None if out is None else json.loads(out)

    def get_status(self, name: str) -> dict:
        return json.loads(_call(_k8s.get_status, self._rt, self.namespace, name))

    def apply_status(self, name: str, obj: dict, force: bool = True) -> dict:
        obj = {"apiVersion": self.resource.api_version, "kind": self.resource.kind, **obj}
        return json.loads(_call(_k8s.apply_status, self._rt, self.namespace, name, json.dumps(obj), force))

    def patch_status(self, name: str, patch) -> dict:
        return json.loads(_call(_k8s.patch_status, self._rt, self.namespace, name, _body(patch)))

    def replace_status(self, name: str, obj: dict) -> dict:
        return json.loads(_call(_k8s.replace_status, self._rt, self.namespace, name, json.dumps(obj)))


def owner_reference(obj: dict, controller: bool = True) -> dict:
    m = obj["metadata"]
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": m["name"], "uid": m["uid"],
            "controller": controller, "blockOwnerDeletion": True}
