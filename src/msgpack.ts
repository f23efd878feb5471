import { Packr } from 'msgpackr';

export const MSGPACK = 'application/msgpack';

/** Plain maps and arrays on the wire (no msgpackr records), so any MessagePack peer can read them. */
export const packr = new Packr({ useRecords: false, mapsAsObjects: true });

/** An HTTP body by its content type: JSON when it says json, else MessagePack; empty is undefined. Throws when undecodable. */
export function decodeBody(raw: Buffer, contentType: string): unknown {
  if (raw.length === 0) return undefined;
  return contentType.includes('json') ? JSON.parse(raw.toString('utf8')) : packr.unpack(raw);
}
