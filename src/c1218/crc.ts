/**
 * Checksums of ANSI C12.18: the packet CRC and the table-data checksum.
 * Pure functions over bytes.
 */

/** Reflected CCITT polynomial 0x1021 (0x8408 bit-reversed), one entry per byte value. */
const CRC_TABLE: Uint16Array = (() => {
  const table = new Uint16Array(256);
  for (let n = 0; n < 256; n++) {
    let crc = n;
    for (let bit = 0; bit < 8; bit++) crc = crc & 1 ? (crc >>> 1) ^ 0x8408 : crc >>> 1;
    table[n] = crc;
  }
  return table;
})();

/**
 * CRC-16/X-25 (the HDLC CRC: polynomial 0x1021 reflected, init 0xFFFF,
 * xorout 0xFFFF), which C12.18 computes over a whole packet from <stp> up to
 * the last data byte and sends least significant byte first. Check value of
 * "123456789" is 0x906E.
 */
export function crc16X25(bytes: Uint8Array, start = 0, end = bytes.length): number {
  let crc = 0xffff;
  for (let i = start; i < end; i++) {
    crc = (crc >>> 8) ^ (CRC_TABLE[(crc ^ (bytes[i] as number)) & 0xff] as number);
  }
  return (crc ^ 0xffff) & 0xffff;
}

/**
 * The <cksum> of C12.18 table data (read responses, writes): the 8-bit two's
 * complement of the sum of the data bytes, so that data plus checksum sum to 0
 * modulo 256.
 */
export function tableChecksum(bytes: Uint8Array, start = 0, end = bytes.length): number {
  let sum = 0;
  for (let i = start; i < end; i++) sum = (sum + (bytes[i] as number)) & 0xff;
  return (0x100 - sum) & 0xff;
}
