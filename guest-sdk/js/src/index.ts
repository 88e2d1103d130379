// The JavaScript/TypeScript SDK for reconcile-host plugins (contract
// reconcile:plugin@0.2.0), the same shape as the Rust `reconcile-sdk` and
// the Python `reconcile_sdk`:
//
//   import * as rs from '../../guest-sdk/js/src/index.ts';
//   export const plugin = rs.exportPlugin({
//     metadata: () => rs.metadata('labeler', '0.1.0').reconciles(rs.CONFIG_MAP).build(),
//     reconcile(request) { ...; return rs.DONE; },
//   });
//
// Built with `jco componentize app.ts --wit wit/0.2.0 --world-name reconciler`
// (`cargo xtask plugins` does it). The types of the contract come from
// `npm run types` (`jco guest-types`), into `types/`.
//
// Errors: throw `PluginError` (or `PluginError.permanent`) to fail a
// reconcile; a failed Kubernetes call throws one of kind `k8s` (with the
// call's error in `k8s`). Anything else thrown traps the instance, as a
// panic does in Rust: the host records `error.type=trap` and retries.

import * as k8s from 'reconcile:plugin/k8s@0.2.0';
import { log as hostLog, enabled as hostEnabled } from 'reconcile:plugin/log@0.2.0';
import * as trace from 'reconcile:plugin/trace@0.2.0';
import type * as PluginExports from 'reconcile:plugin/plugin@0.2.0';
import type {
  Action,
  PluginMetadata,
  ReconcileError,
  ReconcileRequest,
  ResourceType,
  Value,
  Verb,
} from 'reconcile:plugin/types@0.2.0';

export type { Action, PluginMetadata, ReconcileRequest, ResourceType, Verb };

// ---- resource types --------------------------------------------------------

export function resource(
  group: string,
  version: string,
  kind: string,
  plural: string,
  namespaced = true,
): ResourceType {
  return { group, version, kind, plural, namespaced };
}

export const DEPLOYMENT = resource('apps', 'v1', 'Deployment', 'deployments');
export const SERVICE = resource('', 'v1', 'Service', 'services');
export const CONFIG_MAP = resource('', 'v1', 'ConfigMap', 'configmaps');
export const SECRET = resource('', 'v1', 'Secret', 'secrets');
export const EVENT = resource('events.k8s.io', 'v1', 'Event', 'events');

const WATCH: Verb[] = ['get', 'list', 'watch'];

export function apiVersion(rt: ResourceType): string {
  return rt.group ? `${rt.group}/${rt.version}` : rt.version;
}

// ---- metadata --------------------------------------------------------------

/** A builder, as in the Rust SDK: `metadata('web', '1.0.0').reconciles(T).owns(U).access(U, ['patch'])`. */
export class Metadata {
  private primary?: ResourceType;
  private readonly owned: ResourceType[] = [];
  private readonly verbs = new Map<string, [ResourceType, Set<Verb>]>();
  private readonly hosts: string[] = [];
  private finalizerName?: string;
  private selector?: string;
  private manager?: string;

  constructor(
    private readonly name: string,
    private readonly version: string,
  ) {}

  access(rt: ResourceType, verbs: Verb[]): this {
    const key = `${rt.group}/${rt.version}/${rt.kind}`;
    const entry = this.verbs.get(key) ?? [rt, new Set<Verb>()];
    verbs.forEach((v) => entry[1].add(v));
    this.verbs.set(key, entry);
    return this;
  }

  reconciles(rt: ResourceType): this {
    this.primary = rt;
    return this.access(rt, WATCH);
  }

  owns(rt: ResourceType): this {
    this.owned.push(rt);
    return this.access(rt, WATCH);
  }

  recordsEvents(): this {
    return this.access(EVENT, ['get', 'create', 'patch', 'delete']);
  }

  httpHost(endpoint: string): this {
    this.hosts.push(endpoint);
    return this;
  }

  finalizer(name: string): this {
    this.finalizerName = name;
    return this;
  }

  primarySelector(selector: string): this {
    this.selector = selector;
    return this;
  }

  fieldManager(manager: string): this {
    this.manager = manager;
    return this;
  }

