// noop-js: reconciles ConfigMaps by doing nothing (the per-reconcile cost
// of a JavaScript guest: a fresh instance and a call).
import * as rs from '../../../guest-sdk/js/src/index.ts';

export const plugin = rs.exportPlugin({
  metadata: () => rs.metadata('noop-js', '0.1.0').reconciles(rs.CONFIG_MAP).build(),
  reconcile: () => rs.DONE,
});
