/**
 * Stream entries as the writer sees them (lua/includes/codec.lua `transition`): fields type, at and row,
 * where row is the 13 values of a token row (EXPORT_FIELDS order, src/store/export.ts) joined by tabs
 * ('' when absent; ids never hold tabs).
 */
export interface StreamEvent {
  shard: number;
  /** stream id parts; ms and seq are kept as strings (bigint in Postgres) */
  ms: string;
  seq: string;
  id: string;
  type: string;
  at: string;
  /** the 13 row values in EXPORT_FIELDS order, joined by tabs, as the stream carries them */
  row: string;
}

/**
 * Parses one XREADGROUP entry; undefined for an entry that was trimmed while pending (fields nil). One
 * written with fields missing (by hand) is an event all the same: Postgres refuses it, and the writer names it.
 * The scripts write the fields in this order; an entry written otherwise is looked up by name.
 */
export function parseEntry(shard: number, id: string, fields: string[] | null): StreamEvent | undefined {
  if (!fields) return undefined;
  const [ms, seq] = idParts(id);
  const inOrder = fields[0] === 'type' && fields[2] === 'at' && fields[4] === 'row';
  const field = (name: string) => {
    const i = fields.indexOf(name);
    return i >= 0 && i % 2 === 0 ? fields[i + 1] : undefined;
  };
  return {
    shard,
    id,
    ms,
    seq,
    type: (inOrder ? fields[1] : field('type')) ?? '',
    at: (inOrder ? fields[3] : field('at')) ?? '0',
    row: (inOrder ? fields[5] : field('row')) ?? '',
  };
}

/** A stream id's two parts, "ms-seq" (decimal text, as Postgres' bigint columns take them). */
export function idParts(id: string): [string, string] {
  const dash = id.indexOf('-');
  return [id.slice(0, dash), id.slice(dash + 1)];
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
