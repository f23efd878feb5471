// the package ships no types: the one function used (src/store/replicas.ts, src/store/cluster-probe.ts)
declare module 'cluster-key-slot' {
  /** the Redis Cluster slot (0..16383) of a key, honouring its {hash tag} */
  export default function calculateSlot(key: string | Buffer): number;
}
