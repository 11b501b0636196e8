import type { IncomingMessage, OutgoingMessage } from 'coap';
import { blockBytes, decodeBlock, encodeBlock } from '../coap/client/options.js';
import type { MeshResource } from '../coap/endpoint.js';
import { FirmwareError, type FirmwareRepository, type ImageToSend } from '../firmware/index.js';

/**
 * The gateway's firmware images served to meters over the mesh (issue 9):
 * `GET /fw` lists the good images in link format (RFC 6690), `GET
 * /fw/<image id>` sends one image, block-wise (RFC 7959 Block2) in the
 * block size the meter asks for, at most 512 bytes (a larger wish is
 * answered in 512-byte blocks, as RFC 7959 section 2.3 allows; a 6LoWPAN
 * mesh carries 1024-byte blocks poorly anyway).
 *
 * The resource cuts its blocks itself (MeshResource.ownBlock2): the coap
 * library would replace the ETag with a 2-byte XOR of the image and keep the
 * whole image in its cache for every block's token.
 *
 * Every download is verified before it starts: the first block (Block2 num
 * 0, or a request without Block2) re-reads and re-verifies the image
 * (signature, chain, size, SHA-256) through the repository, and later blocks
 * come from those verified bytes, kept for `keepMs` after the last request
 * so that a slow meter's download stays consistent even if the file changes
 * under it. Downloads that start while a verification of their image is
 * running share its verdict (a hundred meters starting at once cost one
 * verification, not a hundred). A quarantined or unknown image is 4.04: it
 * is never sent.
 */
export interface FirmwareResourceOptions {
  /** How long verified bytes serve later blocks after the last request for them (default 120 s). */
  keepMs?: number;
  /**
   * While true, image blocks are answered 5.03 with Max-Age `deferSeconds`
   * (the meter asks again then): relay control traffic goes first, e.g.
   * `() => client.controlRequestsPending() > 0`. The listing is not deferred.
   */
  deferWhile?: () => boolean;
  /** Max-Age of a deferral (default 2 s). */
  deferSeconds?: number;
  /**
   * Blocks are deferred for at most this long in a row (default 10 s): a
   * relay command retransmitting to a dead meter must not stall every
   * download on the mesh for its whole 93 s.
   */
  maxDeferMs?: number;
  /** Told about each download that was refused (quarantined, changed on disk, unknown), for logs and counters. */
  onRefused?: (id: string, error: FirmwareError) => void;
  now?: () => number;
}

/** CoAP Content-Format application/octet-stream (RFC 7252 12.3). */
const OCTET_STREAM = 42;
/** CoAP Content-Format application/link-format. */
const LINK_FORMAT = 40;

interface Verified {
  image: ImageToSend;
  etag: Buffer;
  lastUsed: number;
}

/** The largest block served (SZX 5). */
export const MAX_FIRMWARE_BLOCK_SZX = 5;

export class FirmwareResource implements MeshResource {
  /** Images are cut here; the listing (GET /fw) is left to the library's Block2. */
  ownBlock2(path: string): boolean {
    return path.startsWith('/fw/');
  }
  private readonly verified = new Map<string, Verified>();
  private readonly verifying = new Map<string, Promise<ImageToSend>>();
  private deferringSince: number | undefined;
  /** Block requests answered 5.03 because control traffic was under way. */
  deferred = 0;
  private readonly keepMs: number;
  private readonly now: () => number;

  constructor(
    private readonly repository: FirmwareRepository,
    private readonly options: FirmwareResourceOptions = {},
  ) {
    this.keepMs = options.keepMs ?? 120_000;
    this.now = options.now ?? Date.now;
  }

  matches(path: string): boolean {
    return path === '/fw' || path.startsWith('/fw/');
  }

