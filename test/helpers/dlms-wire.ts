/**
 * Helpers for tests of the relay's DLMS port: APDUs through the codec and
 * back (as they go on the wire), answers built with the port's
 * Invoke-Id-And-Priority, and the RelayPortError a call throws.
 */
import { expect } from 'vitest';
import { decodeApdu, encodeApdu, type GetDataResult, type XdlmsApdu } from '../../src/dlms/apdu.js';
import { invokeIdAndPriority } from '../../src/relay/dlms-port.js';
import { RelayPortError } from '../../src/relay/types.js';

/** The RelayPortError `fn` throws (fails the test if it throws anything else or nothing). */
export function portError(fn: () => unknown): RelayPortError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(RelayPortError);
    return err as RelayPortError;
  }
  throw new Error('expected a RelayPortError');
}

/** Through the codec and back, as it goes on the wire. */
export function wire(apdu: XdlmsApdu): XdlmsApdu {
  return decodeApdu(encodeApdu(apdu));
}

export const getResponse = (invokeId: number, result: GetDataResult): XdlmsApdu =>
  wire({ type: 'get-response', invokeIdAndPriority: invokeIdAndPriority(invokeId), result });
export const setResponse = (invokeId: number, result: number): XdlmsApdu =>
  wire({ type: 'set-response', invokeIdAndPriority: invokeIdAndPriority(invokeId), result });
export const actionResponse = (invokeId: number, result: number): XdlmsApdu =>
  wire({ type: 'action-response', invokeIdAndPriority: invokeIdAndPriority(invokeId), result });