  build(): PluginMetadata {
    const order: Verb[] = ['get', 'list', 'watch', 'create', 'update', 'patch', 'delete'];
    return {
      name: this.name,
      version: this.version,
      primary: this.primary ?? resource('', '', '', '', false),
      owns: [...this.owned],
      access: {
        resources: [...this.verbs.values()].map(([rt, verbs]) => ({
          resource: rt,
          verbs: order.filter((v) => verbs.has(v)),
        })),
        httpHosts: [...this.hosts],
      },
      finalizer: this.finalizerName,
      primarySelector: this.selector,
      fieldManager: this.manager,
    };
  }
}

export function metadata(name: string, version: string): Metadata {
  return new Metadata(name, version);
}

// ---- errors ----------------------------------------------------------------

/** A failed reconcile: retried with backoff unless permanent. */
export class PluginError extends Error {
  /** What the host receives (read by the bindings). */
  readonly payload: ReconcileError;

  constructor(message: string, retry = true, kind: ReconcileError['kind'] = 'plugin') {
    super(message);
    this.payload = { message, retry, kind };
  }

  /** An error that retrying cannot fix until the object changes. */
  static permanent(message: string): PluginError {
    return new PluginError(message, false);
  }
}

const K8S_NAMES: Record<k8s.Error['tag'], string> = {
  'not-found': 'not found',
  conflict: 'conflict',
  forbidden: 'forbidden',
  invalid: 'invalid',
  unavailable: 'unavailable',
  other: 'error',
};

/** A failed Kubernetes call (a `PluginError` of kind `k8s`, retried with backoff). */
export class K8sError extends PluginError {
  constructor(readonly k8s: k8s.Error) {
    const s = k8s.val;
    super(`${K8S_NAMES[k8s.tag]} (${s.code} ${s.reason}): ${s.message}`, true, 'k8s');
  }

  get notFound(): boolean {
    return this.k8s.tag === 'not-found';
  }

  get conflict(): boolean {
    return this.k8s.tag === 'conflict';
  }
}

function call<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    const payload = (e as { payload?: k8s.Error } | undefined)?.payload;
    if (payload && typeof payload === 'object' && 'tag' in payload && payload.tag in K8S_NAMES) {
      throw new K8sError(payload);
    }
    throw e;
  }
}

// ---- the Kubernetes API ----------------------------------------------------

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Obj = Record<string, any>;
export type PatchBody = Obj | { json: Obj[] };

function patchBody(patch: PatchBody): k8s.PatchBody {
  if (Array.isArray((patch as { json?: unknown }).json)) {
    return { tag: 'json', val: JSON.stringify((patch as { json: Obj[] }).json) };
  }
  return { tag: 'merge', val: JSON.stringify(patch) };
}

export interface ListOptions {
  labelSelector?: string;
  fieldSelector?: string;
  limit?: number;
  continue?: string;
}

/** One resource type in one namespace (or cluster-wide): objects are plain JSON. */
export class Api {
  constructor(
    readonly rt: ResourceType,
    readonly namespace?: string,
  ) {}

  get(name: string): Obj {
    return JSON.parse(call(() => k8s.get(this.rt, this.namespace, name)));
  }

  /** The object, or undefined when it does not exist. */
  getOpt(name: string): Obj | undefined {
    try {
      return this.get(name);
    } catch (e) {
      if (e instanceof K8sError && e.notFound) return undefined;
      throw e;
    }
  }

  list(options: ListOptions = {}): Obj {
    const o: k8s.ListOptions = {
      labelSelector: options.labelSelector,
      fieldSelector: options.fieldSelector,
      limit: options.limit,
      continueToken: options.continue,
    };
    return JSON.parse(call(() => k8s.list(this.rt, this.namespace, o)));
  }

  create(obj: Obj): Obj {
    return JSON.parse(call(() => k8s.create(this.rt, this.namespace, JSON.stringify(obj))));
  }

  /** Server-side apply; `force` takes over conflicting fields, as a controller should. */
  apply(obj: Obj, force = true): Obj {
    const full: Obj = { apiVersion: apiVersion(this.rt), kind: this.rt.kind, ...obj };
    const name = String(full.metadata?.name ?? '');
    return JSON.parse(
      call(() => k8s.apply(this.rt, this.namespace, name, JSON.stringify(full), force)),
    );
  }

  patch(name: string, patch: PatchBody): Obj {
    return JSON.parse(call(() => k8s.patch(this.rt, this.namespace, name, patchBody(patch))));
  }

  replace(name: string, obj: Obj): Obj {
    return JSON.parse(call(() => k8s.replace(this.rt, this.namespace, name, JSON.stringify(obj))));
  }

