import { Pool } from 'undici';
import { ReferralError } from './error.js';
import { MSGPACK, decodeBody, packr } from '../msgpack.js';

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
    const headers: Record<string, string> = { authorization: this.auth, accept: MSGPACK };
    if (body !== undefined) headers['content-type'] = MSGPACK;
    let res;
    try {
      res = await this.pool.request({
        method,
        path,
        headers,
        body: body === undefined ? undefined : packr.pack(body),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (err) {
      throw new ReferralError('unavailable', 0, `request failed: ${(err as Error).message}`);
    }
    const raw = Buffer.from(await res.body.arrayBuffer());
    const type = String(res.headers['content-type'] ?? '');
    let data: unknown;
    try {
      data = decodeBody(raw, type);
    } catch {
      throw new ReferralError('internal', res.statusCode, `undecodable ${type} reply (status ${res.statusCode})`);
    }
    if (res.statusCode >= 200 && res.statusCode < 300) return data as T;
    const e = (data ?? {}) as { error?: string; message?: string };
    const retry = Number(res.headers['retry-after']);
    throw new ReferralError(e.error ?? 'internal', res.statusCode, e.message ?? `HTTP ${res.statusCode}`, Number.isFinite(retry) ? retry : undefined);
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}
