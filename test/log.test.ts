import { afterEach, describe, expect, it, vi } from 'vitest';
import { audit } from '../src/http/audit.js';
import { logTo, setLogging } from '../src/log.js';

/** The log module itself; test/logs.test.ts runs it in serve and `snapshot`. */
describe('logTo', () => {
  afterEach(() => setLogging({ logFormat: 'text', logLevel: 'info' }));
  const kind = { component: 'part', text: (level: string, msg: string) => `[part] ${level}: ${msg}` };

  // the CLI's commands but serve and snapshot never call setLogging: their lines (generate's undo that could not revoke) print as always
  it('without setLogging, writes text lines at info and above', async () => {
    vi.resetModules();
    const fresh = await import('../src/log.js');
    const lines: string[] = [];
    const log = fresh.logTo(kind, (line) => lines.push(line));
    log('debug', 'dropped');
    log('info', 'kept');
    expect(lines).toEqual(['[part] info: kept']);
  });

  it('writes the lines at LOG_LEVEL and above, the audit trail at every level', () => {
    const lines: string[] = [];
    setLogging({ logFormat: 'text', logLevel: 'error' });
    const log = logTo(kind, (line) => lines.push(line));
    log('warn', 'dropped');
    log('error', 'kept', { shard: 3 });
    audit({ method: 'DELETE', path: '/v1/admin/satellites/us1', ip: '10.0.0.9', status: 401, error: 'unauthorized', ms: 0 }, (line) => lines.push(line));
    expect(lines).toEqual(['[part] error: kept', expect.stringMatching(/^\{"audit":"admin","at":"[^"]+","method":"DELETE","path":"\/v1\/admin\/satellites\/us1","ip":"10\.0\.0\.9","status":401,"error":"unauthorized","ms":0\}$/)]);
  });

  // docs/http.md shows this line: a shipper's query may key on its msg
  it('in json, an audit line is the log\'s keys, msg saying method, path and status, then the entry', () => {
    const lines: string[] = [];
    setLogging({ logFormat: 'json', logLevel: 'error' });
    audit({ method: 'DELETE', path: '/v1/admin/satellites/us1', ip: '10.0.0.9', status: 401, error: 'unauthorized', ms: 0 }, (line) => lines.push(line));
    const line = JSON.parse(lines[0]!) as Record<string, unknown>;
    expect(Object.keys(line)).toEqual(['time', 'level', 'component', 'pid', 'msg', 'audit', 'at', 'method', 'path', 'ip', 'status', 'error', 'ms']);
    expect(line).toEqual({ time: expect.any(String), level: 'info', component: 'audit', pid: process.pid, msg: 'DELETE /v1/admin/satellites/us1 401', audit: 'admin', at: expect.any(String), method: 'DELETE', path: '/v1/admin/satellites/us1', ip: '10.0.0.9', status: 401, error: 'unauthorized', ms: 0 });
  });

  it('in json, a field cannot take the place of the line\'s time, level, component, pid or msg', () => {
    const lines: string[] = [];
    setLogging({ logFormat: 'json', logLevel: 'debug' });
    logTo({ ...kind, fields: { client: 'http' } }, (line) => lines.push(line))('debug', 'words', { level: 'error', msg: 'other', pid: 1, shard: 7 });
    expect(lines.map((l) => JSON.parse(l))).toEqual([{ time: expect.any(String), level: 'debug', component: 'part', pid: process.pid, msg: 'words', client: 'http', shard: 7 }]);
  });
});
