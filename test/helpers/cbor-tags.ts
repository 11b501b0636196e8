/**
 * Lists the CBOR tags (major type 6) in one encoded data item, descending into
 * arrays, maps and tags. Used to prove an encoder wrote plain byte strings: a
 * search for the tag's bytes would also match random ciphertext inside them.
 */
export function cborTagsIn(bytes: Uint8Array): number[] {
  const tags: number[] = [];
  const end = walk(bytes, 0, tags);
  if (end !== bytes.length) throw new Error(`CBOR item ends at ${end}, buffer has ${bytes.length} bytes`);
  return tags;
}

function readArgument(bytes: Uint8Array, offset: number): { value: number; next: number } {
  const info = bytes[offset]! & 0x1f;
  if (info < 24) return { value: info, next: offset + 1 };
  const width = info === 24 ? 1 : info === 25 ? 2 : info === 26 ? 4 : info === 27 ? 8 : 0;
  if (width === 0) throw new Error(`unsupported additional information ${info} at ${offset}`);
  if (offset + 1 + width > bytes.length) throw new Error(`truncated argument at ${offset}`);
  let value = 0;
  for (let i = 0; i < width; i++) value = value * 256 + bytes[offset + 1 + i]!;
  return { value, next: offset + 1 + width };
}

function walk(bytes: Uint8Array, offset: number, tags: number[]): number {
  if (offset >= bytes.length) throw new Error(`truncated item at ${offset}`);
  const major = bytes[offset]! >> 5;
  const { value, next } = readArgument(bytes, offset);
  switch (major) {
    case 0:
    case 1:
    case 7:
      return next;
    case 2:
    case 3:
      return next + value;
    case 4: {
      let at = next;
      for (let i = 0; i < value; i++) at = walk(bytes, at, tags);
      return at;
    }
    case 5: {
      let at = next;
      for (let i = 0; i < value * 2; i++) at = walk(bytes, at, tags);
      return at;
    }
    default:
      tags.push(value);
      return walk(bytes, next, tags);
  }
}
