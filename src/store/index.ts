export * from './database.js';
export * from './group-commit.js';
export * from './outbox.js';
