export { ReferralError, type ClientErrorCode } from './error.js';
export type { TransportOptions as ClientOptions } from './transport.js';
export { SatelliteClient, type EndUser, type Abortable, type Redeemed, type Reserved, type Released, type LookedUp, type ListedToken, type Redemption } from './satellite.js';
export { AdminClient, type ListedSatellite, type RevokeSelector, type SatelliteFields } from './admin.js';
