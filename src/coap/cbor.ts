import { Decoder, Encoder } from 'cbor-x';

// Plain RFC 8949 CBOR only: cbor-x's record extension (tag 105) would make
// payloads unreadable to a HES or meter using another CBOR library.
const encoder = new Encoder({ useRecords: false, mapsAsObjects: true, variableMapSize: true });
const decoder = new Decoder({ useRecords: false, mapsAsObjects: true });

export function cborEncode(value: unknown): Buffer {
  return encoder.encode(value);
}

/** Decodes one CBOR item; throws the library's error on malformed input. */
export function cborDecode(bytes: Uint8Array): unknown {
  return decoder.decode(bytes);
}
