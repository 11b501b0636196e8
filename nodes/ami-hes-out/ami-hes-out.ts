import type { Node, NodeAPI, NodeDef, NodeMessageInFlow } from 'node-red';
import { settleExchange } from '../../src/coap/exchanges.js';
import { ReadingFormatError, validateReading } from '../../src/coap/reading.js';
import { readingKey, type HesRecord } from '../../src/hes/contract.js';
import { DlmsRecordError, isDlmsRecordSource, recordFromDlms } from '../../src/hes/records.js';
import type { HesEndpointNode } from '../shared/types.js';

interface HesOutDef extends NodeDef {
  hes: string;
}

interface HesOutMessage extends NodeMessageInFlow {
  exchangeId?: unknown;
  hes?: { endpoint: string; key: string } | { key: string; stored: true };
}

export = function register(RED: NodeAPI): void {
  function AmiHesOut(this: Node, def: HesOutDef): void {
    RED.nodes.createNode(this, def);
    const node = this;
    const hes = RED.nodes.getNode(def.hes) as HesEndpointNode | null;
    if (!hes) {
      node.status({ fill: 'red', shape: 'ring', text: 'ami-hes-out.status.no-hes' });
      node.error(RED._('ami-hes-out.errors.no-hes'));
      return;
    }
    hes.register(node);

    node.on('input', (incoming, send, done) => {
      const msg = incoming as HesOutMessage;
      const exchangeId = typeof msg.exchangeId === 'string' ? msg.exchangeId : undefined;
      let record: HesRecord;
      try {
        if (isDlmsRecordSource(msg.payload)) {
          // A frame `dlms decode` authenticated: keyed by system title and invocation counter.
          record = recordFromDlms(msg.payload);
        } else {
          const reading = validateReading(msg.payload);
          record = { key: readingKey(reading.meter, reading.id), kind: 'reading', meter: reading.meter, ts: reading.ts, body: reading };
        }
      } catch (err) {
        if (!(err instanceof ReadingFormatError) && !(err instanceof DlmsRecordError)) throw err;
        // Not the reading the meter sent (the mesh endpoint checked that one), so
        // the exchange is left alone: the meter hears 5.03 when it times out.
        done(new Error(`${RED._('ami-hes-out.errors.bad-payload')}: ${err.message}`));
        return;
      }
      hes.deliver(record).then(
        (endpoint) => {
          if (exchangeId && settleExchange(exchangeId, record.key, { accepted: true }) === 'key-mismatch') {
            node.warn(`${RED._('ami-hes-out.errors.key-mismatch')} ${record.key}`);
          }
          // Durable: the record is on disk and the outbox sends it; otherwise the HES has it.
          msg.hes = hes.durable ? { key: record.key, stored: true } : { endpoint, key: record.key };
          send(msg);
          done();
        },
        (err: Error & { code?: string }) => {
          if (exchangeId) settleExchange(exchangeId, record.key, { accepted: false, reason: err.message });
          done(new Error(`${RED._('ami-hes-out.errors.delivery')} ${record.key} (${err.code ?? 'ERROR'}): ${err.message}`));
        },
      );
    });

    node.on('close', (done: () => void) => {
      hes.deregister(node).then(done, (err: Error) => {
        node.error(err.message);
        done();
      });
    });
  }
  RED.nodes.registerType('ami-hes-out', AmiHesOut);
};
