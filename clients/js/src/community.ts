// Community: the client-side state of one community (messages by seq,
// typing, online) with gap-free delivery across reconnects.
//
// lastSeq is the highest event seq (message creation or deletion) applied from
// the socket. On reconnect every joined community is rejoined with it; the
// server replays what came after, in order, before the ack and before live
// events, so a frame with seq <= lastSeq is a duplicate. A jump in live seqs is
// not a loss (a message deleted before it reached us only shows as its
// deletion). When the ack says `recovered:false` (too much happened), live
// events are held back while the HTTP history is paged from lastSeq, held
// messages are re-validated (a deletion inside the gap is not in history),
// and then the held live events are applied.
//
// Messages from HTTP (history pages, our own POST) fill the message map but
// never move lastSeq: only the socket's ordered stream may, else a live
// deletion with a smaller seq would be taken for a duplicate.

import type { ChorusApi } from "./api.js";
import { Emitter, Listeners, randomUUID, sleep } from "./emitter.js";
import { ChorusError, ChorusNetworkError, ChorusTimeoutError } from "./errors.js";
import type {
  HistoryPage,
  JoinAck,
  Message,
  MessageDeletedData,
  NewMessageData,
  ServerFrame,
  UserJoinedData,
  UserLeftData,
  UserTypingData,
} from "./types.js";

export interface CommunitySnapshot {
  communityId: string;
  joined: boolean;
  /** Ascending seq, each once, deletions applied. */
  messages: Message[];
  /** Whether loadOlder() can return more. */
  hasOlder: boolean;
  /** Other users typing; each expires 6 s after their last isTyping:true. */
  typing: { userId: string; name: string }[];
  /** From the join ack, then user-joined / user-left. */
  online: string[];
  /** Highest seq applied. */
  headSeq: number;
}

export interface CommunityEvents {
  message: Message;
  "message-deleted": MessageDeletedData;
  "user-joined": UserJoinedData;
  "user-left": UserLeftData;
  "user-typing": UserTypingData;
  "membership-revoked": { communityId: string };
}

/** What a Community needs from its client. */
export interface CommunityHost {
  readonly api: ChorusApi;
  isOpen(): boolean;
  /** Drops the socket and reconnects (every community rejoins from its lastSeq). */
  restart(reason: string): void;
  /** `onAck` runs synchronously when the ack is read, before the frames after it. */
  request<T>(type: string, data: object, onAck?: (data: T) => void): Promise<T>;
  send(type: string, data: object): boolean;
  /** Delay before retry number `attempt` (0-based) of an HTTP call: the reconnect backoff's full jitter. */
  retryDelay(attempt: number): number;
  resyncRequired(communityId: string): void;
  error(err: unknown): void;
}

export const TYPING_EXPIRY_MS = 6_000;
/** A repeated setTyping(true) is sent at most this often (well under the 6 s expiry). */
const TYPING_REPEAT_MS = 3_000;
const FIRST_PAGE = 50;
const GAP_PAGE = 100;
const SEND_TRIES = 3;
/** Join errors that are final: anything else (timeout, rate_limited, unavailable) is retried. */
const REFUSALS = new Set(["forbidden", "not_found", "bad_request"]);
const HISTORY_TRIES = 3;
/** How many deleted message ids are remembered so a late history page cannot resurrect them. */
const TOMBSTONES = 1_000;
/**
 * Most messages a community holds as live ones arrive: a day of a busy room
 * on screen is far fewer, and each change copies the list for the snapshot.
 */
export const MAX_HELD_MESSAGES = 2_000;

type SeqFrame = { type: "new-message"; data: NewMessageData } | { type: "message-deleted"; data: MessageDeletedData };

export class Community {
  readonly id: string;

