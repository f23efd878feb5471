/** Per user: every token delivered to it, and those it has handed out (shared) since. */
interface UserTokens {
  held: Set<string>;
  shared: Set<string>;
}

/** Seven digits keep lexical order equal to numeric order for up to 9,999,999 users of each kind. */
export const MAX_USERS = 9_999_999;
const pad = (n: number) => String(n).padStart(7, '0');

/** The outcome of delivering one batch of tokens. */
export type Delivery =
  | { ok: true; accepted: number; stored: number }
  | { ok: false; reason: 'unknown_user'; userId: string }
  | { ok: false; reason: 'unavailable'; total: number; after: number };

/**
 * One satellite's users and the referral tokens it shows them, in memory.
 * `ids` stays sorted (users are created in order; sign-ups are inserted by binary search), so a page of
 * users-without-tokens starts at the cursor's position in O(log n) and costs what it scans from there.
 */
export class SimSatellite {
  private readonly users = new Map<string, UserTokens>();
  private readonly ids: string[] = [];
  /** users with at least one token left to hand out, for picking one at random in O(1) */
  private readonly giving: string[] = [];
  private readonly givingAt = new Map<string, number>();
  private signedUp = 0;
  /** distinct tokens stored through deliveries: what --fail-after counts */
  private storedTotal = 0;
  private failAfterTokens: number | null;

  constructor(readonly id: string, users: number, failAfter: number | null = null) {
    for (let i = 1; i <= users; i++) this.addUser(`${id}-u${pad(i)}`);
    this.failAfterTokens = failAfter;
  }

  get tokensStored(): number {
    return this.storedTotal;
  }

  get failAfter(): number | null {
    return this.failAfterTokens;
  }

  /** null heals; n refuses every delivery once n tokens in total have been stored. */
  setFailAfter(after: number | null): void {
    this.failAfterTokens = after;
  }

  private addUser(userId: string): void {
    this.users.set(userId, { held: new Set(), shared: new Set() });
    const last = this.ids[this.ids.length - 1];
    if (last === undefined || last < userId) this.ids.push(userId);
    else this.ids.splice(this.after(userId), 0, userId);
  }

  /** Index of the first id strictly greater than `cursor`. */
  private after(cursor: string): number {
    let lo = 0;
    let hi = this.ids.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ids[mid]! <= cursor) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private remaining(u: UserTokens): number {
    return u.held.size - u.shared.size;
  }

  /** A new user id for a sign-up; the user exists only once `join` is called. */
  nextSignupId(): string {
    this.signedUp += 1;
    return `${this.id}-n${pad(this.signedUp)}`;
  }

  join(userId: string): void {
    if (!this.users.has(userId)) this.addUser(userId);
  }

  /** Users closing their accounts: tokens delivered to them from now on are refused as for an unknown user. */
  leave(userIds: string[]): number {
    let left = 0;
    for (const userId of userIds) {
      if (!this.users.has(userId)) continue;
      if (this.givingAt.has(userId)) this.stopGiving(userId);
      this.users.delete(userId);
      this.ids.splice(this.after(userId) - 1, 1);
      left++;
    }
    return left;
  }

  /**
   * Users with no token left, strictly after `cursor`, in id order. nextCursor is the last id of the page,
   * or null when no such user follows it (the scan looks one match ahead so the last page says so).
   */
  usersWithoutTokens(cursor: string, limit: number): { userIds: string[]; nextCursor: string | null } {
    const userIds: string[] = [];
    for (let i = cursor === '' ? 0 : this.after(cursor); i < this.ids.length; i++) {
      const userId = this.ids[i]!;
      if (this.remaining(this.users.get(userId)!) > 0) continue;
      if (userIds.length === limit) return { userIds, nextCursor: userIds[limit - 1]! };
      userIds.push(userId);
    }
    return { userIds, nextCursor: null };
  }

  /**
   * Stores a batch whole or not at all. A pair the user already holds is accepted again without change,
   * so a retried delivery gets the same answer: `accepted` counts every pair of the batch, `stored` the new ones.
   */
  deliver(pairs: { userId: string; token: string }[]): Delivery {
    for (const p of pairs) if (!this.users.has(p.userId)) return { ok: false, reason: 'unknown_user', userId: p.userId };
    if (this.failAfterTokens !== null && this.storedTotal >= this.failAfterTokens) {
      return { ok: false, reason: 'unavailable', total: this.storedTotal, after: this.failAfterTokens };
    }
    let stored = 0;
    for (const p of pairs) {
      const u = this.users.get(p.userId)!;
      if (u.held.has(p.token)) continue;
      u.held.add(p.token);
      stored += 1;
      if (this.remaining(u) === 1) this.startGiving(p.userId);
    }
    this.storedTotal += stored;
    return { ok: true, accepted: pairs.length, stored };
  }

  /** One token a random user has not handed out yet, now marked shared; undefined when none is left. */
  takeToken(): { token: string; userId: string } | undefined {
    if (this.giving.length === 0) return undefined;
    const userId = this.giving[Math.floor(Math.random() * this.giving.length)]!;
    const u = this.users.get(userId)!;
    for (const token of u.held) {
      if (u.shared.has(token)) continue;
      u.shared.add(token);
      if (this.remaining(u) === 0) this.stopGiving(userId);
      return { token, userId };
    }
    throw new Error(`user ${userId} listed as giving with no token left`);
  }

  hasTokensToGive(): boolean {
    return this.giving.length > 0;
  }

  /** Every user, in id order, with the tokens it holds (shared ones included). */
  holdings(): Record<string, string[]> {
    const out: Record<string, string[]> = {};
    for (const userId of this.ids) out[userId] = [...this.users.get(userId)!.held];
    return out;
  }

  private startGiving(userId: string): void {
    this.givingAt.set(userId, this.giving.length);
    this.giving.push(userId);
  }

  private stopGiving(userId: string): void {
    const at = this.givingAt.get(userId)!;
    const last = this.giving.pop()!;
    if (last !== userId) {
      this.giving[at] = last;
      this.givingAt.set(last, at);
    }
    this.givingAt.delete(userId);
  }
}
