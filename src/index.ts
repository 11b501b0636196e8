// The core's public face: protocol codecs and transports (coap), the HES
// uplink (hes), the simulators (sim) and the headless runtime (appliance).
export * as coap from './coap/index.js';
export * as hes from './hes/index.js';
export * as sim from './sim/index.js';
export * as appliance from './appliance/index.js';
