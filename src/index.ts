export * from './client/index.js';
export { TokenEngine, MAX_TOKENS_PER_CALL, type GenerateRequest, type GeneratedToken } from './tokens/engine.js';
export { DomainError, errorCatalogue, resultErrors, type ErrorCode } from './errors.js';
export { loadConfig, ConfigError, type Config } from './config.js';
export type { Token, TokenState, Stats, UnredeemedToken } from './store/model.js';
export type { Satellite } from './satellites/model.js';
