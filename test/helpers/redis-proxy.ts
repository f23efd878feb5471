import net from 'node:net';

interface Proxy {
  url: string;
  close(): Promise<void>;
}

/**
 * A TCP proxy in front of the Redis at `target` (host:port of a redis:// URL, which keeps its password and
 * database): `request` and `reply` pass on each chunk of a connection, or hold it back. `url` is `target`
 * with the proxy's address.
 */
async function redisProxy(
  target: string,
  pass: { request?: (conn: object, data: Buffer, send: (d: Buffer) => void) => void; reply?: (conn: object, data: Buffer, send: (d: Buffer) => void) => void },
): Promise<Proxy> {
  const to = new URL(target);
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const redis = net.connect(Number(to.port || 6379), to.hostname);
    const conn = {};
    for (const s of [client, redis]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => (sockets.delete(s), client.destroy(), redis.destroy()));
    }
    client.on('data', (d: Buffer) => (pass.request ? pass.request(conn, d, (x) => redis.write(x)) : redis.write(d)));
    redis.on('data', (d: Buffer) => (pass.reply ? pass.reply(conn, d, (x) => client.write(x)) : client.write(d)));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = new URL(target);
  url.hostname = '127.0.0.1';
  url.port = String((server.address() as net.AddressInfo).port);
  return {
    url: url.toString(),
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

export interface HoldingProxy extends Proxy {
  /** on the next connection Redis answers `reply` (a pattern of its reply), Redis's replies stop there: it hangs after that answer */
  holdAfter(reply: RegExp): void;
  /** passes on what it held, and the replies after */
  release(): void;
}

/**
 * A proxy that can stop passing Redis's replies on a connection after a chosen one: a Redis that hangs in the
 * middle of a sequence of commands (SIGSTOP stops it before the first), with the connection up. Only that
 * connection hangs: the others (serve's primary polls Redis too) go on.
 */
export async function holdingProxy(target: string): Promise<HoldingProxy> {
  let trigger: RegExp | undefined;
  let held: object | undefined;
  let heldSend: ((d: Buffer) => void) | undefined;
  const waiting: Buffer[] = [];
  const proxy = await redisProxy(target, {
    reply(conn, data, send) {
      if (held === conn) return void waiting.push(data);
      send(data);
      if (!held && trigger?.test(data.toString('latin1'))) [held, heldSend] = [conn, send];
    },
  });
  return {
    ...proxy,
    holdAfter(reply) {
      trigger = reply;
    },
    release() {
      const send = heldSend;
      trigger = held = heldSend = undefined;
      for (const data of waiting.splice(0)) send?.(data);
    },
  };
}

/** A proxy that passes on a connection's commands `ms` late from its first SUBSCRIBE on (the others at once). */
export async function lateSubscriberProxy(target: string, ms: number): Promise<Proxy> {
  const late = new WeakMap<object, number>();
  return await redisProxy(target, {
    request(conn, data, send) {
      if (!late.has(conn) && data.toString('latin1').toLowerCase().includes('subscribe')) late.set(conn, Date.now() + ms);
      const until = late.get(conn);
      if (until === undefined) send(data);
      else setTimeout(() => send(data), until - Date.now());
    },
  });
}

/** A proxy counting the commands named `name` (lower case, as ioredis sends them) that pass it. */
export async function countingProxy(target: string, name: string): Promise<Proxy & { count(): number }> {
  const bulk = `\r\n${name}\r\n`;
  let n = 0;
  // a connection's requests as one text: a command name split between two chunks is still counted
  const sent = new Map<object, string>();
  const proxy = await redisProxy(target, {
    request: (conn, data, send) => {
      const text = (sent.get(conn) ?? '') + data.toString('latin1');
      for (let i = text.indexOf(bulk); i >= 0; i = text.indexOf(bulk, i + 1)) n++;
      sent.set(conn, text.slice(-bulk.length + 1));
      send(data);
    },
  });
  return { ...proxy, count: () => n };
}
