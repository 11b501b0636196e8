import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import express, { type NextFunction, type Request, type Response } from 'express';
import fc from 'fast-check';
import type { NodeAPI } from 'node-red';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { publishFirmware, type FirmwareRolloutServiceApi, type FirmwareRolloutStart, type FirmwareRouteProvider } from '../../nodes/shared/firmware-route.js';
import {
  FirmwareApiRequestError,
  imagesResponse,
  MAX_ROLLOUT_METERS,
  parseGroupSelector,
  parseRolloutId,
  parseRolloutRequest,
  type FirmwareApiRolloutRequest,
} from '../../src/firmware/api.js';
import { isFirmwareVersion } from '../../src/firmware/manifest.js';
import { FirmwareRepository } from '../../src/firmware/repository.js';
import type { MeterRolloutEntry, RolloutSummary } from '../../src/firmware/rollout-types.js';

/** The refusal `parse` throws for `body`, failing the test when it accepts the body or throws something else. */
function refusal(parse: () => unknown): FirmwareApiRequestError {
  let accepted: unknown;
  try {
    accepted = parse();
  } catch (err) {
    expect(err).toBeInstanceOf(FirmwareApiRequestError);
    return err as FirmwareApiRequestError;
  }
  throw new Error(`accepted: ${JSON.stringify(accepted)}`);
}

const BASE = { comm: '2.2.0', meter: 'mtr-1' };

describe('parseRolloutRequest accepts', () => {
  it('one meter and one version, unchanged', () => {
    expect(parseRolloutRequest({ comm: '2.2.0', meter: 'mtr-1' })).toEqual({ comm: '2.2.0', meter: 'mtr-1' });
    expect(parseRolloutRequest({ metro: '5.1.0', meter: 'mtr-1' })).toEqual({ metro: '5.1.0', meter: 'mtr-1' });
  });

  it('a list with both versions, concurrency and id, dropping repeated meters in order', () => {
    const body = { comm: '2.2.0', metro: '5.1.0', meters: ['b', 'a', 'b', 'c', 'a'], concurrency: 8, id: 'fw-2025.06:feeder_F3' };
    expect(parseRolloutRequest(body)).toEqual({ comm: '2.2.0', metro: '5.1.0', meters: ['b', 'a', 'c'], concurrency: 8, id: 'fw-2025.06:feeder_F3' });
  });

  it('a group as {tag, value} or as "TAG=VALUE", both sent on as {tag, value}', () => {
    expect(parseRolloutRequest({ comm: '2.2.0', group: { tag: 'feeder', value: 'F3' } }).group).toEqual({ tag: 'feeder', value: 'F3' });
    expect(parseRolloutRequest({ comm: '2.2.0', group: 'cell=C1' }).group).toEqual({ tag: 'cell', value: 'C1' });
  });

  it('the limits themselves: 63-character names, 100000 meters, concurrency 1 and 1024, a 128-character id', () => {
    expect(parseRolloutRequest({ ...BASE, meter: 'm'.repeat(63) }).meter).toHaveLength(63);
    const many = Array.from({ length: MAX_ROLLOUT_METERS }, (_, i) => `m${i}`);
    expect(parseRolloutRequest({ comm: '2.2.0', meters: many }).meters).toHaveLength(MAX_ROLLOUT_METERS);
    expect(parseRolloutRequest({ ...BASE, concurrency: 1 }).concurrency).toBe(1);
    expect(parseRolloutRequest({ ...BASE, concurrency: 1024 }).concurrency).toBe(1024);
    expect(parseRolloutRequest({ ...BASE, id: 'i'.repeat(128) }).id).toHaveLength(128);
  });

  it('meter names with spaces and non-ASCII letters (only control characters are refused)', () => {
    expect(parseRolloutRequest({ ...BASE, meter: 'Zähler 7' }).meter).toBe('Zähler 7');
  });
});

