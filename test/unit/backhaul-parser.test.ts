import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  BackhaulError,
  ManagementParser,
  ReplyReader,
  parseManagementAddress,
  formatManagementAddress,
  parseNotification,
  parseStateFields,
  reconnectDelay,
  replyShapeOf,
  type ManagementItem,
  type ManagementReply,
} from '../../src/backhaul/index.js';

/**
 * The management protocol's line layer: chunking, CRLF, the password prompt,
 * notifications anywhere (also inside multi-line replies), and hostile input
 * that must only ever produce typed errors.
 */

/** Recorded from OpenVPN 2.6.14: a held client, `state on all`, the release, a connection, `status` with a notification inside it. */
const TRANSCRIPT = [
  ">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info\r\n",
  '>HOLD:Waiting for hold release:0\r\n',
  'SUCCESS: real-time state notification set to ON\r\n',
  '1795340127,CONNECTING,,,,,,\r\nEND\r\n',
  'SUCCESS: bytecount interval changed\r\n',
  'SUCCESS: hold release succeeded\r\n',
  '>BYTECOUNT:0,0\r\n>STATE:1795340130,WAIT,,,,,,\r\n',
  '>STATE:1795340130,AUTH,,,,,,\r\n',
  '>STATE:1795340130,ASSIGN_IP,,10.8.0.2,,,,\r\n>STATE:1795340130,CONNECTED,SUCCESS,10.8.0.2,10.99.0.1,1194,,\r\n',
  'OpenVPN STATISTICS\r\nUpdated,2026-11-22 09:35:35\r\n>BYTECOUNT:3519,3617\r\nTUN/TAP read bytes,96\r\nEND\r\n',
  ">LOG:1795340115,D,MANAGEMENT: CMD 'log off'\r\n",
  '>STATE:1795340138,RECONNECTING,SIGUSR1,,,,,\r\n',
  '>FATAL:Cannot load certificate file client.crt\r\n',
  '>PASSWORD:Need \'Auth\' username/password\r\n',
].join('');

function parseAll(...chunks: Array<string | Buffer>): ManagementItem[] {
  const parser = new ManagementParser();
  return chunks.flatMap((chunk) => parser.push(chunk));
}

function kinds(items: ManagementItem[]): string[] {
  return items.map((item) => {
    switch (item.kind) {
      case 'notification':
        return `>${item.notification.type}`;
      case 'line':
        return item.text;
      case 'password-prompt':
        return 'PROMPT';
      case 'malformed':
        return `!${item.error.code}`;
    }
  });
}

