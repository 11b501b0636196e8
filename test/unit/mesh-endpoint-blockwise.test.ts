import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Block1Assembler } from '../../src/coap/block1.js';
import { encodeBlock, MeshClient } from '../../src/coap/client/index.js';
import { MeshEndpoint, type DlmsUplink } from '../../src/coap/endpoint.js';
import { settleExchange } from '../../src/coap/exchanges.js';
import { createCoapServer, listenCoapServer, observeOutgoing } from '../../src/coap/server.js';
import { RawCoapPeer } from '../helpers/raw-coap-peer.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const block = (num: number, more: boolean, szx = 4) => encodeBlock({ num, more, szx });

describe('Block1Assembler', () => {
  it('assembles in order, answers a repeated block again, and refuses gaps, oversize and too many uploads', () => {
    let now = 0;
    const assembler = new Block1Assembler({ maxBodyBytes: 100, maxUploads: 1, idleMs: 5000, now: () => now });
    const a = Buffer.alloc(32, 1);
    const b = Buffer.alloc(32, 2);
    expect(assembler.accept('p', block(0, true, 1), a)).toMatchObject({ kind: 'continue' });
    // The client lost our 2.31 and sent block 0 again as a new request: a new upload from the start.
    expect(assembler.accept('p', block(0, true, 1), a)).toMatchObject({ kind: 'continue' });
    expect(assembler.accept('p', block(1, true, 1), b)).toMatchObject({ kind: 'continue' });
    expect(assembler.accept('p', block(1, true, 1), b)).toMatchObject({ kind: 'continue' });
    expect(assembler.accept('q', block(0, true, 1), a)).toMatchObject({ kind: 'refused', code: '5.03' });
    const done = assembler.accept('p', block(2, false, 1), Buffer.from('end'));
    expect(done.kind).toBe('complete');
    expect(done.kind === 'complete' && done.body.equals(Buffer.concat([a, b, Buffer.from('end')]))).toBe(true);
    expect(assembler.inProgress).toBe(0);

    expect(assembler.accept('p', block(3, true, 1), a)).toMatchObject({ kind: 'refused', code: '4.08' });
    expect(assembler.accept('p', block(0, true, 1), Buffer.alloc(10))).toMatchObject({ kind: 'refused', code: '4.00' });
    expect(assembler.accept('p', Buffer.of(0x0f), a)).toMatchObject({ kind: 'refused', code: '4.00' });
    expect(assembler.accept('p', block(0, true, 1), a, 1000)).toMatchObject({ kind: 'refused', code: '4.13' });
    assembler.accept('p', block(0, true, 1), a);
    assembler.accept('p', block(1, true, 1), a);
    assembler.accept('p', block(2, true, 1), a);
    expect(assembler.accept('p', block(3, true, 1), a)).toMatchObject({ kind: 'refused', code: '4.13' });
    assembler.accept('p', block(0, true, 1), a);
    now = 10_000;
    // Idle for longer than idleMs: forgotten, so another client may start.
    expect(assembler.accept('q', block(0, true, 1), a)).toMatchObject({ kind: 'continue' });
  });
});

describe('mesh endpoint receiving block-wise requests', () => {
  async function endpoint(): Promise<{ mesh: MeshEndpoint; frames: DlmsUplink[] }> {
    const mesh = new MeshEndpoint({ bind: '::1', port: 0, acceptTimeoutMs: 3000, retryAfterSeconds: 5 });
    const frames: DlmsUplink[] = [];
    mesh.onDlmsUplink((uplink) => {
      frames.push(uplink);
      settleExchange(uplink.exchangeId, uplink.frameKey, { accepted: true });
    });
    await mesh.start();
    cleanups.push(() => mesh.stop());
    return { mesh, frames };
  }

  it('takes a DLMS frame from libcoap in 256-byte blocks with a fresh token per block', async () => {
    const { mesh, frames } = await endpoint();
    const dir = await mkdtemp(path.join(os.tmpdir(), 'ami-block1-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const frame = randomBytes(2000);
    frame[0] = 0xc8;
    await writeFile(path.join(dir, 'frame.bin'), frame);
    const output = await new Promise<string>((resolve) => {
      execFile(
        '/usr/bin/coap-client-notls',
        ['-m', 'post', '-t', '42', '-b', '256', '-f', path.join(dir, 'frame.bin'), '-v', '6', `coap://[::1]:${mesh.port}/dlms?ep=mtr-blocks`],
        { timeout: 20_000 },
        (_err, stdout, stderr) => resolve(`${stdout}${stderr}`),
      );
    });
    // libcoap exits 0 whatever happened: its log shows the final answer.
    expect(output).toMatch(/c:2\.04/);
    expect(frames).toHaveLength(1);
    expect(frames[0]!.frame.equals(frame)).toBe(true);
    expect(frames[0]!.meter).toBe('mtr-blocks');
  });

  it('takes a block-wise upload from the gateway client and refuses a block with no upload in progress (4.08)', async () => {
    const { mesh, frames } = await endpoint();
    const client = await MeshClient.open({ bind: '::1' }, { blockSize: 128 });
    cleanups.push(() => client.close());
    const frame = randomBytes(700);
    const response = await client.request({ peer: { address: '::1', port: mesh.port! }, method: 'POST', path: '/dlms', payload: frame, contentFormat: 42 });
    expect(response.code).toBe('2.04');
    expect(response.exchanges).toBe(6);
    expect(frames.map((f) => f.frame.equals(frame))).toEqual([true]);
    // Block 3 of an upload that never started: 4.08 Request Entity Incomplete.
    const peer = await RawCoapPeer.open();
    cleanups.push(() => peer.close());
    peer.send(
      {
        code: '0.02',
        confirmable: true,
        messageId: 77,
        token: Buffer.from('0badf00d', 'hex'),
        options: [
          { name: 'Uri-Path', value: Buffer.from('dlms') },
          { name: 'Content-Format', value: Buffer.of(42) },
          { name: 'Block1', value: block(3, true) },
        ],
        payload: Buffer.alloc(256, 1),
      },
      { address: '::1', port: mesh.port! },
    );
    await peer.receivedCount(1);
    expect(peer.received[0]!.packet).toMatchObject({ ack: true, messageId: 77, code: '4.08' });
    expect(frames).toHaveLength(1);
  });
});

describe('the server socket after close', () => {
  it('drops a datagram the library sends from a late timer instead of throwing', async () => {
    const server = createCoapServer('::1');
    await listenCoapServer(server, 0, '::1');
    const send = observeOutgoing(server, () => undefined)!;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    expect(() => send(Buffer.from([0x60, 0, 0, 1]), 9, '::1')).not.toThrow();
  });
});
