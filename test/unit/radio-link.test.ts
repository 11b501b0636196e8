import { EventEmitter, once } from 'node:events';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { encodeSlip } from '../../src/lowpan/slip.js';
import {
  RadioLinkError,
  SerialRadioLink,
  appendRadioMetadata,
  listSerialPorts,
  splitRadioMetadata,
  type RadioFrameEvent,
  type RadioLinkRetryEvent,
  type RadioPort,
  type RadioPortOpenOptions,
  type SerialRadioLinkOptions,
} from '../../src/mesh/radio-link.js';

const hex = (text: string): Buffer => Buffer.from(text.replace(/\s+/g, ''), 'hex');

/** What serialport's DisconnectedError looks like to the link. */
class FakeDisconnectedError extends Error {
  readonly disconnected = true;
}

/** An in-memory serial port: records what the link writes, lets the test feed bytes and pull the plug. */
class FakePort extends EventEmitter implements RadioPort {
  isOpen = true;
  readonly written: Buffer[] = [];
  failWrites: Error | undefined;

  write(data: Buffer, callback: (error: Error | null | undefined) => void): boolean {
    if (this.failWrites) {
      const error = this.failWrites;
      queueMicrotask(() => callback(error));
      return false;
    }
    this.written.push(Buffer.from(data));
    queueMicrotask(() => callback(null));
    return true;
  }

  close(callback?: (error: Error | null) => void): void {
    this.isOpen = false;
    queueMicrotask(() => {
      this.emit('close', null);
      callback?.(null);
    });
  }

  /** Bytes from the radio. */
  feed(bytes: Uint8Array): void {
    this.emit('data', Buffer.from(bytes));
  }

  /** What serialport does when the USB device goes away: the read fails, the port closes with a DisconnectedError. */
  unplug(): void {
    this.isOpen = false;
    this.emit('close', new FakeDisconnectedError('Input/output error'));
  }
}

/** The device behind the path: present or not; every successful open makes a new FakePort. */
class FakeDevice {
  present = true;
  openCalls = 0;
  readonly ports: FakePort[] = [];
  /** While set, open() waits for it (see hold()). */
  private pendingHold: Promise<void> | undefined;

  get port(): FakePort {
    const port = this.ports.at(-1);
    if (!port) throw new Error('never opened');
    return port;
  }

  readonly open = async (options: RadioPortOpenOptions): Promise<RadioPort> => {
    this.openCalls++;
    expect(options.baudRate).toBeGreaterThan(0);
    if (this.pendingHold) await this.pendingHold;
    if (!this.present) throw Object.assign(new Error(`Error: No such file or directory, cannot open ${options.path}`), { code: 'ENOENT' });
    const port = new FakePort();
    this.ports.push(port);
    return port;
  };

  /** The next open() waits until the returned function is called. */
  hold(): () => void {
    let release!: () => void;
    this.pendingHold = new Promise<void>((resolve) => {
      release = () => {
        this.pendingHold = undefined;
        resolve();
      };
    });
    return release;
  }
}

const links: SerialRadioLink[] = [];

function makeLink(device: FakeDevice, options: Partial<SerialRadioLinkOptions> = {}): SerialRadioLink {
  const link = new SerialRadioLink({
    path: '/dev/fake-radio',
    openPort: device.open,
    reopenDelayMs: 1,
    maxReopenDelayMs: 8,
    now: () => 1_700_000_000_000,
    ...options,
  });
  links.push(link);
  return link;
}

/** Resolves with the retry event of the given attempt number. */
function retryAttempt(link: SerialRadioLink, attempt: number): Promise<RadioLinkRetryEvent> {
  return new Promise((resolve) => {
    const listener = (event: RadioLinkRetryEvent): void => {
      if (event.attempt >= attempt) {
        link.off('retry', listener);
        resolve(event);
      }
    };
    link.on('retry', listener);
  });
}

function collect<T>(emitter: EventEmitter, event: string): T[] {
  const seen: T[] = [];
  emitter.on(event, (value: T) => seen.push(value));
  return seen;
}

async function sendRejection(promise: Promise<void>): Promise<RadioLinkError> {
  const error: unknown = await promise.then(
    () => undefined,
    (reason: unknown) => reason,
  );
  if (!(error instanceof RadioLinkError)) throw new Error(`expected a RadioLinkError, got ${String(error)}`);
  return error;
}

