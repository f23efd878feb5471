import type { Redis } from 'ioredis';
import { answerWithin } from './redis.js';

/** A slot a master hands over to `peer` (migrating) or takes from it (importing); nodes by address, by id when unlisted. */
export interface SlotMove {
  slot: number;
  importing: boolean;
  self: string;
  peer: string;
}

/** `[slot->-target]` (migrating) or `[slot-<-source]` (importing): Redis writes them on the node's own line only. */
const MOVE = /\[(\d+)-([<>])-([0-9a-f]+)\]/g;

/**
 * The slots `node` marks migrating or importing (CLUSTER NODES, its `myself` line), answered within `ms`
 * when given: a reshard under way, or one left unfinished.
 */
export async function slotMoves(node: Redis, ms?: number): Promise<SlotMove[]> {
  const reply = node.cluster('NODES') as Promise<string>;
  const lines = (await (ms === undefined ? reply : answerWithin(reply, ms))).split('\n');
  const self = lines.find((l) => l.split(' ')[2]?.includes('myself'));
  if (!self) return [];
  const address = (id: string) => lines.find((l) => l.startsWith(`${id} `))?.split(' ')[1]?.split('@')[0] ?? id;
  return [...self.matchAll(MOVE)].map((m) => ({ slot: Number(m[1]), importing: m[2] === '<', self: address(self.split(' ')[0]!), peer: address(m[3]!) }));
}