describe('parseRolloutRequest refuses, naming the field', () => {
  const cases: [string, unknown, readonly string[]][] = [
    ['a misspelt field', { ...BASE, metero: '5.1.0' }, ['metero']],
    ['no version', { meter: 'mtr-1' }, ['comm', 'metro']],
    ['a comm version with one number', { ...BASE, comm: '2' }, ['comm']],
    ['a comm version with a prefix', { ...BASE, comm: 'v2.2.0' }, ['comm']],
    ['a comm version as a number', { ...BASE, comm: 2.2 }, ['comm']],
    ['a metro version with five numbers', { ...BASE, metro: '1.2.3.4.5' }, ['metro']],
    ['an empty metro version', { ...BASE, metro: '' }, ['metro']],
    ['a null metro version', { ...BASE, metro: null }, ['metro']],
    ['no meters at all', { comm: '2.2.0' }, ['meter', 'meters', 'group']],
    ['a meter and a group', { comm: '2.2.0', meter: 'mtr-1', group: 'feeder=F3' }, ['meter', 'group']],
    ['a meter and a list', { comm: '2.2.0', meter: 'mtr-1', meters: ['mtr-2'] }, ['meter', 'meters']],
    ['an empty meter name', { ...BASE, meter: '' }, ['meter']],
    ['a 64-character meter name', { ...BASE, meter: 'm'.repeat(64) }, ['meter']],
    ['a meter name with a newline', { ...BASE, meter: 'mtr\n1' }, ['meter']],
    ['a meter name with an escape', { ...BASE, meter: 'mtr\u001b[2J' }, ['meter']],
    ['a meter name with DEL', { ...BASE, meter: 'mtr\u007f' }, ['meter']],
    ['a meter name with a C1 control', { ...BASE, meter: 'mtr\u0085' }, ['meter']],
    ['a meter number', { ...BASE, meter: 17 }, ['meter']],
    ['meters as a string', { comm: '2.2.0', meters: 'mtr-1,mtr-2' }, ['meters']],
    ['an empty list', { comm: '2.2.0', meters: [] }, ['meters']],
    ['a list with an empty name', { comm: '2.2.0', meters: ['mtr-1', ''] }, ['meters']],
    ['a list with a number', { comm: '2.2.0', meters: ['mtr-1', 2] }, ['meters']],
    ['too many meters', { comm: '2.2.0', meters: Array.from({ length: MAX_ROLLOUT_METERS + 1 }, (_, i) => `m${i}`) }, ['meters']],
    ['a group without a value', { comm: '2.2.0', group: 'feeder' }, ['group']],
    ['a group with an empty value', { comm: '2.2.0', group: 'feeder=' }, ['group']],
    ['a group object without a value', { comm: '2.2.0', group: { tag: 'feeder' } }, ['group']],
    ['a group tag with "="', { comm: '2.2.0', group: { tag: 'a=b', value: 'c' } }, ['group']],
    ['a group with another field', { comm: '2.2.0', group: { tag: 'feeder', value: 'F3', extra: 1 } }, ['group']],
    ['a group as a number', { comm: '2.2.0', group: 3 }, ['group']],
    ['concurrency 0', { ...BASE, concurrency: 0 }, ['concurrency']],
    ['concurrency 1025', { ...BASE, concurrency: 1025 }, ['concurrency']],
    ['a fractional concurrency', { ...BASE, concurrency: 1.5 }, ['concurrency']],
    ['concurrency as text', { ...BASE, concurrency: '4' }, ['concurrency']],
    ['an empty id', { ...BASE, id: '' }, ['id']],
    ['a 129-character id', { ...BASE, id: 'i'.repeat(129) }, ['id']],
    ['an id with a space', { ...BASE, id: 'my rollout' }, ['id']],
    ['an id with a slash', { ...BASE, id: 'a/b' }, ['id']],
    ['an id as a number', { ...BASE, id: 7 }, ['id']],
  ];

  it.each(cases)('%s', (_what, body, fields) => {
    const err = refusal(() => parseRolloutRequest(body));
    expect(err.code).toBe('BAD_REQUEST');
    expect(err.fields).toEqual(fields);
    for (const field of fields) expect(err.message).toContain(field);
  });

  it.each([null, [], 'comm=2.2.0', 42, undefined])('a body that is not an object (%j)', (body) => {
    const err = refusal(() => parseRolloutRequest(body));
    expect(err.fields).toEqual([]);
    expect(err.message).toMatch(/body must be a JSON object/);
  });
});