afterEach(async () => {
  vi.useRealTimers();
  await Promise.all(links.splice(0).map((link) => link.close()));
});

describe('SerialRadioLink: frames both ways', () => {
  it('opens, emits up, and writes each MAC frame as one SLIP frame', async () => {
    const device = new FakeDevice();
    const link = makeLink(device);
    const up = once(link, 'up');
    await link.open();
    expect(await up).toEqual([{ path: '/dev/fake-radio', device: '/dev/fake-radio', reopened: false }]);
    expect(link.state).toBe('up');
    await link.send(hex('41 88 01 cd ab ff ff c0 db'));
    await link.send(hex('01'));
    expect(device.port.written).toEqual([encodeSlip(hex('41 88 01 cd ab ff ff c0 db')), encodeSlip(hex('01'))]);
    expect(link.stats.framesOut).toBe(2);
  });

  it('defaults to 115200 baud and no metadata', async () => {
    const device = new FakeDevice();
    const seen: RadioPortOpenOptions[] = [];
    const link = makeLink(device, {
      openPort: (options) => {
        seen.push(options);
        return device.open(options);
      },
    });
    await link.open();
    expect(seen).toEqual([{ path: '/dev/fake-radio', baudRate: 115_200 }]);
    expect(link.metadata).toBe('none');
  });

  it('delivers frames from the radio, whatever the chunking, with receivedAt and no metadata', async () => {
    const device = new FakeDevice();
    const link = makeLink(device);
    await link.open();
    const frames = collect<RadioFrameEvent>(link, 'frame');
    const stream = Buffer.concat([encodeSlip(hex('41 88 c0')), encodeSlip(hex('db dc dd')), encodeSlip(hex('02'))]);
    for (let at = 0; at < stream.length; at += 3) device.port.feed(stream.subarray(at, at + 3));
    expect(frames).toEqual([
      { frame: hex('41 88 c0'), receivedAt: 1_700_000_000_000 },
      { frame: hex('db dc dd'), receivedAt: 1_700_000_000_000 },
      { frame: hex('02'), receivedAt: 1_700_000_000_000 },
    ]);
    expect(link.stats.framesIn).toBe(3);
  });

  it('rejects sends it cannot make: empty, too large', async () => {
    const device = new FakeDevice();
    const link = makeLink(device, { maxFrameBytes: 127 });
    await link.open();
    expect((await sendRejection(link.send(Buffer.alloc(0)))).code).toBe('EMPTY_FRAME');
    expect((await sendRejection(link.send(Buffer.alloc(128)))).code).toBe('FRAME_TOO_LARGE');
    await link.send(Buffer.alloc(127));
    expect(device.port.written).toHaveLength(1);
  });

  it('rejects with WRITE_FAILED when the port fails the write', async () => {
    const device = new FakeDevice();
    const link = makeLink(device);
    await link.open();
    device.port.failWrites = new Error('EIO');
    const error = await sendRejection(link.send(hex('01')));
    expect(error.code).toBe('WRITE_FAILED');
    expect(error.cause).toBe(device.port.failWrites);
    expect(link.stats.framesOut).toBe(0);
  });
});

