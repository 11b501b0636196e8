import type { IncomingMessage, OutgoingMessage } from 'coap';
import type { MeshResource } from '../coap/endpoint.js';
import { uintOption } from '../coap/options.js';
import { formatLinkFormat, LinkFormatError, parseLinkFormat, type Link } from './linkformat.js';
import { parseRegistrationQuery, RegistryError, type MeterRegistry, type RegistrationQuery, type RegistrationUpdateQuery } from './registry.js';

/**
 * The gateway's resource directory (RFC 9176) on the mesh endpoint:
 *
 *   POST   /rd?ep=NAME[&lt=S][&d=SECTOR][&base=URI][&rssi=..&snr=..&hops=..]  link-format body
 *          2.01 Created, Location-Path rd/<id>
 *   POST   /rd/<id>[?lt=S&...]   registration update (empty body, or new links)   2.04 Changed
 *   DELETE /rd/<id>              removal                                          2.02 Deleted
 *   GET    /rd/<id>              the registration's links                         2.05 Content
 *
 * Admission control spreads a reconnect storm: at most `maxInFlight`
 * registrations are being written at once; beyond that the meter gets 5.03
 * with a jittered Max-Age and registers again later (it keeps trying, as
 * RFC 9176 endpoints do), so nothing is lost and memory stays bounded.
 */
export const RD_PATH = '/rd';
const CONTENT_FORMAT_LINK_FORMAT = 40;

export interface RdOptions {
  maxInFlight: number;
  /** Base Max-Age for a meter told to come back; jittered up to twice as long. */
  retryAfterSeconds: number;
}

export interface RdCounters {
  registered: number;
  updated: number;
  removed: number;
  refused: number;
  deferred: number;
}

export class ResourceDirectory implements MeshResource {
  private inFlight = 0;
  readonly counters: RdCounters = { registered: 0, updated: 0, removed: 0, refused: 0, deferred: 0 };

  constructor(
    private readonly registry: MeterRegistry,
    private readonly options: RdOptions,
  ) {}

  /** True when the path belongs to the directory. */
  static handles(path: string): boolean {
    return path === RD_PATH || path.startsWith(`${RD_PATH}/`);
  }

  /** The directory is itself a mesh endpoint resource: `endpoint.addResource(directory)`. */
  matches(path: string): boolean {
    return ResourceDirectory.handles(path);
  }

  handle(req: IncomingMessage, res: OutgoingMessage, path: string, query: string): void {
    const peer = { address: req.rsinfo.address, port: req.rsinfo.port };
    const id = path === RD_PATH ? undefined : path.slice(RD_PATH.length + 1);
    if (id !== undefined && !/^[A-Za-z0-9_-]{1,64}$/.test(id)) return this.answer(res, '4.04', 'no such registration');
    if (req.method === 'GET') {
      const meter = id ? this.registry.get(id) : undefined;
      if (!meter) return this.answer(res, '4.04', 'no such registration');
      res.setOption('Content-Format', CONTENT_FORMAT_LINK_FORMAT as never);
      res.end(formatLinkFormat(meter.resources));
      return;
    }
    if (req.method === 'DELETE') {
      if (!id) return this.answer(res, '4.05', 'DELETE /rd/<id>');
      this.admit(res, async () => {
        await this.registry.remove(id);
        this.counters.removed += 1;
        res.code = '2.02';
        res.end();
      });
      return;
    }
    if (req.method !== 'POST') return this.answer(res, '4.05', `${req.method} not allowed on ${path}`);
    const format = uintOption(req, 'Content-Format');
    if (req.payload.length > 0 && format !== undefined && format !== CONTENT_FORMAT_LINK_FORMAT) {
      return this.answer(res, '4.15', 'registrations are link-format (Content-Format 40)');
    }
    let links: Link[] | undefined;
    try {
      links = req.payload.length > 0 ? parseLinkFormat(req.payload.toString('utf8')) : undefined;
    } catch (err) {
      return this.refuseMalformed(res, err);
    }
    if (id === undefined) {
      let registration: RegistrationQuery;
      try {
        registration = parseRegistrationQuery(query);
      } catch (err) {
        return this.refuseMalformed(res, err);
      }
      this.admit(res, async () => {
        const result = await this.registry.register({ ...registration, address: peer, links: links ?? [] });
        this.counters.registered += 1;
        res.code = result.created ? '2.01' : '2.04';
        // One option per path segment; the coap library wants Buffers for repeated options.
        res.setOption('Location-Path', [Buffer.from('rd'), Buffer.from(result.id)]);
        res.end();
      });
      return;
    }
    let update: RegistrationUpdateQuery;
    try {
      update = parseRegistrationQuery(query, { update: true });
    } catch (err) {
      return this.refuseMalformed(res, err);
    }
    this.admit(res, async () => {
      await this.registry.update(id, {
        ...(update.lifetimeSeconds !== undefined ? { lifetimeSeconds: update.lifetimeSeconds } : {}),
        ...(update.base !== undefined ? { base: update.base } : {}),
        ...(Object.keys(update.metrics).length > 0 ? { metrics: update.metrics } : {}),
        // A meter reports new firmware versions after an update with a registration update.
        ...(Object.keys(update.firmware).length > 0 ? { firmware: update.firmware } : {}),
        address: peer,
        ...(links ? { links } : {}),
      });
      this.counters.updated += 1;
      res.code = '2.04';
      res.end();
    });
  }

  private admit(res: OutgoingMessage, work: () => Promise<void>): void {
    if (this.inFlight >= this.options.maxInFlight) {
      this.counters.deferred += 1;
      res.code = '5.03';
      // Jitter spreads the next wave of a reconnect storm.
      res.setOption('Max-Age', Math.round(this.options.retryAfterSeconds * (1 + Math.random())));
      res.end();
      return;
    }
    this.inFlight += 1;
    work()
      .catch((err: unknown) => {
        if (err instanceof RegistryError) {
          const code = err.code === 'NOT_FOUND' ? '4.04' : err.code === 'FULL' ? '5.03' : '4.00';
          if (code === '5.03') res.setOption('Max-Age', this.options.retryAfterSeconds);
          this.refuse(res, code, err.message);
          return;
        }
        this.refuse(res, '5.00', `registry error: ${(err as Error).message}`);
      })
      .finally(() => {
        this.inFlight -= 1;
      });
  }

  /** A request whose links or query do not parse: 4.00 with the parser's reason. Anything else is a bug: rethrown. */
  private refuseMalformed(res: OutgoingMessage, err: unknown): void {
    if (err instanceof LinkFormatError || err instanceof RegistryError) return this.refuse(res, '4.00', err.message);
    throw err;
  }

  private refuse(res: OutgoingMessage, code: string, message: string): void {
    this.counters.refused += 1;
    this.answer(res, code, message);
  }

  private answer(res: OutgoingMessage, code: string, message: string): void {
    // A failure after the answer went out (or while sending it) must not answer twice.
    if ((res as OutgoingMessage & { writableEnded?: boolean }).writableEnded) return;
    res.code = code;
    res.end(message.slice(0, 200));
  }
}
