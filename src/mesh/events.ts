import type { Link } from './linkformat.js';
import type { LinkMetrics, MeterFirmware, MeterRegistry, RegisteredMeter } from './registry.js';

/** A registration as flows and logs see it: plain, JSON-safe data. */
export interface MeterSnapshot {
  id: string;
  endpoint: string;
  sector?: string;
  address: { address: string; port: number };
  base?: string;
  resources: Link[];
  registeredAt: number;
  lastSeen: number;
  expiresAt: number;
  lifetimeSeconds: number;
  metrics: LinkMetrics;
  firmware: MeterFirmware;
  tags: Record<string, string>;
}

/**
 * What happened in the registry, in the words field engineers use: a meter
 * joined, updated its registration, expired (its lifetime ran out), was
 * removed (it deregistered), or was replaced (it registered again; a
 * 'joined' follows).
 */
export interface MeshRegistryEvent {
  event: 'joined' | 'updated' | 'expired' | 'removed' | 'replaced';
  meter: MeterSnapshot;
}

export function meterSnapshot(meter: RegisteredMeter): MeterSnapshot {
  return {
    id: meter.id,
    endpoint: meter.endpoint,
    ...(meter.sector !== undefined ? { sector: meter.sector } : {}),
    address: { address: meter.address.address, port: meter.address.port },
    ...(meter.base !== undefined ? { base: meter.base } : {}),
    resources: meter.resources.map((link) => ({ target: link.target, attributes: { ...link.attributes } })),
    registeredAt: meter.registeredAt,
    lastSeen: meter.lastSeen,
    expiresAt: meter.expiresAt,
    lifetimeSeconds: meter.lifetimeSeconds,
    metrics: { ...meter.metrics },
    firmware: { ...meter.firmware },
    // The registry keeps tags in a null-prototype object; flows get an ordinary one.
    tags: Object.fromEntries(Object.entries(meter.tags)),
  };
}

/** Calls `listener` for every registry event until the returned function is called. */
export function onRegistryEvents(registry: MeterRegistry, listener: (event: MeshRegistryEvent) => void): () => void {
  const joined = (meter: RegisteredMeter): void => listener({ event: 'joined', meter: meterSnapshot(meter) });
  const updated = (meter: RegisteredMeter): void => listener({ event: 'updated', meter: meterSnapshot(meter) });
  const removed = (meter: RegisteredMeter, reason: 'deleted' | 'expired' | 'replaced'): void =>
    listener({ event: reason === 'deleted' ? 'removed' : reason, meter: meterSnapshot(meter) });
  registry.on('joined', joined);
  registry.on('updated', updated);
  registry.on('removed', removed);
  return () => {
    registry.off('joined', joined);
    registry.off('updated', updated);
    registry.off('removed', removed);
  };
}
