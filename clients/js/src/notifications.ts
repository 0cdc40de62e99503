// Notifications: the user's notification list and unread count. The socket
// subscription (`subscribe-notifications`, renewed on every connection) gives
// the unread count and live `notification` frames; the list comes over HTTP.
// Local changes are applied only after the HTTP call succeeded.

import type { ChorusApi } from "./api.js";
import { Emitter, Listeners } from "./emitter.js";
import type { Notification, SubscribeNotificationsAck } from "./types.js";

export interface NotificationsSnapshot {
  items: Notification[];
  unreadCount: number;
  /** Whether refresh() has loaded the list at least once. */
  loaded: boolean;
}

export interface NotificationsEvents {
  notification: Notification;
}

export interface NotificationsHost {
  readonly api: ChorusApi;
  isOpen(): boolean;
  request<T>(type: string, data: object, onAck?: (data: T) => void): Promise<T>;
  error(err: unknown): void;
}

const PAGE = 20;
/** Most notifications held: the list is a bell's dropdown, not an archive. */
export const MAX_HELD_NOTIFICATIONS = 200;

export class Notifications {
  private items: Notification[] = [];
  /** Collectors of the frames that arrive while a refresh() reads its page. */
  private readonly arriving = new Set<Notification[]>();
  private unreadCount = 0;
  private loaded = false;
  private subscriptions = 0;
  private snapshot: NotificationsSnapshot | null = null;
  private readonly listeners = new Listeners();
  private readonly events: Emitter<NotificationsEvents>;

  constructor(private readonly host: NotificationsHost) {
    this.events = new Emitter<NotificationsEvents>((err) => host.error(err));
  }

  getSnapshot(): NotificationsSnapshot {
    if (!this.snapshot) {
      this.snapshot = Object.freeze({ items: this.items, unreadCount: this.unreadCount, loaded: this.loaded });
    }
    return this.snapshot;
  }

  subscribe(listener: () => void): () => void {
    return this.listeners.subscribe(listener);
  }

  on<K extends keyof NotificationsEvents>(event: K, fn: (payload: NotificationsEvents[K]) => void): () => void {
    return this.events.on(event, fn);
  }

  /** GET /api/notifications-broadcast: the newest page and the unread count. */
  async refresh(): Promise<void> {
    // Frames that arrive while the page is read may be newer than it: they
    // are kept (and counted) rather than overwritten by the page.
    const during: Notification[] = [];
    this.arriving.add(during);
    let page;
    try {
      page = await this.host.api.listNotifications({ limit: PAGE });
    } finally {
      this.arriving.delete(during);
    }
    const inPage = new Set(page.notifications.map((n) => n.id));
    const newer = during.filter((n) => !inPage.has(n.id)).reverse();
    this.items = [...newer, ...page.notifications].slice(0, MAX_HELD_NOTIFICATIONS);
    this.unreadCount = page.unreadCount + newer.filter((n) => !n.read).length;
    this.loaded = true;
    this.changed();
  }

  async markRead(id: string): Promise<void> {
    await this.host.api.markNotificationRead(id);
    const item = this.items.find((n) => n.id === id);
    if (item && !item.read) {
      this.items = this.items.map((n) => (n.id === id ? { ...n, read: true } : n));
      this.unreadCount = Math.max(0, this.unreadCount - 1);
      this.changed();
    }
  }

  async markAllRead(): Promise<void> {
    await this.host.api.markAllNotificationsRead();
    this.items = this.items.map((n) => (n.read ? n : { ...n, read: true }));
    this.unreadCount = 0;
    this.changed();
  }

  async remove(id: string): Promise<void> {
    await this.host.api.deleteNotification(id);
    const item = this.items.find((n) => n.id === id);
    if (!item) return;
    this.items = this.items.filter((n) => n.id !== id);
    if (!item.read) this.unreadCount = Math.max(0, this.unreadCount - 1);
    this.changed();
  }

  // ---- called by the client -------------------------------------------------

  /** A connection is ready: (re)subscribe; after a reconnect reload the list we missed frames of. */
  async _onConnected(): Promise<void> {
    const again = this.subscriptions++ > 0;
    try {
      // The count is taken synchronously with the ack: a `notification` frame
      // right behind it must bump the acked count, not be overwritten by it.
      await this.host.request<SubscribeNotificationsAck>("subscribe-notifications", {}, (ack) => {
        this.unreadCount = ack.unreadCount;
        this.changed();
      });
      if (again && this.loaded) await this.refresh();
    } catch (err) {
      this.host.error(err);
    }
  }

  _onNotification(n: Notification): void {
    if (this.items.some((x) => x.id === n.id)) return;
    for (const during of this.arriving) during.push(n);
    this.items = [n, ...this.items].slice(0, MAX_HELD_NOTIFICATIONS);
    if (!n.read) this.unreadCount++;
    this.changed();
    this.events.emit("notification", n);
  }

  private changed(): void {
    this.snapshot = null;
    this.listeners.notify();
  }
}
