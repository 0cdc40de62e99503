// An in-memory stand-in for the SDK's ChorusClient, Community and Notifications
// handles: just enough for the React bindings' UI logic (no socket, no HTTP).
import { vi } from "vitest";
import type {
  ChorusClient,
  CommunitySnapshot,
  ConnectionState,
  Message,
  Notification,
  NotificationsSnapshot,
} from "../../src/index";

type Listener = () => void;

class Store<S> {
  private listeners = new Set<Listener>();
  constructor(public snapshot: S) {}
  getSnapshot = () => this.snapshot;
  subscribe = (fn: Listener) => {
    this.listeners.add(fn);
    return () => {
      this.listeners.delete(fn);
    };
  };
  set(patch: Partial<S>) {
    this.snapshot = { ...this.snapshot, ...patch };
    for (const fn of [...this.listeners]) fn();
  }
}

export class FakeCommunity extends Store<CommunitySnapshot> {
  private events = new Map<string, Set<(p: unknown) => void>>();
  constructor(readonly id: string) {
    super({ communityId: id, joined: false, messages: [], hasOlder: false, typing: [], online: [], headSeq: 0 });
  }
  join = vi.fn(async () => {
    this.set({ joined: true });
  });
  leave = vi.fn(async () => {
    this.set({ joined: false });
  });
  loadOlder = vi.fn(async () => {});
  setTyping = vi.fn((_isTyping: boolean) => {});
  sendMessage = vi.fn(async (content: string, mentions?: string[]): Promise<Message> => {
    const seq = this.snapshot.headSeq + 1;
    const m = message(this.id, seq, { id: "me", name: "Me" }, content, mentions ?? []);
    this.set({ messages: [...this.snapshot.messages, m], headSeq: seq });
    return m;
  });
  deleteMessage = vi.fn(async (messageId: string) => {
    this.set({ messages: this.snapshot.messages.filter((m) => m.id !== messageId), headSeq: this.snapshot.headSeq + 1 });
  });
  on(event: string, fn: (p: unknown) => void) {
    let set = this.events.get(event);
    if (!set) this.events.set(event, (set = new Set()));
    set.add(fn);
    return () => {
      set!.delete(fn);
    };
  }
  emit(event: string, payload: unknown) {
    for (const fn of this.events.get(event) ?? []) fn(payload);
  }
  /** A message from someone, as if it arrived live. */
  receive(sender: { id: string; name: string; avatar?: string | null }, content: string) {
    const seq = this.snapshot.headSeq + 1;
    this.set({ messages: [...this.snapshot.messages, message(this.id, seq, sender, content, [])], headSeq: seq });
  }
}

export class FakeNotifications extends Store<NotificationsSnapshot> {
  constructor(items: Notification[] = []) {
    super({ items, unreadCount: items.filter((n) => !n.read).length, loaded: true });
  }
  private update(items: Notification[]) {
    this.set({ items, unreadCount: items.filter((n) => !n.read).length, loaded: true });
  }
  refresh = vi.fn(async () => {});
  markRead = vi.fn(async (id: string) => {
    this.update(this.snapshot.items.map((n) => (n.id === id ? { ...n, read: true } : n)));
  });
  markAllRead = vi.fn(async () => {
    this.update(this.snapshot.items.map((n) => ({ ...n, read: true })));
  });
  remove = vi.fn(async (id: string) => {
    this.update(this.snapshot.items.filter((n) => n.id !== id));
  });
  push(n: Notification) {
    this.update([n, ...this.snapshot.items]);
  }
}

export class FakeClient {
  state: ConnectionState = "open";
  userId: string | null = "me";
  readonly communities = new Map<string, FakeCommunity>();
  readonly notes = new FakeNotifications();
  private events = new Map<string, Set<(p: unknown) => void>>();
  on(event: string, fn: (p: unknown) => void) {
    let set = this.events.get(event);
    if (!set) this.events.set(event, (set = new Set()));
    set.add(fn);
    return () => {
      set!.delete(fn);
    };
  }
  emit(event: string, payload: unknown) {
    for (const fn of this.events.get(event) ?? []) fn(payload);
  }
  setState(s: ConnectionState) {
    this.state = s;
    this.emit("state", s);
  }
  community(id: string): FakeCommunity {
    let c = this.communities.get(id);
    if (!c) this.communities.set(id, (c = new FakeCommunity(id)));
    return c;
  }
  notifications(): FakeNotifications {
    return this.notes;
  }
  connect() {}
  close() {}
  /** The fake typed as the real client, for ChorusProvider. */
  get asClient(): ChorusClient {
    return this as unknown as ChorusClient;
  }
}

let nextId = 1;
export function message(
  communityId: string,
  seq: number,
  sender: { id: string; name: string; avatar?: string | null },
  content: string,
  mentions: string[] = [],
): Message {
  return {
    id: `00000000-0000-4000-8000-${String(nextId++).padStart(12, "0")}`,
    communityId,
    seq,
    sender: { id: sender.id, name: sender.name, avatar: sender.avatar ?? null },
    content,
    mentions,
    createdAt: new Date(Date.UTC(2026, 0, 1, 12, 0, seq)).toISOString(),
  };
}

export function notification(id: string, type: string, title: string, read = false): Notification {
  return { id, userId: "me", type, title, message: `${title} body`, data: null, read, createdAt: "2026-01-01T12:00:00.000Z" };
}
