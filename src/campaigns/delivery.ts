import { inLanes } from '../collections.js';
import type { TokenEngine } from '../tokens/engine.js';
import type { CampaignStore, Counter } from '../store/campaign-store.js';
import { BODY_TOO_LARGE, NOT_FOUND, SatelliteCallError, type SatelliteApi } from './satellite-api.js';

/** A user and the campaign's tokens for it. */
export type UserTokens = [userId: string, tokens: string[]];
type Pair = { userId: string; token: string };

export const tokenCount = (deliveries: UserTokens[]): number => deliveries.reduce((n, [, tokens]) => n + tokens.length, 0);

/**
 * A batch of at least this many users the satellite has just listed, none of which it accepts alone, fails
 * the run (pushOrSplit): a satellite that refuses part of every push looks like that, and it takes empty pushes.
 */
const ALL_REFUSED_FAILS = 4;

const isRefusal = (err: unknown): err is SatelliteCallError => err instanceof SatelliteCallError && err.refused;

/**
 * `pairs` (a user's tokens next to each other) in pieces of at most `max()` tokens, read before each piece,
 * a user's set in one piece when it fits in one; `ends` (user -> set size, the users whose set ends in `pairs`)
 * goes with the piece holding the user's last token.
 */
function* pack(pairs: Pair[], max: () => number, ends: Map<string, number>): Generator<[Pair[], Map<string, number>]> {
  let piece: Pair[] = [];
  let pieceEnds = new Map<string, number>();
  const take = () => {
    const out: [Pair[], Map<string, number>] = [piece, pieceEnds];
    piece = [];
    pieceEnds = new Map();
    return out;
  };
  for (let i = 0; i < pairs.length; ) {
    const userId = pairs[i]!.userId;
    let end = i;
    while (end < pairs.length && pairs[end]!.userId === userId) end++;
    // a set that fits no piece whole fills this one first: a new piece for it left a remainder alone in each
    if (piece.length && piece.length + end - i > max() && end - i <= max()) yield take();
    for (; i < end; i++) {
      if (piece.length >= max()) yield take();
      piece.push(pairs[i]!);
    }
    const size = ends.get(userId);
    if (size !== undefined) pieceEnds.set(userId, size);
  }
  if (piece.length) yield take();
}

/** Why a user was refused; `kept`: the satellite said it holds part of the set (it accepted fewer than sent, or took an earlier part), so its tokens are not revoked */
type Refusal = { why: string; kept: boolean };

export interface DeliveryDeps {
  campaignId: string;
  satelliteId: string;
  api: SatelliteApi;
  campaigns: CampaignStore;
  engine: TokenEngine;
  /** most tokens per push */
  batch: number;
  /**
   * before each push, the smaller ones after a refused push too; throws to stop the run (the campaign was
   * revoked or expired, the run's claims lapsed, or it was interrupted)
   */
  beforePush(): Promise<void>;
  /** into the run's report and the progress bars: the store counted it in the campaign with its record */
  counted(counter: Counter, n: number): Promise<void>;
  onProgress?(event: 'tokensToDeliver', n: number): void;
}

/**
 * Pushes a campaign's tokens to one satellite and records what it accepted or refused
 * (src/campaigns/flow.ts runs it).
 */
export class Delivery {
  /** the first refusal, with its user, to show the operator why */
  refusal?: string;
  /** users refused in this run whose tokens were not revoked (refuse with `revoke` false) */
  refusedKept = 0;
  /** users refused in this run: later parts of a set larger than a batch are not pushed */
  private readonly refused = new Set<string>();
  /** users whose set larger than a batch the satellite accepted in part so far (user -> tokens accepted): delivered once its last part is */
  private readonly inPart = new Map<string, number>();
  /** most tokens per push: `batch`, halved below each push the satellite answered 413 (its body limit) */
  private max: number;
  /** an empty push was answered as the contract says, or told nothing (brokenRoute) */
  private routeWorks = false;
  /**
   * Users of sets left over from an earlier run whose whole batch the satellite refused (user -> why): held
   * until the listing has run (settleDeferred). A satellite refusing every push refused them all the same, and
   * a resume recorded them refused and revoked their tokens, exit 0, though it listed them again.
   */
  private readonly deferred = new Map<string, Refusal>();

