import type { Node, NodeAPI, NodeDef, NodeMessageInFlow } from 'node-red';
import {
  MESH_METHODS,
  MeshRequestError,
  REQUEST_PRIORITIES,
  type MeshMethod,
  type MeshResponse,
  type Observation,
  type RequestPriority,
} from '../../src/coap/client/index.js';
import { decodeResponsePayload, encodeRequestPayload, resolveMeter } from '../../src/mesh/target.js';
import type { MeshEndpointNode } from '../shared/types.js';

interface MeshRequestDef extends NodeDef {
  endpoint: string;
  method: MeshMethod | 'msg';
  path: string;
  priority: RequestPriority | 'msg';
  /** '' means: from the payload's type. */
  contentFormat: string;
  output: 'decoded' | 'buffer';
}

interface RequestMessage extends NodeMessageInFlow {
  meter?: unknown;
  sector?: unknown;
  peer?: unknown;
  method?: unknown;
  path?: unknown;
  query?: unknown;
  priority?: unknown;
  contentFormat?: unknown;
  observe?: unknown;
}

const METHODS: ReadonlySet<string> = new Set(MESH_METHODS);
const PRIORITIES: ReadonlySet<string> = new Set(REQUEST_PRIORITIES);

/** What the flow sees of a response, besides the decoded payload. */
function coapDetails(response: MeshResponse): Record<string, unknown> {
  return {
    code: response.code,
    ...(response.contentFormat !== undefined ? { contentFormat: response.contentFormat } : {}),
    ...(response.maxAge !== undefined ? { maxAge: response.maxAge } : {}),
    ...(response.etag ? { etag: response.etag.toString('hex') } : {}),
    ...(response.location !== undefined ? { location: response.location } : {}),
    ...(response.observe !== undefined ? { observe: response.observe } : {}),
    exchanges: response.exchanges,
    retransmissions: response.retransmissions,
    elapsedMs: response.elapsedMs,
  };
}

