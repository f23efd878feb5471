export { startSnapshotWriter, type SnapshotWriter, type WriterOptions } from './writer.js';
export { readSnapshotStatus, type SnapshotStatus } from './status.js';
export { reportLag, sampleLag, type Lag } from './lag.js';
export { openPostgres, ensureDatabase, migrate } from './schema.js';
export { restoreFromPostgres, RESTORE_LANES, anyKey, engineKeys } from './restore.js';
export { verify, type VerifyReport, type Difference } from './verify.js';
export { restoreSatellites } from './satellites.js';
export { restoreCampaigns } from './campaigns.js';
export { registerMarkedRevocations, restoreRevoked, revocationGaps, type RevocationGaps } from './revoked.js';
