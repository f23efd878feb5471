// JSON-schema pieces and reply helpers the satellite and admin routes share.
import { ID_MAX_BYTES } from '../tokens/validate.js';

// the schema counts characters, a first cut; the engine's checkId then counts the bytes
export const id = { type: 'string', minLength: 1, maxLength: ID_MAX_BYTES };
export const token = { type: 'string', minLength: 36, maxLength: 36 };
/** a satellite's name, url or outbound key: an empty one would read as unset, so it is refused (registry.ts) */
export const text = (maxLength: number) => ({ type: 'string', minLength: 1, maxLength });
export const nullable = (maxLength: number) => ({ ...text(maxLength), nullable: true });
export const obj = (required: string[], properties: Record<string, object>) => ({ type: 'object', required, properties });
/**
 * An admin body: a field it does not know is refused, not ignored as on the satellite routes (where a newer
 * satellite may send more). Admin changes cannot be undone: `{"madeBefore": ..., "dryrun": true}` ran a real
 * purge, and a generate's `expiresat` made tokens that never expire.
 */
export const closed = <S extends object>(schema: S) => ({ ...schema, additionalProperties: false });

/** Drops undefined fields, which MessagePack would otherwise carry as nil. */
export function defined<T extends object>(o: T): T {
  for (const k of Object.keys(o) as (keyof T)[]) if (o[k] === undefined) delete o[k];
  return o;
}