  private messages: Message[] = []; // ascending seq
  private readonly seqById = new Map<string, number>();
  private readonly tombstones = new Set<string>();
  private lastSeq = 0;
  /** Whether we hold a baseline (a first join happened): rejoins then send lastSeq. */
  private baseline = false;
  private hasOlder = false;
  /** join() called and not left nor revoked: kept joined across reconnects. */
  private desired = false;
  private joined = false;
  private joining = false;
  /** Bumped by every join attempt, disconnect and leave: stale async work checks it. */
  private generation = 0;
  private filling = false;
  private joinRetries = 0;
  /** Whether the newest history page was merged since the baseline was taken. */
  private initialPageLoaded = false;
  private buffer: SeqFrame[] = [];
  private online: string[] = [];
  private readonly typing = new Map<string, { name: string; timer: ReturnType<typeof setTimeout> }>();
  private lastTypingSent: { isTyping: boolean; at: number } | null = null;
  private waiters: { resolve(): void; reject(err: unknown): void }[] = [];
  private olderInflight: Promise<void> | null = null;
  private snapshot: CommunitySnapshot | null = null;
  private readonly listeners = new Listeners();
  private readonly events: Emitter<CommunityEvents>;

  constructor(
    id: string,
    private readonly host: CommunityHost,
  ) {
    this.id = id;
    this.events = new Emitter<CommunityEvents>((err) => host.error(err));
  }

  // ---- public API -----------------------------------------------------------

  /** The same object until something changes (for useSyncExternalStore). */
  getSnapshot(): CommunitySnapshot {
    if (!this.snapshot) {
      this.snapshot = Object.freeze({
        communityId: this.id,
        joined: this.joined,
        messages: this.messages.slice(),
        hasOlder: this.hasOlder,
        typing: [...this.typing].map(([userId, t]) => ({ userId, name: t.name })),
        online: this.online.slice(),
        headSeq: this.lastSeq,
      });
    }
    return this.snapshot;
  }

  subscribe(listener: () => void): () => void {
    return this.listeners.subscribe(listener);
  }

  on<K extends keyof CommunityEvents>(event: K, fn: (payload: CommunityEvents[K]) => void): () => void {
    return this.events.on(event, fn);
  }

  /**
   * Joins (with the newest history page) and stays joined across reconnects
   * until leave(). Resolves once joined; rejects on the server's refusal
   * (forbidden, not_found). While disconnected it waits for the connection.
   */
  join(): Promise<void> {
    this.desired = true;
    if (this.joined && !this.joining && !this.filling) return Promise.resolve();
    const p = new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
    if (!this.joining && this.host.isOpen()) void this.doJoin();
    return p;
  }

  /** Stops delivery and rejoining; the messages held stay (a later join catches up from them). */
  async leave(): Promise<void> {
    const wasJoined = this.joined || this.joining;
    this.desired = false;
    this.resetSession();
    this.settle(); // a join() still waiting was superseded: resolve it
    this.changed();
    if (wasJoined && this.host.isOpen()) {
      try {
        await this.host.request("leave-community", { communityId: this.id });
      } catch (err) {
        this.host.error(err);
      }
    }
  }

  /** One HTTP history page before the oldest held message (the newest page when none is held). */
  loadOlder(limit = FIRST_PAGE): Promise<void> {
    if (this.olderInflight) return this.olderInflight;
    const oldest = this.messages[0]?.seq;
    const p = (async () => {
      const page = await this.host.api.history(this.id, oldest === undefined ? { limit } : { before: oldest, limit });
      this.mergeHistory(page.messages);
      this.hasOlder = page.nextBefore != null;
      this.changed();
    })();
    this.olderInflight = p;
    const clear = () => {
      this.olderInflight = null;
    };
    p.then(clear, clear);
    return p;
  }

  /**
   * Posts over HTTP with an Idempotency-Key, retried with the same key on
   * network errors and 503 (never on another 4xx/5xx). The message is added
   * at once; its echo over the socket is recognised by seq.
   */
  async sendMessage(content: string, mentions?: string[]): Promise<Message> {
    const idempotencyKey = randomUUID();
    for (let attempt = 0; ; attempt++) {
      try {
        const message = await this.host.api.postMessage(this.id, content, mentions, { idempotencyKey });
        if (this.addMessage(message)) {
          this.events.emit("message", message);
          this.changed();
        }
        return message;
      } catch (err) {
        const retryable = err instanceof ChorusNetworkError || (err instanceof ChorusError && err.status === 503);
        if (!retryable || attempt + 1 >= SEND_TRIES) throw err;
        await sleep(this.host.retryDelay(attempt));
      }
    }
  }

