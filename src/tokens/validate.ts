import { DomainError } from '../errors.js';

const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
// Tab, newline and other control characters separate fields inside the Redis records.
const CONTROL = /[\u0000-\u001f\u007f]/;

/** The longest id, in UTF-8 bytes (Storj's node ids and UUIDs are far shorter). */
export const ID_MAX_BYTES = 128;

/** Satellite, user and campaign ids: opaque strings of 1..ID_MAX_BYTES bytes without control characters. */
export function checkId(field: string, value: unknown): string {
  if (typeof value !== 'string') throw new DomainError('invalid_request', `${field}: must be a string`);
  const bytes = Buffer.byteLength(value);
  if (bytes < 1 || bytes > ID_MAX_BYTES) throw new DomainError('invalid_request', `${field}: must be 1..${ID_MAX_BYTES} bytes, got ${bytes}`);
  return checkText(field, value);
}

// C1 controls (U+009B is an escape some terminals still act on), the format characters (Unicode category
// Cf): the bidirectional ones, which reorder how the text around them reads ("Trojan Source"), and the
// invisible ones (zero width, word joiner, BOM, soft hyphen, tag characters: "alice" and "alice\u200b" look
// the same), and the line and paragraph separators (a line break to JavaScript and some viewers): all reach
// an operator's terminal and spreadsheet through the CLI, the audit log and the export. The category, not a
// list: a list of the known ones let the soft hyphen and the invisible tag characters through
const DISPLAY_HAZARD = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/u;

/**
 * An id a call brings into the store (a token's owner, a redeemer, a satellite, a campaign): an id, and
 * no C1 control, bidirectional formatting, invisible or line separator character either. Ids that only find what is stored (list,
 * revoke, purge) keep the rule of checkId, so an id stored before this one can still be reached.
 */
export function checkNewId(field: string, value: unknown): string {
  const id = checkId(field, value);
  if (DISPLAY_HAZARD.test(id)) throw new DomainError('invalid_request', `${field}: must not contain C1 control, bidirectional formatting, invisible or line separator characters`);
  return id;
}

/**
 * Text stored and copied to the snapshot: no control characters (a NUL is refused by Postgres' jsonb and
 * text, which stopped every snapshot write) and well-formed (a lone surrogate has no UTF-8 form: Redis
 * would store U+FFFD and the value would not round-trip).
 */
export function checkText(field: string, value: string): string {
  if (CONTROL.test(value)) throw new DomainError('invalid_request', `${field}: must not contain control characters`);
  if (!value.isWellFormed()) throw new DomainError('invalid_request', `${field}: must be valid UTF-8 (lone surrogate)`);
  return value;
}

/**
 * Text from outside, shown to an operator and stored (a satellite's error message): a control character
 * (a NUL, a terminal escape) or a lone surrogate becomes U+FFFD, so it can neither drive the terminal
 * nor be refused by Postgres. Past `max` characters it is cut, marked `...` (a satellite's 5 MB message, its
 * megabyte cursor, would otherwise be printed and kept whole).
 */
export function printable(text: string, max = Infinity): string {
  const cut = text.length > max ? `${text.slice(0, max)}...` : text;
  // C1 too: U+009B is an escape some terminals still act on
  return cut.toWellFormed().replace(/[\u0000-\u001f\u007f-\u009f]/g, '\ufffd');
}

/**
 * A new campaign's id: an id without braces. The CLI keeps a campaign's records under the hash tag
 * {camp:<id>}, where a brace would end the tag early and let two campaigns share keys (campaign "c" with
 * satellite "x}:meta" and campaign "c}:made:x"); the admin route takes the same rule so every campaign
 * can be followed with `campaigns` and `generate --campaign`. Revoking still takes any id, so a campaign
 * named before this rule can be revoked.
 */
export function checkCampaignId(field: string, value: unknown): string {
  const id = checkNewId(field, value);
  if (/[{}]/.test(id)) throw new DomainError('invalid_request', `${field}: must not contain { or }`);
  return id;
}

export function isToken(value: unknown): value is string {
  return typeof value === 'string' && UUID_V4.test(value);
}

/** The canonical token text; anything but a lowercase UUIDv4 is refused. */
export function checkToken(value: unknown, field = 'token'): string {
  if (!isToken(value)) throw new DomainError('invalid_request', `${field}: must be a lowercase UUIDv4`);
  return value;
}
