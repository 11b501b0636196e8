import { MeshRequestError } from './errors.js';
import { Fifo } from './fifo.js';

/**
 * Two priority classes: control traffic (relay commands) goes ahead of
 * metrology reads and firmware blocks, at every meter and gateway-wide.
 */
export type RequestPriority = 'control' | 'metrology';
export const REQUEST_PRIORITIES: readonly RequestPriority[] = ['control', 'metrology'];

export interface SchedulerOptions {
  /** Outstanding interactions per meter (NSTART). */
  nstart: number;
  /** Outstanding interactions across all meters: the gateway's radio and CPU budget. */
  maxConcurrent: number;
  /** Requests allowed to wait for a slot; beyond this a request fails at once with QUEUE_FULL. */
  maxQueued: number;
}

/** Held while one message exchange is outstanding; release it exactly once. */
export interface ExchangeSlot {
  release(): void;
}

/** Waits in its peer's queue until granted, failed (close) or aborted; either way it leaves the queue. */
interface Waiter {
  grant: (slot: ExchangeSlot) => void;
  fail: (err: Error) => void;
}

interface PeerState {
  key: string;
  active: number;
  queues: [Waiter[], Waiter[]];
  /** Whether the peer sits in the ready list of each priority (avoids duplicates there). */
  ready: [boolean, boolean];
}

/**
 * Congestion control for requests to meters, which the `coap` library lacks:
 * at most `nstart` outstanding exchanges per meter (RFC 7252 section 4.7),
 * at most `maxConcurrent` across the gateway, and control before metrology.
 *
 * Each peer keeps one FIFO per priority; a peer with a free slot and waiting
 * requests sits in the ready list of that priority. Granting takes from the
 * control list first, so a relay command waits only for slots to free up,
 * never behind queued reads. Within a class, meters take turns in the order
 * they became ready, so one meter with a long queue cannot starve the rest.
 * (Continuous control traffic could starve metrology; control is rare.)
 */
export class ExchangeScheduler {
  private readonly peers = new Map<string, PeerState>();
  private readonly readyLists: [Fifo<PeerState>, Fifo<PeerState>] = [new Fifo(), new Fifo()];
  private active = 0;
  private queued = 0;
  private closedWith: Error | undefined;

  constructor(private readonly options: SchedulerOptions) {}

  get inFlight(): number {
    return this.active;
  }

  get waiting(): number {
    return this.queued;
  }

  /** Resolves with a slot for `peer` once NSTART and the gateway-wide cap allow. */
  acquire(peer: string, priority: RequestPriority, signal?: AbortSignal): Promise<ExchangeSlot> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    if (signal?.aborted) return Promise.reject(new MeshRequestError('ABORTED', 'request aborted before it was sent'));
    const level = REQUEST_PRIORITIES.indexOf(priority);
    if (level < 0) return Promise.reject(new MeshRequestError('BAD_REQUEST', `unknown priority ${String(priority)}`));
    const state = this.peer(peer);
    // Fast path: nothing queued anywhere for this class and a slot is free.
    if (state.active < this.options.nstart && this.active < this.options.maxConcurrent && this.nothingAhead(state, level)) {
      return Promise.resolve(this.grantTo(state));
    }
    if (this.queued >= this.options.maxQueued) {
      this.forgetIfIdle(state);
      return Promise.reject(new MeshRequestError('QUEUE_FULL', `${this.queued} requests already wait for the mesh; try again later`));
    }
    return new Promise<ExchangeSlot>((resolve, reject) => {
      // Runs only while the waiter is queued: granting and failing remove it.
      const onAbort = (): void => {
        this.queued -= 1;
        const queue = state.queues[level as 0 | 1];
        const at = queue.indexOf(waiter);
        if (at >= 0) queue.splice(at, 1);
        this.forgetIfIdle(state);
        reject(new MeshRequestError('ABORTED', 'request aborted while waiting for the meter'));
      };
      const waiter: Waiter = {
        grant: (slot) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(slot);
        },
        fail: (err) => {
          signal?.removeEventListener('abort', onAbort);
          reject(err);
        },
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      state.queues[level as 0 | 1].push(waiter);
      this.queued += 1;
      this.markReady(state);
      this.pump();
    });
  }

  /** Fails every waiting request with `reason`; later acquires fail the same way. */
  close(reason: Error): void {
    this.closedWith = reason;
    for (const state of this.peers.values()) {
      for (const queue of state.queues) {
        for (const waiter of queue.splice(0)) {
          this.queued -= 1;
          waiter.fail(reason);
        }
      }
    }
  }

  private nothingAhead(state: PeerState, level: number): boolean {
    for (let p = 0; p <= level; p += 1) {
      if (this.readyLists[p as 0 | 1].length > 0 || state.queues[p as 0 | 1].length > 0) return false;
    }
    return true;
  }

  private peer(key: string): PeerState {
    let state = this.peers.get(key);
    if (!state) {
      state = { key, active: 0, queues: [[], []], ready: [false, false] };
      this.peers.set(key, state);
    }
    return state;
  }

  private grantTo(state: PeerState): ExchangeSlot {
    state.active += 1;
    this.active += 1;
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        state.active -= 1;
        this.active -= 1;
        this.markReady(state);
        this.forgetIfIdle(state);
        this.pump();
      },
    };
  }

  private markReady(state: PeerState): void {
    if (state.active >= this.options.nstart) return;
    for (let p = 0; p < 2; p += 1) {
      const level = p as 0 | 1;
      if (!state.ready[level] && state.queues[level].length > 0) {
        state.ready[level] = true;
        this.readyLists[level].push(state);
      }
    }
  }

  private forgetIfIdle(state: PeerState): void {
    if (state.active === 0 && state.queues[0].length === 0 && state.queues[1].length === 0 && !state.ready[0] && !state.ready[1]) {
      this.peers.delete(state.key);
    }
  }

  private pump(): void {
    while (this.active < this.options.maxConcurrent) {
      const next = this.nextWaiter();
      if (!next) return;
      const [state, waiter] = next;
      this.queued -= 1;
      const slot = this.grantTo(state);
      this.markReady(state);
      waiter.grant(slot);
    }
  }

  private nextWaiter(): [PeerState, Waiter] | undefined {
    for (let p = 0; p < 2; p += 1) {
      const level = p as 0 | 1;
      const list = this.readyLists[level];
      for (let state = list.shift(); state; state = list.shift()) {
        state.ready[level] = false;
        if (state.active >= this.options.nstart) continue;
        const queue = state.queues[level];
        const waiter = queue.shift();
        if (!waiter) {
          this.forgetIfIdle(state);
          continue;
        }
        return [state, waiter];
      }
    }
    return undefined;
  }
}
