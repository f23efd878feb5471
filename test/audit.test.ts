import { describe, expect, it } from 'vitest';
import { audit } from '../src/http/audit.js';

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
});
