import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { builtinModules } from 'node:module';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { importSpecifiers } from './helpers/source.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const read = (file: string) => readFileSync(path.join(ROOT, file), 'utf8');
const pkg = JSON.parse(read('package.json')) as { dependencies: Record<string, string> };
const dockerfile = read('Dockerfile');
const runtimeStage = dockerfile.slice(dockerfile.lastIndexOf('\nFROM '));

/** What the runtime stage takes from the build stage (`COPY --from=build /app/<x> ...`). */
const runtimeCopies = [...runtimeStage.matchAll(/^COPY --from=build \/app\/(\S+)/gm)].map((m) => m[1]!);

/** Every .js file under dist/<dir>: what the image runs (dist/bench is deleted there). */
function shipped(dir: string): string[] {
  return readdirSync(path.join(ROOT, 'dist', dir), { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.js'))
    .map((f) => path.join('dist', dir, f));
}

/** The npm package a bare import names: `@scope/name` or `name`, without a subpath. */
const packageOf = (spec: string) => spec.split('/').slice(0, spec.startsWith('@') ? 2 : 1).join('/');

// The image only has `npm prune --omit=dev`'s node_modules, and nothing else checks it runs: no Docker here, and
// tests and CI run with dev dependencies installed, so a runtime import of one breaks only the image
describe('the Docker runtime image', () => {
  it('has every package dist/src and dist/cli import in package.json "dependencies"', () => {
    const builtins = new Set(builtinModules);
    const missing = new Set<string>();
    for (const file of [...shipped('src'), ...shipped('cli')]) {
      for (const spec of importSpecifiers(read(file))) {
        if (spec.startsWith('.') || spec.startsWith('node:') || builtins.has(packageOf(spec))) continue;
        if (!(packageOf(spec) in pkg.dependencies)) missing.add(`${packageOf(spec)} (${file})`);
      }
    }
    expect([...missing]).toEqual([]);
  });

  it('copies what the runtime reads: package.json (type: module), node_modules, dist and lua/ with its includes', () => {
    expect(runtimeCopies).toEqual(expect.arrayContaining(['package.json', 'node_modules', 'dist', 'lua']));
    // src/store/scripts.ts reads lua/<name>.lua and the lua/includes/<x>.lua its `--- @include "x"` lines name
    for (const file of readdirSync(path.join(ROOT, 'lua')).filter((f) => f.endsWith('.lua'))) {
      for (const [, name] of read(`lua/${file}`).matchAll(/^--- @include "([\w-]+)"$/gm)) {
        expect(existsSync(path.join(ROOT, 'lua/includes', `${name!}.lua`)), `${file}: ${name!}`).toBe(true);
      }
    }
    // the build stage compiles what tsconfig.json includes: a directory added there and not copied fails only there
    const include = (JSON.parse(read('tsconfig.json')) as { include: string[] }).include;
    const built = [...dockerfile.slice(0, dockerfile.lastIndexOf('\nFROM ')).matchAll(/^COPY (\S+) \.\/\1$/gm)].map((m) => m[1]!);
    expect(built).toEqual(expect.arrayContaining([...include, 'lua']));
    // the ENTRYPOINT and HEALTHCHECK scripts are built, and outside what the image deletes (dist/bench)
    for (const [, file] of dockerfile.matchAll(/"\/app\/(dist\/[^"]+\.js)"/g)) {
      expect(existsSync(path.join(ROOT, file!)), file).toBe(true);
      expect(file!.startsWith('dist/bench/'), file).toBe(false);
    }
  });
});
