import type { IncomingMessage, OutgoingMessage } from 'coap';
import type { MeshResource } from '../coap/endpoint.js';
import { FirmwareError, type FirmwareRepository, type ImageToSend } from '../firmware/index.js';

/**
 * The gateway's firmware images served to meters over the mesh (issue 9):
 * `GET /fw` lists the good images in link format (RFC 6690), `GET
 * /fw/<image id>` sends one image, block-wise (RFC 7959 Block2) as the coap
 * library cuts large bodies, in whatever block size the meter asks for.
 *
 * Every download is verified before it starts: the first block (Block2 num
 * 0, or a request without Block2) re-reads and re-verifies the image
 * (signature, chain, size, SHA-256) through the repository, and later blocks
 * come from those verified bytes, kept for `keepMs` after the last request
 * so that a slow meter's download stays consistent even if the file changes
 * under it. A quarantined or unknown image is 4.04: it is never sent.
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

export class FirmwareResource implements MeshResource {
  private readonly verified = new Map<string, Verified>();
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

  handle(req: IncomingMessage, res: OutgoingMessage, path: string): void {
    if (req.method !== 'GET') {
      res.code = '4.05';
      res.end();
      return;
    }
    if (path === '/fw' || path === '/fw/') {
      this.list(res);
      return;
    }
    const id = path
      .slice('/fw/'.length)
      .split('/')
      .map((segment) => decodeURIComponent(segment))
      .join('/');
    if (this.options.deferWhile?.()) {
      this.deferred += 1;
      res.code = '5.03';
      res.setOption('Max-Age', this.options.deferSeconds ?? 2);
      res.end();
      return;
    }
    void this.send(id, blockNumber(req), res);
  }

  private list(res: OutgoingMessage): void {
    const links = this.repository.goodImages().map((image) => {
      const href = `/fw/${image.id.split('/').map(encodeURIComponent).join('/')}`;
      return `<${href}>;rt="firmware.${image.manifest.target}";v="${image.manifest.version}";sz=${image.manifest.size}`;
    });
    res.setOption('Content-Format', LINK_FORMAT);
    res.end(Buffer.from(links.join(',')));
  }

  private async send(id: string, block: number, res: OutgoingMessage): Promise<void> {
    this.forgetIdle();
    let entry = block > 0 ? this.verified.get(id) : undefined;
    if (!entry) {
      try {
        const image = await this.repository.verifyBeforeSend(id);
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
    res.setOption('Content-Format', OCTET_STREAM);
    // An ETag lets a meter resuming a download tell whether the image is still the same. For a
    // block-wise answer the coap library replaces it with its own digest of the payload, which
    // serves the same purpose; ours stands when the image fits one block.
    res.setOption('ETag', entry.etag);
    res.end(entry.image.bytes);
  }

  private forgetIdle(): void {
    const cutoff = this.now() - this.keepMs;
    for (const [id, entry] of this.verified) if (entry.lastUsed < cutoff) this.verified.delete(id);
  }
}

/** The block a request asks for (RFC 7959 2.2: NUM is the option value shifted right by 4), 0 without Block2. */
function blockNumber(req: IncomingMessage): number {
  const option = req._packet.options?.find((o) => o.name === 'Block2');
  if (!option || !Buffer.isBuffer(option.value)) return 0;
  let value = 0;
  for (const byte of option.value) value = value * 256 + byte;
  return Math.floor(value / 16);
}
