"""The Python SDK for reconcile-host plugins (contract reconcile:plugin@0.2.0).

    import reconcile_sdk as rs

    class Labeler(rs.Reconciler):
        def metadata(self):
            return rs.Metadata("labeler", "0.1.0").reconciles(rs.CONFIG_MAP).access(rs.CONFIG_MAP, [rs.Verb.PATCH])
        def reconcile(self, request):
            ...
            return rs.DONE

    Plugin = rs.export(Labeler)   # componentize-py calls app.Plugin for the `plugin` export

Build (from the plugin's folder; `cargo xtask plugins` does it for plugins/demoapp-py):

    componentize-py -d ../../wit/0.2.0 -w reconciler \
        --import-interface-name reconcile:plugin/types@0.2.0=types \
        --import-interface-name wasi:http/types@0.2.12=http_types \
        componentize app -p . -p ../../guest-sdk/python -o plugin.wasm

The bindings (`wit_world`) are generated at build time; nothing may read the
clock, random numbers or the environment at import, since componentize-py
runs the module's top level at build time and snapshots it.
"""
from .plugin import (Verb, ResourceType, Metadata, Reason, Request, Done, DONE, RequeueAfter,
                     Error, ErrorKind, Reconciler, export,
                     DEPLOYMENT, SERVICE, CONFIG_MAP, SECRET, EVENT)
from .k8s import Api, K8sError, owner_reference, json_patch
from . import log, trace, status, events, http
from .log import info, warn, debug, error
from .trace import span, set_attribute, event
