/**
 * The default stylesheet of the React components. Every class is prefixed
 * `chorus-`; colours, radius and font come from CSS variables set on
 * `.chorus-root` (override them on any ancestor or on the component's className).
 */
export const chorusCss = `
:where(:root) {
  --chorus-font: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  --chorus-bg: #ffffff;
  --chorus-fg: #1f2328;
  --chorus-muted: #656d76;
  --chorus-border: #d0d7de;
  --chorus-subtle-bg: #f6f8fa;
  --chorus-accent: #2563eb;
  --chorus-accent-fg: #ffffff;
  --chorus-own-bg: #f3f7ff;
  --chorus-danger: #cf222e;
  --chorus-online: #1a7f37;
  --chorus-offline: #cf222e;
  --chorus-pending: #bf8700;
  --chorus-radius: 8px;
  --chorus-focus: 0 0 0 3px rgba(37, 99, 235, 0.45);
}
.chorus-root {
  font-family: var(--chorus-font);
  color: var(--chorus-fg);
  box-sizing: border-box;
}
.chorus-root *, .chorus-root *::before, .chorus-root *::after { box-sizing: inherit; }
.chorus-root button { font: inherit; cursor: pointer; }
.chorus-root button:disabled { cursor: default; opacity: 0.55; }
.chorus-root :focus-visible { outline: none; box-shadow: var(--chorus-focus); }
.chorus-sr-only {
  position: absolute; width: 1px; height: 1px; padding: 0; margin: -1px;
  overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; border: 0;
}

.chorus-button {
  border: 1px solid var(--chorus-border); background: var(--chorus-bg); color: var(--chorus-fg);
  border-radius: calc(var(--chorus-radius) - 2px); padding: 6px 12px; font-size: 14px; line-height: 20px;
}
.chorus-button:hover:not(:disabled) { background: var(--chorus-subtle-bg); }
.chorus-button--primary { background: var(--chorus-accent); border-color: var(--chorus-accent); color: var(--chorus-accent-fg); }
.chorus-button--primary:hover:not(:disabled) { background: var(--chorus-accent); filter: brightness(1.08); }
.chorus-button--danger { background: var(--chorus-danger); border-color: var(--chorus-danger); color: #fff; }
.chorus-button--danger:hover:not(:disabled) { background: var(--chorus-danger); filter: brightness(1.08); }
.chorus-icon-button {
  display: inline-flex; align-items: center; justify-content: center; border: 0; background: transparent;
  color: var(--chorus-muted); border-radius: 6px; padding: 4px; line-height: 0;
}
.chorus-icon-button:hover:not(:disabled) { background: var(--chorus-subtle-bg); color: var(--chorus-fg); }

/* connection dot */
.chorus-dot {
  display: inline-block; width: 10px; height: 10px; border-radius: 50%; flex: none;
  background: var(--chorus-offline); box-shadow: 0 0 0 2px var(--chorus-bg);
}
.chorus-dot[data-state="open"] { background: var(--chorus-online); }
.chorus-dot[data-state="connecting"], .chorus-dot[data-state="reconnecting"] { animation: chorus-pulse 1.2s ease-in-out infinite; }

/* chat */
.chorus-chat {
  display: flex; flex-direction: column; height: 100%; min-height: 0; background: var(--chorus-bg);
  border: 1px solid var(--chorus-border); border-radius: var(--chorus-radius); overflow: hidden; position: relative;
}
.chorus-chat__header {
  display: flex; align-items: center; gap: 8px; padding: 10px 14px; border-bottom: 1px solid var(--chorus-border);
  background: var(--chorus-subtle-bg);
}
.chorus-chat__title { margin: 0; font-size: 16px; font-weight: 600; flex: 1; min-width: 0; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.chorus-chat__online { font-size: 13px; color: var(--chorus-muted); }
.chorus-chat__log { flex: 1; min-height: 0; overflow-y: auto; padding: 8px 0; }
.chorus-chat__status { padding: 8px 14px; font-size: 13px; color: var(--chorus-muted); text-align: center; }
.chorus-chat__status--error { color: var(--chorus-danger); }
.chorus-chat__older { display: flex; justify-content: center; padding: 4px 0 8px; }
.chorus-chat__empty { padding: 32px 14px; text-align: center; color: var(--chorus-muted); font-size: 14px; }
.chorus-chat__jump {
  position: absolute; left: 50%; transform: translateX(-50%); bottom: 120px;
  border-radius: 999px; box-shadow: 0 2px 8px rgba(0,0,0,0.15);
}

.chorus-message { display: flex; gap: 10px; padding: 6px 14px; align-items: flex-start; }
.chorus-message:hover { background: var(--chorus-subtle-bg); }
.chorus-message--own { background: var(--chorus-own-bg); }
.chorus-message--own:hover { background: var(--chorus-own-bg); }
.chorus-message__body { flex: 1; min-width: 0; }
.chorus-message__meta { display: flex; align-items: baseline; gap: 8px; }
.chorus-message__sender { font-weight: 600; font-size: 14px; }
.chorus-message__time { font-size: 12px; color: var(--chorus-muted); }
.chorus-message__content { margin: 2px 0 0; font-size: 14px; line-height: 1.45; white-space: pre-wrap; overflow-wrap: anywhere; }
.chorus-mention { color: var(--chorus-accent); font-weight: 600; }
.chorus-message__actions { opacity: 0; transition: opacity 0.1s; }
.chorus-message:hover .chorus-message__actions, .chorus-message:focus-within .chorus-message__actions { opacity: 1; }

.chorus-avatar {
  width: 34px; height: 34px; border-radius: 50%; flex: none; overflow: hidden; display: inline-flex;
  align-items: center; justify-content: center; font-size: 13px; font-weight: 600; color: #fff;
  background: var(--chorus-avatar-bg, #57606a); user-select: none;
}
.chorus-avatar img { width: 100%; height: 100%; object-fit: cover; }

.chorus-typing { min-height: 22px; padding: 0 14px; font-size: 13px; color: var(--chorus-muted); display: flex; align-items: center; gap: 6px; }
.chorus-typing__dots { display: inline-flex; gap: 3px; }
.chorus-typing__dots span {
  width: 5px; height: 5px; border-radius: 50%; background: var(--chorus-muted);
  animation: chorus-bounce 1.2s infinite ease-in-out;
}
.chorus-typing__dots span:nth-child(2) { animation-delay: 0.15s; }
.chorus-typing__dots span:nth-child(3) { animation-delay: 0.3s; }

.chorus-composer { display: flex; gap: 8px; padding: 10px 14px 12px; border-top: 1px solid var(--chorus-border); align-items: flex-end; }
.chorus-composer__input {
  flex: 1; resize: none; font: inherit; font-size: 14px; line-height: 20px; padding: 8px 10px; min-height: 38px; max-height: 140px;
  border: 1px solid var(--chorus-border); border-radius: calc(var(--chorus-radius) - 2px); color: var(--chorus-fg); background: var(--chorus-bg);
}
.chorus-composer > .chorus-button { height: 38px; }
.chorus-composer__input:focus { outline: none; border-color: var(--chorus-accent); box-shadow: var(--chorus-focus); }
.chorus-composer__error { padding: 0 14px 8px; font-size: 13px; color: var(--chorus-danger); }

/* dialogs */
.chorus-backdrop {
  position: absolute; inset: 0; background: rgba(15, 23, 42, 0.35); display: flex; align-items: center; justify-content: center; z-index: 10;
}
.chorus-dialog {
  background: var(--chorus-bg); color: var(--chorus-fg); border-radius: var(--chorus-radius); padding: 18px 20px;
  width: min(360px, 90%); box-shadow: 0 10px 30px rgba(0,0,0,0.2);
}
.chorus-dialog__title { margin: 0 0 6px; font-size: 16px; }
.chorus-dialog__text { margin: 0 0 16px; font-size: 14px; color: var(--chorus-muted); overflow-wrap: anywhere; }
.chorus-dialog__actions { display: flex; justify-content: flex-end; gap: 8px; }

/* notifications */
.chorus-notifications { position: relative; display: inline-block; }
.chorus-bell { position: relative; padding: 6px; }
.chorus-badge-count {
  position: absolute; top: -4px; right: -6px; pointer-events: none; min-width: 18px; height: 18px; padding: 0 5px; border-radius: 9px;
  background: var(--chorus-danger); color: #fff; font-size: 11px; font-weight: 700; line-height: 18px; text-align: center;
  box-shadow: 0 0 0 2px var(--chorus-bg);
}
.chorus-dropdown {
  position: absolute; right: 0; top: calc(100% + 6px); width: 360px; max-height: 480px; display: flex; flex-direction: column;
  background: var(--chorus-bg); border: 1px solid var(--chorus-border); border-radius: var(--chorus-radius);
  box-shadow: 0 10px 30px rgba(0,0,0,0.15); z-index: 20; text-align: left;
}
.chorus-dropdown__header { display: flex; align-items: center; justify-content: space-between; gap: 8px; padding: 10px 12px; border-bottom: 1px solid var(--chorus-border); }
.chorus-dropdown__title { margin: 0; font-size: 15px; font-weight: 600; }
.chorus-dropdown__list { list-style: none; margin: 0; padding: 0; overflow-y: auto; }
.chorus-dropdown__empty { padding: 24px 12px; text-align: center; color: var(--chorus-muted); font-size: 14px; }
.chorus-notification { display: flex; gap: 8px; padding: 10px 12px; border-bottom: 1px solid var(--chorus-border); }
.chorus-notification:last-child { border-bottom: 0; }
.chorus-notification[data-read="false"] { background: var(--chorus-own-bg); }
.chorus-notification__body { flex: 1; min-width: 0; }
.chorus-notification__top { display: flex; align-items: center; gap: 6px; }
.chorus-notification__title { font-weight: 600; font-size: 14px; overflow-wrap: anywhere; }
.chorus-notification__message { margin: 2px 0; font-size: 13px; overflow-wrap: anywhere; }
.chorus-notification__time { font-size: 12px; color: var(--chorus-muted); }
.chorus-notification__actions { display: flex; flex-direction: column; gap: 4px; align-items: flex-end; }
.chorus-notification__actions .chorus-button { padding: 2px 8px; font-size: 12px; }
.chorus-type {
  display: inline-block; font-size: 11px; font-weight: 600; text-transform: uppercase; letter-spacing: 0.03em;
  padding: 1px 6px; border-radius: 999px; background: var(--chorus-subtle-bg); color: var(--chorus-muted); border: 1px solid var(--chorus-border);
}
.chorus-type--mention { background: #ddf4ff; color: #0969da; border-color: #b6e3ff; }
.chorus-type--system { background: #fff8c5; color: #7d4e00; border-color: #eed888; }
.chorus-unread-dot { width: 8px; height: 8px; margin-top: 6px; border-radius: 50%; background: var(--chorus-accent); flex: none; }
.chorus-unread-dot--read { background: transparent; }

@keyframes chorus-bounce { 0%, 80%, 100% { transform: translateY(0); opacity: 0.5; } 40% { transform: translateY(-4px); opacity: 1; } }
@keyframes chorus-pulse { 0%, 100% { opacity: 1; } 50% { opacity: 0.35; } }
@media (prefers-reduced-motion: reduce) {
  .chorus-typing__dots span, .chorus-dot { animation: none !important; }
}
`;

const STYLE_ID = "chorus-styles";

/** Adds the default stylesheet to the document once (no-op without a DOM). */
export function injectChorusStyles(doc: Document | undefined = typeof document === "undefined" ? undefined : document): void {
  if (!doc || doc.getElementById(STYLE_ID)) return;
  const style = doc.createElement("style");
  style.id = STYLE_ID;
  style.textContent = chorusCss;
  // First in <head>, so that the app's own stylesheets override these rules.
  doc.head.insertBefore(style, doc.head.firstChild);
}
