/** Call latencies in ms, summarised: how many, and the 50th, 99th and 100th percentile (2 decimals). */
export interface Latencies {
  count: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

export function latencies(ms: number[]): Latencies {
  const s = ms.slice().sort((a, b) => a - b);
  const at = (q: number) => +(s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? 0).toFixed(2);
  return { count: s.length, p50Ms: at(0.5), p99Ms: at(0.99), maxMs: at(1) };
}