describe('ManagementParser', () => {
  it('classifies a real transcript: notifications, reply lines, and nothing left over', () => {
    expect(kinds(parseAll(TRANSCRIPT))).toEqual([
      '>INFO',
      '>HOLD',
      'SUCCESS: real-time state notification set to ON',
      '1795340127,CONNECTING,,,,,,',
      'END',
      'SUCCESS: bytecount interval changed',
      'SUCCESS: hold release succeeded',
      '>BYTECOUNT',
      '>STATE',
      '>STATE',
      '>STATE',
      '>STATE',
      'OpenVPN STATISTICS',
      'Updated,2026-11-22 09:35:35',
      '>BYTECOUNT',
      'TUN/TAP read bytes,96',
      'END',
      '>LOG',
      '>STATE',
      '>FATAL',
      '>OTHER',
    ]);
  });

  it('gives the same items however the stream is split, at every single position', () => {
    const whole = parseAll(TRANSCRIPT);
    const bytes = Buffer.from(TRANSCRIPT);
    for (let at = 0; at <= bytes.length; at += 1) {
      expect(parseAll(bytes.subarray(0, at), bytes.subarray(at))).toEqual(whole);
    }
  });

  it('gives the same items for any split into many chunks (property)', () => {
    const bytes = Buffer.from(TRANSCRIPT);
    const whole = parseAll(bytes);
    fc.assert(
      fc.property(fc.uniqueArray(fc.integer({ min: 1, max: bytes.length - 1 }), { maxLength: 40 }), (cuts) => {
        const points = [0, ...cuts.sort((a, b) => a - b), bytes.length];
        const chunks = points.slice(1).map((end, i) => bytes.subarray(points[i], end));
        expect(parseAll(...chunks)).toEqual(whole);
      }),
      { numRuns: 500 },
    );
  });

  it('accepts LF as well as CRLF', () => {
    expect(parseAll(TRANSCRIPT.replaceAll('\r\n', '\n'))).toEqual(parseAll(TRANSCRIPT));
  });

  it('recognises the password prompt, which has no line break, split anywhere, and what follows it', () => {
    const stream = 'ENTER PASSWORD:SUCCESS: password is correct\r\n>INFO:OpenVPN Management Interface Version 5\r\n';
    for (let at = 0; at <= stream.length; at += 1) {
      expect(kinds(parseAll(stream.slice(0, at), stream.slice(at)))).toEqual(['PROMPT', 'SUCCESS: password is correct', '>INFO']);
    }
    // Alone in its chunk, the prompt is reported at once: OpenVPN waits for the answer.
    expect(kinds(parseAll('ENTER PASSWORD:'))).toEqual(['PROMPT']);
    expect(kinds(parseAll('ENTER PASS'))).toEqual([]);
  });

  it('keeps a UTF-8 character that is split across chunks', () => {
    const line = Buffer.from('>LOG:1795340115,I,Zähler 📟 verbunden\r\n');
    for (let at = 0; at <= line.length; at += 1) {
      const items = parseAll(line.subarray(0, at), line.subarray(at));
      expect(items).toHaveLength(1);
      expect(items[0]).toMatchObject({ kind: 'notification', notification: { type: 'LOG', message: 'Zähler 📟 verbunden' } });
    }
  });

  it('routes notifications inside a multi-line reply as notifications, out of the reply', () => {
    const reader = new ReplyReader('status');
    const notifications: string[] = [];
    let reply: ManagementReply | undefined;
    for (const item of parseAll('OpenVPN STATISTICS\r\n>BYTECOUNT:1,2\r\nTCP/UDP read bytes,3519\r\n>STATE:1795340138,RECONNECTING,ping-restart,,,,,\r\nEND\r\n')) {
      if (item.kind === 'notification') notifications.push(item.notification.type);
      else if (item.kind === 'line') {
        const progress = reader.accept(item.text);
        if (progress.done && 'reply' in progress) reply = progress.reply;
      }
    }
    expect(notifications).toEqual(['BYTECOUNT', 'STATE']);
    expect(reply).toEqual({ command: 'status', success: null, lines: ['OpenVPN STATISTICS', 'TCP/UDP read bytes,3519'] });
  });

  it('reports malformed lines as typed errors, counts them, and goes on with the next line', () => {
    const parser = new ManagementParser();
    const items = parser.push(
      [
        '>no colon here',
        '>STATE:yesterday,CONNECTED,SUCCESS',
        '>STATE:1795340130,connected,SUCCESS',
        '>STATE:1795340130,CONNECTED,SUCCESS,10.8.0.999',
        '>STATE:1795340130,CONNECTED,SUCCESS,10.8.0.2,10.99.0.1,99999',
        '>STATE:1795340130',
        '>BYTECOUNT:12',
        '>BYTECOUNT:-1,5',
        '>LOG:soon,I,hello',
        'a bell \u0007 in a line',
        '>STATE:1795340130,CONNECTED,SUCCESS,10.8.0.2,10.99.0.1,1194,,',
      ].join('\r\n') + '\r\n',
    );
    expect(kinds(items)).toEqual([...Array(10).fill('!MALFORMED_LINE'), '>STATE']);
    expect(parser.malformedLines).toBe(10);
    for (const item of items.slice(0, 10)) {
      expect(item.kind === 'malformed' && item.error).toBeInstanceOf(BackhaulError);
    }
  });

  it('refuses a line that is not UTF-8', () => {
    const items = parseAll(Buffer.from([0x3e, 0x4c, 0x4f, 0x47, 0x3a, 0xc3, 0x28, 0x0d, 0x0a]));
    expect(items).toEqual([{ kind: 'malformed', error: expect.objectContaining({ code: 'MALFORMED_LINE', message: expect.stringMatching(/UTF-8/) }) }]);
  });

  it('drops an overlong line with one LINE_TOO_LONG error, whether it comes whole or in pieces, and recovers', () => {
    const long = `>LOG:1,I,${'x'.repeat(300)}\r\n`;
    const after = '>STATE:1795340130,WAIT,,,,,,\r\n';
    const whole = (() => {
      const parser = new ManagementParser(100);
      return kinds(parser.push(long + after));
    })();
    expect(whole).toEqual(['!LINE_TOO_LONG', '>STATE']);
    const parser = new ManagementParser(100);
    const pieces = [...(long + after)].flatMap((char) => parser.push(char));
    expect(kinds(pieces)).toEqual(whole);
    expect(parser.malformedLines).toBe(1);
  });

  it('skips empty lines', () => {
    expect(kinds(parseAll('\r\n\n\r\nEND\r\n'))).toEqual(['END']);
  });

  it('survives random bytes in random chunks: every item is well-formed, every error typed (fuzz)', () => {
    const codes = new Set(['MALFORMED_LINE', 'LINE_TOO_LONG']);
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 200 }), { maxLength: 20 }), fc.integer({ min: 16, max: 300 }), (chunks, maxLine) => {
        const parser = new ManagementParser(maxLine);
        for (const chunk of chunks) {
          for (const item of parser.push(Buffer.from(chunk))) {
            if (item.kind === 'malformed') {
              expect(item.error).toBeInstanceOf(BackhaulError);
              expect(codes.has(item.error.code)).toBe(true);
            } else if (item.kind === 'line') {
              expect(item.text).not.toMatch(/[\r\n\u0000]/);
              expect(item.text.length).toBeGreaterThan(0);
            }
          }
        }
      }),
      { numRuns: 3000 },
    );
  });

  it('survives mutations of a real transcript (fuzz)', () => {
    const original = Buffer.from(TRANSCRIPT);
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat({ max: original.length - 1 }), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 30 }),
        fc.nat({ max: original.length }),
        (mutations, cut) => {
          const bytes = Buffer.from(original);
          for (const [at, value] of mutations) bytes[at] = value;
          const parser = new ManagementParser();
          const items = [...parser.push(bytes.subarray(0, cut)), ...parser.push(bytes.subarray(cut))];
          for (const item of items) if (item.kind === 'malformed') expect(item.error).toBeInstanceOf(BackhaulError);
          expect(parser.malformedLines).toBe(items.filter((item) => item.kind === 'malformed').length);
        },
      ),
      { numRuns: 3000 },
    );
  });
});

