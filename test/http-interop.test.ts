// What other languages' common encoders send a real serve, as bytes written by hand: Go's vmihailenco/msgpack
// (int64 as 0xd3 and uint64 as 0xcf unless compact, nil pointers as nil, time.Time as the timestamp extension),
// ugorji/go and Python's msgpack with use_bin_type=False (the old spec: no str8), Python's msgpack and Java's
// msgpack-core (floats as float64), Go's encoding/json (HTML-escaped), Python's json (ASCII escapes).
import { describe, expect, it } from 'vitest';
import { ADMIN_KEY, call } from './helpers/http.js';
import { servedFor } from './helpers/served.js';

const api = servedFor('interop', { env: { RATE_LIMIT_FAILURES: '100000' }, satellites: [{ id: 'sat-go' }] });
const MISSING = '00000000-0000-4000-8000-000000000000';

/** MessagePack pieces as the encoders above write them */
const mp = {
  fixstr: (s: string) => Buffer.concat([Buffer.from([0xa0 | Buffer.byteLength(s)]), Buffer.from(s)]),
  str8: (s: string) => Buffer.concat([Buffer.from([0xd9, Buffer.byteLength(s)]), Buffer.from(s)]),
  str16: (s: string) => Buffer.concat([Buffer.from([0xda, 0, Buffer.byteLength(s)]), Buffer.from(s)]),
  str32: (s: string) => Buffer.concat([Buffer.from([0xdb, 0, 0, 0, Buffer.byteLength(s)]), Buffer.from(s)]),
  int64: (n: number | bigint) => Buffer.concat([Buffer.from([0xd3]), bytes8((b) => b.writeBigInt64BE(BigInt(n)))]),
  uint64: (n: number | bigint) => Buffer.concat([Buffer.from([0xcf]), bytes8((b) => b.writeBigUInt64BE(BigInt(n)))]),
  float64: (n: number) => Buffer.concat([Buffer.from([0xcb]), bytes8((b) => b.writeDoubleBE(n))]),
  nil: Buffer.from([0xc0]),
  /** a map of n pairs: fixmap, map16 or map32 */
  map: (pairs: [Buffer, Buffer][], width: 'fix' | 16 | 32 = 'fix') => {
    const n = pairs.length;
    const head = width === 'fix' ? [0x80 | n] : width === 16 ? [0xde, 0, n] : [0xdf, 0, 0, 0, n];
    return Buffer.concat([Buffer.from(head), ...pairs.flat()]);
  },
};
function bytes8(write: (b: Buffer) => void): Buffer {
  const b = Buffer.alloc(8);
  write(b);
  return b;
}

const reserve = (raw: Buffer | string, contentType = 'application/msgpack') => call(api.pool, 'POST', '/v1/tokens/reserve', { key: api.keys['sat-go'], raw, contentType, accept: 'application/json' });

