import { ReferralError, type SatelliteClient } from '../client/index.js';
import type { SimSatellite } from './satellite.js';

export interface SignupSummary {
  attempted: number;
  redeemed: number;
  /** redeemed tokens owned by another satellite */
  crossSatellite: number;
  /** reservations released (a sign-up abandoned half-way) before the token was redeemed after all */
  released: number;
  /** wire code -> sign-ups that ended with it; `no_token` when neither this sim nor the peer had one to give */
  failed: Record<string, number>;
}

export interface SignupOptions {
  count: number;
  /** share of sign-ups that use a token taken from a random peer (0..1) */
  crossShare: number;
  /** base URLs of other sims, asked for a token with GET <peer>/sim/take-token */
  peers: string[];
}

const PEER_TIMEOUT_MS = 5000;
const SIGNUPS_IN_FLIGHT = 8;

async function peerToken(peer: string): Promise<string | undefined> {
  try {
    const res = await fetch(new URL('/sim/take-token', peer), { headers: { accept: 'application/json' }, signal: AbortSignal.timeout(PEER_TIMEOUT_MS) });
    if (!res.ok) return undefined;
    return ((await res.json()) as { token?: string }).token;
  } catch {
    return undefined;
  }
}

/**
 * Signs `count` new users up through the manager, the way a satellite does: each new user brings a
 * referral token, from a peer's users (crossShare of the time; this sim's own if the peer has none left)
 * or this sim's own. The flows rotate so every API path is exercised: sign-up 10, 20, ... reserves, releases
 * (an abandoned sign-up does not burn the token) and then redeems; the others alternate between the
 * one-step redeem and reserve -> complete. A new user joins this satellite only once its token is redeemed.
 */
export async function runSignups(sat: SimSatellite, client: SatelliteClient, opts: SignupOptions): Promise<SignupSummary> {
  const summary: SignupSummary = { attempted: 0, redeemed: 0, crossSatellite: 0, released: 0, failed: {} };
  const failed = (code: string) => (summary.failed[code] = (summary.failed[code] ?? 0) + 1);

  const token = async (): Promise<string | undefined> => {
    if (opts.peers.length > 0 && Math.random() < opts.crossShare) {
      const t = await peerToken(opts.peers[Math.floor(Math.random() * opts.peers.length)]!);
      if (t !== undefined) return t;
    }
    return sat.takeToken()?.token;
  };

  const signup = async (i: number) => {
    summary.attempted += 1;
    const t = await token();
    if (t === undefined) return failed('no_token');
    const userId = sat.nextSignupId();
    try {
      let owner: string;
      if (i % 10 === 9) {
        const r = await client.reserve(t);
        await client.release(t, r.reservationId);
        summary.released += 1;
        owner = (await client.redeem(t, userId)).ownerSatelliteId;
      } else if (i % 2 === 0) {
        owner = (await client.redeem(t, userId)).ownerSatelliteId;
      } else {
        const r = await client.reserve(t);
        owner = (await client.complete(t, r.reservationId, userId)).ownerSatelliteId;
      }
      summary.redeemed += 1;
      if (owner !== sat.id) summary.crossSatellite += 1;
      sat.join(userId);
    } catch (err) {
      failed(err instanceof ReferralError ? err.code : 'internal');
    }
  };

  let next = 0;
  const worker = async () => {
    while (next < opts.count) await signup(next++);
  };
  await Promise.all(Array.from({ length: Math.min(SIGNUPS_IN_FLIGHT, opts.count) }, worker));
  return summary;
}