describe('parseGroupSelector and parseRolloutId', () => {
  it('reads TAG=VALUE with the relay API rules (tag.NAME is the tag NAME)', () => {
    expect(parseGroupSelector('feeder=F3')).toEqual({ tag: 'feeder', value: 'F3' });
    expect(parseGroupSelector('tag.district=North=East')).toEqual({ tag: 'district', value: 'North=East' });
  });

  it('refuses anything else as a typed error naming the group', () => {
    for (const text of ['feeder', '=F3', 'feeder=', '1x=F3', `feeder=${'v'.repeat(257)}`]) {
      const err = refusal(() => parseGroupSelector(text));
      expect(err.fields).toEqual(['group']);
      expect(err.message).toMatch(/^group: /);
    }
  });

  it('takes rollout ids of A-Z a-z 0-9 . _ : - only', () => {
    expect(parseRolloutId('2f1c9a3e-7b8d-4e5f-9a0b-1c2d3e4f5a6b')).toBe('2f1c9a3e-7b8d-4e5f-9a0b-1c2d3e4f5a6b');
    for (const bad of ['', 'a b', '../x', 'ä', 'x'.repeat(129), 12]) expect(refusal(() => parseRolloutId(bad)).fields).toEqual(['id']);
  });
});

describe('imagesResponse', () => {
  it('lists good images by their verified manifest and quarantined ones with the reason', async () => {
    const shipped = path.resolve('firmware-images');
    const repository = new FirmwareRepository({ root: path.join(shipped, 'test-images'), trustAnchorsPem: [readFileSync(path.join(shipped, 'test-ca/root-ca.pem'), 'utf8')] });
    const images = await repository.load();
    const response = imagesResponse(images);
    expect(response.images.map((i) => i.id).sort()).toEqual(['acme/comm-2.1.0', 'acme/comm-2.2.0', 'acme/metro-5.0.0', 'acme/metro-5.1.0']);
    const comm = response.images.find((i) => i.id === 'acme/comm-2.2.0')!;
    expect(comm).toMatchObject({ target: 'comm', version: '2.2.0', vendor: 'acme' });
    expect(comm.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(comm.size).toBeGreaterThan(0);
    expect(response.quarantined).toEqual([]);

    const [first] = images;
    const quarantined = imagesResponse([{ status: 'quarantined', id: 'acme/bad', dir: '/x', code: 'HASH_MISMATCH', reason: 'the image changed', quarantinedAt: '2025-06-01T00:00:00Z' }, first!]);
    expect(quarantined.quarantined).toEqual([{ id: 'acme/bad', code: 'HASH_MISMATCH', reason: 'the image changed' }]);
    expect(quarantined.images).toHaveLength(1);
  });
});

describe('parseRolloutRequest on arbitrary input', () => {
  const validVersion = fc.stringMatching(/^[0-9]{1,6}(\.[0-9]{1,6}){1,3}$/);
  const validMeter = fc.string({ minLength: 1, maxLength: 63 }).filter((name) => !/\p{Cc}/u.test(name));
  const validTarget = fc.oneof(
    fc.record({ meter: validMeter }),
    fc.record({ meters: fc.array(validMeter, { minLength: 1, maxLength: 5 }) }),
    fc.record({ group: fc.constantFrom('feeder=F3', 'cell=C1', 'tag.x=y') }),
  );
  const validBody = fc
    .tuple(
      fc.record({ comm: validVersion, metro: validVersion }, { requiredKeys: [] }),
      validTarget,
      fc.record({ concurrency: fc.integer({ min: 1, max: 1024 }), id: fc.stringMatching(/^[A-Za-z0-9._:-]{1,128}$/) }, { requiredKeys: [] }),
    )
    .filter(([versions]) => versions.comm !== undefined || versions.metro !== undefined)
    .map(([versions, target, options]) => ({ ...versions, ...target, ...options }));
  const anyValue = fc.anything({ withBigInt: true, withNullPrototype: true, withBoxedValues: true, withMap: true, withSet: true, withSparseArray: true, withTypedArray: true, withObjectString: true });
  const FIELDS = ['comm', 'metro', 'meter', 'meters', 'group', 'concurrency', 'id', 'extra', '__proto__'] as const;
  /** A valid body with one field set to anything (or removed), so that acceptance and every kind of refusal are exercised. */
  const nearlyValid = fc.tuple(validBody, fc.constantFrom(...FIELDS), fc.option(fc.oneof(fc.jsonValue(), anyValue), { nil: undefined })).map(([body, field, value]) => {
    const copy: Record<string, unknown> = { ...body };
    if (value === undefined) delete copy[field];
    else Object.defineProperty(copy, field, { value, enumerable: true, writable: true, configurable: true });
    return copy;
  });

  it('throws nothing but FirmwareApiRequestError, and what it accepts is valid and parses to itself', () => {
    let accepted = 0;
    let refused = 0;
    fc.assert(
      fc.property(fc.oneof(validBody, nearlyValid, fc.jsonValue(), anyValue), (body) => {
        let request: FirmwareApiRolloutRequest;
        try {
          request = parseRolloutRequest(body);
        } catch (err) {
          if (!(err instanceof FirmwareApiRequestError)) throw err;
          expect(err.code).toBe('BAD_REQUEST');
          refused++;
          return;
        }
        accepted++;
        expect(request.comm !== undefined || request.metro !== undefined).toBe(true);
        for (const v of [request.comm, request.metro]) if (v !== undefined) expect(isFirmwareVersion(v)).toBe(true);
        expect([request.meter, request.meters, request.group].filter((t) => t !== undefined)).toHaveLength(1);
        if (request.meters) expect(new Set(request.meters).size).toBe(request.meters.length);
        expect(parseRolloutRequest(JSON.parse(JSON.stringify(request)))).toEqual(request);
      }),
      { numRuns: 3000 },
    );
    // Both outcomes happened: the property did not pass by refusing everything.
    expect(accepted).toBeGreaterThan(0);
    expect(refused).toBeGreaterThan(0);
  });
});

/**
 * The server side (nodes/shared/firmware-route.ts) on a real express app on
 * loopback, with Node-RED's permission check replaced by one that records
 * which permission each request passed (Node-RED itself is not started here).
 */
describe('firmware admin routes', () => {
  const permissionsAsked: string[] = [];
  const passed: string[] = [];
  const app = express();
  // As Node-RED's admin app: JSON bodies parsed, the user set by its authentication.
  app.use(express.json({ limit: '5mb' }));
  app.use((req: Request, _res: Response, next: NextFunction) => {
    const user = req.header('x-test-user');
    if (user) Object.assign(req, { user: { username: user } });
    next();
  });
  const red = {
    httpAdmin: app,
    auth: {
      needsPermission: (permission: string) => {
        permissionsAsked.push(permission);
        return (req: Request, _res: Response, next: NextFunction) => {
          passed.push(`${permission} ${req.method} ${req.path}`);
          next();
        };
      },
    },
  } as unknown as NodeAPI; // Only the two members the routes use.
  const server = http.createServer(app);
  let base = '';
  const unpublish: (() => void)[] = [];

  beforeAll(async () => {
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));
  afterEach(() => {
    for (const done of unpublish.splice(0)) done();
    passed.length = 0;
  });

  const T = Date.UTC(2025, 5, 1);
  function summaryOf(start: FirmwareRolloutStart): RolloutSummary {
    return { rolloutId: start.rolloutId ?? 'generated', want: start.want, total: start.meters.length, done: 0, byCode: {}, byPhase: { queued: start.meters.length }, finished: false, createdAt: T, ...(start.requestedBy ? { requestedBy: start.requestedBy } : {}) };
  }

  /** A service that keeps what it was started with; `refuse` makes start() fail with that error. */
  function fakeService(refuse?: Error): FirmwareRolloutServiceApi & { started: FirmwareRolloutStart[] } {
    const started: FirmwareRolloutStart[] = [];
    return {
      started,
      start: async (request) => {
        if (refuse) throw refuse;
        started.push(request);
        return summaryOf(request);
      },
      summary: async (id) => {
        const found = started.find((s) => s.rolloutId === id);
        return found ? summaryOf(found) : undefined;
      },
      rollouts: async () => started.map(summaryOf).reverse(),
      meters: async (id): Promise<MeterRolloutEntry[]> => started.find((s) => s.rolloutId === id)!.meters.map((meter) => ({ rolloutId: id, meter, phase: 'queued', attempts: 0, updatedAt: T })),
    };
  }

  function provide(overrides: Partial<FirmwareRouteProvider> = {}): void {
    const provider: FirmwareRouteProvider = {
      images: () => ({ images: [], quarantined: [{ id: 'acme/bad', code: 'BAD_SIGNATURE', reason: 'not signed by the trust anchor' }] }),
      service: () => undefined,
      problem: () => undefined,
      resolveGroup: (tag, value) => (tag === 'feeder' && value === 'F3' ? ['mtr-3', 'mtr-1'] : []),
      ...overrides,
    };
    unpublish.push(publishFirmware(red, provider));
  }

  async function call(method: 'GET' | 'POST', route: string, body?: unknown, user?: string): Promise<{ status: number; json: Record<string, unknown> }> {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (user) headers['x-test-user'] = user;
    const response = await fetch(`${base}${route}`, { method, headers, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
    return { status: response.status, json: (await response.json()) as Record<string, unknown> };
  }

  it('answers 404 NO_FIRMWARE while no ami-firmware node is published, and again after it is withdrawn', async () => {
    provide();
    unpublish.pop()!();
    expect(await call('GET', '/ami/firmware/images')).toEqual({ status: 404, json: { error: expect.stringContaining('ami-firmware'), code: 'NO_FIRMWARE' } });
    expect((await call('POST', '/ami/firmware/rollouts', { comm: '2.2.0', meter: 'mtr-1' })).json.code).toBe('NO_FIRMWARE');
    expect((await call('GET', '/ami/firmware/rollouts')).json.code).toBe('NO_FIRMWARE');
  });

  it('adds the routes once, asks the provider published at request time, and checks read and write permissions', async () => {
    provide({ images: () => ({ images: [], quarantined: [] }) });
    provide();
    expect(permissionsAsked).toEqual(['ami-firmware.read', 'ami-firmware.write']);
    const images = await call('GET', '/ami/firmware/images');
    expect(images.json.quarantined).toEqual([{ id: 'acme/bad', code: 'BAD_SIGNATURE', reason: 'not signed by the trust anchor' }]);
    await call('POST', '/ami/firmware/rollouts', { comm: '2.2.0', meter: 'mtr-1' });
    await call('GET', '/ami/firmware/rollouts');
    await call('GET', '/ami/firmware/rollouts/R-1');
    expect(passed).toEqual([
      'ami-firmware.read GET /ami/firmware/images',
      'ami-firmware.write POST /ami/firmware/rollouts',
      'ami-firmware.read GET /ami/firmware/rollouts',
      'ami-firmware.read GET /ami/firmware/rollouts/R-1',
    ]);
  });

  it('answers 503 NOT_READY with the problem while there is no service, and when the images cannot be listed', async () => {
    provide({ problem: () => 'the store cannot be opened: LOCK held', images: () => { throw new Error('the images are still loading'); } });
    const started = await call('POST', '/ami/firmware/rollouts', { comm: '2.2.0', meter: 'mtr-1' });
    expect(started).toEqual({ status: 503, json: { error: 'the firmware service is not running: the store cannot be opened: LOCK held', code: 'NOT_READY' } });
    expect((await call('GET', '/ami/firmware/rollouts')).status).toBe(503);
    expect(await call('GET', '/ami/firmware/images')).toEqual({ status: 503, json: { error: 'the images are still loading', code: 'NOT_READY' } });
  });

  it('starts a rollout for a group as the provider resolves it, with who asked, and answers 202 with the summary', async () => {
    const service = fakeService();
    provide({ service: () => service });
    const started = await call('POST', '/ami/firmware/rollouts', { comm: '2.2.0', metro: '5.1.0', group: { tag: 'feeder', value: 'F3' }, concurrency: 4, id: 'R-7' }, 'ops');
    expect(started.status).toBe(202);
    expect(service.started).toEqual([{ want: { comm: '2.2.0', metro: '5.1.0' }, meters: ['mtr-3', 'mtr-1'], concurrency: 4, rolloutId: 'R-7', requestedBy: 'admin:ops' }]);
    expect(started.json.rollout).toMatchObject({ rolloutId: 'R-7', total: 2, requestedBy: 'admin:ops' });

    await call('POST', '/ami/firmware/rollouts', { metro: '5.1.0', meters: ['a', 'b', 'a'] });
    expect(service.started[1]).toEqual({ want: { metro: '5.1.0' }, meters: ['a', 'b'], requestedBy: 'admin-api' });

    const status = await call('GET', '/ami/firmware/rollouts/R-7');
    expect(status.status).toBe(200);
    expect(status.json.rollout).toMatchObject({ rolloutId: 'R-7' });
    expect((status.json.meters as MeterRolloutEntry[]).map((m) => m.meter)).toEqual(['mtr-3', 'mtr-1']);
    expect(((await call('GET', '/ami/firmware/rollouts')).json.rollouts as RolloutSummary[]).map((r) => r.rolloutId)).toEqual(['generated', 'R-7']);
  });

  it('refuses with 400 naming the field, EMPTY_TARGET for an empty group, and the service\'s own BAD_REQUEST', async () => {
    const service = fakeService();
    provide({ service: () => service });
    expect(await call('POST', '/ami/firmware/rollouts', { comm: '2.x', meter: 'mtr-1' })).toEqual({ status: 400, json: { error: expect.stringMatching(/^comm: /), code: 'BAD_REQUEST' } });
    expect(await call('POST', '/ami/firmware/rollouts', { comm: '2.2.0', group: 'feeder=F9' })).toEqual({ status: 400, json: { error: 'no registered meter has feeder=F9', code: 'EMPTY_TARGET' } });
    expect(await call('GET', '/ami/firmware/rollouts/R-404')).toEqual({ status: 404, json: { error: 'no rollout R-404', code: 'UNKNOWN' } });
    expect((await call('GET', '/ami/firmware/rollouts/a%20b')).json).toEqual({ error: expect.stringMatching(/^id: /), code: 'BAD_REQUEST' });
    expect(service.started).toEqual([]);

    const refusing = fakeService(Object.assign(new Error('1.0.0 is older than the meters run'), { code: 'BAD_REQUEST' }));
    provide({ service: () => refusing });
    expect(await call('POST', '/ami/firmware/rollouts', { comm: '1.0.0', meter: 'mtr-1' })).toEqual({ status: 400, json: { error: '1.0.0 is older than the meters run', code: 'BAD_REQUEST' } });
    const closing = fakeService(Object.assign(new Error('the service is closed'), { code: 'CLOSED' }));
    provide({ service: () => closing });
    expect(await call('POST', '/ami/firmware/rollouts', { comm: '2.2.0', meter: 'mtr-1' })).toEqual({ status: 503, json: { error: 'the firmware service failed: the service is closed', code: 'NOT_READY' } });
  });
});