export = function register(RED: NodeAPI): void {
  function AmiMeshRequest(this: Node, def: MeshRequestDef): void {
    RED.nodes.createNode(this, def);
    const node = this;
    const endpoint = RED.nodes.getNode(def.endpoint) as MeshEndpointNode | null;
    if (!endpoint) {
      node.status({ fill: 'red', shape: 'ring', text: 'ami-mesh-request.status.no-endpoint' });
      node.error(RED._('ami-mesh-request.errors.no-endpoint'));
      return;
    }
    endpoint.register(node, {});
    const observations = new Map<string, Observation>();
    /** Observations whose registration is on its way, and whether a stop came for them meanwhile. */
    const registering = new Map<string, { stop: boolean }>();
    let inFlight = 0;
    let failed = 0;
    let lastError: string | undefined;
    let statusTimer: NodeJS.Timeout | undefined;
    let closed = false;
    const defaultFormat = def.contentFormat === '' || def.contentFormat === undefined ? undefined : Number(def.contentFormat);

    // Many requests at once would redraw the status for each; a few times a second is enough.
    function showStatus(): void {
      // After close, requests failing with CLOSED and observations ending must not start the timer again.
      if (statusTimer || closed) return;
      statusTimer = setTimeout(() => {
        statusTimer = undefined;
        const text = RED._('ami-mesh-request.status.counts', { inFlight, observing: observations.size, failed });
        node.status({ fill: lastError ? 'red' : inFlight > 0 || observations.size > 0 ? 'blue' : 'green', shape: 'dot', text: lastError ? `${lastError} · ${text}` : text });
      }, 200);
    }

    node.on('input', (incoming, send, done) => {
      const msg = incoming as RequestMessage;
      const fail = (err: unknown): void => {
        const code = err instanceof MeshRequestError ? err.code : 'INTERNAL';
        failed += 1;
        lastError = code;
        showStatus();
        const error = new Error(`${code}: ${(err as Error).message}`);
        Object.assign(error, { code });
        done(error);
      };
      let method: MeshMethod;
      let priority: RequestPriority;
      let path: string;
      let target: ReturnType<typeof resolveMeter>;
      let body: ReturnType<typeof encodeRequestPayload>;
      try {
        const methodName = def.method === 'msg' || def.method === undefined ? msg.method : def.method;
        if (typeof methodName !== 'string' || !METHODS.has(methodName)) throw new MeshRequestError('BAD_REQUEST', `msg.method must be one of ${[...METHODS].join(', ')}`);
        method = methodName as MeshMethod;
        const priorityName = def.priority === 'msg' ? (msg.priority ?? 'metrology') : (def.priority ?? 'metrology');
        if (typeof priorityName !== 'string' || !PRIORITIES.has(priorityName)) throw new MeshRequestError('BAD_REQUEST', 'msg.priority must be control or metrology');
        priority = priorityName as RequestPriority;
        const pathValue = typeof msg.path === 'string' && msg.path !== '' ? msg.path : def.path;
        if (typeof pathValue !== 'string' || !pathValue.startsWith('/')) throw new MeshRequestError('BAD_REQUEST', 'no path: set the node\'s path or msg.path (starting with /)');
        target = resolveMeter(msg, endpoint.meterRegistry());
        path = `${target.pathPrefix}${pathValue}`;
        const formatSetting = msg.contentFormat ?? defaultFormat;
        if (formatSetting !== undefined && (typeof formatSetting !== 'number' || !Number.isInteger(formatSetting) || formatSetting < 0 || formatSetting > 65535)) {
          throw new MeshRequestError('BAD_REQUEST', 'msg.contentFormat must be a Content-Format number');
        }
        body = method === 'GET' || method === 'DELETE' ? { bytes: undefined, contentFormat: undefined } : encodeRequestPayload(msg.payload, formatSetting);
      } catch (err) {
        fail(err);
        return;
      }
      const query = typeof msg.query === 'string' || (Array.isArray(msg.query) && msg.query.every((q) => typeof q === 'string')) ? (msg.query as string | string[]) : undefined;
      const meterName = target.meter?.endpoint ?? (typeof msg.meter === 'string' ? msg.meter : undefined);
      const observationKey = `${meterName ?? `${target.peer.address}|${target.peer.port}`}${path}`;
      /** The response as a message: `msg` itself for a single response, a copy per notification. */
      const output = (response: MeshResponse, copy: boolean): NodeMessageInFlow => {
        const decoded = def.output === 'buffer' ? { value: response.payload } : decodeResponsePayload(response.payload, response.contentFormat);
        const out = (copy ? RED.util.cloneMessage(msg) : msg) as RequestMessage & Record<string, unknown>;
        out.payload = decoded.value;
        out.coap = { ...coapDetails(response), ...(decoded.decodeError ? { decodeError: decoded.decodeError } : {}) };
        out.peer = response.peer;
        if (meterName !== undefined) out.meter = meterName;
        return out;
      };

      if (msg.observe === false) {
        const pending = registering.get(observationKey);
        if (pending) pending.stop = true;
        const observation = observations.get(observationKey);
        observations.delete(observationKey);
        showStatus();
        (observation ? observation.cancel() : Promise.resolve()).then(() => done(), fail);
        return;
      }
      endpoint
        .meshClient()
        .then(async (client) => {
          inFlight += 1;
          showStatus();
          try {
            if (msg.observe === true) {
              if (method !== 'GET') throw new MeshRequestError('BAD_REQUEST', 'only GET can observe (RFC 7641)');
              if (observations.has(observationKey) || registering.has(observationKey)) {
                throw new MeshRequestError('BAD_REQUEST', `already observing ${observationKey}; send msg.observe = false first`);
              }
              const pending = { stop: false };
              registering.set(observationKey, pending);
              let observation: Observation;
              try {
                observation = await client.observe(
                  { peer: target.peer, path, priority, ...(query ? { query } : {}) },
                  (notification) => send(output(notification, true)),
                );
              } finally {
                registering.delete(observationKey);
              }
              // Told to stop (or redeployed) while the meter was answering the registration.
              if (pending.stop || closed) await observation.cancel();
              if (observation.active) {
                observations.set(observationKey, observation);
                observation.once('end', (reason) => {
                  if (observations.get(observationKey) === observation) observations.delete(observationKey);
                  if (reason) {
                    lastError = reason.code;
                    node.error(`${reason.code}: observation of ${observationKey} ended: ${reason.message}`, msg);
                  }
                  showStatus();
                });
              }
            } else {
              const response = await client.request({
                peer: target.peer,
                method,
                path,
                priority,
                ...(query ? { query } : {}),
                ...(body.bytes ? { payload: body.bytes } : {}),
                ...(body.contentFormat !== undefined && body.bytes ? { contentFormat: body.contentFormat } : {}),
              });
              send(output(response, false));
            }
            lastError = undefined;
            done();
          } finally {
            inFlight -= 1;
            showStatus();
          }
        })
        .catch(fail);
    });

    node.on('close', (done: () => void) => {
      closed = true;
      clearTimeout(statusTimer);
      const cancels = [...observations.values()].map((o) => o.cancel());
      observations.clear();
      Promise.allSettled(cancels)
        .then(() => endpoint.deregister(node))
        .then(
          () => done(),
          (err: Error) => {
            node.error(err.message);
            done();
          },
        );
    });
  }
  RED.nodes.registerType('ami-mesh-request', AmiMeshRequest);
};
