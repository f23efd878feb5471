import type { Command } from 'commander';
import { MAX_USERS, startSatelliteSim } from '../../src/sim/index.js';

interface Flags {
  id: string;
  port: string;
  host: string;
  users: string;
  manager?: string;
  key?: string;
  outboundKey?: string;
  failAfter?: string;
  signups?: string;
  crossShare: string;
  peer: string[];
}

const EXAMPLES = `
Examples:
  # a satellite with 5,000 users, for \`generate\` to fill (register it with the same outbound key)
  referral-manager satellite-sim --id us1 --port 7601 --users 5000 --outbound-key s3cret

  # refuse deliveries once 7,500 tokens are stored (then heal it: POST /sim/fail {"after": null})
  referral-manager satellite-sim --id us1 --port 7601 --users 5000 --fail-after 7500

  # once its users hold tokens, sign 200 users up, half of them with tokens of eu1's users
  referral-manager satellite-sim --id us1 --port 7601 --users 5000 \\
    --manager http://127.0.0.1:7480 --key rmk_... --signups 200 --cross-share 0.5 --peer http://127.0.0.1:7602

Routes: GET /referrals/v1/users-without-tokens?cursor=&limit=, POST /referrals/v1/tokens (Bearer outbound key);
control (no auth): GET /sim/users, GET /sim/take-token, POST /sim/fail {after}, POST /sim/leave {userIds}, POST /sim/signups {count, crossShare?}.
Runs until SIGTERM or SIGINT.`;

/** `referral-manager satellite-sim`: the in-memory reference satellite (tests, bench, demo). */
export function register(program: Command): void {
  program
    .command('satellite-sim')
    .description('run an in-memory reference satellite: the satellite side of generation, and sign-ups through the manager')
    .requiredOption('--id <id>', 'satellite id; its users are <id>-u0000001, ... and sign-ups <id>-n0000001, ...')
    .requiredOption('--users <n>', `users to create (0..${MAX_USERS})`)
    .option('--port <port>', 'port to listen on (0: any free port)', '0')
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--manager <url>', "the manager's base URL (for sign-ups)")
    .option('--key <key>', "this satellite's API key at the manager (for sign-ups)")
    .option('--outbound-key <key>', 'require Authorization: Bearer <key> on the /referrals routes')
    .option('--fail-after <tokens>', 'answer 503 to every delivery once this many tokens are stored')
    .option('--signups <n>', 'once its users hold tokens, sign this many users up and print the summary')
    .option('--cross-share <share>', 'share of sign-ups using a token of a peer (0..1)', '0.5')
    .option('--peer <url>', 'another sim to take tokens from (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .addHelpText('after', EXAMPLES)
    .action(async function (this: Command, f: Flags) {
      const usage = (msg: string): never => this.error(`error: ${msg}`);
      const integer = (flag: string, v: string, max: number) => {
        const n = /^\d+$/.test(v) ? Number(v) : NaN;
        return n <= max ? n : usage(`${flag} must be an integer 0..${max}, got "${v}"`);
      };
      const url = (flag: string, v: string) => {
        let u: URL | undefined;
        try {
          u = new URL(v);
        } catch {
          // reported below
        }
        return u && (u.protocol === 'http:' || u.protocol === 'https:') ? v : usage(`${flag} must be an http(s) URL, got "${v}"`);
      };
      // user ids (<id>-u0000001) must stay within the manager's 128 bytes
      if (!/^[A-Za-z0-9._-]{1,100}$/.test(f.id)) usage(`--id must be 1..100 of A-Z a-z 0-9 . _ -, got "${f.id}"`);
      const users = integer('--users', f.users, MAX_USERS);
      const port = integer('--port', f.port, 65535);
      const crossShare = Number(f.crossShare);
      if (f.crossShare.trim() === '' || !(crossShare >= 0 && crossShare <= 1)) usage(`--cross-share must be a number 0..1, got "${f.crossShare}"`);
      // without a peer every sign-up takes one of this sim's own tokens: the share asked for was silently 0
      if (this.getOptionValueSource('crossShare') === 'cli' && f.peer.length === 0) usage('--cross-share needs --peer: the sims whose users\' tokens those sign-ups take');
      if ((f.manager === undefined) !== (f.key === undefined)) usage('--manager and --key go together');
      if (f.signups !== undefined && f.manager === undefined) usage('--signups needs --manager and --key');

      const sim = await startSatelliteSim({
        id: f.id,
        users,
        port,
        host: f.host,
        manager: f.manager === undefined ? undefined : url('--manager', f.manager),
        key: f.key,
        outboundKey: f.outboundKey,
        failAfter: f.failAfter === undefined ? null : integer('--fail-after', f.failAfter, Number.MAX_SAFE_INTEGER),
        signups: f.signups === undefined ? undefined : integer('--signups', f.signups, 1_000_000),
        crossShare,
        peers: f.peer.map((p) => url('--peer', p)),
      });
      console.log(`satellite-sim ${f.id} listening on ${sim.url}`);
      sim.startup?.then(
        (summary) => summary && console.log(`signups: ${JSON.stringify(summary)}`),
        (err: Error) => console.error(`signups failed: ${err.message}`),
      );

      await new Promise<void>((resolve) => {
        process.once('SIGTERM', resolve);
        process.once('SIGINT', resolve);
      });
      await sim.close();
      process.exit(0);
    });
}
