/**
 * The relay service's reporter: final outcomes, alarms raised and cleared,
 * from the relay journal to the HES outbox (see src/hes/journal-reporter.ts).
 */
import { JournalReporter, type JournalReporterCounters, type JournalReporterOptions } from '../hes/journal-reporter.js';
import type { RelayReport } from './types.js';

export type RelayReporterOptions = JournalReporterOptions<RelayReport>;
export type RelayReporterCounters = JournalReporterCounters;

export class RelayReporter extends JournalReporter<RelayReport> {}
