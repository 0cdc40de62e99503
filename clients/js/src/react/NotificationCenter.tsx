import { useEffect, useId, useRef, useState } from "react";
import type { Notification } from "../index.js";
import { useNotifications } from "./hooks.js";
import { cx, formatTime, useDialogFocus } from "./parts.js";

export interface NotificationCenterProps {
  className?: string;
}

function BellIcon() {
  return (
    <svg width="20" height="20" viewBox="0 0 24 24" aria-hidden="true" focusable="false">
      <path
        fill="currentColor"
        d="M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22Zm7-6V11a7 7 0 0 0-5.5-6.84V3.5a1.5 1.5 0 0 0-3 0v.66A7 7 0 0 0 5 11v5l-1.7 1.7A1 1 0 0 0 4 19.4h16a1 1 0 0 0 .7-1.7L19 16Zm-2 .83.57.57H6.43l.57-.57V11a5 5 0 0 1 10 0v5.83Z"
      />
    </svg>
  );
}

/** The type as a CSS-safe modifier: "mention" → "chorus-type--mention". */
function typeClass(type: string): string {
  return `chorus-type--${type.toLowerCase().replace(/[^a-z0-9_-]/g, "-")}`;
}

/** A bell with the unread count; opens a list of notifications (refreshed on open). */
export function NotificationCenter({ className }: NotificationCenterProps) {
  const n = useNotifications();
  const [open, setOpen] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const rootRef = useRef<HTMLDivElement>(null);
  const bellRef = useRef<HTMLButtonElement>(null);
  const panelRef = useRef<HTMLDivElement>(null);
  const panelId = useId();
  const titleId = useId();

  const close = () => setOpen(false);
  useDialogFocus(open, panelRef, close, { returnTo: () => bellRef.current });

  // Refresh on open.
  useEffect(() => {
    if (!open) return;
    setError(null);
    n.refresh().catch((err: unknown) => setError(message(err)));
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [open]);

  // A click outside closes the dropdown (focus stays where the user clicked).
  useEffect(() => {
    if (!open) return;
    const onDown = (e: MouseEvent) => {
      if (rootRef.current && !rootRef.current.contains(e.target as Node)) setOpen(false);
    };
    document.addEventListener("mousedown", onDown);
    return () => document.removeEventListener("mousedown", onDown);
  }, [open]);

  const run = (p: Promise<void>) => {
    setError(null);
    p.catch((err: unknown) => setError(message(err)));
  };

  const unread = n.unreadCount;
  const label = "Notifications";

  return (
    <div ref={rootRef} className={cx("chorus-root", "chorus-notifications", className)}>
      <button
        ref={bellRef}
        type="button"
        className="chorus-icon-button chorus-bell"
        aria-label={label}
        aria-description={unread > 0 ? `${unread} unread` : undefined}
        aria-haspopup="dialog"
        aria-expanded={open}
        aria-controls={open ? panelId : undefined}
        data-unread={unread}
        title={unread > 0 ? `Notifications (${unread} unread)` : "Notifications"}
        onClick={() => setOpen((o) => !o)}
      >
        <BellIcon />
      </button>
      {/* Beside the button, not in it: the button's name stays "Notifications" (the count is in data-unread and the live region). */}
      {unread > 0 && (
        <span className="chorus-badge-count" data-testid="unread-badge" aria-hidden="true">
          {unread > 99 ? "99+" : unread}
        </span>
      )}
      <span className="chorus-sr-only" aria-live="polite">
        {unread > 0 ? `${unread} unread notification${unread === 1 ? "" : "s"}` : ""}
      </span>

      {open && (
        <div
          ref={panelRef}
          id={panelId}
          className="chorus-dropdown"
          role="dialog"
          aria-label="Notifications"
          tabIndex={-1}
        >
          <div className="chorus-dropdown__header">
            <h2 id={titleId} className="chorus-dropdown__title">
              Notifications
            </h2>
            <button
              type="button"
              className="chorus-button"
              onClick={() => {
                panelRef.current?.focus(); // this button is disabled once all are read
                run(n.markAllRead());
              }}
              disabled={unread === 0}
            >
              Mark all read
            </button>
          </div>
          {error && (
            <div className="chorus-chat__status chorus-chat__status--error" role="alert">
              {error}
            </div>
          )}
          {!n.loaded && n.items.length === 0 ? (
            <div className="chorus-dropdown__empty">Loading…</div>
          ) : n.items.length === 0 ? (
            <div className="chorus-dropdown__empty">No notifications</div>
          ) : (
            <ul className="chorus-dropdown__list" aria-labelledby={titleId}>
              {n.items.map((item) => (
                <NotificationItem
                  key={item.id}
                  item={item}
                  onRead={() => {
                    panelRef.current?.focus(); // the "Mark read" button goes away
                    run(n.markRead(item.id));
                  }}
                  onRemove={() => {
                    // Keep the focus inside the dropdown when the focused item disappears.
                    panelRef.current?.focus();
                    run(n.remove(item.id));
                  }}
                />
              ))}
            </ul>
          )}
        </div>
      )}
    </div>
  );
}

function NotificationItem({ item, onRead, onRemove }: { item: Notification; onRead: () => void; onRemove: () => void }) {
  const titleId = useId();
  return (
    <li className="chorus-notification" data-testid="notification" data-read={item.read ? "true" : "false"} aria-labelledby={titleId}>
      {item.read ? (
        <span className="chorus-unread-dot chorus-unread-dot--read" aria-hidden="true" />
      ) : (
        <span className="chorus-unread-dot" role="img" aria-label="Unread" />
      )}
      <div className="chorus-notification__body">
        <div className="chorus-notification__top">
          <span className={cx("chorus-type", typeClass(item.type))}>{item.type}</span>
          <span id={titleId} className="chorus-notification__title">
            {item.title}
          </span>
        </div>
        {item.message && <p className="chorus-notification__message">{item.message}</p>}
        <time className="chorus-notification__time" dateTime={item.createdAt}>
          {formatTime(item.createdAt)}
        </time>
      </div>
      <div className="chorus-notification__actions">
        {!item.read && (
          <button type="button" className="chorus-button" onClick={onRead} aria-describedby={titleId}>
            Mark read
          </button>
        )}
        <button type="button" className="chorus-button" onClick={onRemove} aria-label="Delete notification" aria-describedby={titleId}>
          Delete
        </button>
      </div>
    </li>
  );
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
