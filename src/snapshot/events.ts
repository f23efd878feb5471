/**
 * Stream entries as the writer sees them (lua/includes/codec.lua `emit`): fields type, at and row,
 * where row is the 13 ROW_FIELDS values joined by tabs ('' when absent; ids never hold tabs).
 */
export const ROW_FIELDS = [
  'token', 'state', 'ownerSatelliteId', 'ownerUserId', 'campaignId', 'createdAt', 'expiresAt',
  'reservationId', 'reservedBy', 'leaseExpiresAt', 'redeemerSatelliteId', 'redeemerUserId', 'redeemedAt',
] as const;

export interface StreamEvent {
  shard: number;
  /** stream id parts; ms and seq are kept as strings (bigint in Postgres) */
  ms: string;
  seq: string;
  id: string;
  type: string;
  at: string;
  /** the 13 row values in ROW_FIELDS order */
  row: string[];
}

/** Parses one XREADGROUP entry; undefined for an entry that was trimmed while pending (fields nil). */
export function parseEntry(shard: number, id: string, fields: string[] | null): StreamEvent | undefined {
  if (!fields || fields.length < 4) return undefined;
  const dash = id.indexOf('-');
  const values = new Map<string, string>();
  for (let i = 0; i < fields.length; i += 2) values.set(fields[i]!, fields[i + 1] ?? '');
  return {
    shard,
    id,
    ms: id.slice(0, dash),
    seq: id.slice(dash + 1),
    type: values.get('type') ?? '',
    at: values.get('at') ?? '0',
    row: unpackRow(values.get('row') ?? ''),
  };
}

function unpackRow(packed: string): string[] {
  const row = packed.split('\t');
  row.length = ROW_FIELDS.length;
  return Array.from(row, (v) => v ?? '');
}

/** Compares stream ids "ms-seq" numerically (both parts are decimal without leading zeros). */
export function compareIds(a: string, b: string): number {
  const da = a.indexOf('-');
  const db = b.indexOf('-');
  return compareDecimal(a.slice(0, da), b.slice(0, db)) || compareDecimal(a.slice(da + 1), b.slice(db + 1));
}

function compareDecimal(x: string, y: string): number {
  return x.length - y.length || (x < y ? -1 : x > y ? 1 : 0);
}