describe('bodies as other languages encode them', () => {
  // a reserve of a token that does not exist: 404 says the body was taken, 400 names what was not
  it('takes leaseMs as int64, uint64 or an integral float64, strings of every width, map16/map32, nil for an absent field, in any key order', async () => {
    const token = [mp.fixstr('token'), mp.str8(MISSING)] as [Buffer, Buffer];
    for (const [label, body] of [
      ['Go int64', mp.map([token, [mp.fixstr('leaseMs'), mp.int64(30_000)]])],
      ['Go uint64', mp.map([token, [mp.fixstr('leaseMs'), mp.uint64(30_000)]])],
      ['Python float 30000.0', mp.map([token, [mp.fixstr('leaseMs'), mp.float64(30_000)]])],
      ['Go nil pointers', mp.map([token, [mp.fixstr('leaseMs'), mp.nil], [mp.fixstr('reservationId'), mp.nil]])],
      ['old spec str16/str32', mp.map([[mp.str32('leaseMs'), mp.int64(1)], [mp.fixstr('token'), mp.str16(MISSING)]], 16)],
      ['map32, unknown fields', mp.map([[mp.fixstr('seen'), Buffer.from([0x92, 0x01, 0xc0])], token], 32)],
    ] as const) {
      const r = await reserve(body);
      expect([label, r.status, r.body.error]).toEqual([label, 404, 'token_not_found']);
    }
    for (const [label, value, message] of [
      ['negative zero', mp.float64(-0), 'leaseMs: must be >= 1'],
      ['NaN', mp.float64(NaN), 'leaseMs: must be integer'],
      ['Infinity', mp.float64(Infinity), 'leaseMs: must be integer'],
      ['int64 max', mp.int64(2n ** 63n - 1n), 'leaseMs: must be <= 3600000'],
    ] as const) {
      const r = await reserve(mp.map([token, [mp.fixstr('leaseMs'), value]]));
      expect([label, r.status, r.body.message]).toEqual([label, 400, message]);
    }
  });

  it('takes JSON as Go, Python and Java write it: escapes, a BOM, 3e4 and 30000.0, a charset', async () => {
    for (const [label, raw, contentType] of [
      ['Go HTML escapes', `{"token":"${MISSING}","reservationId":"a\\u003cb\\u0026c"}`, 'application/json'],
      ['Python ensure_ascii', `{"token": "${MISSING}", "reservationId": "\\ud83d\\ude00\\u00e9"}`, 'application/json'],
      ['exponent', `{"token":"${MISSING}","leaseMs":3e4}`, 'Application/JSON; charset=utf-8'],
      ['integral float', `{"token":"${MISSING}","leaseMs":30000.0,"reservationId":null}`, 'application/json;charset="UTF-8"'],
      ['UTF-8 BOM', `\ufeff{"token":"${MISSING}"}`, 'application/json'],
    ] as const) {
      const r = await reserve(raw, contentType);
      expect([label, r.status, r.body.error]).toEqual([label, 404, 'token_not_found']);
    }
    // Python's json.dumps writes NaN as a bare NaN, which is no JSON
    expect((await reserve(`{"token":"${MISSING}","leaseMs":NaN}`, 'application/json')).body.message).toMatch(/^body: not valid JSON/);
  });

  // a newer Go satellite adding a time.Time field to its request struct: vmihailenco/msgpack writes it as the
  // spec's timestamp extension (-1), and the whole call was refused 400 though unknown fields are ignored
  it('ignores a timestamp in an unknown field (32, 64 and 96 bits); a known field refuses it as its wrong type', async () => {
    const seconds = Buffer.alloc(4);
    seconds.writeUInt32BE(1_700_000_000);
    for (const [label, ts] of [
      ['timestamp 32', Buffer.concat([Buffer.from([0xd6, 0xff]), seconds])],
      ['timestamp 64', Buffer.concat([Buffer.from([0xd7, 0xff, 0, 0, 0x13, 0x88]), seconds])],
      ['timestamp 96', Buffer.concat([Buffer.from([0xc7, 12, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]), seconds])],
    ] as const) {
      const r = await reserve(mp.map([[mp.fixstr('token'), mp.str8(MISSING)], [mp.fixstr('signedUpAt'), ts], [mp.fixstr('meta'), mp.map([[mp.fixstr('at'), ts]])]]));
      expect([label, r.status, r.body.error]).toEqual([label, 404, 'token_not_found']);
      const known = await reserve(mp.map([[mp.fixstr('token'), mp.str8(MISSING)], [mp.fixstr('leaseMs'), ts]]));
      expect([label, known.status, known.body.message]).toEqual([label, 400, 'leaseMs: must be integer']);
      const whole = await reserve(ts);
      expect([label, whole.status, whole.body.error]).toEqual([label, 400, 'invalid_request']);
    }
    const generate = mp.map([[mp.fixstr('satelliteId'), mp.fixstr('sat-go')], [mp.fixstr('userIds'), Buffer.from([0x91, 0xa1, 0x75])], [mp.fixstr('perUser'), mp.int64(1)], [mp.fixstr('expiresAt'), Buffer.from([0xd6, 0xff, 0x7f, 0, 0, 0])]]);
    const r = await call(api.pool, 'POST', '/v1/admin/tokens/generate', { key: ADMIN_KEY, raw: generate, contentType: 'application/msgpack', accept: 'application/json' });
    expect([r.status, r.body.message]).toEqual([400, 'expiresAt: must be integer']);
  });

  // an extension type msgpackr does not know was "not valid MessagePack (Unknown extension type 5)": the bytes are valid
  it('an unknown extension type (tinylib/msgp time.Time, type 5) is refused as an extension, not as invalid MessagePack', async () => {
    const time5 = Buffer.concat([Buffer.from([0xc7, 12, 5]), Buffer.alloc(12)]);
    // the type named is the body's own
    for (const [raw, type] of [[time5, 5], [mp.map([[mp.fixstr('token'), mp.str8(MISSING)], [mp.fixstr('signedUpAt'), time5]]), 5], [Buffer.from([0xd4, 0x21, 0]), 33]] as const) {
      const r = await reserve(raw);
      expect([r.status, r.body.error, r.body.message]).toEqual([400, 'invalid_request', `body: MessagePack extension type not accepted (type ${type}); send plain maps and arrays`]);
    }
  });

  // registered at IANA in 2024 (the alias application/x-msgpack before it): a client that takes its type
  // from the registry (Rust's mime crate does) was refused 415, and asked for a reply in it got JSON
  it('takes application/vnd.msgpack, the registered type, as a body and in Accept', async () => {
    const body = mp.map([[mp.fixstr('token'), mp.str8(MISSING)]]);
    const r = await call(api.pool, 'POST', '/v1/tokens/reserve', { key: api.keys['sat-go'], raw: body, contentType: 'application/vnd.msgpack', accept: 'application/json' });
    expect([r.status, r.body.error]).toEqual([404, 'token_not_found']);
    const listed = await call(api.pool, 'GET', '/v1/users/nobody/tokens', { key: api.keys['sat-go'], accept: 'application/vnd.msgpack' });
    expect([listed.status, listed.headers['content-type'], listed.body]).toEqual([200, 'application/msgpack', { tokens: [] }]);
  });
});
