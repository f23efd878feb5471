import net from 'node:net';

export interface HoldingProxy {
  url: string;
  /** on the next connection Redis answers `reply` (a pattern of its reply), Redis's replies stop there: it hangs after that answer */
  holdAfter(reply: RegExp): void;
  /** passes on what it held, and the replies after */
  release(): void;
  close(): Promise<void>;
}

/**
 * A TCP proxy in front of the Redis at `port` that can stop passing its replies on a connection after a chosen
 * one: a Redis that hangs in the middle of a sequence of commands (SIGSTOP stops it before the first), with
 * the connection up. Only that connection hangs: the others (serve's primary polls Redis too) go on.
 */
export async function holdingProxy(port: number): Promise<HoldingProxy> {
  let trigger: RegExp | undefined;
  let held: net.Socket | undefined;
  const waiting: Buffer[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const redis = net.connect(port, '127.0.0.1');
    for (const s of [client, redis]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => (client.destroy(), redis.destroy()));
    }
    client.pipe(redis);
    redis.on('data', (data: Buffer) => {
      if (held === client) return void waiting.push(data);
      client.write(data);
      if (!held && trigger?.test(data.toString('latin1'))) held = client;
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `redis://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    holdAfter(reply) {
      trigger = reply;
    },
    release() {
      const to = held;
      trigger = held = undefined;
      for (const data of waiting.splice(0)) to?.write(data);
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
