/**
 * ANSI C12.18 (optical port) client and ANSI C12.19 table decoding.
 *
 * Layers: crc/packet/services/tables are pure codecs over bytes; link is the
 * data-link layer (ACK/NAK, retransmission, toggle bit, timeouts) over any
 * C1218Stream; client has one method per service; session runs a whole
 * identify → ... → terminate exchange; serial opens an optical probe.
 */
export { C1218Error, isC1218Error, type C1218ErrorCode } from './errors.js';
export { crc16X25, tableChecksum } from './crc.js';
export {
  ACK,
  NAK,
  STP,
  CTRL_FIRST_PACKET,
  CTRL_MULTI_PACKET,
  CTRL_TOGGLE,
  DEFAULT_PACKET_SIZE,
  MAX_PACKET_SIZE,
  PACKET_HEADER_LENGTH,
  PACKET_OVERHEAD,
  PacketDecoder,
  ctrlByte,
  decodePacket,
  encodePacket,
  packetFlags,
  type C1218Packet,
  type DecodedPacket,
  type LinkUnit,
  type PacketDecoderOptions,
  type PacketFlags,
} from './packet.js';
export {
  C1218_BAUD_RATES,
  PASSWORD_LENGTH,
  ResponseCode,
  ServiceCode,
  USER_LENGTH,
  baudRateCode,
  baudRateOfCode,
  decodeIdentifyResponse,
  decodeNegotiateResponse,
  decodeOkResponse,
  decodeReadResponse,
  decodeRequest,
  encodeIdentifyResponse,
  encodeNegotiateResponse,
  encodeOkResponse,
  encodeReadResponse,
  encodeRefusal,
  encodeRequest,
  passwordBytes,
  refusalError,
  standardName,
  type C1218Request,
  type IdentifyResponse,
  type NegotiateResponse,
  type RefusalName,
} from './services.js';
export {
  CharFormat,
  DEFAULT_TABLE_FORMAT,
  MANUFACTURER_TABLE_BASE,
  StandardTable,
  decodeDeviceIdentification,
  decodeGeneralConfiguration,
  decodeKnownTable,
  decodeManufacturerIdentification,
  encodeDeviceIdentification,
  encodeGeneralConfiguration,
  encodeManufacturerIdentification,
  tableFormatOf,
  tableLabel,
  tableName,
  tablesUsed,
  type DecodedTable,
  type DeviceIdentification,
  type GeneralConfiguration,
  type GeneralConfigurationInput,
  type ManufacturerIdentification,
  type TableFormat,
} from './tables.js';
export { DuplexC1218Stream, MemoryStream, createMemoryStreamPair, type C1218Stream, type MemoryStreamOptions } from './stream.js';
export {
  C1218Link,
  C1218_DEFAULT_RETRIES,
  C1218_TIMEOUTS,
  type C1218LinkOptions,
  type C1218LinkStats,
  type C1218Timeouts,
  type LinkEvent,
  type LinkFaultHooks,
} from './link.js';
export { BAUD_SWITCH_SETTLE_MS, C1218Client, type C1218ClientOptions, type NegotiateOptions } from './client.js';
export {
  DEFAULT_SESSION_MAX_PACKETS,
  DEFAULT_SESSION_PACKET_SIZE,
  readTable,
  withC1218Session,
  type C1218SessionInfo,
  type C1218SessionOptions,
  type ReadTableOptions,
  type ReadTableResult,
} from './session.js';
export { C1218_INITIAL_BAUD_RATE, openOpticalPort, type OpticalPortOptions } from './serial.js';
