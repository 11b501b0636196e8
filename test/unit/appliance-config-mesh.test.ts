import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/appliance/config.js';

describe('AMI_MESH_REGISTERED_ONLY', () => {
  it('is off unless set, takes true or false in any case, and names itself when it is neither', () => {
    expect(loadConfig({}, '/tmp').meshRegisteredOnly).toBe(false);
    expect(loadConfig({ AMI_MESH_REGISTERED_ONLY: ' ' }, '/tmp').meshRegisteredOnly).toBe(false);
    expect(loadConfig({ AMI_MESH_REGISTERED_ONLY: 'true' }, '/tmp').meshRegisteredOnly).toBe(true);
    expect(loadConfig({ AMI_MESH_REGISTERED_ONLY: 'TRUE' }, '/tmp').meshRegisteredOnly).toBe(true);
    expect(loadConfig({ AMI_MESH_REGISTERED_ONLY: 'false' }, '/tmp').meshRegisteredOnly).toBe(false);
    expect(() => loadConfig({ AMI_MESH_REGISTERED_ONLY: 'yes' }, '/tmp')).toThrow(ConfigError);
    expect(() => loadConfig({ AMI_MESH_REGISTERED_ONLY: '1' }, '/tmp')).toThrow(/AMI_MESH_REGISTERED_ONLY: expected true or false, got "1"/);
  });
});
