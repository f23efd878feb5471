import { describe, expect, it } from 'vitest';
import { audit } from '../src/http/audit.js';
import { ADMIN_KEY, rawExchange, serve } from './helpers/http.js';
import { testPrefix } from './helpers/redis.js';

describe('the admin audit line', () => {
  // written after the reply, inside the request's try: a throw here was logged as a 500 of a call that succeeded
  it('is still written, without body and result, when they cannot be serialized', () => {
    const lines: string[] = [];
    expect(() => audit({ method: 'POST', path: '/v1/admin/tokens/revoke', ip: '127.0.0.1', status: 200, ms: 1.4, body: { n: 10n }, result: { revoked: 1 } }, (l) => lines.push(l))).not.toThrow();
    expect(lines).toHaveLength(1);
    const line = JSON.parse(lines[0]!);
    expect(line).toMatchObject({ audit: 'admin', method: 'POST', path: '/v1/admin/tokens/revoke', status: 200, ms: 1, unwritable: expect.stringContaining('BigInt') });
    expect(line).not.toHaveProperty('body');
    expect(line).not.toHaveProperty('result');
  });

  // a leading blank (new URL trims it), a password holding an @ and a query token each showed a secret
  it('hides every part of a url that may be a secret', () => {
    const lines: string[] = [];
    // d: a password holding a / left unencoded, in a url refused as mistyped (its body is audited all the same)
    const urls = [' https://user:hunter3@sat.example/x', 'https://user:hunter2@pw@sat.example/x', 'https://sat.example/push?api_token=abc#top', 'https://user:hunter4/x@sat.example/x'];
    audit({ method: 'PATCH', path: '/v1/admin/satellites/s', ip: '127.0.0.1', status: 200, ms: 1, body: { a: { url: urls[0] }, b: { url: urls[1] }, c: { url: urls[2] }, d: { url: urls[3] } } }, (l) => lines.push(l));
    const body = JSON.parse(lines[0]!).body as Record<string, { url: string }>;
    expect([body.a!.url, body.b!.url, body.c!.url, body.d!.url]).toEqual([' https://<redacted>@sat.example/x', 'https://<redacted>@sat.example/x', 'https://sat.example/push?<redacted>#top', 'https://<redacted>@sat.example/x']);
    expect(lines.join('\n')).not.toMatch(/hunter|pw@|abc/);
  });

  // anyone may send the path, key or no key; JSON escapes only C0 controls, so a bidi override (U+202E) reordered
  // how a terminal or log viewer showed the line, and a C1 control (U+009B, an escape some terminals act on) reached it
  it('percent-encodes a path that is not visible ASCII, as a client would have sent it', async () => {
    const served = await serve({ KEY_PREFIX: testPrefix('audit-path') }, 1);
    try {
      const reply = await rawExchange(served.url, 'DELETE /v1/admin/satellites/x\u202e\u009b31m\u2028y\u00e9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
      expect(reply).toMatch(/^HTTP\/1\.1 401 /);
      let line: { path: string } | undefined;
      for (let i = 0; i < 100 && !line; i++) {
        line = served.output().split('\n').filter((l) => l.startsWith('{"audit"')).map((l) => JSON.parse(l)).find((l) => l.path.startsWith('/v1/admin/satellites/x'));
        if (!line) await new Promise((s) => setTimeout(s, 50));
      }
      expect(line?.path).toBe('/v1/admin/satellites/x%E2%80%AE%C2%9B31m%E2%80%A8y%C3%A9');
      expect(served.output()).not.toMatch(/[\u0080-\u009f\u202e\u2028]/);
    } finally {
      await served.stop();
    }
  });

  // every admin call that may change something writes a line, refused ones too: anyone could trigger the
  // write that, with the log reader gone, threw EPIPE and ended the process
  it('a serve whose stdout and stderr readers went away keeps serving', async () => {
    const served = await serve({ KEY_PREFIX: testPrefix('audit-epipe') }, 1);
    try {
      served.proc.stdout!.destroy();
      served.proc.stderr!.destroy();
      const pid = async () => ((await (await fetch(`${served.url}/healthz`)).json()) as { pid: number }).pid;
      const worker = await pid();
      for (let i = 0; i < 5; i++) {
        expect((await fetch(`${served.url}/v1/admin/satellites/x`, { method: 'DELETE' })).status).toBe(401);
        expect((await fetch(`${served.url}/v1/admin/satellites/x`, { method: 'DELETE', headers: { authorization: `Bearer ${ADMIN_KEY}` } })).status).toBe(404);
        await new Promise((s) => setTimeout(s, 100));
      }
      expect(await pid()).toBe(worker);
      expect(served.proc.exitCode).toBeNull();
    } finally {
      await served.stop();
    }
  });
});
