import type { ApplianceConfig } from './config.js';
import type { AdminUser } from './admin-users.js';
import type { ApplianceLog } from './log.js';

export const FLOW_FILE = 'flows.json';

export interface SettingsInputs {
  config: ApplianceConfig;
  credentialSecret: string;
  adminUsers: AdminUser[];
  /** The package root, scanned by Node-RED as a node module (nodes and examples). */
  packageRoot: string;
  log: ApplianceLog;
}

/** Where the editor listens: loopback unless admin users protect it. */
export function editorBindAddress(config: ApplianceConfig, adminUsers: AdminUser[]): string {
  if (adminUsers.length === 0) return '127.0.0.1';
  return config.httpBind ?? '0.0.0.0';
}

/**
 * The settings object the appliance embeds Node-RED with. It plays the role
 * of Node-RED's settings.js: everything an operator may change comes from
 * ApplianceConfig (the environment), not from editing this.
 */
export function buildNodeRedSettings(inputs: SettingsInputs): Record<string, unknown> {
  const { config, adminUsers } = inputs;
  const settings: Record<string, unknown> = {
    userDir: config.dataDir,
    flowFile: FLOW_FILE,
    flowFilePretty: true,
    credentialSecret: inputs.credentialSecret,
    httpAdminRoot: '/',
    httpNodeRoot: '/api',
    uiPort: config.httpPort,
    uiHost: editorBindAddress(config, adminUsers),
    // Our package is loaded as a Node-RED module from where it is installed,
    // so its nodes and its examples (flows/) appear as for any installed module.
    nodesDir: [inputs.packageRoot],
    // An appliance's software comes from its image, not from the palette manager.
    externalModules: { palette: { allowInstall: false, allowUpload: false }, modules: { allowInstall: false } },
    functionExternalModules: false,
    telemetry: { enabled: false, updateNotification: false },
    diagnostics: { enabled: true, ui: true },
    runtimeState: { enabled: false, ui: false },
    editorTheme: {
      page: { title: 'ami-gateway' },
      header: { title: 'ami-gateway' },
      projects: { enabled: false },
      tours: false,
      palette: { categories: ['AMI gateway', 'common', 'function', 'network', 'sequence', 'parser', 'storage'] },
    },
    logging: {
      ami: {
        level: config.logLevel,
        metrics: false,
        audit: false,
        handler: inputs.log.nodeRedHandler(),
      },
    },
    exportGlobalContextKeys: false,
  };
  if (adminUsers.length > 0) {
    settings.adminAuth = {
      type: 'credentials',
      users: adminUsers.map((user) => ({ ...user })),
    };
  }
  return settings;
}
