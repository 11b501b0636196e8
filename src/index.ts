// The core's public face, one namespace per concern: protocol codecs and
// transports (coap, dlms), the meter mesh (mesh), meter keys (keys), the
// store and its outbox (store), the HES uplink (hes), the OpenVPN backhaul
// (backhaul), the simulators (sim) and the headless runtime (appliance).
export * as coap from './coap/index.js';
export * as dlms from './dlms/index.js';
export * as mesh from './mesh/index.js';
export * as keys from './keys/index.js';
export * as store from './store/index.js';
export * as hes from './hes/index.js';
export * as backhaul from './backhaul/index.js';
export * as sim from './sim/index.js';
export * as appliance from './appliance/index.js';
