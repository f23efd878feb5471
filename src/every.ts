/**
 * Runs `tick` every `ms`, the next run starting only after the last one ended, so a slow Redis is not
 * piled on. `tick` must not throw (it counts its own failures). The first run is after `ms` too.
 */
export function every(ms: number, tick: () => Promise<void>): { stop(): Promise<void> } {
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  let inFlight: Promise<void> = Promise.resolve();
  const run = async () => {
    await tick();
    if (!stopped) timer = setTimeout(() => (inFlight = run()), ms);
  };
  timer = setTimeout(() => (inFlight = run()), ms);
  return {
    /** no run starts after this, and the one under way (if any) has ended when it resolves */
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await inFlight;
    },
  };
}
