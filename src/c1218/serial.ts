import { SerialPort } from 'serialport';
import { guardSerialPortHangup } from '../serial/index.js';
import { C1218Error } from './errors.js';
import { DuplexC1218Stream, type C1218Stream } from './stream.js';

export interface OpticalPortOptions {
  /** The rate the session starts at: C12.18 starts at 9600 baud. */
  baudRate?: number;
}

/** The C12.18 initial baud rate (8 data bits, no parity, 1 stop bit). */
export const C1218_INITIAL_BAUD_RATE = 9600;

/**
 * Opens an ANSI type 2 optical probe (or any serial device: a pty in tests) as
 * a C1218Stream, 8N1 at the initial baud rate. setBaudRate drains what was
 * written before switching, so an ACK still goes out at the old rate.
 * Rejects with PORT_OPEN_FAILED when the port cannot be opened.
 */
export async function openOpticalPort(path: string, options: OpticalPortOptions = {}): Promise<C1218Stream> {
  const port = new SerialPort({ path, baudRate: options.baudRate ?? C1218_INITIAL_BAUD_RATE, dataBits: 8, parity: 'none', stopBits: 1, autoOpen: false });
  await new Promise<void>((resolve, reject) => {
    port.open((err) => (err ? reject(new C1218Error('PORT_OPEN_FAILED', `cannot open ${path}: ${err.message}`)) : resolve()));
  });
  // A probe pulled out mid-session must end it as a disconnect, not spin on end-of-file reads.
  guardSerialPortHangup(port.port);
  return new DuplexC1218Stream(port, {
    setBaudRate: (baudRate) =>
      new Promise<void>((resolve, reject) => {
        port.drain((drainError) => {
          if (drainError) {
            reject(new C1218Error('PORT_OPEN_FAILED', `cannot drain ${path}: ${drainError.message}`));
            return;
          }
          port.update({ baudRate }, (err) => (err ? reject(new C1218Error('PORT_OPEN_FAILED', `cannot set ${path} to ${baudRate} baud: ${err.message}`)) : resolve()));
        });
      }),
    close: () =>
      new Promise<void>((resolve) => {
        if (!port.isOpen) {
          resolve();
          return;
        }
        port.close(() => resolve());
      }),
  });
}