  delete(name: string, propagation?: k8s.Propagation): Obj | undefined {
    const out = call(() => k8s.delete(this.rt, this.namespace, name, propagation));
    return out === undefined ? undefined : JSON.parse(out);
  }

  getStatus(name: string): Obj {
    return JSON.parse(call(() => k8s.getStatus(this.rt, this.namespace, name)));
  }

  patchStatus(name: string, patch: PatchBody): Obj {
    return JSON.parse(
      call(() => k8s.patchStatus(this.rt, this.namespace, name, patchBody(patch))),
    );
  }

  applyStatus(name: string, obj: Obj, force = true): Obj {
    const full = { apiVersion: apiVersion(this.rt), kind: this.rt.kind, ...obj };
    return JSON.parse(
      call(() => k8s.applyStatus(this.rt, this.namespace, name, JSON.stringify(full), force)),
    );
  }
}

/** The owner reference that makes `obj` the controller of a child. */
export function ownerReference(obj: Obj, controller = true): Obj {
  return {
    apiVersion: obj.apiVersion,
    kind: obj.kind,
    name: obj.metadata.name,
    uid: obj.metadata.uid,
    controller,
    blockOwnerDeletion: true,
  };
}

// ---- logs and traces -------------------------------------------------------

export type Field = string | number | boolean | bigint;

function value(x: Field): Value {
  if (typeof x === 'boolean') return { tag: 'boolean', val: x };
  if (typeof x === 'bigint') return { tag: 'int', val: x };
  if (typeof x === 'number') {
    return Number.isInteger(x) ? { tag: 'int', val: BigInt(x) } : { tag: 'float', val: x };
  }
  return { tag: 'string', val: String(x) };
}

function fields(f: Record<string, Field>): [string, Value][] {
  return Object.entries(f).map(([k, v]) => [k, value(v)]);
}

type Level = 'trace' | 'debug' | 'info' | 'warn' | 'error';
export const log = (level: Level, message: string, f: Record<string, Field> = {}) =>
  hostLog(level, message, fields(f));
export const enabled = (level: Level) => hostEnabled(level);
export const debug = (message: string, f: Record<string, Field> = {}) => log('debug', message, f);
export const info = (message: string, f: Record<string, Field> = {}) => log('info', message, f);
export const warn = (message: string, f: Record<string, Field> = {}) => log('warn', message, f);
export const error = (message: string, f: Record<string, Field> = {}) => log('error', message, f);

export function setAttribute(key: string, v: Field): void {
  trace.setAttribute(key, value(v));
}

/** An event on the current span. */
export function event(name: string, attributes: Record<string, Field> = {}): void {
  trace.addEvent(
    name,
    Object.entries(attributes).map(([key, v]) => ({ key, value: value(v) })),
  );
}

/** Runs `f` in a span of its own; an exception marks it failed and goes on. */
export function span<T>(name: string, f: () => T): T {
  const id = trace.startSpan(name);
  let result: T;
  try {
    result = f();
  } catch (e) {
    trace.endSpan(id, String((e as Error)?.message ?? e));
    throw e;
  }
  trace.endSpan(id, undefined);
  return result;
}

// ---- status and Events -----------------------------------------------------

const rfc3339 = (t: Date) => t.toISOString().replace(/\.\d+Z$/, 'Z');
const micro = (t: Date) => t.toISOString().replace(/Z$/, '000Z');

/** A condition with `lastTransitionTime` now. */
export function condition(
  type: string,
  status: boolean,
  reason: string,
  message: string,
  observedGeneration?: number,
): Obj {
  const c: Obj = {
    type,
    status: status ? 'True' : 'False',
    reason,
    message,
    lastTransitionTime: rfc3339(new Date()),
  };
  if (observedGeneration !== undefined) c.observedGeneration = observedGeneration;
  return c;
}

/** Sets `cond` by type, keeping `lastTransitionTime` unless the status changes; whether it changed or is new. */
export function setCondition(conditions: Obj[], cond: Obj): boolean {
  const i = conditions.findIndex((c) => c.type === cond.type);
  if (i < 0) {
    conditions.push(cond);
    return true;
  }
  const changed = conditions[i].status !== cond.status;
  if (!changed && conditions[i].lastTransitionTime) {
    cond = { ...cond, lastTransitionTime: conditions[i].lastTransitionTime };
  }
  conditions[i] = cond;
  return changed;
}

