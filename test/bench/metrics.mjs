// Measuring helpers the benchmarks share.
import { readFileSync, writeFileSync } from 'node:fs';

/** The p-quantile (0..1) of ascending `sorted`; NaN when there is nothing to measure. */
export function percentile(sorted, p) {
  return sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
}

/** VmRSS and VmHWM (the peak RSS, kept by the kernel) of a process, in bytes. Linux only. */
export function procMemory(pid = process.pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (name) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024;
  return { rss: kib('VmRSS'), peak: kib('VmHWM') };
}

/**
 * Starts the kernel's peak RSS of this process afresh from its current RSS
 * (clear_refs 5, Linux 4.0+), so a later procMemory().peak covers only what
 * came after. Where that is refused the peak also covers start-up.
 */
export function resetPeakRss() {
  try {
    writeFileSync('/proc/self/clear_refs', '5');
  } catch {
    // not allowed here: the peak counts from the start of the process
  }
}

/** CPU time (user + system) a process has used so far, in seconds, from /proc (USER_HZ is 100 on Linux). Linux only. */
export function procCpuSeconds(pid = process.pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces: count from its closing parenthesis.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}