describe('SerialRadioLink: rssi-lqi metadata', () => {
  it('splits the trailer off every frame from the radio: RSSI signed dBm, LQI 0-255', async () => {
    const device = new FakeDevice();
    const link = makeLink(device, { metadata: 'rssi-lqi' });
    await link.open();
    const frames = collect<RadioFrameEvent>(link, 'frame');
    device.port.feed(encodeSlip(hex('41 88 01 b6 ff')));
    device.port.feed(encodeSlip(hex('02 7f 00')));
    device.port.feed(encodeSlip(hex('03 80 ff')));
    expect(frames).toEqual([
      { frame: hex('41 88 01'), rssi: -74, lqi: 255, receivedAt: 1_700_000_000_000 },
      { frame: hex('02'), rssi: 127, lqi: 0, receivedAt: 1_700_000_000_000 },
      { frame: hex('03'), rssi: -128, lqi: 255, receivedAt: 1_700_000_000_000 },
    ]);
  });

  it('sends frames to the radio unchanged', async () => {
    const device = new FakeDevice();
    const link = makeLink(device, { metadata: 'rssi-lqi' });
    await link.open();
    await link.send(hex('41 88 01'));
    expect(device.port.written).toEqual([encodeSlip(hex('41 88 01'))]);
  });

  it('drops and counts a frame too short for the trailer', async () => {
    const device = new FakeDevice();
    const link = makeLink(device, { metadata: 'rssi-lqi' });
    await link.open();
    const errors = collect<RadioLinkError>(link, 'error');
    const frames = collect<RadioFrameEvent>(link, 'frame');
    device.port.feed(encodeSlip(hex('b6 ff')));
    device.port.feed(encodeSlip(hex('01 b6 ff')));
    expect(frames.map((event) => event.frame)).toEqual([hex('01')]);
    expect(errors.map((error) => error.code)).toEqual(['SHORT_FRAME']);
    expect(link.stats).toMatchObject({ framesIn: 1, badFrames: 1 });
  });

  it('appendRadioMetadata and splitRadioMetadata are inverses; out-of-range values saturate', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 1, maxLength: 200 }),
        fc.integer({ min: -128, max: 127 }),
        fc.integer({ min: 0, max: 255 }),
        (frame, rssi, lqi) => {
          expect(splitRadioMetadata(appendRadioMetadata(frame, { rssi, lqi }))).toEqual({ frame: Buffer.from(frame), rssi, lqi });
        },
      ),
    );
    expect(appendRadioMetadata(hex('01'), { rssi: -200, lqi: 300 })).toEqual(hex('01 80 ff'));
    expect(appendRadioMetadata(hex('01'), { rssi: 200, lqi: -3 })).toEqual(hex('01 7f 00'));
    expect(splitRadioMetadata(hex('01 02'))).toBeUndefined();
  });
});

describe('SerialRadioLink: bad input from the radio', () => {
  it('counts bad escapes and oversize frames, reports them as typed errors, and keeps going', async () => {
    const device = new FakeDevice();
    const link = makeLink(device, { maxFrameBytes: 8 });
    await link.open();
    const errors = collect<RadioLinkError>(link, 'error');
    const frames = collect<RadioFrameEvent>(link, 'frame');
    device.port.feed(hex('c0 01 db 07 02 c0'));
    device.port.feed(encodeSlip(Buffer.alloc(9, 1)));
    device.port.feed(encodeSlip(hex('05')));
    expect(frames.map((event) => event.frame)).toEqual([hex('05')]);
    expect(errors.map((error) => [error.name, error.code])).toEqual([
      ['RadioLinkError', 'BAD_ESCAPE'],
      ['RadioLinkError', 'OVERSIZE_FRAME'],
    ]);
    expect(link.stats).toMatchObject({ framesIn: 1, badFrames: 1, oversizeFrames: 1 });
  });

  it('does not throw on bad input when nobody listens for errors', async () => {
    const device = new FakeDevice();
    const link = makeLink(device);
    await link.open();
    expect(() => device.port.feed(hex('c0 db 00 c0'))).not.toThrow();
    expect(link.stats.badFrames).toBe(1);
  });

  it('a throwing frame listener becomes a LISTENER_FAILED error, and later frames still arrive', async () => {
    const device = new FakeDevice();
    const link = makeLink(device);
    await link.open();
    const errors = collect<RadioLinkError>(link, 'error');
    const frames = collect<RadioFrameEvent>(link, 'frame');
    let first = true;
    link.on('frame', () => {
      if (first) {
        first = false;
        throw new Error('listener bug');
      }
    });
    expect(() => device.port.feed(Buffer.concat([encodeSlip(hex('01')), encodeSlip(hex('02'))]))).not.toThrow();
    expect(frames.map((event) => event.frame)).toEqual([hex('01'), hex('02')]);
    expect(errors.map((error) => error.code)).toEqual(['LISTENER_FAILED']);
  });
});

