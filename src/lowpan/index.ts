/**
 * 6LoWPAN for the serial-radio mesh: IEEE 802.15.4 MAC frames, RFC 6282
 * header compression, RFC 4944 fragmentation, mesh and broadcast headers.
 * Pure functions over bytes; the only state is the Reassembler, whose clock
 * is injected.
 */
export * from './errors.js';
export * from './mac.js';
export * from './iphc.js';
export * from './headers.js';
export * from './frag.js';
export * from './frame.js';
export * from './slip.js';