  constructor(private readonly d: DeliveryDeps) {
    this.max = d.batch;
  }

  /**
   * Of the sets this campaign made but did not deliver, what is still to push. Tokens revoked since
   * (`tokens revoke`, or a refusal whose record a kill -9 or a restore lost) or absent (lost with a Redis
   * the snapshot had not caught up with) are not pushed: the satellite would show them to users who
   * cannot use them; redeemed or reserved ones are kept: the satellite had them already. A user left
   * with none is recorded refused: it gets nothing from this campaign, and a later one serves it when
   * the satellite lists it again. Before, it was left unsettled: never served, never counted, by any run.
   * `leftOver`: sets of an earlier run, pushed without the satellite listing their users now. A user of
   * one that holds tokens of another campaign, delivered since (or made by the admin API, which hands
   * them over itself), was served meanwhile: it is recorded refused too instead of getting a second set,
   * but this set is not revoked: a push may have reached the satellite unrecorded (a kill before the
   * record, or a restore, which keeps no delivered users of an unfinished satellite), and the user may
   * have handed those tokens out already.
   */
  async due(sets: UserTokens[], leftOver: boolean): Promise<UserTokens[]> {
    // bounds the commands in flight: a page of a resume after a restore can name millions of tokens
    const CHUNK = 20_000;
    const tokens = sets.flatMap(([, t]) => t);
    const keep = new Set<string>();
    for (let i = 0; i < tokens.length; i += CHUNK) {
      const chunk = tokens.slice(i, i + CHUNK);
      (await this.d.engine.storedStates(chunk)).forEach((s, j) => s && s !== 'revoked' && keep.add(chunk[j]!));
    }
    const dropped = new Map<string, string>();
    const due: UserTokens[] = [];
    for (const [u, t] of sets) {
      const left = t.filter((token) => keep.has(token));
      if (left.length) due.push([u, left]);
      else dropped.set(u, 'its tokens were revoked or lost before delivery');
    }
    await this.refuse(dropped, { planned: false });
    if (!leftOver) return due;
    const served = await this.servedElsewhere(due.map(([u]) => u));
    await this.refuse(served, { planned: false, revoke: false });
    return due.filter(([u]) => !served.has(u));
  }

