import type { Node, NodeAPI, NodeDef, NodeMessageInFlow } from 'node-red';
import type { XdlmsApdu } from '../../src/dlms/apdu.js';
import type { SealOptions } from '../../src/keys/keyring.js';
import type { KeyringNode } from '../shared/types.js';

interface DlmsEncodeDef extends NodeDef {
  keyring: string;
  security: SealOptions['security'];
  framing: SealOptions['framing'];
  wrapper: boolean;
}

interface EncodeMessage extends NodeMessageInFlow {
  systemTitle?: unknown;
  dlms?: unknown;
}

const SECURITY = new Set<SealOptions['security']>(['authenticated-encrypted', 'authenticated', 'encrypted']);

export = function register(RED: NodeAPI): void {
  function AmiDlmsEncode(this: Node, def: DlmsEncodeDef): void {
    RED.nodes.createNode(this, def);
    const node = this;
    const options: SealOptions = {
      security: SECURITY.has(def.security) ? def.security : 'authenticated-encrypted',
      framing: def.framing === 'glo' ? 'glo' : 'general-glo',
      // wPort 1 on both sides: the management client and logical device (Green Book UDP wrapper).
      ...(def.wrapper ? { wrapper: { sourceWPort: 1, destinationWPort: 1 } } : {}),
    };
    const keyringNode = RED.nodes.getNode(def.keyring) as KeyringNode | null;
    if (!keyringNode) {
      node.status({ fill: 'red', shape: 'ring', text: 'ami-dlms-encode.status.no-keyring' });
      node.error(RED._('ami-dlms-encode.errors.no-keyring'));
      return;
    }
    keyringNode.register(node);
    let ok = 0;
    let failed = 0;

    node.on('input', (incoming, send, done) => {
      const msg = incoming as EncodeMessage;
      const systemTitle = typeof msg.systemTitle === 'string' ? msg.systemTitle : undefined;
      const meter = typeof msg.topic === 'string' && msg.topic !== '' ? msg.topic : undefined;
      const fail = (err: Error & { code?: string }): void => {
        failed += 1;
        node.status({ fill: 'red', shape: 'dot', text: RED._('ami-dlms-encode.status.counts', { ok, failed }) });
        done(Object.assign(new Error(`${RED._('ami-dlms-encode.errors.encode')}: ${err.message}`), { code: err.code ?? 'ERROR' }));
      };
      if (!systemTitle && !meter) {
        fail(Object.assign(new Error(RED._('ami-dlms-encode.errors.no-meter')), { code: 'NO_SYSTEM_TITLE' }));
        return;
      }
      const apdu = msg.payload;
      if (!(apdu instanceof Uint8Array) && (typeof apdu !== 'object' || apdu === null || typeof (apdu as { type?: unknown }).type !== 'string')) {
        fail(Object.assign(new Error(RED._('ami-dlms-encode.errors.bad-input')), { code: 'BAD_INPUT' }));
        return;
      }
      keyringNode
        .keyring()
        .then(async (keyring) => ({
          sealed: await keyring.sealFrame(apdu as XdlmsApdu | Uint8Array, { ...(systemTitle ? { systemTitle } : {}), ...(meter ? { meter } : {}) }, options),
          gatewaySystemTitle: keyring.gatewaySystemTitle,
        }))
        .then(
          ({ sealed, gatewaySystemTitle }) => {
            try {
              ok += 1;
              node.status({ fill: 'green', shape: 'dot', text: RED._('ami-dlms-encode.status.counts', { ok, failed }) });
              msg.payload = sealed.frame;
              msg.topic = sealed.meter;
              msg.dlms = { systemTitle: sealed.systemTitle, gatewaySystemTitle, invocationCounter: sealed.invocationCounter, meter: sealed.meter };
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
      keyringNode.deregister(node).then(done, done);
    });
  }
  RED.nodes.registerType('ami-dlms-encode', AmiDlmsEncode);
};
