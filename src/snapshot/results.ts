import type pg from 'pg';

/** What became of one owner satellite's tokens of a campaign. */
export interface SatelliteResults {
  generated: number;
  unredeemed: number;
  /** unredeemed (or reserved with a lapsed lease) past expiresAt */
  expired: number;
  reserved: number;
  redeemed: number;
  revoked: number;
  /** deleted from Redis by `tokens purge` (revoked or expired, before): counted apart, as `stats` does */
  purged: number;
  /** redeemed tokens by the satellite the new user signed up on */
  redeemedOn: Record<string, number>;
}

export interface CampaignResults {
  campaignId: string;
  /** by owner satellite */
  satellites: Record<string, SatelliteResults>;
}

/**
 * A token's state as the engine would report it at `$2` (lua/includes/codec.lua): a lapsed lease is
 * unredeemed again, and an unredeemed token past expiresAt is expired (a held lease outlives expiresAt);
 * one purged from Redis is `purged` whatever its state was.
 */
const STATE_AT = `CASE
    WHEN purged_at IS NOT NULL THEN 'purged'
    WHEN state = 'reserved' AND lease_expires_at > $2 THEN 'reserved'
    WHEN state IN ('unredeemed', 'reserved') AND expires_at <= $2 THEN 'expired'
    WHEN state = 'reserved' THEN 'unredeemed'
    ELSE state END`;

/**
 * A campaign's outcome from the Postgres snapshot (the campaign_id index; Redis would need every bucket
 * read): per owner satellite, its tokens by state, and where the redeemed ones brought new users. No
 * satellite when the snapshot holds the campaign's record or revocation but no token (a run that found no
 * user to serve); undefined when it holds none of these (a mistyped id).
 */
export async function campaignResults(pool: pg.Pool, campaignId: string): Promise<CampaignResults | undefined> {
  const now = Date.now();
  const res = await pool.query<{ sat: string; state: keyof Omit<SatelliteResults, 'redeemedOn' | 'generated'>; redeemer: string | null; n: number }>(
    `SELECT owner_satellite_id AS sat, ${STATE_AT} AS state, redeemer_satellite_id AS redeemer, count(*)::int AS n
     FROM tokens WHERE campaign_id = $1 GROUP BY 1, 2, 3 ORDER BY 1, 3`,
    [campaignId, now],
  );
  if (res.rows.length === 0) {
    const known = await pool.query('SELECT 1 FROM campaigns WHERE id = $1 UNION ALL SELECT 1 FROM revoked_campaigns WHERE id = $1 LIMIT 1', [campaignId]);
    return known.rows.length > 0 ? { campaignId, satellites: {} } : undefined;
  }
  // the redeemer satellites are gathered as entries: `redeemedOn[id] = n` would set the prototype for "__proto__"
  const satellites = new Map<string, { counts: SatelliteResults; on: [string, number][] }>();
  for (const r of res.rows) {
    let s = satellites.get(r.sat);
    if (!s) satellites.set(r.sat, (s = { counts: { generated: 0, unredeemed: 0, expired: 0, reserved: 0, redeemed: 0, revoked: 0, purged: 0, redeemedOn: {} }, on: [] }));
    s.counts.generated += r.n;
    s.counts[r.state] += r.n;
    if (r.redeemer !== null) s.on.push([r.redeemer, r.n]);
  }
  const bySatellite = [...satellites].map(([sat, { counts, on }]): [string, SatelliteResults] => [sat, { ...counts, redeemedOn: Object.fromEntries(on) }]);
  return { campaignId, satellites: Object.fromEntries(bySatellite) };
}
