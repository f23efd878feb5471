import { readdirSync, readFileSync } from 'node:fs';

/**
 * CPU time of local processes from /proc (Linux only; clock ticks of 1/100 s). The benches report CPU
 * per request or per event next to their rates: on a shared 2-core machine it is far steadier than a rate.
 */
interface ProcStat {
  pid: number;
  ppid: number;
  /** user + system CPU seconds so far */
  cpu: number;
}

function readStat(pid: number): ProcStat | undefined {
  try {
    // fields after the command name: state ppid ... utime (14th field) stime (15th)
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return { pid, ppid: Number(f[1]), cpu: (Number(f[11]) + Number(f[12])) / 100 };
  } catch {
    return undefined; // exited meanwhile
  }
}

/** CPU seconds of a process and all its descendants. */
export function treeCpuSeconds(root: number): number {
  const stats = readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .map((d) => readStat(Number(d)))
    .filter((x) => x !== undefined);
  const inTree = new Set([root]);
  for (let grew = true; grew; ) {
    grew = false;
    for (const p of stats) {
      if (!inTree.has(p.pid) && inTree.has(p.ppid)) {
        inTree.add(p.pid);
        grew = true;
      }
    }
  }
  return stats.filter((p) => inTree.has(p.pid)).reduce((sum, p) => sum + p.cpu, 0);
}

/** CPU seconds of each of `pids` still running. */
export function cpuSecondsOf(pids: number[]): Map<number, number> {
  const out = new Map<number, number>();
  for (const pid of pids) {
    const s = readStat(pid);
    if (s) out.set(pid, s.cpu);
  }
  return out;
}