describe('SerialRadioLink: unplug and replug', () => {
  it('unplug → down → retries with doubling backoff capped at the maximum → replug → up, frames flow again', async () => {
    const device = new FakeDevice();
    const link = makeLink(device, { reopenDelayMs: 2, maxReopenDelayMs: 16 });
    await link.open();
    const retries = collect<RadioLinkRetryEvent>(link, 'retry');
    const errors = collect<RadioLinkError>(link, 'error');

    const down = once(link, 'down');
    device.present = false;
    device.port.unplug();
    expect(await down).toEqual([{ reason: 'port closed: Input/output error' }]);
    expect(link.state).toBe('waiting');
    expect((await sendRejection(link.send(hex('01')))).code).toBe('NOT_OPEN');

    await retryAttempt(link, 7);
    expect(retries.map((retry) => retry.delayMs)).toEqual([2, 4, 8, 16, 16, 16, 16]);
    expect(retries[0]?.reason).toBe('port closed: Input/output error');
    expect(retries[1]?.reason).toMatch(/No such file or directory/);
    // A missing device is what down and retry say: no 'error' events (they would reject once(link, 'up')).
    expect(errors).toEqual([]);

    const up = once(link, 'up');
    device.present = true;
    expect(await up).toEqual([{ path: '/dev/fake-radio', device: '/dev/fake-radio', reopened: true }]);
    expect(link.stats).toMatchObject({ reopens: 1 });
    expect(link.stats.openFailures).toBeGreaterThanOrEqual(6);

    const frames = collect<RadioFrameEvent>(link, 'frame');
    device.port.feed(encodeSlip(hex('0a 0b')));
    await link.send(hex('0c'));
    expect(frames.map((event) => event.frame)).toEqual([hex('0a 0b')]);
    expect(device.port.written).toEqual([encodeSlip(hex('0c'))]);
  });

  it('starts the backoff again from the first delay after a successful reopen', async () => {
    const device = new FakeDevice();
    const link = makeLink(device, { reopenDelayMs: 2, maxReopenDelayMs: 16 });
    await link.open();
    const retries = collect<RadioLinkRetryEvent>(link, 'retry');
    for (let i = 0; i < 2; i++) {
      const up = once(link, 'up');
      device.port.unplug();
      await up;
    }
    expect(retries.map((retry) => [retry.attempt, retry.delayMs])).toEqual([
      [1, 2],
      [1, 2],
    ]);
    expect(link.stats.reopens).toBe(2);
  });

  it('does not join the half frame cut off by the unplug to the first frame after the replug', async () => {
    const device = new FakeDevice();
    const link = makeLink(device);
    await link.open();
    const frames = collect<RadioFrameEvent>(link, 'frame');
    device.port.feed(hex('c0 01 02 03'));
    const up = once(link, 'up');
    device.port.unplug();
    await up;
    device.port.feed(hex('04 c0'));
    expect(frames.map((event) => event.frame)).toEqual([hex('04')]);
  });

  it('treats a port error as an unplug: down with the reason, reopen', async () => {
    const device = new FakeDevice();
    const link = makeLink(device);
    await link.open();
    const errors = collect<RadioLinkError>(link, 'error');
    const first = device.port;
    const down = once(link, 'down');
    const up = once(link, 'up');
    first.emit('error', new Error('device reports readiness to read but returned no data'));
    expect(await down).toEqual([{ reason: 'port error: device reports readiness to read but returned no data' }]);
    await up;
    expect(errors).toEqual([]);
    expect(first.isOpen).toBe(false);
    expect(device.port).not.toBe(first);
  });

  it('ignores events from a port it has already given up', async () => {
    const device = new FakeDevice();
    const link = makeLink(device);
    await link.open();
    const old = device.port;
    const up = once(link, 'up');
    old.unplug();
    await up;
    const downs = collect(link, 'down');
    const frames = collect<RadioFrameEvent>(link, 'frame');
    old.emit('close', new FakeDisconnectedError('late'));
    old.feed(encodeSlip(hex('01')));
    expect(downs).toEqual([]);
    expect(frames).toEqual([]);
    expect(link.state).toBe('up');
  });
});