  async deleteMessage(messageId: string): Promise<void> {
    await this.host.api.deleteMessage(messageId);
    if (this.removeMessage(messageId)) this.changed();
  }

  /** Socket `typing` without ref; never throws. Repeated `true` is throttled. */
  setTyping(isTyping: boolean): void {
    if (!this.joined) return;
    const now = Date.now();
    const last = this.lastTypingSent;
    if (last && last.isTyping === isTyping && (!isTyping || now - last.at < TYPING_REPEAT_MS)) return;
    if (this.host.send("typing", { communityId: this.id, isTyping })) this.lastTypingSent = { isTyping, at: now };
  }

  // ---- called by the client -------------------------------------------------

  /** A fresh connection is ready: rejoin when wanted. */
  _onConnected(): void {
    if (this.desired && !this.joining) void this.doJoin();
  }

  /** The socket is gone: abandon in-flight joins and fills; events will be replayed. */
  _onDisconnected(): void {
    this.resetSession();
    this.changed();
  }

  /** The client was closed for good. */
  _onClosed(): void {
    this.resetSession();
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.reject(new ChorusNetworkError("client closed"));
    this.changed();
  }

  _onFrame(frame: ServerFrame): void {
    // Frames of a community we left (before the leave's ack) are ignored: a
    // later rejoin replays the seq'd ones from lastSeq.
    if (!this.desired) return;
    switch (frame.type) {
      case "new-message":
      case "message-deleted":
        if (this.filling) this.buffer.push(frame as SeqFrame);
        else if (this.applyEvent(frame as SeqFrame)) this.changed();
        return;
      case "user-joined": {
        const d = frame.data as UserJoinedData;
        if (!this.online.includes(d.userId)) this.online = [...this.online, d.userId];
        this.changed();
        this.events.emit("user-joined", d);
        return;
      }
      case "user-left": {
        const d = frame.data as UserLeftData;
        this.online = this.online.filter((u) => u !== d.userId);
        this.clearTyping(d.userId);
        this.changed();
        this.events.emit("user-left", d);
        return;
      }
      case "user-typing": {
        const d = frame.data as UserTypingData;
        if (d.isTyping) {
          clearTimeout(this.typing.get(d.userId)?.timer);
          const timer = setTimeout(() => {
            this.typing.delete(d.userId);
            this.changed();
          }, TYPING_EXPIRY_MS);
          this.typing.set(d.userId, { name: d.name, timer });
        } else {
          this.clearTyping(d.userId);
        }
        this.changed();
        this.events.emit("user-typing", d);
        return;
      }
      case "membership-revoked": {
        this.desired = false;
        this.resetSession();
        const waiters = this.waiters;
        this.waiters = [];
        for (const w of waiters) w.reject(new ChorusError("forbidden", "membership revoked"));
        this.changed();
        this.events.emit("membership-revoked", { communityId: this.id });
        return;
      }
    }
  }

  // ---- joining and gap filling ------------------------------------------------