const SERIES_WINDOW_MS = 6 * 60 * 1000;

function fnv1a(parts: string[]): bigint {
  let h = 0xcbf29ce484222325n;
  const enc = new TextEncoder();
  for (const p of parts) {
    for (const b of [...enc.encode(p), 0]) {
      h ^= BigInt(b);
      h = (h * 0x100000001b3n) & 0xffffffffffffffffn;
    }
  }
  return h;
}

/**
 * Records a Kubernetes Event (events.k8s.io/v1) about `regarding`; a
 * repeat within six minutes counts on the same Event, as the Rust SDK does.
 */
export function recordEvent(
  regarding: Obj,
  controller: string,
  type: 'Normal' | 'Warning',
  reason: string,
  action: string,
  note: string,
): Obj {
  const meta = regarding.metadata ?? {};
  const namespace: string = meta.namespace || 'default';
  const name: string = meta.name ?? '';
  const identity: string = meta.uid ?? `${regarding.kind}/${namespace}/${name}`;
  const key = fnv1a([identity, controller, type, reason, action, note])
    .toString(16)
    .padStart(16, '0');
  const eventName = `${name.slice(0, 253 - 17).replace(/[-.]+$/, '')}.${key}`;
  const api = new Api(EVENT, namespace);
  const now = new Date();
  const existing = api.getOpt(eventName);
  if (existing) {
    const last = Date.parse(existing.series?.lastObservedTime ?? existing.eventTime);
    if (now.getTime() - last <= SERIES_WINDOW_MS) {
      return api.patch(eventName, {
        metadata: { resourceVersion: existing.metadata.resourceVersion },
        series: { count: (existing.series?.count ?? 1) + 1, lastObservedTime: micro(now) },
      });
    }
    try {
      api.delete(eventName);
    } catch (e) {
      if (!(e instanceof K8sError && e.notFound)) throw e;
    }
  }
  return api.create({
    apiVersion: 'events.k8s.io/v1',
    kind: 'Event',
    metadata: { name: eventName, namespace },
    eventTime: micro(now),
    reportingController: controller,
    reportingInstance: controller,
    action,
    reason,
    note,
    type,
    regarding: {
      apiVersion: regarding.apiVersion,
      kind: regarding.kind,
      name,
      namespace: meta.namespace,
      uid: meta.uid,
      resourceVersion: meta.resourceVersion,
    },
  });
}

// ---- the export ------------------------------------------------------------

export type Reason = ReconcileRequest['reason'];

/** The request, with the object decoded. */
export class Request {
  readonly name: string;
  readonly namespace?: string;
  readonly reason: Reason;
  readonly attempt: number;
  readonly generation?: number;
  private decoded?: Obj;

  constructor(readonly raw: ReconcileRequest) {
    this.name = raw.object.name;
    this.namespace = raw.object.namespace;
    this.reason = raw.reason;
    this.attempt = raw.attempt;
    this.generation = raw.generation === undefined ? undefined : Number(raw.generation);
  }

  /** The object, or undefined when it no longer exists. */
  object(): Obj | undefined {
    if (this.raw.body === undefined) return undefined;
    if (this.decoded === undefined) {
      try {
        this.decoded = JSON.parse(this.raw.body) as Obj;
      } catch (e) {
        throw PluginError.permanent(`cannot decode the object ${this.name}: ${e}`);
      }
    }
    return this.decoded;
  }
}

export const DONE: Action = { tag: 'done' };

export function requeueAfter(seconds: number): Action {
  return { tag: 'requeue-after', val: BigInt(Math.max(0, Math.round(seconds * 1000))) };
}

export interface Reconciler {
  metadata(): PluginMetadata;
  reconcile(request: Request): Action | undefined;
}

/** The `plugin` export of the component: `export const plugin = exportPlugin({...})`. */
export function exportPlugin(r: Reconciler): typeof PluginExports {
  return {
    metadata: () => r.metadata(),
    reconcile(request: ReconcileRequest): Action {
      try {
        return r.reconcile(new Request(request)) ?? DONE;
      } catch (e) {
        if (e instanceof PluginError) throw e;
        // Like a Rust panic: the instance traps, with the cause on stderr
        // (which the host logs).
        console.error(`reconcile threw: ${(e as Error)?.stack ?? e}`);
        throw e;
      }
    },
  };
}
