import { Packr } from 'msgpackr';
import type { Dispatcher } from 'undici';

export const MSGPACK = 'application/msgpack';

/** Plain maps and arrays on the wire (no msgpackr records), so any MessagePack peer can read them. */
export const packr = new Packr({ useRecords: false, mapsAsObjects: true });

/** An HTTP body by its content type: JSON when it says json, else MessagePack; empty is undefined. Throws when undecodable. */
export function decodeBody(raw: Buffer, contentType: string): unknown {
  if (raw.length === 0) return undefined;
  return contentType.includes('json') ? JSON.parse(raw.toString('utf8')) : packr.unpack(raw);
}

export interface MsgpackReply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  raw: Buffer;
  contentType: string;
  /** the decoded body; undefined when empty or undecodable */
  data: unknown;
  undecodable: boolean;
}

/**
 * One request with an optional MessagePack body and `accept: MessagePack`, over a keep-alive undici
 * dispatcher, with a deadline. Network failures throw as they are; any status comes back as a reply.
 */
export async function msgpackRequest(
  dispatcher: Dispatcher,
  req: { method: 'GET' | 'POST' | 'PATCH' | 'DELETE'; path: string; headers: Record<string, string>; body?: unknown; timeoutMs: number },
): Promise<MsgpackReply> {
  const headers: Record<string, string> = { accept: MSGPACK, ...req.headers };
  if (req.body !== undefined) headers['content-type'] = MSGPACK;
  const res = await dispatcher.request({
    method: req.method,
    path: req.path,
    headers,
    body: req.body === undefined ? undefined : packr.pack(req.body),
    // also the undici timeouts: a pool's own (set for its usual calls) would cut a longer call short
    headersTimeout: req.timeoutMs,
    bodyTimeout: req.timeoutMs,
    signal: AbortSignal.timeout(req.timeoutMs),
  });
  const raw = Buffer.from(await res.body.arrayBuffer());
  const contentType = String(res.headers['content-type'] ?? '');
  let data: unknown;
  let undecodable = false;
  try {
    data = decodeBody(raw, contentType);
  } catch {
    undecodable = true;
  }
  return { status: res.statusCode, headers: res.headers, raw, contentType, data, undecodable };
}