  private async doJoin(): Promise<void> {
    const gen = ++this.generation;
    this.joining = true;
    const first = !this.baseline;
    const from = this.lastSeq;
    let ack: JoinAck;
    try {
      ack = await this.host.request<JoinAck>(
        "join-community",
        first ? { communityId: this.id } : { communityId: this.id, lastSeq: from },
        (a) => {
          // Synchronously, before the live frames that follow the ack: from
          // here on they must be held back while the gap is filled.
          if (!first && !a.recovered && gen === this.generation) {
            this.filling = true;
            this.buffer = [];
          }
        },
      );
    } catch (err) {
      if (gen !== this.generation) return;
      this.joining = false;
      this.host.error(err);
      if (err instanceof ChorusError && REFUSALS.has(err.code)) {
        // The server refused (forbidden, not_found, bad_request): stop trying.
        this.desired = false;
        const waiters = this.waiters;
        this.waiters = [];
        for (const w of waiters) w.reject(err);
      } else if (err instanceof ChorusTimeoutError && this.host.isOpen()) {
        // The join's outcome is unknown: its ack may still come, late, and
        // with `recovered: false`, and live events would then move lastSeq
        // past the gap unnoticed. Start over on a new connection, which
        // rejoins from the lastSeq we know is complete.
        this.host.restart("join timed out");
      } else if (this.host.isOpen()) {
        // A timeout, rate_limited or unavailable on a live socket: try again
        // (a dropped socket needs nothing: the next connection rejoins).
        const retry = this.joinRetries++;
        setTimeout(() => {
          if (gen === this.generation && this.desired && !this.joining && this.host.isOpen()) void this.doJoin();
        }, this.host.retryDelay(retry));
      }
      this.changed();
      return;
    }
    if (gen !== this.generation) return;
    this.joinRetries = 0;
    this.joined = true;
    this.online = ack.online.slice();
    if (first) {
      // Live events (seq > headSeq) follow the ack; history fills what came before.
      this.lastSeq = Math.max(this.lastSeq, ack.headSeq);
      this.baseline = true;
      this.changed();
    } else if (ack.recovered) {
      // The replay (seq > from) came before this ack and is applied already.
      this.lastSeq = Math.max(this.lastSeq, ack.headSeq);
    } else {
      this.changed();
      const ok = await this.fillGap(gen, from, ack.headSeq);
      if (gen !== this.generation) return;
      if (!ok) {
        this.joining = false;
        this.settle();
        return;
      }
    }
    // The newest page, once: also when the first join's page was cut short by a reconnect.
    if (!this.initialPageLoaded) {
      try {
        const page = await this.history({ limit: FIRST_PAGE });
        if (gen !== this.generation) return;
        this.mergeHistory(page.messages);
        this.hasOlder = page.nextBefore != null;
        this.initialPageLoaded = true;
      } catch (err) {
        if (gen !== this.generation) return;
        this.hasOlder = true; // loadOlder() retries the page
        this.host.error(err);
      }
    }
    this.joining = false;
    this.settle();
    this.changed();
  }

  /** recovered:false: page history after `from`, re-validate what we hold, then release the held live events. */
  private async fillGap(gen: number, from: number, headSeq: number): Promise<boolean> {
    // Held messages above `from` (our own sends known from their HTTP answer)
    // must appear in the pages after `from`, else they were deleted meanwhile.
    const heldAbove = this.messages.filter((m) => m.seq > from);
    const listed = new Set<string>();
    try {
      let after: number | null | undefined = from;
      while (after != null) {
        const page = await this.history({ after, limit: GAP_PAGE }); // oldest first
        if (gen !== this.generation) return false;
        for (const m of page.messages) {
          listed.add(m.id);
          if (m.seq > from && this.addMessage(m)) this.events.emit("message", m);
        }
        after = page.nextAfter;
      }
      for (const m of heldAbove) if (!listed.has(m.id)) this.removeMessage(m.id);
      await this.revalidate(gen, from);
      if (gen !== this.generation) return false;
    } catch (err) {
      if (gen !== this.generation) return false;
      this.host.error(err);
      this.resync();
      return false;
    }
    // Live events after the ack have seq > headSeq; applyEvent drops the rest.
    this.lastSeq = Math.max(this.lastSeq, from, headSeq);
    const held = this.buffer;
    this.buffer = [];
    this.filling = false;
    for (const f of held) this.applyEvent(f);
    return true;
  }

  /**
   * Held messages up to `from` may have been deleted during the gap, and the
   * deletion event is not in history: re-read the newest pages down to the
   * oldest held seq and drop what is gone.
   */
  private async revalidate(gen: number, from: number): Promise<void> {
    const held = this.messages.filter((m) => m.seq <= from);
    if (held.length === 0) return;
    const oldest = held[0]!.seq;
    const present = new Set<string>();
    let before = from + 1;
    let covered = 0; // every message with seq >= covered (and <= from) was listed
    for (;;) {
      const page = await this.history({ before, limit: GAP_PAGE }); // newest first
      if (gen !== this.generation) return;
      for (const m of page.messages) present.add(m.id);
      if (page.nextBefore == null) {
        covered = 0;
        break;
      }
      covered = page.nextBefore;
      if (covered <= oldest) break;
      before = page.nextBefore;
    }
    for (const m of held) if (m.seq >= covered && !present.has(m.id)) this.removeMessage(m.id);
  }