describe('notifications', () => {
  it('parses >STATE: fields, IPv6 and later extra fields included', () => {
    expect(parseNotification('>STATE:1795340130,CONNECTED,SUCCESS,10.8.0.2,10.99.0.1,1194,10.99.0.2,51234,fd00::2,future')).toEqual({
      type: 'STATE',
      raw: '>STATE:1795340130,CONNECTED,SUCCESS,10.8.0.2,10.99.0.1,1194,10.99.0.2,51234,fd00::2,future',
      state: {
        time: 1795340130,
        name: 'CONNECTED',
        description: 'SUCCESS',
        localIp: '10.8.0.2',
        remoteIp: '10.99.0.1',
        remotePort: 1194,
        localAddress: '10.99.0.2',
        localPort: 51234,
        localIpv6: 'fd00::2',
      },
    });
    expect(parseStateFields('1795340104,RECONNECTING,ping-restart,,,,,')).toMatchObject({ name: 'RECONNECTING', description: 'ping-restart', localIp: '', remotePort: null });
    expect(parseStateFields('1795340095,CONNECTING')).toMatchObject({ name: 'CONNECTING', description: '', localIpv6: '' });
  });

  it('parses BYTECOUNT, FATAL, HOLD, LOG (commas in the message) and INFO, and passes others through', () => {
    expect(parseNotification('>BYTECOUNT:3519,3617')).toMatchObject({ type: 'BYTECOUNT', bytesIn: 3519, bytesOut: 3617 });
    expect(parseNotification('>FATAL:Cannot load certificate file client.crt')).toMatchObject({ type: 'FATAL', message: 'Cannot load certificate file client.crt' });
    expect(parseNotification('>HOLD:Waiting for hold release:10')).toMatchObject({ type: 'HOLD', message: 'Waiting for hold release:10', waitSeconds: 10 });
    expect(parseNotification('>HOLD:Waiting')).toMatchObject({ type: 'HOLD', waitSeconds: null });
    expect(parseNotification('>LOG:1795340100,I,UDPv4 link remote: [AF_INET]10.99.0.1:1194, fine')).toMatchObject({
      type: 'LOG',
      time: 1795340100,
      flags: 'I',
      message: 'UDPv4 link remote: [AF_INET]10.99.0.1:1194, fine',
    });
    expect(parseNotification('>LOG:1795340095,,Note: no flags')).toMatchObject({ flags: '', message: 'Note: no flags' });
    expect(parseNotification('>INFO:OpenVPN Management Interface Version 5')).toMatchObject({ type: 'INFO', message: 'OpenVPN Management Interface Version 5' });
    expect(parseNotification('>BYTECOUNT_CLI:3,100,200')).toEqual({ type: 'OTHER', raw: '>BYTECOUNT_CLI:3,100,200', name: 'BYTECOUNT_CLI', body: '3,100,200' });
    expect(parseNotification('>NEED-OK:Need \'token-insertion-request\' confirmation MSG:Please insert your token')).toMatchObject({ type: 'OTHER', name: 'NEED-OK' });
  });
});

