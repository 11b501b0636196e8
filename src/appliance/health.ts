import { packageVersion } from './package-info.js';
import type { GrayFailure, SiteState } from '../hes/sites.js';
import type { BackhaulSnapshot } from '../backhaul/monitor.js';

/**
 * Process-wide health counters, fed by the nodes and read by `GET /ami/health`
 * and `ami-gateway status`. One registry per process: Node-RED runs all flows
 * in one process, and the counters describe that process.
 */
export interface HealthSnapshot {
  status: 'ok' | 'degraded';
  /** Why the status is not ok, when it is not. */
  problems: string[];
  meshReceived: number;
  meshRejected: number;
  meshDeferred: number;
  /** Datagrams from sources outside the allowed mesh prefixes, dropped unanswered. */
  meshDropped: number;
  /** Requests from sources no registered meter has, dropped unanswered ("registered meters only"). */
  meshDroppedUnregistered: number;
  /** Retransmitted copies of requests, answered without being processed again. */
  meshDuplicates: number;
  /** Datagrams that are not well-formed CoAP. */
  meshMalformed: number;
  hesDelivered: number;
  hesFailed: number;
  dlmsDecoded: number;
  dlmsFailed: number;
  micFailures: number;
  replaysRefused: number;
  /** The keyring's state, when one is deployed: counts and fingerprint, never keys. */
  keys: KeysHealth | null;
  /** Records accepted from the mesh and not yet confirmed by the HES. */
  outboxDepth: number;
  /** The HES endpoint records go to now, or null when none is configured. */
  hesEndpoint: string | null;
  /** State of that site (healthy, gray, down, unknown), null when none is configured. */
  hesActiveState: SiteState | null;
  /** Switches away from a failing HES site, and back to a preferred one after the hold, since start. */
  hesFailovers: number;
  hesFailbacks: number;
  /** The latest gray failure (a site answering probes but not batches within the budget), null when none. */
  hesLastGrayFailure: GrayFailure | null;
  /** Records the HES refused on their own, moved to the outbox's dead letters, since start. */
  hesQuarantined: number;
  /** The backhaul (OpenVPN) as its monitor sees it, null when nothing watches it. */
  backhaul: BackhaulSnapshot | null;
  uptimeSeconds: number;
  version: string;
}

/** What one HES uplink reports of its sites (HesSites.status() has it). */
export interface HesSitesHealth {
  activeState: SiteState;
  failovers: number;
  failbacks: number;
  lastGrayFailure: GrayFailure | null;
}

export interface KeysHealth {
  meters: number;
  epoch: number;
  fingerprint: string;
  outOfSync: number;
  lastSync: string | null;
}

export type Counter =
  | 'meshReceived'
  | 'meshRejected'
  | 'meshDeferred'
  | 'meshDropped'
  | 'meshDroppedUnregistered'
  | 'meshDuplicates'
  | 'meshMalformed'
  | 'hesDelivered'
  | 'hesFailed'
  | 'hesQuarantined'
  | 'dlmsDecoded'
  | 'dlmsFailed'
  | 'micFailures'
  | 'replaysRefused';

export class HealthRegistry {
  private readonly counters: Record<Counter, number> = {
    meshReceived: 0,
    meshRejected: 0,
    meshDeferred: 0,
    meshDropped: 0,
    meshDroppedUnregistered: 0,
    meshDuplicates: 0,
    meshMalformed: 0,
    hesDelivered: 0,
    hesFailed: 0,
    hesQuarantined: 0,
    dlmsDecoded: 0,
    dlmsFailed: 0,
    micFailures: 0,
    replaysRefused: 0,
  };
  private readonly keysSources = new Set<() => KeysHealth>();
  private readonly depthSources = new Set<() => number>();
  private readonly endpointSources = new Set<() => string | undefined>();
  private readonly hesSources = new Set<() => HesSitesHealth>();
  private readonly backhaulSources = new Set<() => BackhaulSnapshot>();
  private readonly problemSources = new Map<string, string>();
  private readonly startedAt = Date.now();

  constructor(private readonly version: string) {}

  increment(counter: Counter, by = 1): void {
    this.counters[counter] += by;
  }

  /** Registers a source of queued records; returns the function that removes it. */
  addDepthSource(source: () => number): () => void {
    this.depthSources.add(source);
    return () => this.depthSources.delete(source);
  }

  addEndpointSource(source: () => string | undefined): () => void {
    this.endpointSources.add(source);
    return () => this.endpointSources.delete(source);
  }

  /** Registers a HES uplink's site report (one per HES endpoint); returns the function that removes it. */
  addHesSource(source: () => HesSitesHealth): () => void {
    this.hesSources.add(source);
    return () => this.hesSources.delete(source);
  }

  /** Registers the backhaul monitor's snapshot (the first registered is reported); returns the remover. */
  addBackhaulSource(source: () => BackhaulSnapshot): () => void {
    this.backhaulSources.add(source);
    return () => this.backhaulSources.delete(source);
  }

  addKeysSource(source: () => KeysHealth): () => void {
    this.keysSources.add(source);
    return () => this.keysSources.delete(source);
  }

  /** Marks (or with `undefined`, clears) a problem reported by one component. */
  setProblem(component: string, problem: string | undefined): void {
    if (problem === undefined) this.problemSources.delete(component);
    else this.problemSources.set(component, problem);
  }

  /** The HES sites of every endpoint: counters summed, the first endpoint's active site, the latest gray failure. */
  private hesHealth(): Pick<HealthSnapshot, 'hesActiveState' | 'hesFailovers' | 'hesFailbacks' | 'hesLastGrayFailure'> {
    let hesActiveState: SiteState | null = null;
    let hesFailovers = 0;
    let hesFailbacks = 0;
    let hesLastGrayFailure: GrayFailure | null = null;
    for (const source of this.hesSources) {
      const report = source();
      hesActiveState ??= report.activeState;
      hesFailovers += report.failovers;
      hesFailbacks += report.failbacks;
      if (report.lastGrayFailure && (!hesLastGrayFailure || report.lastGrayFailure.at > hesLastGrayFailure.at)) hesLastGrayFailure = report.lastGrayFailure;
    }
    return { hesActiveState, hesFailovers, hesFailbacks, hesLastGrayFailure };
  }

  snapshot(): HealthSnapshot {
    let outboxDepth = 0;
    for (const source of this.depthSources) outboxDepth += source();
    let hesEndpoint: string | null = null;
    for (const source of this.endpointSources) {
      const endpoint = source();
      if (endpoint) {
        hesEndpoint = endpoint;
        break;
      }
    }
    let keys: KeysHealth | null = null;
    for (const source of this.keysSources) {
      keys = source();
      break;
    }
    const hes = this.hesHealth();
    const problems = [...this.problemSources.entries()].map(([component, problem]) => `${component}: ${problem}`);
    return {
      status: problems.length === 0 ? 'ok' : 'degraded',
      problems,
      ...this.counters,
      keys,
      outboxDepth,
      hesEndpoint,
      ...hes,
      backhaul: this.backhaulSources.values().next().value?.() ?? null,
      uptimeSeconds: Math.round((Date.now() - this.startedAt) / 1000),
      version: this.version,
    };
  }
}

export const gatewayHealth = new HealthRegistry(packageVersion());
