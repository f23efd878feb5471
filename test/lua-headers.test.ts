// Each script opens with a header naming every KEYS and ARGV entry its body reads, and saying why it stays in one
// Redis Cluster slot (the team's rule for lua/): a key or argument added without its line leaves the next
// reader guessing what the caller passes, and a key outside the slot fails only on a Cluster, with CROSSSLOT.
import { readdirSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

const LUA = new URL('../lua/', import.meta.url);
const scripts = readdirSync(LUA).filter((f) => f.endsWith('.lua'));

const indexes = (text: string, kind: 'KEYS' | 'ARGV') => new Set([...text.matchAll(new RegExp(`${kind}\\[(\\d+)\\]`, 'g'))].map((m) => Number(m[1])));

describe('the header of each Lua script', () => {
  it('reads the scripts of lua/', () => expect(scripts.length).toBeGreaterThan(20));

  it.each(scripts)('%s names each KEYS and ARGV entry it reads, and its slot', (file) => {
    const text = readFileSync(new URL(file, LUA), 'utf8');
    const header = /^--\[\[([\s\S]*?)\]\]/.exec(text);
    expect(header, 'opens with a --[[ ... ]] header').not.toBeNull();
    const body = text.slice(header![0].length);
    for (const kind of ['KEYS', 'ARGV'] as const) {
      const named = indexes(header![1]!, kind);
      expect([...indexes(body, kind)].filter((i) => !named.has(i)), `${kind} read but not named`).toEqual([]);
    }
    expect(header![1]).toMatch(/hash tag \{[a-z:<>]+\}|one key/);
  });
});
