import { cpSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MeshClient } from '../../src/coap/client/index.js';
import { MeshEndpoint } from '../../src/coap/endpoint.js';
import { openFirmwareRepository } from '../../src/firmware/index.js';
import { FirmwareResource } from '../../src/mesh/firmware-resource.js';
import { REPO_ROOT } from '../helpers/appliance.js';
import { RawCoapPeer } from '../helpers/raw-coap-peer.js';

const FAST = { ackTimeoutMs: 20, ackRandomFactor: 1, maxRetransmit: 2, separateResponseTimeoutMs: 300 };

/**
 * Relay control traffic goes first: while the gateway's mesh client has a
 * control request queued or under way, meters asking for image blocks are
 * told to come back (5.03 with Max-Age); the listing is still served.
 */
describe('firmware resource defers image blocks to control traffic', () => {
  const scratch = mkdtempSync(path.join(os.tmpdir(), 'ami-fw-defer-'));
  let endpoint: MeshEndpoint;
  let gatewayClient: MeshClient;
  let meterClient: MeshClient;
  let resource: FirmwareResource;

  beforeAll(async () => {
    cpSync(path.join(REPO_ROOT, 'firmware-images', 'test-images'), path.join(scratch, 'images'), { recursive: true });
    const rootCa = readFileSync(path.join(REPO_ROOT, 'firmware-images', 'test-ca', 'root-ca.pem'), 'utf8');
    const repository = await openFirmwareRepository({ root: path.join(scratch, 'images'), trustAnchorsPem: [rootCa] });
    // Slower retransmissions than the meter's: the relay command stays pending while the meter asks.
    gatewayClient = await MeshClient.open({ bind: '::1' }, { transmission: { ...FAST, ackTimeoutMs: 200 } });
    meterClient = await MeshClient.open({ bind: '::1' }, { transmission: FAST });
    endpoint = new MeshEndpoint({ bind: '::1', port: 0, acceptTimeoutMs: 2_000, retryAfterSeconds: 30 });
    resource = new FirmwareResource(repository, { deferWhile: () => gatewayClient.controlRequestsPending() > 0, deferSeconds: 3 });
    endpoint.addResource(resource);
    await endpoint.start();
  });

  afterAll(async () => {
    await meterClient.close();
    await gatewayClient.close();
    await endpoint.stop();
    rmSync(scratch, { recursive: true, force: true });
  });

  it('answers 5.03 Max-Age while a relay command is pending, and the image once it is done', async () => {
    const peer = { address: '::1', port: endpoint.port as number };
    // A relay command to a meter that does not answer: pending until its retransmissions run out.
    const silentMeter = await RawCoapPeer.open();
    const control = gatewayClient.request({ peer: { address: silentMeter.address, port: silentMeter.port }, method: 'POST', path: '/dlms', priority: 'control' }).catch((err: unknown) => err);
    expect(gatewayClient.controlRequestsPending()).toBe(1);
    const deferred = await meterClient.request({ peer, method: 'GET', path: '/fw/acme/comm-2.1.0' });
    expect(deferred).toMatchObject({ code: '5.03', maxAge: 3 });
    expect(resource.deferred).toBe(1);
    const listing = await meterClient.request({ peer, method: 'GET', path: '/fw' });
    expect(listing.code).toBe('2.05');

    expect(await control).toMatchObject({ code: 'COMM_TIMEOUT_ERR' });
    await silentMeter.close();
    expect(gatewayClient.controlRequestsPending()).toBe(0);
    const served = await meterClient.request({ peer, method: 'GET', path: '/fw/acme/comm-2.1.0' });
    expect(served.code).toBe('2.05');
    expect(served.payload.length).toBe(4096);
    // A metrology request does not defer anything.
    const metrology = gatewayClient.request({ peer: { address: '::1', port: 9 }, method: 'GET', path: '/x' }).catch(() => undefined);
    expect(gatewayClient.controlRequestsPending()).toBe(0);
    await metrology;
  });
});