describe('replies', () => {
  it('knows the shape of each command as OpenVPN 2.6 answers it', () => {
    expect(replyShapeOf('state on all')).toBe('line+block');
    expect(replyShapeOf('state on 5')).toBe('line+block');
    expect(replyShapeOf('state on')).toBe('line');
    expect(replyShapeOf('state off')).toBe('line');
    expect(replyShapeOf('state')).toBe('block');
    expect(replyShapeOf('state all')).toBe('block');
    expect(replyShapeOf('state 3')).toBe('block');
    expect(replyShapeOf('log on all')).toBe('line+block');
    expect(replyShapeOf('status')).toBe('block');
    expect(replyShapeOf('status 2')).toBe('block');
    expect(replyShapeOf('version')).toBe('block');
    expect(replyShapeOf('help')).toBe('block');
    expect(replyShapeOf('bytecount 5')).toBe('line');
    expect(replyShapeOf('hold release')).toBe('line');
    expect(replyShapeOf('signal SIGUSR1')).toBe('line');
    expect(replyShapeOf('pid')).toBe('line');
  });

  function read(command: string, lines: string[]) {
    const reader = new ReplyReader(command);
    for (const line of lines) {
      const progress = reader.accept(line);
      if (progress.done) return progress;
    }
    return { done: false as const };
  }

  it('reads single lines, blocks, and a line followed by a block', () => {
    expect(read('hold release', ['SUCCESS: hold release succeeded'])).toEqual({ done: true, reply: { command: 'hold release', success: 'hold release succeeded', lines: [] } });
    expect(read('state', ['1795340130,CONNECTED,SUCCESS,10.8.0.2,10.99.0.1,1194,,', 'END'])).toEqual({
      done: true,
      reply: { command: 'state', success: null, lines: ['1795340130,CONNECTED,SUCCESS,10.8.0.2,10.99.0.1,1194,,'] },
    });
    expect(read('state on all', ['SUCCESS: real-time state notification set to ON', '1795340127,CONNECTING,,,,,,', 'END'])).toEqual({
      done: true,
      reply: { command: 'state on all', success: 'real-time state notification set to ON', lines: ['1795340127,CONNECTING,,,,,,'] },
    });
    expect(read('echo all', ['END'])).toMatchObject({ done: true, reply: { lines: [] } });
    expect(read('status', ['OpenVPN STATISTICS'])).toEqual({ done: false });
  });

  it('turns ERROR: into COMMAND_FAILED, for every shape', () => {
    for (const command of ['signal SIGUSR1', 'status', 'state on all']) {
      const progress = read(command, ["ERROR: The 'status' command is not supported by the current daemon mode"]);
      expect(progress).toMatchObject({ done: true, error: { code: 'COMMAND_FAILED', message: expect.stringContaining('not supported') } });
    }
  });

  it('refuses a reply of the wrong shape with UNEXPECTED_REPLY', () => {
    expect(read('hold release', ['1795340127,CONNECTING,,,,,,'])).toMatchObject({ done: true, error: { code: 'UNEXPECTED_REPLY' } });
    expect(read('state on all', ['END'])).toMatchObject({ done: true, error: { code: 'UNEXPECTED_REPLY' } });
  });
});

