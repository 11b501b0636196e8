import { blockBytes, decodeBlock, encodeBlock, type BlockOption } from './client/options.js';

/**
 * Reassembles request bodies that meters send block-wise (RFC 7959 Block1),
 * for the mesh endpoint. The coap library does this itself, but it matches
 * the blocks of one body by token, and clients that use a fresh token for
 * every block (libcoap does; RFC 7959 section 2.5 allows it) never get past
 * the second block. Here the blocks of a body are matched by source address,
 * port and path, as the RFC says servers should.
 *
 * Memory is bounded: a body may be at most `maxBodyBytes`, at most
 * `maxUploads` bodies are being assembled at once, and one that sees no block
 * for `idleMs` is forgotten.
 */
export interface Block1Options {
  maxBodyBytes: number;
  maxUploads: number;
  idleMs: number;
  now?: () => number;
}

export type Block1Result =
  /** More blocks to come: answer 2.31 Continue with `block`. */
  | { kind: 'continue'; block: Buffer }
  /** The last block: `body` is the whole request body; echo `block` in the final answer. */
  | { kind: 'complete'; body: Buffer; block: Buffer }
  /** Refuse with `code` (4.00, 4.08 Request Entity Incomplete, 4.13, 5.03). */
  | { kind: 'refused'; code: '4.00' | '4.08' | '4.13' | '5.03'; message: string };

interface Upload {
  parts: Buffer[];
  bytes: number;
  /** The size of the last block received, to recognise it sent again. */
  lastBlockBytes: number;
  lastAt: number;
}

export class Block1Assembler {
  private readonly uploads = new Map<string, Upload>();
  private readonly now: () => number;
  private lastSweep = 0;

  constructor(private readonly options: Block1Options) {
    this.now = options.now ?? Date.now;
  }

  get inProgress(): number {
    return this.uploads.size;
  }

  /**
   * Takes one block of the body `key` (peer and path). `rawBlock` is the
   * Block1 option's value; `size1` the total the client announced, if any.
   */
  accept(key: string, rawBlock: Buffer, payload: Buffer, size1?: number): Block1Result {
    this.forgetIdle();
    const block = decodeBlock(rawBlock);
    if (!block) return { kind: 'refused', code: '4.00', message: 'malformed Block1 option' };
    const size = blockBytes(block.szx);
    if (size1 !== undefined && size1 > this.options.maxBodyBytes) return this.tooLarge(key);
    if (block.more && payload.length !== size) return { kind: 'refused', code: '4.00', message: `block ${block.num} has ${payload.length} bytes, not ${size}` };
    if (payload.length > size) return { kind: 'refused', code: '4.00', message: `block ${block.num} is larger than its block size ${size}` };
    const offset = block.num * size;
    let upload = this.uploads.get(key);
    if (offset === 0) {
      if (!upload && this.uploads.size >= this.options.maxUploads) {
        return { kind: 'refused', code: '5.03', message: `${this.uploads.size} block-wise uploads in progress; try again later` };
      }
      upload = { parts: [], bytes: 0, lastBlockBytes: 0, lastAt: this.now() };
      this.uploads.set(key, upload);
    }
    if (!upload) return { kind: 'refused', code: '4.08', message: `no upload in progress for block ${block.num}: start at block 0` };
    if (offset !== 0 && offset === upload.bytes - upload.lastBlockBytes && payload.length === upload.lastBlockBytes) {
      // The same block again as a new request (the client lost our answer): answer it again.
      upload.lastAt = this.now();
      return block.more ? { kind: 'continue', block: encodeBlock(block) } : this.finish(key, upload, block);
    }
    if (offset !== upload.bytes) {
      this.uploads.delete(key);
      return { kind: 'refused', code: '4.08', message: `expected the block at byte ${upload.bytes}, got one at byte ${offset}` };
    }
    if (upload.bytes + payload.length > this.options.maxBodyBytes) return this.tooLarge(key);
    upload.parts.push(Buffer.from(payload));
    upload.bytes += payload.length;
    upload.lastBlockBytes = payload.length;
    upload.lastAt = this.now();
    if (block.more) return { kind: 'continue', block: encodeBlock(block) };
    return this.finish(key, upload, block);
  }

  clear(): void {
    this.uploads.clear();
  }

  /** `block` is the last one (more unset), echoed as it came. */
  private finish(key: string, upload: Upload, block: BlockOption): Block1Result {
    this.uploads.delete(key);
    return { kind: 'complete', body: Buffer.concat(upload.parts), block: encodeBlock(block) };
  }

  private tooLarge(key: string): Block1Result {
    this.uploads.delete(key);
    return { kind: 'refused', code: '4.13', message: `request bodies are at most ${this.options.maxBodyBytes} bytes` };
  }

  private forgetIdle(): void {
    const now = this.now();
    // Uploads go idle in any order, so finding them means a look at each: at most once a second.
    if (now - this.lastSweep < 1000) return;
    this.lastSweep = now;
    for (const [key, upload] of this.uploads) {
      if (now - upload.lastAt > this.options.idleMs) this.uploads.delete(key);
    }
  }
}
