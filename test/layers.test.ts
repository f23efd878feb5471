// The README's "Repository layout" promises that imports go one way: wire → domain → store, and snapshot →
// store. An import against it compiles and runs, so only a test keeps the promise true.
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { importSpecifiers } from './helpers/source.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const WIRE = ['http', 'client', 'cli'];
const DOMAIN = ['tokens', 'campaigns', 'satellites'];
/** What the files of each part may not import. src/sim, the reference satellite, is a peer of the wire. */
const FORBIDDEN: Record<string, string[]> = {
  store: [...WIRE, ...DOMAIN, 'snapshot', 'sim'],
  snapshot: [...WIRE, ...DOMAIN, 'sim'],
  tokens: [...WIRE, 'snapshot', 'sim'],
  campaigns: [...WIRE, 'snapshot', 'sim'],
  satellites: [...WIRE, 'snapshot', 'sim'],
  http: ['cli', 'sim'],
  client: ['cli', 'http', 'sim'],
  sim: ['cli'],
  // config, errors, metrics and the other shared modules at src/'s top: below every layer
  shared: [...WIRE, ...DOMAIN, 'store', 'snapshot', 'sim'],
};

/** src/tokens/engine.ts → tokens; src/config.ts → shared; cli/commands/serve.ts → cli. */
function partOf(file: string): string {
  const [top, sub, ...rest] = path.relative(ROOT, file).split(path.sep);
  if (top === 'cli') return 'cli';
  return rest.length > 0 ? sub! : 'shared';
}

function sources(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.ts')).map((f) => path.join(dir, f));
}

/** Every relative module a file imports or re-exports, resolved to a path. */
function importsOf(file: string): string[] {
  return importSpecifiers(readFileSync(file, 'utf8')).filter((spec) => spec.startsWith('.')).map((spec) => path.resolve(path.dirname(file), spec));
}

describe('imports between the layers', () => {
  const files = [...sources(path.join(ROOT, 'src')), ...sources(path.join(ROOT, 'cli'))];

  it('go one way: no file imports a part its layer may not', () => {
    const against: string[] = [];
    for (const file of files) {
      // the package's entry point gathers what it exports from every layer
      if (path.relative(ROOT, file) === path.join('src', 'index.ts')) continue;
      const from = partOf(file);
      for (const target of importsOf(file)) {
        const to = partOf(target);
        if (FORBIDDEN[from]?.includes(to)) against.push(`${path.relative(ROOT, file)} (${from}) imports ${path.relative(ROOT, target)} (${to})`);
      }
    }
    expect(against).toEqual([]);
  });

  it('are read from the files: every part has files, and the imports found include those known', () => {
    const parts = new Set(files.map(partOf));
    for (const part of Object.keys(FORBIDDEN)) expect(parts, part).toContain(part);
    const engine = importsOf(path.join(ROOT, 'src', 'tokens', 'engine.ts')).map(partOf);
    expect(engine).toContain('store');
  });
});
