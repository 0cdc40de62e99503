import { useCallback, useEffect, useMemo, useState, useSyncExternalStore } from "react";
import type {
  ChorusClient,
  Community,
  CommunitySnapshot,
  ConnectionState,
  Message,
  Notifications,
  NotificationsSnapshot,
} from "../index.js";
import { useChorus } from "./context.js";

/** The client's connection state, re-rendering on every change. */
export function useConnectionState(): ConnectionState {
  const client = useChorus();
  const subscribe = useCallback((onChange: () => void) => client.on("state", () => onChange()), [client]);
  const getState = useCallback(() => client.state, [client]);
  return useSyncExternalStore(subscribe, getState, getState);
}

/** The signed-in user's id once the gateway said `ready` (null before). */
export function useUserId(): string | null {
  const client = useChorus();
  const subscribe = useCallback(
    (onChange: () => void) => {
      const offReady = client.on("ready", () => onChange());
      const offState = client.on("state", () => onChange());
      return () => {
        offReady();
        offState();
      };
    },
    [client],
  );
  const get = useCallback(() => client.userId, [client]);
  return useSyncExternalStore(subscribe, get, get);
}

// ---- reference-counted membership -------------------------------------------
//
// Several components may show the same community: the first one to mount joins,
// the last one to unmount leaves. The leave is deferred by a tick so that a
// remount (React StrictMode's double effects, a parent re-keying a child) does
// not leave and join again.

interface Holder {
  count: number;
  leaveTimer: ReturnType<typeof setTimeout> | null;
  joining: Promise<void> | null;
  error: unknown;
  resyncing: boolean;
  listeners: Set<() => void>;
}
const holders = new WeakMap<Community, Holder>();

function holderOf(community: Community): Holder {
  let h = holders.get(community);
  if (!h) {
    h = { count: 0, leaveTimer: null, joining: null, error: null, resyncing: false, listeners: new Set() };
    holders.set(community, h);
  }
  return h;
}

function notify(h: Holder) {
  for (const fn of h.listeners) fn();
}

function startJoin(community: Community, h: Holder) {
  h.error = null;
  const p = community.join().then(
    () => {
      if (h.joining === p) h.joining = null;
      notify(h);
    },
    (err: unknown) => {
      if (h.joining === p) h.joining = null;
      h.error = err;
      notify(h);
    },
  );
  h.joining = p;
  notify(h);
}

/** Take one reference on a community's membership; returns the release function. */
export function retainCommunity(community: Community): () => void {
  const h = holderOf(community);
  if (h.leaveTimer !== null) {
    // Still joined: the previous holder's leave had not happened yet.
    clearTimeout(h.leaveTimer);
    h.leaveTimer = null;
  } else if (h.count === 0) {
    startJoin(community, h);
  }
  h.count++;
  let released = false;
  return () => {
    if (released) return;
    released = true;
    h.count--;
    if (h.count === 0) {
      h.leaveTimer = setTimeout(() => {
        h.leaveTimer = null;
        if (h.count === 0) {
          h.error = null;
          community.leave().catch(() => {
            /* leaving a community that is gone or never joined: nothing to do */
          });
        }
      }, 0);
    }
  };
}

/** How many components hold a community joined (for tests and debugging). */
export function communityRefCount(community: Community): number {
  return holders.get(community)?.count ?? 0;
}

export interface UseCommunityResult extends CommunitySnapshot {
  /** The last join failure (forbidden, not found...), null while fine. */
  error: Error | null;
  /** Whether the join request is in flight. */
  joining: boolean;
  /** Set when the user was removed from the community. */
  revoked: boolean;
  sendMessage(content: string, mentions?: string[]): Promise<Message>;
  deleteMessage(messageId: string): Promise<void>;
  setTyping(isTyping: boolean): void;
  loadOlder(): Promise<void>;
  /** Join again (after an error). */
  retry(): void;
}

/**
 * Live state of one community. Joins on mount and leaves on unmount,
 * reference counted across components: two components on one community join once.
 */
export function useCommunity(communityId: string): UseCommunityResult {
  const client = useChorus();
  const community = useMemo(() => client.community(communityId), [client, communityId]);
  const h = holderOf(community);

  const subscribe = useCallback(
    (onChange: () => void) => community.subscribe(onChange),
    [community],
  );
  const getSnapshot = useCallback(() => community.getSnapshot(), [community]);
  const snapshot = useSyncExternalStore(subscribe, getSnapshot, getSnapshot);

  // The holder's own fields (error, joining) change outside the snapshot: a counter re-renders.
  const [, bump] = useState(0);
  const [revoked, setRevoked] = useState(false);

  useEffect(() => {
    setRevoked(false);
    const holder = holderOf(community);
    const onHolder = () => bump((n) => n + 1);
    holder.listeners.add(onHolder);
    const release = retainCommunity(community);
    const offRevoked = community.on("membership-revoked", () => setRevoked(true));
    const offResync = client.on("resync-required", ({ communityId: id }) => {
      // A gap could not be filled: reload the community (leave, then join afresh).
      // Several components may hold this community: the first one handles it.
      if (id !== community.id || holder.count === 0 || holder.resyncing) return;
      holder.resyncing = true;
      community
        .leave()
        .catch(() => {})
        .then(() => {
          holder.resyncing = false;
          if (holder.count > 0) startJoin(community, holder);
        });
    });
    return () => {
      holder.listeners.delete(onHolder);
      offRevoked();
      offResync();
      release();
    };
  }, [client, community]);

  const error = h.error == null ? null : h.error instanceof Error ? h.error : new Error(String(h.error));
  const joining = h.joining !== null;

  const actions = useMemo(
    () => ({
      sendMessage: (content: string, mentions?: string[]) => community.sendMessage(content, mentions),
      deleteMessage: (messageId: string) => community.deleteMessage(messageId),
      setTyping: (isTyping: boolean) => community.setTyping(isTyping),
      loadOlder: () => community.loadOlder(),
      retry: () => {
        const holder = holderOf(community);
        if (holder.count > 0 && holder.joining === null) startJoin(community, holder);
      },
    }),
    [community],
  );

  return useMemo(
    () => ({ ...snapshot, ...actions, error, joining, revoked }),
    [snapshot, actions, error, joining, revoked],
  );
}

export interface UseNotificationsResult extends NotificationsSnapshot {
  refresh(): Promise<void>;
  markRead(id: string): Promise<void>;
  markAllRead(): Promise<void>;
  remove(id: string): Promise<void>;
}

/** The user's notifications, live; loads them on first use. */
export function useNotifications(): UseNotificationsResult {
  const client = useChorus();
  const handle: Notifications = useMemo(() => client.notifications(), [client]);
  const subscribe = useCallback((onChange: () => void) => handle.subscribe(onChange), [handle]);
  const getSnapshot = useCallback(() => handle.getSnapshot(), [handle]);
  const snapshot = useSyncExternalStore(subscribe, getSnapshot, getSnapshot);

  useEffect(() => {
    if (!handle.getSnapshot().loaded) handle.refresh().catch(() => {});
  }, [handle]);

  const actions = useMemo(
    () => ({
      refresh: () => handle.refresh(),
      markRead: (id: string) => handle.markRead(id),
      markAllRead: () => handle.markAllRead(),
      remove: (id: string) => handle.remove(id),
    }),
    [handle],
  );
  return useMemo(() => ({ ...snapshot, ...actions }), [snapshot, actions]);
}