describe('management addresses', () => {
  it('reads unix sockets and TCP addresses as operators write them', () => {
    expect(parseManagementAddress('/run/openvpn/ami.sock')).toEqual({ kind: 'unix', path: '/run/openvpn/ami.sock' });
    expect(parseManagementAddress('unix:/run/openvpn/ami.sock')).toEqual({ kind: 'unix', path: '/run/openvpn/ami.sock' });
    expect(parseManagementAddress('./ami.sock')).toEqual({ kind: 'unix', path: './ami.sock' });
    expect(parseManagementAddress(' 127.0.0.1:7505 ')).toEqual({ kind: 'tcp', host: '127.0.0.1', port: 7505 });
    expect(parseManagementAddress('localhost:7505')).toEqual({ kind: 'tcp', host: 'localhost', port: 7505 });
    expect(parseManagementAddress('[::1]:7505')).toEqual({ kind: 'tcp', host: '::1', port: 7505 });
    expect(formatManagementAddress(parseManagementAddress('[::1]:7505'))).toBe('[::1]:7505');
    expect(formatManagementAddress(parseManagementAddress('/run/x.sock'))).toBe('unix:/run/x.sock');
  });

  it('refuses what is not an address with BAD_ADDRESS', () => {
    for (const text of ['', 'unix:', 'localhost', '127.0.0.1:0', '127.0.0.1:70000', '::1:7505', '[127.0.0.1]:7505', 'host name:1']) {
      expect(() => parseManagementAddress(text), text).toThrow(expect.objectContaining({ code: 'BAD_ADDRESS' }));
    }
  });
});

describe('reconnectDelay', () => {
  it('doubles from the first wait up to the cap, jittered into the upper half, never zero', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 100 }), fc.double({ min: 0, max: 0.999999, noNaN: true }), (failures, random) => {
        const delay = reconnectDelay(failures, 250, 10_000, () => random);
        const base = Math.min(10_000, 250 * 2 ** (failures - 1));
        expect(delay).toBeGreaterThanOrEqual(Math.floor(base / 2));
        expect(delay).toBeLessThanOrEqual(base);
        expect(delay).toBeGreaterThan(0);
      }),
    );
    expect([1, 2, 3, 4, 5, 6, 7, 8].map((n) => reconnectDelay(n, 250, 10_000, () => 0.999999))).toEqual([250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
  });
});