  /** Of these users, those holding unredeemed tokens of another campaign that reached the satellite (user -> why). */
  private async servedElsewhere(users: string[]): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    await inLanes(users.length, 32, async (i) => {
      const u = users[i]!;
      const others = new Set((await this.d.engine.listUnredeemed(this.d.satelliteId, u)).map((t) => t.campaignId).filter((c) => c !== this.d.campaignId));
      for (const c of others) {
        const [[made], [settled]] = await Promise.all([this.d.campaigns.made(c, this.d.satelliteId, [u]), this.d.campaigns.settled(c, this.d.satelliteId, [u])]);
        // a set of another campaign that is itself waiting for delivery does not count
        if (!made || settled) return void out.set(u, `served by campaign "${c}" since this campaign made its tokens`);
      }
    });
    return out;
  }

  /**
   * Pushes in requests of at most `batch` tokens, a user's set in one request when it fits. A set
   * larger than a batch is split; the user and its tokens count as delivered once its last token is
   * accepted: a run stopped part-way through a set pushes the whole set again on resume, and counting
   * the parts would count those tokens twice. `listed`: the users are in the satellite's listing now (not
   * sets left over from an earlier run).
   */
  async deliver(deliveries: UserTokens[], listed = true): Promise<void> {
    const pairs = deliveries.flatMap(([userId, tokens]) => tokens.map((token) => ({ userId, token })));
    for (const [piece, whole] of pack(pairs, () => this.max, new Map(deliveries.map(([u, t]) => [u, t.length])))) {
      const due = piece.filter((p) => !this.refused.has(p.userId));
      if (due.length) await this.pushOrSplit(due, whole, listed);
    }
  }

  /**
   * The sets the satellite holds in part (their last part not pushed yet): how many users, how many of their
   * tokens it accepted, and the first of them. A run that can never go on (the campaign was revoked or expired)
   * counts those tokens delivered: no resume will push the sets whole, and the satellite holds them.
   */
  heldInPart(): { users: number; tokens: number; first?: [user: string, tokens: number] } {
    let tokens = 0;
    for (const n of this.inPart.values()) tokens += n;
    const [first] = this.inPart;
    return { users: this.inPart.size, tokens, first };
  }

  /**
   * A satellite refusing a batch's content (a user it no longer has: 400, 404, 409, 410, 413, 422, or fewer
   * tokens accepted than sent) refuses it again on every --resume, and every other user of the batch would wait
   * for ever. So a refused batch is split in halves down to single users, and a part refused as too large
   * (413), one user's tokens too, is cut into pieces of at most half its size (down to one token; a part larger
   * than a 413 has since shown too large is cut without pushing it first): the parts it accepts are delivered,
   * and each user it refuses
   * alone is recorded refused, with the campaign's tokens of that user revoked (nobody holds them; a later
   * campaign serves the user if the satellite lists it again). When it accepts no part of the batch, the
   * fault is the satellite's, not the users', if an empty push says its token route is missing or broken
   * (brokenRoute), or if the batch holds ALL_REFUSED_FAILS or more users it has just `listed`: the run
   * fails, nothing is refused, and --resume pushes the batch again. The count alone let a daily run with
   * 3 new users and a broken route refuse them all and revoke their tokens, exit 0; and since it applied
   * to sets left over from an earlier run too, a resume whose 5 left-over users had all closed their
   * accounts failed every time. Such a left-over batch is deferred to after the listing (settleDeferred).
   */
  private async pushOrSplit(pairs: Pair[], whole: Map<string, number>, listed: boolean): Promise<void> {
    let first: SatelliteCallError;
    try {
      return await this.push(pairs, whole);
    } catch (err) {
      if (!isRefusal(err)) throw err;
      first = err;
      this.fit(pairs, err);
    }
    const refused = new Map<string, Refusal>();
    let accepted = 0;
    /** `ends`: the users whose set ends in `part` (push) */
    const split = async (part: Pair[], err: SatelliteCallError, ends: Map<string, number>): Promise<void> => {
      const users = [...new Set(part.map((p) => p.userId))];
      let parts: [Pair[], Map<string, number>][];
      if (part.length > this.max) {
        // too large for the limit a 413 taught (fit: at most half of the part it refused): pieces that fit it,
        // one user's tokens too, its set ending in the last piece
        parts = [...pack(part, () => this.max, ends)];
      } else if (users.length > 1) {
        const left = new Set(users.slice(0, users.length >> 1));
        parts = [[part.filter((p) => left.has(p.userId)), ends], [part.filter((p) => !left.has(p.userId)), ends]];
      } else {
        // a short reply (200) for a later part of a set: the satellite keeps the parts it took before
        refused.set(users[0]!, { why: err.message, kept: err.accepted > 0 || (err.status === 200 && this.inPart.has(users[0]!)) });
        return;
      }
      for (const [piece, pieceEnds] of parts) {
        if (piece.length > this.max) {
          await split(piece, err, pieceEnds);
          continue;
        }
        try {
          await this.push(piece, pieceEnds);
          accepted++;
        } catch (e) {
          if (!isRefusal(e)) throw e;
          this.fit(piece, e);
          await split(piece, e, pieceEnds);
        }
      }
    };
    await split(pairs, first, whole);
    if (accepted === 0) {
      if (listed && refused.size >= ALL_REFUSED_FAILS) throw first;
      const broken = await this.brokenRoute();
      if (broken) throw new SatelliteCallError(`${first.message}; an empty push too: ${broken.message}`, broken.status, false);
      if (!listed && refused.size >= ALL_REFUSED_FAILS) {
        for (const [u, r] of refused) this.deferred.set(u, r);
        return;
      }
    }
    await this.refuses(refused);
  }

  /**
   * After the listing: the deferred users it did not list (and so did not deliver or refuse since) are refused
   * now, as users the satellite no longer has. One it listed again had its set pushed as listed, where a
   * satellite refusing a whole batch fails the run.
   */
  async settleDeferred(): Promise<void> {
    const users = [...this.deferred.keys()];
    const done = await this.d.campaigns.settled(this.d.campaignId, this.d.satelliteId, users);
    await this.refuses(new Map(users.filter((_, i) => !done[i]).map((u) => [u, this.deferred.get(u)!])));
    this.deferred.clear();
  }

  private async refuses(refused: Map<string, Refusal>): Promise<void> {
    const split = (kept: boolean) => new Map([...refused].filter(([, r]) => r.kept === kept).map(([u, r]) => [u, r.why]));
    await this.refuse(split(false));
    await this.refuse(split(true), { revoke: false });
  }

  /**
   * The error an empty push gets when it says the token route is missing or broken (404, 405, 401/403,
   * 5xx, no answer), else undefined. The contract answers it {accepted: 0}; a 400, 409, 410, 413 or 422
   * may only mean the satellite refuses empty lists, so it tells nothing and the users are refused as
   * before. Asked once a run: a route that took it works.
   */
  private async brokenRoute(): Promise<SatelliteCallError | undefined> {
    if (this.routeWorks) return undefined;
    try {
      await this.d.api.pushTokens([]);
    } catch (err) {
      if (!(err instanceof SatelliteCallError)) throw err;
      if (!(err.refused && err.status !== NOT_FOUND)) return err;
    }
    this.routeWorks = true;
    return undefined;
  }

  /** A body too large for the satellite: later pushes carry at most half of this one, so they are not split again. */
  private fit(pairs: Pair[], err: SatelliteCallError): void {
    if (err.status === BODY_TOO_LARGE) this.max = Math.max(1, Math.min(this.max, Math.floor(pairs.length / 2)));
  }

  /**
   * Every push, the halves and pieces of a refused one too, is checked first: those went out unchecked, so a
   * revoke or a lapsed claim landing during a refused push let the rest of its batch through.
   */
  private async push(pairs: Pair[], whole: Map<string, number>): Promise<void> {
    await this.d.beforePush();
    await this.d.api.pushTokens(pairs);
    const done = new Map<string, number>();
    for (const { userId } of pairs) {
      if (whole.has(userId)) done.set(userId, whole.get(userId)!);
      else this.inPart.set(userId, (this.inPart.get(userId) ?? 0) + 1);
    }
    for (const u of done.keys()) this.inPart.delete(u);
    await this.d.counted('tokensDelivered', await this.d.campaigns.recordDelivered(this.d.campaignId, this.d.satelliteId, done));
  }

  /**
   * Revokes the campaign's tokens of each refused user (user id -> why; not when `revoke` is false), then
   * records and counts the user refused. `planned`: their tokens were counted in the delivered bar's
   * total, which shrinks by them.
   */
  private async refuse(refused: Map<string, string>, { planned = true, revoke = true } = {}): Promise<void> {
    if (refused.size === 0) return;
    const users = [...refused.keys()];
    const made = await this.d.campaigns.made(this.d.campaignId, this.d.satelliteId, users);
    if (revoke) await this.d.engine.revokeOfCampaign(made.flatMap((tokens) => tokens ?? []), this.d.campaignId);
    if (planned) this.d.onProgress?.('tokensToDeliver', -made.reduce((n, tokens) => n + (tokens?.length ?? 0), 0));
    for (const u of users) this.inPart.delete(u);
    const fresh = await this.d.campaigns.recordRefused(this.d.campaignId, this.d.satelliteId, users);
    if (!revoke) this.refusedKept += fresh;
    for (const u of users) this.refused.add(u);
    this.refusal ??= `user "${users[0]}": ${refused.get(users[0]!)}`;
    await this.d.counted('usersRefused', fresh);
  }
}
