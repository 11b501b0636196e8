/** What the simulators need of a logger; the appliance's logger and `console` both fit. */
export interface SimLog {
  info(message: string): void;
  warn(message: string): void;
}
