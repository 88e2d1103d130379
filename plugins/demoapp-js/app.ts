// demoapp-js: the TypeScript twin of plugins/demoapp.
//
// Reconciles a DemoApp (demo.reconcile.dev/v1alpha1) into a Deployment and
// a Service it owns, and reports readiness in its status
// (observedGeneration, readyReplicas, a Ready condition). Events are
// recorded when readiness changes and when an apply changed the
// Deployment. The host manages the demo.reconcile.dev/cleanup finalizer.
// The demo.reconcile.dev/simulate annotation makes a reconcile fail
// (error), trap (panic) or requeue in 30 s (requeue).
import * as rs from '../../guest-sdk/js/src/index.ts';
import type { Obj } from '../../guest-sdk/js/src/index.ts';

const NAME = 'demoapp-js';
const SIMULATE = 'demo.reconcile.dev/simulate';
const DEMOAPP = rs.resource('demo.reconcile.dev', 'v1alpha1', 'DemoApp', 'demoapps');

export function render(app: Obj): [Obj, Obj] {
  const { name, namespace } = app.metadata;
  const port = app.spec.port ?? 8080;
  const ownerReferences = [rs.ownerReference(app)];
  const labels = { 'app.kubernetes.io/name': name, 'app.kubernetes.io/managed-by': NAME };
  const deployment = {
    metadata: { name, namespace, labels, ownerReferences },
    spec: {
      replicas: app.spec.replicas ?? 1,
      selector: { matchLabels: labels },
      template: {
        metadata: { labels },
        spec: { containers: [{ name: 'app', image: app.spec.image, ports: [{ containerPort: port }] }] },
      },
    },
  };
  const service = {
    metadata: { name, namespace, labels, ownerReferences },
    spec: { selector: labels, ports: [{ port, targetPort: port }] },
  };
  return [deployment, service];
}

export const plugin = rs.exportPlugin({
  metadata: () =>
    rs
      .metadata(NAME, '0.1.0')
      .reconciles(DEMOAPP)
      .owns(rs.DEPLOYMENT)
      .owns(rs.SERVICE)
      .access(DEMOAPP, ['patch'])
      .access(rs.DEPLOYMENT, ['patch'])
      .access(rs.SERVICE, ['patch'])
      .recordsEvents()
      .finalizer('demo.reconcile.dev/cleanup')
      .build(),

  reconcile(request) {
    const app = request.object();
    if (app === undefined) {
      rs.debug('DemoApp is gone', { name: request.name });
      return rs.DONE;
    }
    const meta = app.metadata;
    const namespace: string = meta.namespace || 'default';
    if (request.reason === 'deleting') {
      rs.info('DemoApp deleted; its Deployment and Service follow through owner references');
      return rs.DONE;
    }
    const simulate: string | undefined = meta.annotations?.[SIMULATE];
    if (simulate === 'error') {
      throw new rs.PluginError(
        `simulated failure (${SIMULATE}=error): remove the annotation to stop it`,
      );
    }
    if (simulate === 'panic') {
      throw new Error(`simulated panic (${SIMULATE}=panic)`);
    }
    app.spec ??= {};
    const image = String(app.spec.image ?? '').trim();
    const replicas: number = app.spec.replicas ?? 1;
    if (!image) throw rs.PluginError.permanent('spec.image is empty: set the container image');
    if (!(replicas >= 0 && replicas <= 1000)) {
      throw rs.PluginError.permanent(`spec.replicas is ${replicas}: it must be between 0 and 1000`);
    }
    rs.setAttribute('demoapp.replicas', replicas);
    const [deployment, service] = rs.span('render', () => render(app));
    const deployments = new rs.Api(rs.DEPLOYMENT, namespace);
    const before = deployments.getOpt(meta.name)?.metadata?.generation;
    const applied = deployments.apply(deployment);
    new rs.Api(rs.SERVICE, namespace).apply(service);
    if (applied.metadata.generation !== before) {
      rs.recordEvent(applied, NAME, 'Normal', 'Applied', 'Apply', `applied ${replicas} replicas of ${image}`);
    }

    const ready: number = deployments.getOpt(meta.name)?.status?.readyReplicas ?? 0;
    const isReady = ready >= replicas;
    const conditions: Obj[] = [...(app.status?.conditions ?? [])];
    const reason = isReady ? 'Available' : 'Progressing';
    const message = `${ready}/${replicas} replicas are ready`;
    const changed = rs.setCondition(
      conditions,
      rs.condition('Ready', isReady, reason, message, meta.generation),
    );
    new rs.Api(DEMOAPP, namespace).patchStatus(meta.name, {
      status: { observedGeneration: meta.generation, readyReplicas: ready, conditions },
    });
    if (changed) {
      rs.recordEvent(app, NAME, isReady ? 'Normal' : 'Warning', reason, 'Reconcile', message);
      rs.event('ready changed', { ready: isReady });
    }
    rs.info('reconciled DemoApp', { image, replicas, ready });
    return simulate === 'requeue' ? rs.requeueAfter(30) : rs.DONE;
  },
});
