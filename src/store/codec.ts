import type { Result, Token, TokenState } from './model.js';

/** A token record's first letter in its bucket (lua/includes/codec.lua) and the state it stores. */
export const STATE_NAME: Record<string, TokenState> = { u: 'unredeemed', s: 'reserved', r: 'redeemed', x: 'revoked' };
export const STATE_LETTER: Record<TokenState, string> = { unredeemed: 'u', reserved: 's', redeemed: 'r', revoked: 'x' };

/** Decodes the scripts' `{ code, row... }` replies; the row order is the one lua/includes/codec.lua documents (EXPORT_FIELDS in export.ts). */
const num = (s: string | undefined): number | undefined => (s ? Number(s) : undefined);

export function decodeRow(r: string[], at = 0): Token {
  const t: Token = {
    token: r[at]!,
    state: r[at + 1] as TokenState,
    ownerSatelliteId: r[at + 2]!,
    ownerUserId: r[at + 3]!,
    campaignId: r[at + 4]!,
    createdAt: Number(r[at + 5]),
  };
  const optional: [keyof Token, string | number | undefined][] = [
    ['expiresAt', num(r[at + 6])],
    ['reservationId', r[at + 7] || undefined],
    ['reservedBy', r[at + 8] || undefined],
    ['leaseExpiresAt', num(r[at + 9])],
    ['redeemerSatelliteId', r[at + 10] || undefined],
    ['redeemerUserId', r[at + 11] || undefined],
    ['redeemedAt', num(r[at + 12])],
  ];
  for (const [k, v] of optional) if (v !== undefined) (t as unknown as Record<string, unknown>)[k] = v;
  return t;
}

export function decodeResult<C extends string>(reply: unknown): Result<C> {
  const r = reply as string[];
  const out: Result<C> = { code: r[0] as C };
  if (r.length > 1) out.token = decodeRow(r, 1);
  return out;
}

/** The token's 32 hex digits, as the scripts and the bucket prefixes take them. */
export const hexOf = (token: string): string => token.replace(/-/g, '');

export function dashed(hex: string): string {
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
