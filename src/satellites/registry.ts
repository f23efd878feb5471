import { randomBytes } from 'node:crypto';
import { subscriberOf, type RedisClient } from '../store/redis.js';
import { defineScripts, type ScriptFn } from '../store/scripts.js';
import { insertSatellite, readRegistry, SatelliteKeys } from '../store/satellites.js';
import { hashKey } from '../digest.js';
import { DomainError } from '../errors.js';
import { checkNewId, checkText } from '../tokens/validate.js';
import type { Satellite, SatelliteFields } from './model.js';
import { OutboundKeySeal, SEALED } from './seal.js';

/** 256 random bits, URL-safe; the manager stores only its SHA-256. */
function newApiKey(): string {
  return `rmk_${randomBytes(32).toString('base64url')}`;
}

/**
 * Registered satellites and their API keys, in Redis (layout: src/store/satellites.ts); the
 * multi-key updates run in MULTI or one script.
 */
export class SatelliteRegistry {
  private readonly s: Record<'satellite_rotate' | 'satellite_remove' | 'satellite_update' | 'satellite_reseal', ScriptFn>;
  private readonly keys: SatelliteKeys;
  private readonly seal: OutboundKeySeal;
  /** `outboundKeySecrets`: OUTBOUND_KEY_SECRET (src/satellites/seal.ts); none: outbound keys are stored as given */
  constructor(private readonly redis: RedisClient, prefix: string, outboundKeySecrets: readonly string[] = []) {
    this.s = defineScripts(redis, ['satellite_rotate', 'satellite_remove', 'satellite_update', 'satellite_reseal']);
    this.keys = new SatelliteKeys(prefix);
    this.seal = new OutboundKeySeal(outboundKeySecrets);
  }

  async add(input: { id: string; name?: string; url?: string; outboundKey?: string }): Promise<{ id: string; apiKey: string }> {
    const id = checkNewId('id', input.id);
    const apiKey = newApiKey();
    const fields: Record<string, string> = { id, createdAt: String(Date.now()), keyHash: hashKey(apiKey) };
    for (const [f, v] of this.sealed(id, checkFields(input))) if (v !== '') fields[f] = v;
    const created = await insertSatellite(this.redis, this.keys, { id, fields, apiKeys: { [fields.keyHash!]: `${id}\t` } });
    if (!created) throw new DomainError('satellite_exists', `satellite "${id}" is already registered`);
    return { id, apiKey };
  }

  async get(id: string): Promise<Satellite | undefined> {
    const h = await this.redis.hgetall(this.keys.satellite(id));
    return h.id ? toSatellite(h) : undefined;
  }

  async require(id: string): Promise<Satellite> {
    const s = await this.get(id);
    if (!s) throw new DomainError('satellite_not_found', `satellite "${id}" is not registered`);
    return s;
  }

  async list(): Promise<Satellite[]> {
    return (await readRegistry(this.redis, this.keys)).satellites.map((r) => toSatellite(r.fields));
  }

  async remove(id: string): Promise<void> {
    const removed = await this.s.satellite_remove([this.keys.satellite(id), this.keys.index(), this.keys.ids(), this.keys.removed()], [id, this.keys.retired()]);
    if (Number(removed) !== 1) throw new DomainError('satellite_not_found', `satellite "${id}" is not registered`);
  }

  /** Sets or (null) clears the given fields; the satellite's id and keys stay. */
  async update(id: string, change: SatelliteFields): Promise<Satellite> {
    const pairs = checkFields(change);
    if (pairs.length === 0) throw new DomainError('invalid_request', 'nothing to change: give name, url or outboundKey');
    const flat = (await this.s.satellite_update([this.keys.satellite(id)], this.sealed(id, pairs).flat())) as string[];
    if (flat.length === 0) throw new DomainError('satellite_not_found', `satellite "${id}" is not registered`);
    // the record as the script left it: a read after it could already see a later change or a remove
    const h: Record<string, string> = {};
    for (let i = 0; i < flat.length; i += 2) h[flat[i]!] = flat[i + 1]!;
    return toSatellite(h);
  }

  /** The key to present to satellite `s`, opened when it is stored sealed; throws when it cannot be opened here. */
  outboundKey(s: Satellite): string | undefined {
    return s.outboundKey === undefined ? undefined : this.seal.open(s.id, s.outboundKey);
  }

  /**
   * Seals every outbound key not yet sealed with the first OUTBOUND_KEY_SECRET: stored before a secret was set,
   * or under a secret being rotated out. `unreadable`: keys no secret given opens (left as they are).
   */
  async sealKeys(): Promise<{ sealed: string[]; current: number; unreadable: string[] }> {
    if (!this.seal.sealing) throw new DomainError('invalid_request', 'OUTBOUND_KEY_SECRET is not set: nothing to seal the outbound keys with (openssl rand -hex 32 makes one)');
    const out = { sealed: [] as string[], current: 0, unreadable: [] as string[] };
    for (const s of await this.list()) {
      if (s.outboundKey === undefined) continue;
      if (this.seal.isCurrent(s.id, s.outboundKey)) {
        out.current++;
        continue;
      }
      let key: string;
      try {
        key = this.seal.open(s.id, s.outboundKey);
      } catch {
        out.unreadable.push(s.id);
        continue;
      }
      // an update or remove since the list wins: it wrote a key sealed the current way, or none
      if (Number(await this.s.satellite_reseal([this.keys.satellite(s.id)], [s.outboundKey, this.seal.seal(s.id, key)])) === 1) out.sealed.push(s.id);
    }
    return out;
  }