describe('SerialRadioLink: starting without the radio, and closing', () => {
  it('open() resolves while the device is missing, retries, and comes up when it appears', async () => {
    const device = new FakeDevice();
    device.present = false;
    const link = makeLink(device);
    const errors = collect<RadioLinkError>(link, 'error');
    const retries = collect<RadioLinkRetryEvent>(link, 'retry');
    await link.open();
    expect(link.state).toBe('waiting');
    expect((await sendRejection(link.send(hex('01')))).code).toBe('NOT_OPEN');
    await retryAttempt(link, 3);
    expect(errors).toEqual([]);
    expect(retries[0]?.reason).toMatch(/cannot open \/dev\/fake-radio/);
    const up = once(link, 'up');
    device.present = true;
    expect(await up).toEqual([{ path: '/dev/fake-radio', device: '/dev/fake-radio', reopened: false }]);
    expect(link.stats.reopens).toBe(0);
  });

  it('reports an open failure that is not a missing device (permission, busy) as OPEN_FAILED, once per message', async () => {
    const device = new FakeDevice();
    let failure = 'Error: Permission denied, cannot open /dev/fake-radio';
    const link = makeLink(device, {
      openPort: async (options) => {
        if (failure !== '') throw new Error(failure);
        return device.open(options);
      },
    });
    const errors = collect<RadioLinkError>(link, 'error');
    await link.open();
    await retryAttempt(link, 3);
    failure = 'Error: Resource temporarily unavailable Cannot lock port';
    await retryAttempt(link, 6);
    const up = once(link, 'up');
    failure = '';
    await up;
    expect(errors.map((error) => [error.code, error.message])).toEqual([
      ['OPEN_FAILED', 'cannot open /dev/fake-radio: Error: Permission denied, cannot open /dev/fake-radio'],
      ['OPEN_FAILED', 'cannot open /dev/fake-radio: Error: Resource temporarily unavailable Cannot lock port'],
    ]);
  });

  it('send before open() rejects NOT_OPEN', async () => {
    const link = makeLink(new FakeDevice());
    const error = await sendRejection(link.send(hex('01')));
    expect(error.code).toBe('NOT_OPEN');
    expect(error.message).toMatch(/idle/);
  });

  it('close() while waiting to retry stops the retries: no timer left, no further open attempts', async () => {
    vi.useFakeTimers();
    const device = new FakeDevice();
    device.present = false;
    const link = makeLink(device, { reopenDelayMs: 500, maxReopenDelayMs: 10_000 });
    await link.open();
    expect(link.state).toBe('waiting');
    expect(vi.getTimerCount()).toBe(1);
    await vi.advanceTimersByTimeAsync(500);
    expect(device.openCalls).toBe(2);
    await link.close();
    expect(link.state).toBe('closed');
    expect(vi.getTimerCount()).toBe(0);
    device.present = true;
    await vi.advanceTimersByTimeAsync(60_000);
    expect(device.openCalls).toBe(2);
    expect((await sendRejection(link.send(hex('01')))).code).toBe('NOT_OPEN');
  });

  it('uses 500 ms doubling to 10 s by default', async () => {
    vi.useFakeTimers();
    const device = new FakeDevice();
    device.present = false;
    const link = new SerialRadioLink({ path: '/dev/fake-radio', openPort: device.open });
    links.push(link);
    const retries = collect<RadioLinkRetryEvent>(link, 'retry');
    await link.open();
    await vi.advanceTimersByTimeAsync(60_000);
    expect(retries.slice(0, 8).map((retry) => retry.delayMs)).toEqual([500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000]);
  });

  it('close() of an up link closes the port, emits down, and refuses sends', async () => {
    const device = new FakeDevice();
    const link = makeLink(device);
    await link.open();
    const downs = collect(link, 'down');
    await link.close();
    expect(device.port.isOpen).toBe(false);
    expect(downs).toEqual([{ reason: 'closed' }]);
    expect((await sendRejection(link.send(hex('01')))).code).toBe('NOT_OPEN');
    await link.close();
    expect(downs).toHaveLength(1);
  });

  it('close() during an open in flight closes the port that open returns and never emits up', async () => {
    const device = new FakeDevice();
    const link = makeLink(device);
    const ups = collect(link, 'up');
    const release = device.hold();
    const opening = link.open();
    const closing = link.close();
    release();
    await Promise.all([opening, closing]);
    expect(ups).toEqual([]);
    expect(device.port.isOpen).toBe(false);
    expect(link.state).toBe('closed');
  });

  it('a down listener that closes the link leaves no retry behind', async () => {
    vi.useFakeTimers();
    const device = new FakeDevice();
    const link = makeLink(device);
    await link.open();
    const retries = collect(link, 'retry');
    link.on('down', () => void link.close());
    device.port.unplug();
    await vi.advanceTimersByTimeAsync(0);
    expect(link.state).toBe('closed');
    expect(vi.getTimerCount()).toBe(0);
    expect(retries).toEqual([]);
    expect(device.openCalls).toBe(1);
  });

  it('a throwing up or down listener is reported as LISTENER_FAILED and the link carries on', async () => {
    const device = new FakeDevice();
    const link = makeLink(device);
    const errors = collect<RadioLinkError>(link, 'error');
    link.on('up', () => {
      throw new Error('up listener bug');
    });
    link.on('down', () => {
      throw new Error('down listener bug');
    });
    await expect(link.open()).resolves.toBeUndefined();
    expect(link.state).toBe('up');
    const retry = retryAttempt(link, 1);
    expect(() => device.port.unplug()).not.toThrow();
    await retry;
    expect(errors.map((error) => [error.code, error.message])).toEqual([
      ['LISTENER_FAILED', "a listener of 'up' threw: up listener bug"],
      ['LISTENER_FAILED', "a listener of 'down' threw: down listener bug"],
    ]);
  });

  it('rejects bad options', () => {
    expect(() => new SerialRadioLink({ path: '' })).toThrow(TypeError);
    expect(() => new SerialRadioLink({ path: '/dev/x', baudRate: 0 })).toThrow(TypeError);
    // @ts-expect-error: a mode that does not exist, as a hand-edited config could hold
    expect(() => new SerialRadioLink({ path: '/dev/x', metadata: 'rssi' })).toThrow(TypeError);
  });
});

