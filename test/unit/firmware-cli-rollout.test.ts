import { describe, expect, it } from 'vitest';
import {
  firmwareCommand,
  firmwareGatewayCommand,
  FirmwareUsageError,
  formatRolloutList,
  formatRolloutStatus,
  meterRow,
  parseRolloutArguments,
  parseStatusArguments,
  progressColumn,
  progressCounts,
  rolloutExitCode,
  stepColumn,
} from '../../src/appliance/cli-firmware.js';
import type { MeterRolloutEntry, RolloutSummary } from '../../src/firmware/rollout-types.js';

/**
 * `ami-gateway firmware rollout|status`: argument parsing and output, as
 * pure functions. The requests themselves, --wait and the exit codes of the
 * real command: test/integration/cli-firmware-rollout.test.ts.
 */

const T = Date.UTC(2025, 5, 1, 12, 0, 0);

function usageError(run: () => unknown): FirmwareUsageError {
  try {
    run();
  } catch (err) {
    expect(err).toBeInstanceOf(FirmwareUsageError);
    return err as FirmwareUsageError;
  }
  throw new Error('no usage error');
}

function summary(overrides: Partial<RolloutSummary> = {}): RolloutSummary {
  return { rolloutId: 'R1', want: { comm: '2.2.0' }, total: 3, done: 0, byCode: {}, byPhase: { queued: 3 }, finished: false, createdAt: T, ...overrides };
}

function entry(overrides: Partial<MeterRolloutEntry> = {}): MeterRolloutEntry {
  return { rolloutId: 'R1', meter: 'mtr-1', phase: 'queued', attempts: 0, updatedAt: T, ...overrides };
}

const STEPS: MeterRolloutEntry['steps'] = [
  { target: 'metro', from: '5.0.0', to: '5.1.0', imageId: 'acme/metro-5.1.0' },
  { target: 'comm', from: '2.1.0', to: '2.2.0', imageId: 'acme/comm-2.2.0' },
];

describe('firmware rollout arguments', () => {
  it('build the request body the gateway validates, with --wait and --json apart', () => {
    const parsed = parseRolloutArguments(['--comm', '2.2.0', '--metro', '5.1.0', '--meters', 'b, a,b', '--concurrency', '4', '--id', 'fw-1', '--wait', '--json']);
    expect(parsed).toEqual({ request: { comm: '2.2.0', metro: '5.1.0', meters: ['b', 'a'], concurrency: 4, id: 'fw-1' }, wait: true, json: true });
  });

  it('send a group as {tag, value} and keep --url and --user', () => {
    const parsed = parseRolloutArguments(['--metro', '5.1.0', '--group', 'feeder=F3', '--url', 'http://gw:1880/', '--user', 'ops']);
    expect(parsed).toEqual({ request: { metro: '5.1.0', group: { tag: 'feeder', value: 'F3' } }, wait: false, json: false, url: 'http://gw:1880/', user: 'ops' });
  });

  it.each([
    ['no version', ['--meter', 'm1'], /--comm V, --metro V/],
    ['no meters', ['--comm', '2.2.0'], /--meter ID, --meters ID,ID,... or --group/],
    ['two targets', ['--comm', '2.2.0', '--meter', 'm1', '--group', 'feeder=F3'], /not --meter and --group/],
    ['a bad comm version', ['--comm', '2.x', '--meter', 'm1'], /^--comm: must be a firmware version/],
    ['a bad metro version', ['--metro', '5', '--meter', 'm1'], /^--metro: /],
    ['a long meter name', ['--comm', '2.2.0', '--meter', 'm'.repeat(64)], /^--meter: must be at most 63/],
    ['an empty entry in --meters', ['--comm', '2.2.0', '--meters', 'm1,,m2'], /^--meters: .*without empty entries/],
    ['a bad group', ['--comm', '2.2.0', '--group', 'feeder'], /^--group: must be TAG=VALUE/],
    ['a concurrency that is not a number', ['--comm', '2.2.0', '--meter', 'm1', '--concurrency', 'many'], /^--concurrency must be a whole number/],
    ['concurrency 0', ['--comm', '2.2.0', '--meter', 'm1', '--concurrency', '0'], /^--concurrency: must be a whole number 1-1024/],
    ['concurrency 2000', ['--comm', '2.2.0', '--meter', 'm1', '--concurrency', '2000'], /^--concurrency: /],
    ['an id with a space', ['--comm', '2.2.0', '--meter', 'm1', '--id', 'my rollout'], /^--id: /],
    ['a url that is not http', ['--comm', '2.2.0', '--meter', 'm1', '--url', 'ftp://gw'], /^--url must be/],
    ['an unknown option', ['--comm', '2.2.0', '--meter', 'm1', '--force'], /--force/],
    ['a stray argument', ['--comm', '2.2.0', '--meter', 'm1', 'now'], /now/],
  ])('refuse %s naming the option', (_what, args, message) => {
    expect(usageError(() => parseRolloutArguments(args)).message).toMatch(message);
  });
});

