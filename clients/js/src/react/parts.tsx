import { useEffect, useRef, useState, type CSSProperties, type RefObject } from "react";
import type { ConnectionState } from "../index.js";
import { useConnectionState } from "./hooks.js";

export function cx(...names: (string | false | null | undefined)[]): string {
  return names.filter(Boolean).join(" ");
}

/** "Ada Lovelace" → "AL", "bob" → "B". */
export function initials(name: string): string {
  const words = name.trim().split(/\s+/).filter(Boolean);
  if (words.length === 0) return "?";
  const first = Array.from(words[0]!)[0] ?? "";
  const last = words.length > 1 ? (Array.from(words[words.length - 1]!)[0] ?? "") : "";
  return (first + last).toUpperCase();
}

/** A stable colour from a user id, for the initials avatar. */
export function avatarColor(id: string): string {
  let h = 0;
  for (let i = 0; i < id.length; i++) h = (h * 31 + id.charCodeAt(i)) | 0;
  return `hsl(${Math.abs(h) % 360} 45% 42%)`;
}

/**
 * An avatar URL is the sender's own claim: only http(s) images are loaded,
 * and without a Referer, so a sender learns nothing of where it is shown.
 */
function safeImageUrl(src: string | null | undefined): string | null {
  if (!src) return null;
  try {
    const u = new URL(src, window.location.href);
    return u.protocol === "https:" || u.protocol === "http:" ? u.href : null;
  } catch {
    return null;
  }
}

export function Avatar({ id, name, src }: { id: string; name: string; src?: string | null }) {
  const [failed, setFailed] = useState(false);
  useEffect(() => setFailed(false), [src]);
  const url = safeImageUrl(src);
  const showImage = !!url && !failed;
  return (
    <span
      className="chorus-avatar"
      aria-hidden="true"
      style={showImage ? undefined : ({ "--chorus-avatar-bg": avatarColor(id) } as CSSProperties)}
    >
      {showImage ? <img src={url!} alt="" loading="lazy" referrerPolicy="no-referrer" onError={() => setFailed(true)} /> : initials(name)}
    </span>
  );
}

const STATE_TEXT: Record<ConnectionState, string> = {
  idle: "Not connected",
  connecting: "Connecting…",
  open: "Connected",
  reconnecting: "Reconnecting…",
  closed: "Disconnected",
};

/** Green when the socket is open, red otherwise (pulsing while it connects). */
export function ConnectionDot({ className }: { className?: string }) {
  const state = useConnectionState();
  return (
    <span
      data-testid="connection-dot"
      data-state={state}
      role="img"
      aria-label={state === "open" ? "Connected" : "Disconnected"}
      title={STATE_TEXT[state]}
      className={cx("chorus-dot", className)}
    />
  );
}

export function formatTime(iso: string): string {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const now = new Date();
  const sameDay = d.toDateString() === now.toDateString();
  const time = d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  return sameDay ? time : `${d.toLocaleDateString(undefined, { month: "short", day: "numeric" })} ${time}`;
}

const FOCUSABLE =
  'a[href], button:not([disabled]), textarea:not([disabled]), input:not([disabled]), select:not([disabled]), [tabindex]:not([tabindex="-1"])';

/**
 * Focus management of a dialog: on open focus `initial` (or the first focusable
 * element), keep Tab inside when `trap`, close on Escape, and on close give the
 * focus back to the element that had it before (or `returnTo`).
 */
export function useDialogFocus(
  open: boolean,
  containerRef: RefObject<HTMLElement | null>,
  onClose: () => void,
  opts: { initialRef?: RefObject<HTMLElement | null>; returnTo?: () => HTMLElement | null; trap?: boolean } = {},
) {
  const onCloseRef = useRef(onClose);
  onCloseRef.current = onClose;
  const optsRef = useRef(opts);
  optsRef.current = opts;

  useEffect(() => {
    if (!open) return;
    const previous = (typeof document !== "undefined" ? document.activeElement : null) as HTMLElement | null;
    const container = containerRef.current;
    const initial = optsRef.current.initialRef?.current ?? container?.querySelector<HTMLElement>(FOCUSABLE) ?? container;
    initial?.focus();

    // Escape is heard on the whole document: the focus may have fallen out of
    // the dialog (a focused button that got disabled or removed).
    const onDocKeyDown = (e: KeyboardEvent) => {
      if (e.key !== "Escape" || e.defaultPrevented) return;
      e.preventDefault();
      onCloseRef.current();
    };
    const onKeyDown = (e: KeyboardEvent) => {
      if (e.key === "Tab" && optsRef.current.trap && container) {
        const items = Array.from(container.querySelectorAll<HTMLElement>(FOCUSABLE));
        if (items.length === 0) return;
        const first = items[0]!;
        const last = items[items.length - 1]!;
        if (e.shiftKey && document.activeElement === first) {
          e.preventDefault();
          last.focus();
        } else if (!e.shiftKey && document.activeElement === last) {
          e.preventDefault();
          first.focus();
        }
      }
    };
    container?.addEventListener("keydown", onKeyDown);
    document.addEventListener("keydown", onDocKeyDown);
    return () => {
      container?.removeEventListener("keydown", onKeyDown);
      document.removeEventListener("keydown", onDocKeyDown);
      const target = optsRef.current.returnTo?.() ?? previous;
      // Give the focus back unless the user already moved it somewhere else on purpose.
      const active = document.activeElement;
      if (target && target.isConnected && (active === null || active === document.body || (container?.contains(active) ?? false) || !active.isConnected)) {
        target.focus();
      }
    };
  }, [open, containerRef]);
}
