// Types only, no imports: the satellite client package (packages/client) compiles this file and must not pull the server in.

export interface Satellite {
  id: string;
  name?: string;
  /** where the manager reaches the satellite's referral endpoints (generation flow) */
  url?: string;
  /** key the manager presents to the satellite, as stored: sealed (`sealed:v1:...`) when OUTBOUND_KEY_SECRET is set; SatelliteRegistry.outboundKey opens it */
  outboundKey?: string;
  createdAt: number;
}

/** The fields an operator may set on a satellite; in an update, null clears one and a missing one is kept. */
export interface SatelliteFields {
  name?: string | null;
  url?: string | null;
  outboundKey?: string | null;
}
