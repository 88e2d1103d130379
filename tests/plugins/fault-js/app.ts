// fault-js: the faults of tests/plugins/fault-* in TypeScript, chosen by
// the ConfigMap's name: `trap` throws an error the SDK does not map (the
// instance traps), `loop` never returns, `memory` allocates 1 MiB blocks
// until memory runs out; any other name is reconciled (done).
import * as rs from '../../../guest-sdk/js/src/index.ts';

export const plugin = rs.exportPlugin({
  metadata: () => rs.metadata('fault-js', '0.1.0').reconciles(rs.CONFIG_MAP).build(),
  reconcile(request) {
    if (request.name === 'trap') throw new Error('fault-js traps on purpose');
    if (request.name === 'loop') {
      let n = 0;
      for (;;) n += 1;
    }
    if (request.name === 'memory') {
      const blocks: Uint8Array[] = [];
      for (;;) blocks.push(new Uint8Array(1 << 20).fill(1));
    }
    return rs.DONE;
  },
});
