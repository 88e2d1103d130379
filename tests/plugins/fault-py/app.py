"""fault-py: the faults of tests/plugins/fault-* in Python, chosen by the
ConfigMap's name: `trap` raises an exception the SDK does not map (the
instance traps), `loop` never returns, `memory` allocates 1 MiB blocks until
memory runs out; any other name is reconciled (done)."""
import reconcile_sdk as rs


class Faults(rs.Reconciler):
    def metadata(self):
        return rs.Metadata("fault-py", "0.1.0").reconciles(rs.CONFIG_MAP)

    def reconcile(self, request: rs.Request):
        if request.name == "trap":
            raise RuntimeError("fault-py traps on purpose")
        if request.name == "loop":
            n = 0
            while True:
                n += 1
        if request.name == "memory":
            blocks = []
            while True:
                blocks.append(bytearray(1 << 20))
        return rs.DONE


Plugin = rs.export(Faults)
