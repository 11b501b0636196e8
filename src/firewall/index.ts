export * from './ruleset.js';