  handle(req: IncomingMessage, res: OutgoingMessage, path: string, _query = '', block2?: Buffer): void {
    if (req.method !== 'GET') {
      res.code = '4.05';
      res.end();
      return;
    }
    if (path === '/fw' || path === '/fw/') {
      this.list(res);
      return;
    }
    let id: string;
    try {
      id = path
        .slice('/fw/'.length)
        .split('/')
        .map((segment) => decodeURIComponent(segment))
        .join('/');
    } catch {
      // A malformed percent-escape names no image.
      res.code = '4.04';
      res.end();
      return;
    }
    if (this.deferNow()) {
      this.deferred += 1;
      res.code = '5.03';
      res.setOption('Max-Age', this.options.deferSeconds ?? 2);
      res.end();
      return;
    }
    const asked = block2 === undefined ? undefined : decodeBlock(block2);
    if (block2 !== undefined && (asked === undefined || asked.szx > 6)) {
      res.code = '4.00';
      res.end();
      return;
    }
    void this.send(id, asked, res);
  }

  private list(res: OutgoingMessage): void {
    const links = this.repository.goodImages().map((image) => {
      const href = `/fw/${image.id.split('/').map(encodeURIComponent).join('/')}`;
      return `<${href}>;rt="firmware.${image.manifest.target}";v="${image.manifest.version}";sz=${image.manifest.size}`;
    });
    res.setOption('Content-Format', LINK_FORMAT);
    res.end(Buffer.from(links.join(',')));
  }

  private async send(id: string, asked: { num: number; szx: number } | undefined, res: OutgoingMessage): Promise<void> {
    this.forgetIdle();
    const num = asked?.num ?? 0;
    let entry = num > 0 ? this.verified.get(id) : undefined;
    if (!entry) {
      try {
        const image = await this.verifyOnce(id);
        entry = { image, etag: Buffer.from(image.manifest.sha256.slice(0, 16), 'hex'), lastUsed: this.now() };
        this.verified.set(id, entry);
      } catch (err) {
        this.verified.delete(id);
        if (!(err instanceof FirmwareError)) throw err;
        this.options.onRefused?.(id, err);
        res.code = '4.04';
        res.end();
        return;
      }
    }
    entry.lastUsed = this.now();
    const bytes = entry.image.bytes;
    res.setOption('Content-Format', OCTET_STREAM);
    // The start of the image's SHA-256: a meter resuming a download can tell whether the image is still the same.
    res.setOption('ETag', entry.etag);
    const szx = Math.min(asked?.szx ?? MAX_FIRMWARE_BLOCK_SZX, MAX_FIRMWARE_BLOCK_SZX);
    const size = blockBytes(szx);
    if (asked === undefined && bytes.length <= size) {
      res.end(bytes);
      return;
    }
    // The same bytes at the smaller block size when the meter asked for larger blocks (RFC 7959 section 2.3).
    const offset = asked === undefined ? 0 : asked.num * blockBytes(asked.szx);
    if (offset >= bytes.length && !(offset === 0 && bytes.length === 0)) {
      res.code = '4.02';
      res.end();
      return;
    }
    const first = Math.floor(offset / size);
    const block = bytes.subarray(first * size, first * size + size);
    res.setOption('Block2', encodeBlock({ num: first, more: first * size + size < bytes.length, szx }));
    res.setOption('Size2', bytes.length);
    res.end(block);
  }

  /** One verification at a time per image: downloads starting while it runs share its verdict. */
  private verifyOnce(id: string): Promise<ImageToSend> {
    let running = this.verifying.get(id);
    if (!running) {
      running = this.repository.verifyBeforeSend(id).finally(() => this.verifying.delete(id));
      this.verifying.set(id, running);
    }
    return running;
  }

  private deferNow(): boolean {
    if (!this.options.deferWhile?.()) {
      this.deferringSince = undefined;
      return false;
    }
    const now = this.now();
    this.deferringSince ??= now;
    return now - this.deferringSince < (this.options.maxDeferMs ?? 10_000);
  }

  private forgetIdle(): void {
    const cutoff = this.now() - this.keepMs;
    for (const [id, entry] of this.verified) if (entry.lastUsed < cutoff) this.verified.delete(id);
  }
}
