"""noop-py: reconciles ConfigMaps by doing nothing (the per-reconcile cost
of a Python guest: a fresh instance and a call)."""
import reconcile_sdk as rs


class Noop(rs.Reconciler):
    def metadata(self):
        return rs.Metadata("noop-py", "0.1.0").reconciles(rs.CONFIG_MAP)

    def reconcile(self, request: rs.Request):
        return rs.DONE


Plugin = rs.export(Noop)
