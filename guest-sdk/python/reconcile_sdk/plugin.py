"""The plugin side of the contract: Metadata, Request, actions, Error, and export()."""
from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from componentize_py_types import Err
from wit_world import exports as _exports
from wit_world.imports import types as _t


class Verb(enum.IntEnum):
    GET = 0
    LIST = 1
    WATCH = 2
    CREATE = 3
    UPDATE = 4
    PATCH = 5
    DELETE = 6


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def _wit(self) -> _t.ResourceType:
        return _t.ResourceType(self.group, self.version, self.kind, self.plural, self.namespaced)


DEPLOYMENT = ResourceType("apps", "v1", "Deployment", "deployments")
SERVICE = ResourceType("", "v1", "Service", "services")
CONFIG_MAP = ResourceType("", "v1", "ConfigMap", "configmaps")
SECRET = ResourceType("", "v1", "Secret", "secrets")
EVENT = ResourceType("events.k8s.io", "v1", "Event", "events")

_WATCH = (Verb.GET, Verb.LIST, Verb.WATCH)


class Metadata:
    """Builder, as in the Rust SDK: Metadata("web", "1.0.0").reconciles(T).owns(U).access(U, [Verb.PATCH])."""

    def __init__(self, name: str, version: str):
        self.name, self.version = name, version
        self.primary: Optional[ResourceType] = None
        self._owns: list[ResourceType] = []
        self._access: dict[tuple, tuple[ResourceType, set]] = {}
        self._http_hosts: list[str] = []
        self._finalizer = self._selector = self._field_manager = None

    def access(self, rt: ResourceType, verbs) -> "Metadata":
        key = (rt.group, rt.version, rt.kind)
        self._access.setdefault(key, (rt, set()))[1].update(verbs)
        return self

    def reconciles(self, rt: ResourceType) -> "Metadata":
        self.primary = rt
        return self.access(rt, _WATCH)

    def owns(self, rt: ResourceType) -> "Metadata":
        self._owns.append(rt)
        return self.access(rt, _WATCH)

    def records_events(self) -> "Metadata":
        return self.access(EVENT, (Verb.GET, Verb.CREATE, Verb.PATCH, Verb.DELETE))

    def http_host(self, endpoint: str) -> "Metadata":
        self._http_hosts.append(endpoint)
        return self

    def finalizer(self, name: str) -> "Metadata":
        self._finalizer = name
        return self

    def selector(self, selector: str) -> "Metadata":
        self._selector = selector
        return self

    def field_manager(self, manager: str) -> "Metadata":
        self._field_manager = manager
        return self

    def _wit(self) -> _t.PluginMetadata:
        primary = self.primary or ResourceType("", "", "", "", False)
        return _t.PluginMetadata(
            name=self.name, version=self.version, primary=primary._wit(),
            owns=[o._wit() for o in self._owns],
            access=_t.AccessRequest(
                resources=[_t.ResourceAccess(rt._wit(), [_t.Verb(int(v)) for v in sorted(vs)])
                           for rt, vs in self._access.values()],
                http_hosts=list(self._http_hosts)),
            finalizer=self._finalizer, primary_selector=self._selector,
            field_manager=self._field_manager)


class Reason(enum.Enum):
    OBJECT_CHANGED = "object_changed"
    OWNED_OBJECT_CHANGED = "owned_object_changed"
    REQUEUE = "requeue"
    RETRY = "retry"
    PLUGIN_RELOADED = "plugin_reloaded"
    DELETING = "deleting"
    OTHER = "other"


class Request:
    def __init__(self, r: _t.ReconcileRequest):
        o = r.object
        self.group, self.version, self.kind = o.group, o.version, o.kind
        self.namespace: Optional[str] = o.namespace
        self.name: str = o.name
        self.body: Optional[str] = r.body
        self.reason = Reason[r.reason.name]
        self.attempt: int = r.attempt
        self.generation: Optional[int] = r.generation
        self._object: Any = None

    def object(self) -> Optional[dict]:
        """The object as a dict, or None when it no longer exists."""
        if self.body is None:
            return None
        if self._object is None:
            try:
                self._object = json.loads(self.body)
            except ValueError as e:
                raise Error.permanent(f"cannot decode the {self.kind} {self.name}: {e}")
        return self._object


@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class RequeueAfter:
    seconds: float


DONE = Done()


class ErrorKind(enum.Enum):
    PLUGIN = 0
    K8S = 1
    HTTP = 2


class Error(Exception):
    """A failed reconcile; retried with backoff unless permanent."""

    def __init__(self, message: str, retry: bool = True, kind: ErrorKind = ErrorKind.PLUGIN):
        super().__init__(message)
        self.message, self.retry, self.kind = message, retry, kind

    @classmethod
    def permanent(cls, message: str) -> "Error":
        return cls(message, retry=False)


class Reconciler:
    """Subclass and implement metadata() and reconcile(request)."""

    def metadata(self) -> Metadata:
        raise NotImplementedError

    def reconcile(self, request: Request):
        raise NotImplementedError


def _to_error(e: BaseException) -> Optional[_t.ReconcileError]:
    from . import k8s, http  # local: avoid cycles
    if isinstance(e, Error):
        return _t.ReconcileError(e.message, e.retry, _t.ErrorKind(e.kind.value))
    if isinstance(e, k8s.K8sError):
        return _t.ReconcileError(str(e), True, _t.ErrorKind.K8S)
    if isinstance(e, http.HttpError):
        return _t.ReconcileError(str(e), True, _t.ErrorKind.HTTP)
    return None


def export(reconciler_cls):
    """Returns the class componentize-py calls for the `plugin` export: `Plugin = export(MyReconciler)`."""
    class Plugin(_exports.Plugin):
        def metadata(self) -> _t.PluginMetadata:
            return reconciler_cls().metadata()._wit()

        def reconcile(self, request: _t.ReconcileRequest):
            try:
                action = reconciler_cls().reconcile(Request(request))
            except Exception as e:
                wit_error = _to_error(e)
                if wit_error is None:
                    raise  # like a Rust panic: the instance traps, the traceback goes to stderr
                raise Err(wit_error)
            if action is None or isinstance(action, Done):
                return _t.Action_Done()
            if isinstance(action, RequeueAfter):
                return _t.Action_RequeueAfter(max(0, int(action.seconds * 1000)))
            raise TypeError(f"reconcile returned {action!r}: return DONE or RequeueAfter(seconds)")
    Plugin.__name__ = Plugin.__qualname__ = "Plugin"
    return Plugin
