/**
 * The V8 heap settings the appliance runs with. `npm start` and the systemd
 * unit (deploy/ami-gateway.service) put them on node's command line, since
 * V8 sizes its young generation when the process starts; a unit test keeps
 * both in step with this list.
 *
 * Why: after a feeder outage thousands of meters re-register within seconds.
 * With V8's defaults the young generation grows to 2 x 16 MiB, and the old
 * one may grow to several times what was live after the previous full
 * collection before it collects again, so the first seconds of such a storm
 * take the whole appliance from about 100 MiB to 175-187 MiB although only
 * some 10 MiB stay live (test/bench/reconnect.mjs, 10,000 meters). Semi-spaces
 * of 4 MiB and a full collection once the old generation has grown by 30 %
 * keep that peak at 134-137 MiB (seven runs of eight; one reached 143.5),
 * within the 150 MB the gateway is sized for, for up to some 20 % more CPU
 * time over the storm (the bench prints both) and
 * perhaps up to 10 % of sustained ingest throughput (docs/mesh.md). Measured
 * alongside: growth 20 % gave 132-137 MiB for more CPU still, 50 % 146 MiB;
 * 8 MiB semi-spaces with growth 20 % 136-142 MiB; 4 MiB semi-spaces alone
 * 176 MiB; 2 MiB
 * semi-spaces promote short-lived objects and raise the peak (208 MiB);
 * `--optimize-for-size` gave 134 MiB but also makes V8's compiler trade the
 * speed of code for its size.
 */
export const APPLIANCE_NODE_FLAGS: readonly string[] = Object.freeze(['--max-semi-space-size=4', '--heap-growing-percent=30']);

/**
 * The appliance's heap settings that node was given no value for, on its
 * command line (`execArgv`) or in NODE_OPTIONS (which allows the semi-space
 * size but not the growing percentage). A setting given another value is
 * the operator's choice and not reported; V8 takes `_` for `-` in names.
 */
export function missingApplianceNodeFlags(execArgv: readonly string[] = process.execArgv, nodeOptions: string = process.env.NODE_OPTIONS ?? ''): string[] {
  const given = new Set([...execArgv, ...nodeOptions.split(/\s+/)].map(flagName));
  return APPLIANCE_NODE_FLAGS.filter((flag) => !given.has(flagName(flag)));
}

/** `--max_semi_space_size=4` -> `--max-semi-space-size`. */
function flagName(option: string): string {
  return option.split('=', 1)[0]!.replace(/_/g, '-');
}