describe('listSerialPorts', () => {
  const dirs: string[] = [];
  afterEach(async () => {
    await Promise.all(dirs.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
  });

  it('says why when listing fails (no udev in a container) instead of throwing', async () => {
    const result = await listSerialPorts({ list: () => Promise.reject(new Error('spawn udevadm ENOENT')) });
    expect(result).toEqual({ unavailable: expect.stringMatching(/udev is not available.*spawn udevadm ENOENT.*by its path/) });
  });

  it('gives up on a listing that never answers', async () => {
    const result = await listSerialPorts({ list: () => new Promise(() => undefined), timeoutMs: 20 });
    expect(result).toEqual({ unavailable: expect.stringMatching(/no answer within 20 ms/) });
  });

  it('adds the /dev/serial/by-id links to the ports they point at, and lists by-id devices the listing missed', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'serial-list-'));
    dirs.push(dir);
    const byId = join(dir, 'by-id');
    await writeFile(join(dir, 'ttyACM0'), '');
    await writeFile(join(dir, 'ttyUSB3'), '');
    await mkdir(byId);
    await symlink('../ttyACM0', join(byId, 'usb-Acme_802.15.4_Radio_0001-if00'));
    await symlink('../ttyUSB3', join(byId, 'usb-FTDI_FT232R_A9XYZ-if00-port0'));
    await symlink('../gone', join(byId, 'usb-dangling'));
    const result = await listSerialPorts({
      byIdDir: byId,
      list: async () => [
        {
          path: join(dir, 'ttyACM0'),
          manufacturer: 'Acme',
          serialNumber: '0001',
          pnpId: 'usb-Acme_802.15.4_Radio_0001-if00',
          locationId: undefined,
          vendorId: '1234',
          productId: 'abcd',
        },
        { path: join(dir, 'ttyS0'), manufacturer: undefined, serialNumber: undefined, pnpId: undefined, locationId: undefined, vendorId: undefined, productId: undefined },
      ],
    });
    expect(result).toEqual({
      ports: [
        {
          path: join(dir, 'ttyACM0'),
          byId: [join(byId, 'usb-Acme_802.15.4_Radio_0001-if00')],
          manufacturer: 'Acme',
          serialNumber: '0001',
          pnpId: 'usb-Acme_802.15.4_Radio_0001-if00',
          vendorId: '1234',
          productId: 'abcd',
        },
        { path: join(dir, 'ttyS0'), byId: [] },
        { path: join(dir, 'ttyUSB3'), byId: [join(byId, 'usb-FTDI_FT232R_A9XYZ-if00-port0')] },
      ],
    });
  });

  it('on this machine returns a listing or a reason, never throws', async () => {
    const result = await listSerialPorts();
    expect('ports' in result || 'unavailable' in result).toBe(true);
  });
});
