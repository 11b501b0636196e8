import type { Node, NodeAPI, NodeDef, NodeMessageInFlow } from 'node-red';
import { rebindExchange, settleExchange, type ExchangeOutcome } from '../../src/coap/exchanges.js';
import { dlmsFrameKey } from '../../src/coap/endpoint.js';
import { describeApdu } from '../../src/dlms/apdu.js';
import { DlmsError, type DlmsErrorCode } from '../../src/dlms/errors.js';
import { readPushProfile } from '../../src/dlms/profile.js';
import { gatewayHealth } from '../../src/appliance/health.js';
import { dlmsRecordKey } from '../../src/hes/records.js';
import type { KeyringNode } from '../shared/types.js';

interface DlmsDecodeDef extends NodeDef {
  keyring: string;
  replayCheck: boolean;
  allowPlain: boolean;
}

interface DecodeMessage extends NodeMessageInFlow {
  systemTitle?: unknown;
  exchangeId?: unknown;
  frameKey?: unknown;
  meter?: unknown;
  dlms?: unknown;
}

const KEYS_RETRY_SECONDS = 10;

/**
 * What the meter hears when its frame is refused. Frames that can never
 * succeed as sent get a 4.xx, so the meter drops them; frames that may
 * succeed once keys are synced (no keys yet, keys out of sync) get 5.03, so
 * the meter keeps the data and retries.
 */
function meterOutcome(code: DlmsErrorCode, reason: string): ExchangeOutcome {
  switch (code) {
    case 'MIC_FAILURE':
    case 'NO_KEYS':
    case 'NO_SYSTEM_TITLE':
      // Keys are usually a sync away (first start, a resync after MIC failures): retry sooner.
      return { accepted: false, reason, retryAfterSeconds: KEYS_RETRY_SECONDS };
    case 'REPLAY':
    case 'UNPROTECTED':
      return { accepted: false, reason, refuseWith: '4.01' };
    default:
      return { accepted: false, reason, refuseWith: '4.00' };
  }
}

export = function register(RED: NodeAPI): void {
  function AmiDlmsDecode(this: Node, def: DlmsDecodeDef): void {
    RED.nodes.createNode(this, def);
    const node = this;
    const replayCheck = def.replayCheck !== false;
    const allowPlain = def.allowPlain === true;
    const keyringNode = RED.nodes.getNode(def.keyring) as KeyringNode | null;
    if (!keyringNode) {
      node.status({ fill: 'red', shape: 'ring', text: 'ami-dlms-decode.status.no-keyring' });
      node.error(RED._('ami-dlms-decode.errors.no-keyring'));
      return;
    }
    keyringNode.register(node);
    let ok = 0;
    let failed = 0;
    let lastFailed = false;
    let statusTimer: NodeJS.Timeout | undefined;

    // At thousands of frames a second, the status is redrawn at most a few times a second.
    function showCounts(): void {
      if (statusTimer) return;
      statusTimer = setTimeout(() => {
        statusTimer = undefined;
        node.status({
          fill: lastFailed ? 'red' : 'green',
          shape: 'dot',
          text: RED._('ami-dlms-decode.status.counts', { ok, failed }),
        });
      }, 250);
    }

    node.on('input', (incoming, send, done) => {
      const msg = incoming as DecodeMessage;
      const exchangeId = typeof msg.exchangeId === 'string' ? msg.exchangeId : undefined;
      const frameKey = typeof msg.frameKey === 'string' ? msg.frameKey : undefined;
      const fail = (err: Error & { code?: string; offset?: number }): void => {
        failed += 1;
        lastFailed = true;
        gatewayHealth.increment('dlmsFailed');
        if (err.code === 'MIC_FAILURE') gatewayHealth.increment('micFailures');
        if (err.code === 'REPLAY') gatewayHealth.increment('replaysRefused');
        showCounts();
        if (exchangeId && frameKey && err instanceof DlmsError) settleExchange(exchangeId, frameKey, meterOutcome(err.code, `${err.code}: ${err.message}`));
        const code = err.code ?? 'ERROR';
        // Node-RED copies message, code, stack and cause into msg.error: the byte offset travels in the cause.
        const wrapped = Object.assign(
          new Error(`${RED._('ami-dlms-decode.errors.decode')}: ${err.message}`, {
            cause: { code, ...(err.offset !== undefined ? { offset: err.offset } : {}) },
          }),
          { code },
        );
        done(wrapped);
      };
      if (!Buffer.isBuffer(msg.payload)) {
        fail(Object.assign(new Error(RED._('ami-dlms-decode.errors.bad-input')), { code: 'BAD_INPUT' }));
        return;
      }
      const frame = msg.payload;
      const meterHint = typeof msg.meter === 'string' ? msg.meter : typeof msg.topic === 'string' ? msg.topic : undefined;
      const systemTitle = typeof msg.systemTitle === 'string' ? msg.systemTitle : undefined;
      keyringNode
        .keyring()
        .then((keyring) =>
          keyring.openFrame(frame, {
            ...(systemTitle ? { systemTitle } : {}),
            ...(meterHint ? { meter: meterHint } : {}),
            replayCheck,
            allowPlain,
          }),
        )
        .then(
          (opened) => {
            // A throw in here would become an unhandled rejection, which stops the appliance.
            try {
              const described = describeApdu(opened.apdu);
              const profile = readPushProfile(opened.apdu);
              const meter = opened.meter ?? meterHint ?? opened.systemTitle ?? 'unknown';
              const payload: Record<string, unknown> = {
                meter,
                ...(opened.systemTitle ? { systemTitle: opened.systemTitle } : {}),
                ...(opened.security
                  ? { invocationCounter: opened.security.invocationCounter, keyEpoch: opened.keyEpoch ?? 0, security: opened.security }
                  : {}),
                ts: profile?.ts ?? Date.now(),
                apdu: described,
                ...(profile ? { values: profile.values } : {}),
              };
              // The meter's pending request now waits on the record this frame became, if the
              // exchange was received for exactly these bytes (a flow that swapped the payload gets nothing).
              if (exchangeId && frameKey === dlmsFrameKey(frame) && opened.systemTitle && opened.security) {
                rebindExchange(exchangeId, frameKey, dlmsRecordKey(opened.systemTitle, opened.keyEpoch ?? 0, opened.security.invocationCounter));
              }
              msg.payload = payload;
              msg.topic = meter;
              msg.dlms = {
                systemTitle: opened.systemTitle,
                invocationCounter: opened.security?.invocationCounter,
                keyEpoch: opened.keyEpoch,
                repeat: opened.repeat,
                ...(opened.wrapper ? { wrapper: opened.wrapper } : {}),
              };
              ok += 1;
              lastFailed = false;
              gatewayHealth.increment('dlmsDecoded');
              showCounts();
              send(msg);
              done();
            } catch (err) {
              fail(err as Error);
            }
          },
          (err: Error) => fail(err),
        );
    });

    node.on('close', (done: () => void) => {
      clearTimeout(statusTimer);
      keyringNode.deregister(node).then(done, done);
    });
  }
  RED.nodes.registerType('ami-dlms-decode', AmiDlmsDecode);
};
