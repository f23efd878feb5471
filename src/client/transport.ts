import { Pool } from 'undici';
import { ReferralError } from './error.js';
import { msgpackRequest } from '../msgpack.js';

export interface TransportOptions {
  /** base URL of the manager, e.g. http://127.0.0.1:7480 */
  url: string;
  apiKey: string;
  /** per-request deadline (headers and body), default 5000 ms */
  timeoutMs?: number;
  /** keep-alive connections in the pool, default 16 */
  connections?: number;
}

/** One keep-alive pool speaking MessagePack; non-2xx replies become ReferralError. */
export class Transport {
  private readonly pool: Pool;
  private readonly auth: string;
  private readonly timeoutMs: number;

  constructor(opts: TransportOptions) {
    const timeoutMs = opts.timeoutMs ?? 5000;
    this.pool = new Pool(opts.url, { connections: opts.connections ?? 16, headersTimeout: timeoutMs, bodyTimeout: timeoutMs, keepAliveTimeout: 30_000 });
    this.auth = `Bearer ${opts.apiKey}`;
    this.timeoutMs = timeoutMs;
  }

  async call<T>(method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown): Promise<T> {
    let res;
    try {
      res = await msgpackRequest(this.pool, { method, path, headers: { authorization: this.auth }, body, timeoutMs: this.timeoutMs });
    } catch (err) {
      throw new ReferralError('unavailable', 0, `request failed: ${(err as Error).message}`);
    }
    if (res.undecodable) throw new ReferralError('internal', res.status, `undecodable ${res.contentType} reply (status ${res.status})`);
    if (res.status >= 200 && res.status < 300) return res.data as T;
    const e = (res.data ?? {}) as { error?: string; message?: string };
    const retry = Number(res.headers['retry-after']);
    throw new ReferralError(e.error ?? 'internal', res.status, e.message ?? `HTTP ${res.status}`, Number.isFinite(retry) ? retry : undefined);
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}