describe('firmware status arguments', () => {
  it('take at most one rollout id', () => {
    expect(parseStatusArguments([])).toEqual({ json: false });
    expect(parseStatusArguments(['R-1', '--json'])).toEqual({ rolloutId: 'R-1', json: true });
    expect(usageError(() => parseStatusArguments(['R-1', 'R-2'])).message).toMatch(/one rollout id/);
    expect(usageError(() => parseStatusArguments(['../etc'])).message).toMatch(/^ROLLOUT_ID must be/);
  });

  it('other subcommands are usage errors naming all four', async () => {
    await expect(firmwareGatewayCommand(['rollback'], { httpPort: 1 })).rejects.toThrow(/expected list or verify \(the images folder\), rollout or status \(the running gateway\)/);
    await expect(firmwareCommand(['rollback'], { imagesDir: '/nonexistent', trustAnchorsPem: [] })).rejects.toThrow(/expected list or verify \(the images folder\), rollout or status \(the running gateway\)/);
  });
});

describe('rolloutExitCode', () => {
  it('is 0 once every meter runs the wanted versions', () => {
    expect(rolloutExitCode(summary({ finished: true, done: 3, byPhase: { done: 3 }, byCode: { FW_UPDATE_SUCCESS: 2, FW_ALREADY_CURRENT: 1 } }))).toBe(0);
  });

  it('is 1 when any meter failed or was refused, finished or not', () => {
    expect(rolloutExitCode(summary({ finished: true, done: 3, byCode: { FW_UPDATE_SUCCESS: 2, FW_INCOMPATIBLE: 1 } }))).toBe(1);
    expect(rolloutExitCode(summary({ done: 1, byCode: { COMM_TIMEOUT_ERR: 1 } }))).toBe(1);
  });

  it('is 0 for an accepted rollout without failures yet, and 1 for a finished one whose outcomes do not cover its meters', () => {
    expect(rolloutExitCode(summary({ done: 1, byCode: { FW_UPDATE_SUCCESS: 1 } }))).toBe(0);
    expect(rolloutExitCode(summary({ finished: true, done: 2, byCode: { FW_UPDATE_SUCCESS: 2 } }))).toBe(1);
    expect(rolloutExitCode(summary({ finished: true, byCode: { FW_UPDATE_SUCCESS: 0, FW_NO_IMAGE: 0 } }))).toBe(1);
  });
});

describe('progress line', () => {
  it('counts done meters, phases before done and outcomes, in a fixed order', () => {
    const a = summary({ total: 10, done: 3, byPhase: { done: 3, queued: 4, downloading: 3 }, byCode: { FW_INCOMPATIBLE: 1, FW_UPDATE_SUCCESS: 2 } });
    const b = summary({ total: 10, done: 3, byPhase: { downloading: 3, queued: 4, done: 3 }, byCode: { FW_UPDATE_SUCCESS: 2, FW_INCOMPATIBLE: 1 } });
    expect(progressCounts(a)).toBe('3/10 done; queued 4, downloading 3; FW_UPDATE_SUCCESS 2, FW_INCOMPATIBLE 1');
    // The JSON's key order is no change: --wait prints a line only when a count changes.
    expect(progressCounts(b)).toBe(progressCounts(a));
    expect(progressCounts({ ...b, byPhase: { downloading: 2, verifying: 1, queued: 4, done: 3 } })).not.toBe(progressCounts(a));
  });

  it('leaves out zero counts', () => {
    expect(progressCounts(summary({ total: 2, done: 2, byPhase: { done: 2, queued: 0 }, byCode: { FW_UPDATE_SUCCESS: 2, FW_NO_IMAGE: 0 } }))).toBe('2/2 done; FW_UPDATE_SUCCESS 2');
  });
});

