import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import type { Redis } from 'ioredis';
import type { RedisClient } from './redis.js';
import { answerWithin, nodeAddress, readyMasters } from './redis.js';
import { hexDigest } from '../digest.js';
import { onFirstUse } from '../on-first-use.js';

/** lua/ sits at the package root, both from src/ (tests) and from dist/src/ (built). */
const luaDir = onFirstUse(() => {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    const candidate = path.join(dir, 'lua');
    try {
      readFileSync(path.join(candidate, 'includes', 'codec.lua'));
      return candidate;
    } catch {
      dir = path.dirname(dir);
    }
  }
  throw new Error('lua/ directory not found next to the package');
});

const INCLUDE = /^--- @include "([\w-]+)"$/m;

/** Reads lua/<name>.lua with its `--- @include "x"` lines replaced by lua/includes/x.lua. */
export function readScript(name: string): string {
  const dir = luaDir();
  let src = readFileSync(path.join(dir, `${name}.lua`), 'utf8');
  let m: RegExpExecArray | null;
  while ((m = INCLUDE.exec(src))) {
    const body = readFileSync(path.join(dir, "includes", `${m[1]}.lua`), "utf8");
    src = src.replace(m[0], () => body);
  }
  return src;
}

export const SCRIPT_NAMES = ['generate', 'redeem', 'reserve', 'complete', 'release', 'revoke', 'revoke_sweep', 'purge', 'lapse', 'revocation_record', 'lookup', 'list', 'list_redeemed'] as const;
/** The engine's scripts (the others are named by their callers: the satellite registry, campaigns, the lease, the snapshot writer, restore and the repairs) */
export type ScriptName = (typeof SCRIPT_NAMES)[number];

export type ScriptFn = (keys: string[], args: (string | number)[]) => Promise<unknown>;

/**
 * Registers scripts (the engine's by default) with ioredis `defineCommand` (EVALSHA, falling back to
 * EVAL and so reloading on NOSCRIPT) and returns a caller per name (a name not asked for does not
 * type-check). preloadScripts / ensureScripts push them to the masters so /readyz can say "scripts loaded".
 */
export function defineScripts<N extends string = ScriptName>(client: RedisClient, names: readonly N[] = SCRIPT_NAMES as readonly string[] as readonly N[]): Record<N, ScriptFn> {
  const out = {} as Record<N, ScriptFn>;
  for (const name of names) {
    const cmd = `rm_${name}`;
    const c = client as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>;
    if (typeof c[cmd] !== 'function') client.defineCommand(cmd, { lua: sourceOf(name).source });
    out[name] = (keys, args) => c[cmd]!(keys.length, ...keys, ...args);
  }
  return out;
}

/**
 * How long preloading waits for a master: one that hangs with its connection up (SIGSTOP, a stalled host) held
 * serve's workers before they listened, so the other masters' slots went unserved as well, and generate for
 * ever. What is not loaded then is loaded by the first EVALSHA's NOSCRIPT fallback.
 */
const PRELOAD_MS = 5000;

/**
 * Loads `names` (the engine's scripts by default) on every master that lacks any, so /readyz can say "scripts
 * loaded"; fails naming a master that has not answered within PRELOAD_MS.
 */
export async function preloadScripts(client: RedisClient, names: readonly string[] = SCRIPT_NAMES): Promise<void> {
  await Promise.all(
    (await readyMasters(client)).map((node) =>
      answerWithin(ensureScripts([node], names), PRELOAD_MS).catch((err: Error) => {
        throw new Error(`loading the scripts on ${nodeAddress(node)}: ${err.message}`, { cause: err });
      }),
    ),
  );
}

/** each script's text (includes in place) and SHA1, read once */
const sources = new Map<string, { source: string; sha: string }>();
function sourceOf(name: string): { source: string; sha: string } {
  let s = sources.get(name);
  if (!s) {
    const source = readScript(name);
    s = { source, sha: hexDigest('sha1', source) };
    sources.set(name, s);
  }
  return s;
}

/**
 * Loads `names` on each of `nodes` that lacks any (a Redis restarted without persistence, a replica just
 * promoted): `loaded` when every node had them all, else `reloaded`.
 */
export async function ensureScripts(nodes: Redis[], names: readonly string[] = SCRIPT_NAMES): Promise<'loaded' | 'reloaded'> {
  const scripts = names.map(sourceOf);
  const lacking = await Promise.all(nodes.map(async (node) => ((await node.script('EXISTS', ...scripts.map((s) => s.sha))) as number[]).some((x) => x !== 1)));
  await Promise.all(nodes.filter((_, i) => lacking[i]).map((node) => Promise.all(scripts.map((s) => node.script('LOAD', s.source)))));
  return lacking.includes(true) ? 'reloaded' : 'loaded';
}
