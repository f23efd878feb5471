/** Appends `value` to the list kept under `key`, starting the list on first use (grouping without a library). */
export function pushTo<K, V>(map: Map<K, V[]>, key: K, value: V): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
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