describe('meter table', () => {
  it('shows the step of the plan 1-based, and "-" before there is a plan', () => {
    expect(stepColumn(entry())).toBe('-');
    expect(stepColumn(entry({ steps: [] }))).toBe('0/0');
    expect(stepColumn(entry({ steps: STEPS, step: 0 }))).toBe('1/2');
    expect(stepColumn(entry({ steps: STEPS, step: 1 }))).toBe('2/2');
    expect(stepColumn(entry({ steps: STEPS }))).toBe('1/2');
  });

  it('shows the share of the image the meter holds, rounded down, and "-" without a size', () => {
    expect(progressColumn(entry({ received: 2559, size: 5120 }))).toBe('49%');
    expect(progressColumn(entry({ received: 5120, size: 5120 }))).toBe('100%');
    expect(progressColumn(entry({ received: 9000, size: 5120 }))).toBe('100%');
    expect(progressColumn(entry({ received: 10 }))).toBe('-');
    expect(progressColumn(entry({ received: 0, size: 0 }))).toBe('-');
  });

  it('has meter, phase, step, progress, outcome and reason (the outcome reason, else the last problem)', () => {
    const downloading = entry({ phase: 'downloading', steps: STEPS, step: 0, received: 1024, size: 4096, lastProblem: 'no answer to /fw/state' });
    expect(meterRow(downloading)).toEqual(['mtr-1', 'downloading', '1/2', '25%', '-', 'no answer to /fw/state']);
    const failed = entry({ meter: 'mtr-2', phase: 'done', steps: STEPS, step: 1, lastProblem: 'old', outcome: { code: 'FW_UPDATE_FAILED', reason: 'HASH_MISMATCH', at: T } });
    expect(meterRow(failed)).toEqual(['mtr-2', 'done', '2/2', '-', 'FW_UPDATE_FAILED', 'HASH_MISMATCH']);
  });

  it('prints what a meter reported on one line, without terminal escapes', () => {
    const row = meterRow(entry({ phase: 'done', outcome: { code: 'FW_UPDATE_FAILED', reason: 'bad\n\u001b[31mred', at: T } }));
    expect(row[5]).toBe('bad\\x0a\\x1b[31mred');
  });

  it('formats one rollout: a heading, the counts and an aligned table', () => {
    const text = formatRolloutStatus({
      rollout: summary({ total: 2, done: 1, requestedBy: 'admin:ops', byPhase: { done: 1, downloading: 1 }, byCode: { FW_ALREADY_CURRENT: 1 }, want: { comm: '2.2.0', metro: '5.1.0' } }),
      meters: [
        entry({ meter: 'mtr-1', phase: 'done', steps: [], outcome: { code: 'FW_ALREADY_CURRENT', at: T } }),
        entry({ meter: 'mtr-long-name', phase: 'downloading', steps: STEPS, step: 0, received: 512, size: 1024 }),
      ],
    });
    expect(text.split('\n')).toEqual([
      'rollout R1: comm 2.2.0, metro 5.1.0 for 2 meters, in progress (started 2025-06-01T12:00:00Z by admin:ops)',
      '1/2 done; downloading 1; FW_ALREADY_CURRENT 1',
      '',
      'METER          PHASE        STEP  PROGRESS  OUTCOME             REASON',
      'mtr-1          done         0/0   -         FW_ALREADY_CURRENT',
      'mtr-long-name  downloading  1/2   50%       -',
    ]);
  });

  it('formats the list of rollouts, newest first as given', () => {
    expect(formatRolloutList([])).toBe('no firmware rollouts');
    const text = formatRolloutList([
      summary({ rolloutId: 'R2', createdAt: T + 60_000, want: { metro: '5.1.0' }, total: 40, done: 12, byCode: { FW_UPDATE_SUCCESS: 12 } }),
      summary({ rolloutId: 'R1', finished: true, done: 3, byCode: { FW_UPDATE_SUCCESS: 2, FW_UNKNOWN_METER: 1 } }),
    ]);
    expect(text.split('\n')).toEqual([
      'ROLLOUT  STARTED               WANTED       DONE   STATE     OUTCOMES',
      'R2       2025-06-01T12:01:00Z  metro 5.1.0  12/40  running   FW_UPDATE_SUCCESS 12',
      'R1       2025-06-01T12:00:00Z  comm 2.2.0   3/3    finished  FW_UPDATE_SUCCESS 2, FW_UNKNOWN_METER 1',
    ]);
  });
});
