import { setImmediate } from 'node:timers/promises';

/** Appends `value` to the list kept under `key`, starting the list on first use (grouping without a library). */
export function pushTo<K, V>(map: Map<K, V[]>, key: K, value: V): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}

/**
 * Appends every item of `items` to `list`. Not list.push(...items): V8 passes a spread's items as arguments on the
 * stack, and past ~125,000 that throws "Maximum call stack size exceeded".
 */
export function pushAll<T>(list: T[], items: Iterable<T>): void {
  for (const item of items) list.push(item);
}

/** `items` in consecutive slices of at most `size` (the last one shorter): the arguments of one call each. */
export function* slices<T>(items: T[], size: number): Generator<T[]> {
  for (let i = 0; i < items.length; i += size) yield items.slice(i, i + size);
}

/** A record with `f` applied to each value, keys kept (own properties, whatever the key: also `__proto__`). */
export function mapValues<V>(o: Record<string, V>, f: (v: V) => V): Record<string, V> {
  return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, f(v)]));
}

/** Runs `fn` for 0 .. count-1, `lanes` at a time: each lane takes the next index when it is done with one. */
export async function inLanes(count: number, lanes: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < count) await fn(next++);
  };
  await Promise.all(Array.from({ length: lanes }, lane));
}

/** Items sorted, or merged, per turn of the event loop by sortInTurns: a few ms of comparisons. */
const SORT_RUN = 2000;

/**
 * `items` sorted by `cmp`, a total order (so the result is Array.prototype.sort's), without holding the event
 * loop for long: 100,000 tokens of one user took 100-250 ms in one sort, every other request of the process
 * waiting. Runs of SORT_RUN are sorted, then merged pairwise, the loop free again after each SORT_RUN steps.
 */
export async function sortInTurns<T>(items: T[], cmp: (a: T, b: T) => number): Promise<T[]> {
  if (items.length <= SORT_RUN) return items.sort(cmp);
  let runs: T[][] = [];
  for (let i = 0; i < items.length; i += SORT_RUN) {
    if (i > 0) await setImmediate();
    runs.push(items.slice(i, i + SORT_RUN).sort(cmp));
  }
  let steps = 0;
  while (runs.length > 1) {
    const merged: T[][] = [];
    for (let r = 0; r < runs.length; r += 2) {
      const [a, b] = [runs[r]!, runs[r + 1]];
      if (!b) {
        merged.push(a);
        continue;
      }
      const out: T[] = [];
      let [i, j] = [0, 0];
      while (i < a.length && j < b.length) {
        if (++steps % SORT_RUN === 0) await setImmediate();
        out.push(cmp(a[i]!, b[j]!) <= 0 ? a[i++]! : b[j++]!);
      }
      merged.push(out.concat(a.slice(i), b.slice(j)));
    }
    runs = merged;
  }
  return runs[0]!;
}
