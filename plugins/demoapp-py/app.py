"""demoapp-py: the Python twin of plugins/demoapp.

Reconciles a DemoApp (demo.reconcile.dev/v1alpha1) into a Deployment and a Service it owns,
and reports readiness in its status (observedGeneration, readyReplicas, a Ready condition).
Events are recorded when readiness changes and when an apply changed the Deployment. The host
manages the demo.reconcile.dev/cleanup finalizer. The demo.reconcile.dev/simulate annotation
makes a reconcile fail (error), trap (panic) or requeue in 30 s (requeue).
"""
import reconcile_sdk as rs
from reconcile_sdk import events, status

NAME = "demoapp-py"
SIMULATE = "demo.reconcile.dev/simulate"
DEMOAPP = rs.ResourceType("demo.reconcile.dev", "v1alpha1", "DemoApp", "demoapps")


def render(app: dict):
    meta = app["metadata"]
    name, ns = meta["name"], meta.get("namespace")
    spec = app.get("spec", {})
    port = spec.get("port", 8080)
    owner = [rs.owner_reference(app)]
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": NAME}
    deployment = {
        "metadata": {"name": name, "namespace": ns, "labels": labels, "ownerReferences": owner},
        "spec": {
            "replicas": spec.get("replicas", 1),
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                {"name": "app", "image": spec["image"], "ports": [{"containerPort": port}]}]}},
        },
    }
    service = {
        "metadata": {"name": name, "namespace": ns, "labels": labels, "ownerReferences": owner},
        "spec": {"selector": labels, "ports": [{"port": port, "targetPort": port}]},
    }
    return deployment, service


class DemoApp(rs.Reconciler):
    def metadata(self):
        return (rs.Metadata(NAME, "0.1.0")
                .reconciles(DEMOAPP).owns(rs.DEPLOYMENT).owns(rs.SERVICE)
                .access(DEMOAPP, [rs.Verb.PATCH]).access(rs.DEPLOYMENT, [rs.Verb.PATCH])
                .access(rs.SERVICE, [rs.Verb.PATCH])
                .records_events()
                .finalizer("demo.reconcile.dev/cleanup"))

    def reconcile(self, request: rs.Request):
        app = request.object()
        if app is None:
            rs.debug("DemoApp is gone", name=request.name)
            return rs.DONE
        meta = app["metadata"]
        ns = meta.get("namespace") or "default"
        if request.reason is rs.Reason.DELETING:
            rs.info("DemoApp deleted; its Deployment and Service follow through owner references")
            return rs.DONE
        simulate = (meta.get("annotations") or {}).get(SIMULATE)
        if simulate == "error":
            raise rs.Error(f"simulated failure ({SIMULATE}=error): remove the annotation to stop it")
        if simulate == "panic":
            raise RuntimeError(f"simulated panic ({SIMULATE}=panic)")
        spec = app.get("spec", {})
        image, replicas = (spec.get("image") or "").strip(), spec.get("replicas", 1)
        if not image:
            raise rs.Error.permanent("spec.image is empty: set the container image")
        if not 0 <= replicas <= 1000:
            raise rs.Error.permanent(f"spec.replicas is {replicas}: it must be between 0 and 1000")
        rs.set_attribute("demoapp.replicas", replicas)
        with rs.span("render"):
            deployment, service = render(app)
        deployments = rs.Api(rs.DEPLOYMENT, ns)
        before = (deployments.get_opt(meta["name"]) or {}).get("metadata", {}).get("generation")
        applied = deployments.apply(deployment)
        rs.Api(rs.SERVICE, ns).apply(service)
        if applied["metadata"].get("generation") != before:
            events.record(applied, NAME, "Normal", "Applied", "Apply", f"applied {replicas} replicas of {image}")

        current = deployments.get_opt(meta["name"]) or {}
        ready = (current.get("status") or {}).get("readyReplicas") or 0
        is_ready = ready >= replicas
        conditions = list((app.get("status") or {}).get("conditions") or [])
        reason = "Available" if is_ready else "Progressing"
        message = f"{ready}/{replicas} replicas are ready"
        gen = status.generation(app)
        changed = status.set_condition(conditions, status.condition("Ready", is_ready, reason, message, gen))
        rs.Api(DEMOAPP, ns).patch_status(meta["name"], {"status": {
            "observedGeneration": gen, "readyReplicas": ready, "conditions": conditions}})
        if changed:
            events.record(app, NAME, "Normal" if is_ready else "Warning", reason, "Reconcile", message)
            rs.event("ready changed", ready=is_ready)
        rs.info("reconciled DemoApp", image=image, replicas=replicas, ready=ready)
        if simulate == "requeue":
            return rs.RequeueAfter(30)
        return rs.DONE


Plugin = rs.export(DemoApp)