  /** `pairs` with the outbound key's value sealed (a cleared one, '', stays '') */
  private sealed(id: string, pairs: [Field, string][]): [Field, string][] {
    return pairs.map(([f, v]) => [f, f === 'outboundKey' && v !== '' ? this.seal.seal(id, v) : v]);
  }

  /** New key now; the old one keeps working for `graceMs`, then not. */
  async rotateKey(id: string, graceMs: number): Promise<{ apiKey: string }> {
    const apiKey = newApiKey();
    const rotated = await this.s.satellite_rotate([this.keys.satellite(id), this.keys.index()], [id, hashKey(apiKey), graceMs > 0 ? Date.now() + graceMs : '', this.keys.retired()]);
    if (Number(rotated) !== 1) throw new DomainError('satellite_not_found', `satellite "${id}" is not registered`);
    return { apiKey };
  }

  /**
   * Calls `retired` with the id of each satellite removed or whose key was rotated from now on, by any process
   * on this prefix (serve, the CLI), while its connection is up; `subscribed` settles once Redis confirmed
   * the subscription (it waits for Redis; refused only once closed); close() ends it.
   */
  onRetired(retired: (id: string) => void): { subscribed: Promise<unknown>; close(): void } {
    const sub = subscriberOf(this.redis);
    // the client's own outage log says Redis is down; each reconnect failing here would say it again
    sub.on('error', () => undefined);
    sub.on('message', (_channel: string, id: string) => retired(id));
    const subscribed = sub.subscribe(this.keys.retired());
    subscribed.catch(() => undefined);
    return { subscribed, close: () => sub.disconnect() };
  }

  /**
   * The satellite a key belongs to, or undefined, with the epoch ms a rotated key's grace ends (none for a
   * current key). Looked up by hash, so the key never leaves this process.
   */
  async keyHolder(apiKey: string): Promise<{ id: string; until?: number } | undefined> {
    const entry = await this.redis.hget(this.keys.index(), hashKey(apiKey));
    if (!entry) return undefined;
    const [id, until] = entry.split('\t') as [string, string | undefined];
    if (!until) return { id };
    if (Number(until) <= Date.now()) return undefined;
    return { id, until: Number(until) };
  }
}

/** A satellite's stored hash as the API shows it (key hashes stay inside). */
function toSatellite(h: Record<string, string>): Satellite {
  const s: Satellite = { id: h.id!, createdAt: Number(h.createdAt) };
  if (h.name) s.name = h.name;
  if (h.url) s.url = h.url;
  if (h.outboundKey) s.outboundKey = h.outboundKey;
  return s;
}

/** Longest value of each field, in characters; the HTTP schemas take theirs from here. */
export const SATELLITE_FIELD_MAX = { name: 256, url: 2048, outboundKey: 4096 } as const;
type Field = keyof typeof SATELLITE_FIELD_MAX;

/**
 * The given fields as [field, value] pairs, value '' for a null (cleared) one. Shared by add and update so
 * a value one accepts the other does too; an empty string is refused because it would read as unset.
 */
function checkFields(input: SatelliteFields): [Field, string][] {
  const out: [Field, string][] = [];
  for (const f of Object.keys(SATELLITE_FIELD_MAX) as Field[]) {
    const v = input[f];
    if (v === undefined) continue;
    if (v === null) {
      out.push([f, '']);
      continue;
    }
    if (typeof v !== 'string' || v.length === 0 || v.length > SATELLITE_FIELD_MAX[f]) throw new DomainError('invalid_request', `${f}: must be a string of 1..${SATELLITE_FIELD_MAX[f]} characters`);
    // a NUL stopped the snapshot: Postgres refuses it in the registry's jsonb, and the writer retried for ever
    checkText(f, v);
    if (f === 'url') checkUrl(v);
    // stored as given without a secret, it would then read as sealed
    if (f === 'outboundKey' && v.startsWith(SEALED)) throw new DomainError('invalid_request', `outboundKey: must not start with "${SEALED}"`);
    // it goes in an Authorization header: undici refused one with a character beyond Latin-1 (every generate
    // failed, retried, "invalid authorization header"), sent é as one Latin-1 byte, not the UTF-8 the satellite
    // holds, and a satellite's parser trims outer spaces
    if (f === 'outboundKey' && !/^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$/.test(v)) throw new DomainError('invalid_request', 'outboundKey: must be printable ASCII, without leading or trailing spaces (it is sent as an HTTP header)');
    out.push([f, v]);
  }
  return out;
}

function checkUrl(url: string): void {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new DomainError('invalid_request', `url: not a URL: "${url}"`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new DomainError('invalid_request', 'url: must be http(s)');
  // generate calls the url's origin and path: a user:password in it was never sent (the outbound key is the
  // credential) yet was shown by every `satellites list`; a query or fragment was dropped as silently
  if (u.username || u.password) throw new DomainError('invalid_request', 'url: must not hold a user or password (give the satellite\'s key as its outbound key)');
  if (u.search || u.hash) throw new DomainError('invalid_request', 'url: must not hold a query or fragment');
}
