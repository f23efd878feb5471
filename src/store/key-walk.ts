import { Cluster, type Redis } from 'ioredis';
import { readyMasters, type RedisClient } from './redis.js';
import { slotMoves } from './cluster-nodes.js';

// Listing and deleting keys by pattern on every master (export, restore and its --force, the tests).

/**
 * Keys matching `pattern` on every master, one SCAN page at a time (never KEYS), with the node that holds them.
 * On a Cluster the masters are scanned one after another, so a key moved by a reshard from one not yet
 * scanned to one already scanned is seen by neither: an export came out short, exit 0. So the scan refuses a
 * slot migrating when it starts or ends, and a slot map that changed in between (a move or a failover).
 */
export async function* scanKeys(client: RedisClient, pattern: string, count = 1000): AsyncGenerator<{ node: Redis; keys: string[] }> {
  const before = client instanceof Cluster ? await slotLayout(client) : '';
  for (const node of await readyMasters(client)) {
    let cursor = '0';
    do {
      const [next, keys] = await node.scan(cursor, 'MATCH', pattern, 'COUNT', count);
      cursor = next;
      if (keys.length) yield { node, keys };
    } while (cursor !== '0');
  }
  if (client instanceof Cluster && (await slotLayout(client)) !== before) {
    throw new Error('the Cluster\'s slots moved while its keys were listed (a reshard or a failover): some may have been missed; run it again once that is done');
  }
}

/**
 * Which master serves each slot range (CLUSTER SLOTS), and whether a master hands a slot over or takes one
 * (CLUSTER NODES): throws while a slot is migrating (`redis-cli --cluster fix` ends one left unfinished).
 */
async function slotLayout(client: Cluster): Promise<string> {
  const ranges = await client.cluster('SLOTS');
  const moving = (await Promise.all((await readyMasters(client)).map((n) => slotMoves(n)))).some((moves) => moves.length > 0);
  if (moving) throw new Error('a Cluster slot is being migrated (a reshard under way, or one left unfinished: `redis-cli --cluster fix` ends it): its keys could be missed; run it again once that is done');
  return ranges.map(([from, to, master]) => `${from}-${to}@${master?.[0]}:${master?.[1]}`).sort().join(' ');
}

/**
 * Deletes every key matching `pattern` and `keep` (a test a glob cannot say), one UNLINK per key, pipelined
 * (a Cluster node refuses cross-slot UNLINK); how many.
 */
export async function dropKeys(client: RedisClient, pattern: string, keep: (key: string) => boolean = () => true): Promise<number> {
  let n = 0;
  for await (const { node, keys } of scanKeys(client, pattern)) {
    const mine = keys.filter(keep);
    const p = node.pipeline();
    for (const k of mine) p.unlink(k);
    // a pipeline resolves with each command's error: one not deleted must not be counted, nor go unsaid
    const failed = (await p.exec())?.find(([err]) => err)?.[0];
    if (failed) throw failed;
    n += mine.length;
  }
  return n;
}

/** Deletes every key under `prefix:`. */
export async function dropPrefix(client: RedisClient, prefix: string): Promise<void> {
  await dropKeys(client, `${prefix}:*`);
}
