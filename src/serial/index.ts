import { read as readCallback } from 'node:fs';
import { promisify } from 'node:util';

/**
 * What the gateway's serial transports (the 802.15.4 radio, src/mesh, and
 * the optical probe, src/c1218) share about serialport itself, below any
 * protocol.
 */

/** What the hangup guard needs of serialport's Unix (Linux, macOS) binding port. */
interface UnixBindingPort {
  fd: number | null;
  readonly isOpen: boolean;
  readonly poller: { once(event: 'readable', callback: (error: Error | null) => void): unknown };
  read(buffer: Buffer, offset: number, length: number): Promise<{ buffer: Buffer; bytesRead: number }>;
}

function isUnixBindingPort(value: unknown): value is UnixBindingPort {
  if (typeof value !== 'object' || value === null) return false;
  const candidate = value as Partial<UnixBindingPort>;
  return typeof candidate.fd === 'number' && typeof candidate.read === 'function' && typeof candidate.poller?.once === 'function';
}

/** Consecutive end-of-file reads taken as a hangup; one could be a fluke, a hung-up tty returns them forever. */
const END_OF_FILE_READS_FOR_HANGUP = 3;

const readFd = promisify(readCallback);

/**
 * serialport 13's Unix read retries at once, without limit, when read()
 * returns 0 bytes. A tty that was hung up (the pty's other side closed, and
 * some USB-serial drivers on unplug) returns 0 forever when a read is already
 * under way at the hangup: a busy loop at 100 % CPU, and the port never
 * reports the disconnect, so the link never reopens. This replaces the
 * port's read with the same logic (wait for readable on EAGAIN, a cancelled
 * error when closed) except that end of file is a disconnect: the stream then
 * closes the port with a DisconnectedError like any unplug. With the
 * binding's default VMIN=1 a live port never reads 0 bytes, it says EAGAIN.
 *
 * Pass it a SerialPort's `port` (the binding port) right after opening, before
 * anything reads; other bindings (Windows, the mock) are left alone. Both
 * serial transports use it: the 802.15.4 radio and the optical probe.
 */
export function guardSerialPortHangup(binding: unknown): void {
  if (!isUnixBindingPort(binding)) return;
  const portNotOpen = (): Error => Object.assign(new Error('Port is not open'), { canceled: true });
  binding.read = async (buffer, offset, length) => {
    let endOfFileReads = 0;
    for (;;) {
      const fd = binding.fd;
      if (!binding.isOpen || fd === null) throw portNotOpen();
      let bytesRead: number;
      try {
        ({ bytesRead } = await readFd(fd, buffer, offset, length, null));
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        if (code !== 'EAGAIN' && code !== 'EWOULDBLOCK' && code !== 'EINTR') throw error;
        if (!binding.isOpen) throw portNotOpen();
        await new Promise<void>((resolve, reject) => binding.poller.once('readable', (failure) => (failure ? reject(failure) : resolve())));
        continue;
      }
      if (bytesRead > 0) return { buffer, bytesRead };
      if (++endOfFileReads >= END_OF_FILE_READS_FOR_HANGUP) throw new Error('the device hung up (reads return end of file)');
    }
  };
}
