export * from './linkformat.js';
export * from './registry.js';
export * from './rd.js';
export * from './allowlist.js';
export * from './target.js';
export * from './events.js';
