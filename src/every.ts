/**
 * Runs `tick` every `ms`, the next run starting only after the last one ended, so a slow Redis is not
 * piled on; a tick may return the wait before the next one instead. `tick` must not throw (it counts its
 * own failures). The first run is after `firstMs` (`ms`).
 */
export function every(ms: number, tick: () => Promise<number | void>, firstMs = ms): { stop(): Promise<void> } {
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  let inFlight: Promise<void> = Promise.resolve();
  const run = async () => {
    const next = await tick();
    if (!stopped) timer = setTimeout(() => (inFlight = run()), next ?? ms);
  };
  timer = setTimeout(() => (inFlight = run()), firstMs);
  return {
    /** no run starts after this, and the one under way (if any) has ended when it resolves */
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await inFlight;
    },
  };
}