  /** A history read, retried on network errors and 503; a 403/404 is final. */
  private async history(page: { before?: number; after?: number; limit: number }): Promise<HistoryPage> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.host.api.history(this.id, page);
      } catch (err) {
        const retryable = err instanceof ChorusNetworkError || (err instanceof ChorusError && err.status === 503);
        if (!retryable || attempt + 1 >= HISTORY_TRIES) throw err;
        await sleep(this.host.retryDelay(attempt));
      }
    }
  }

  /** The gap cannot be filled: drop everything; the app reloads (loadOlder() loads the newest page). */
  private resync(): void {
    this.messages = [];
    this.seqById.clear();
    this.tombstones.clear();
    this.lastSeq = 0;
    this.baseline = false;
    this.initialPageLoaded = false;
    this.hasOlder = true;
    this.buffer = [];
    this.filling = false;
    this.changed();
    this.host.resyncRequired(this.id);
  }

  // ---- state ----------------------------------------------------------------

  /** Applies one ordered socket event; false for a duplicate. */
  private applyEvent(frame: SeqFrame): boolean {
    const seq = frame.type === "new-message" ? frame.data.message.seq : frame.data.seq;
    if (seq <= this.lastSeq) return false; // replay overlap
    this.lastSeq = seq;
    if (frame.type === "new-message") {
      const m = frame.data.message;
      if (this.addMessage(m)) this.events.emit("message", m);
    } else {
      this.removeMessage(frame.data.messageId);
      this.events.emit("message-deleted", frame.data);
    }
    return true;
  }

  /** Inserts by seq; false when that seq (or a deleted id) is known. */
  private addMessage(m: Message): boolean {
    if (this.tombstones.has(m.id) || this.seqById.has(m.id)) return false;
    // Binary search for the insertion point; appends (the common case) are O(1).
    let lo = 0;
    let hi = this.messages.length;
    if (hi > 0 && this.messages[hi - 1]!.seq < m.seq) lo = hi;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.messages[mid]!.seq < m.seq) lo = mid + 1;
      else hi = mid;
    }
    if (this.messages[lo]?.seq === m.seq) return false;
    const newest = lo === this.messages.length;
    this.messages.splice(lo, 0, m);
    this.seqById.set(m.id, m.seq);
    if (newest && this.messages.length > MAX_HELD_MESSAGES) {
      // A long-lived page keeps a window, not the whole history: the oldest
      // go (loadOlder() brings them back). Only live growth trims, so a page
      // the user scrolled back to is not dropped as it arrives.
      const gone = this.messages.splice(0, this.messages.length - MAX_HELD_MESSAGES);
      for (const g of gone) this.seqById.delete(g.id);
      this.hasOlder = true;
    }
    return true;
  }

  private removeMessage(id: string): boolean {
    this.tombstones.add(id);
    if (this.tombstones.size > TOMBSTONES) this.tombstones.delete(this.tombstones.values().next().value!);
    if (!this.seqById.has(id)) return false;
    this.seqById.delete(id);
    this.messages = this.messages.filter((m) => m.id !== id);
    return true;
  }

  private mergeHistory(messages: Message[]): void {
    for (const m of messages) this.addMessage(m);
  }

  private clearTyping(userId: string): void {
    const t = this.typing.get(userId);
    if (t) {
      clearTimeout(t.timer);
      this.typing.delete(userId);
    }
  }

  /** Ends the per-connection state (joined, presence, typing, a gap fill in progress). */
  private resetSession(): void {
    this.generation++;
    this.joined = false;
    this.joining = false;
    this.filling = false;
    this.buffer = [];
    this.online = [];
    this.lastTypingSent = null;
    for (const userId of [...this.typing.keys()]) this.clearTyping(userId);
  }

  private settle(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.resolve();
  }

  private changed(): void {
    this.snapshot = null;
    this.listeners.notify();
  }
}
