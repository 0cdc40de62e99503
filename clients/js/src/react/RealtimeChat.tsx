import {
  useCallback,
  useEffect,
  useId,
  useLayoutEffect,
  useRef,
  useState,
  type ChangeEvent,
  type FormEvent,
  type KeyboardEvent,
  type ReactNode,
  type RefObject,
} from "react";
import type { Message } from "../index.js";
import { useChorus } from "./context.js";
import { useCommunity, useConnectionState, useUserId, type UseCommunityResult } from "./hooks.js";
import { Avatar, ConnectionDot, cx, formatTime, useDialogFocus } from "./parts.js";

export interface RealtimeChatProps {
  communityId: string;
  /** Heading of the chat (defaults to "Chat"). */
  title?: string;
  /** Which messages show a delete button; default: the user's own. */
  canDelete?: (m: Message) => boolean;
  className?: string;
  /** Show the connection dot in the chat's header (default true). */
  showConnection?: boolean;
  placeholder?: string;
  /** Idle time after the last keystroke before `setTyping(false)` (default 1000 ms). */
  typingIdleMs?: number;
  /** Which user ids a text mentions; default: every `@userId` word. */
  extractMentions?: (text: string) => string[];
}

const MENTION = /(^|[^A-Za-z0-9_.@-])@([A-Za-z0-9_.-]{1,64})/g;

/** The user ids named as `@userId` in a text, each once, in order. */
export function extractMentions(text: string): string[] {
  const out: string[] = [];
  for (const m of text.matchAll(MENTION)) {
    const id = m[2]!.replace(/\.+$/, ""); // "@bob." at the end of a sentence is bob
    if (id && !out.includes(id)) out.push(id);
  }
  return out;
}

/** Re-send `typing: true` while the user keeps typing, before receivers expire it (6 s). */
const TYPING_REFRESH_MS = 3000;

/** How close to the bottom (px) still counts as "at the newest message". */
const STICKY_PX = 48;

export function typingText(typing: { userId: string; name: string }[]): string {
  const names = typing.map((t) => t.name || t.userId);
  if (names.length === 0) return "";
  if (names.length === 1) return `${names[0]} is typing`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing`;
  if (names.length === 3) return `${names[0]}, ${names[1]} and ${names[2]} are typing`;
  return `${names[0]}, ${names[1]} and ${names.length - 2} others are typing`;
}

/** A live chat of one community: messages, typing indicator, composer, deletion with confirmation. */
export function RealtimeChat(props: RealtimeChatProps) {
  // Keyed: switching community starts with a fresh draft, scroll and dialog.
  return <ChatView key={props.communityId} {...props} />;
}

function ChatView({
  communityId,
  title,
  canDelete,
  className,
  showConnection = true,
  placeholder,
  typingIdleMs = 1000,
  extractMentions: mentionsOf = extractMentions,
}: RealtimeChatProps) {
  const client = useChorus();
  const chat = useCommunity(communityId);
  const liveUserId = useUserId();
  const userId = liveUserId ?? client.userId;
  const headingId = useId();
  const mayDelete = useCallback(
    (m: Message) => (canDelete ? canDelete(m) : userId !== null && m.sender.id === userId),
    [canDelete, userId],
  );

  const composerRef = useRef<HTMLTextAreaElement>(null);
  const [confirm, setConfirm] = useState<Message | null>(null);
  const openerRef = useRef<HTMLElement | null>(null);

  // The message went away (deleted elsewhere) while its confirmation was open.
  useEffect(() => {
    if (confirm && !chat.messages.some((m) => m.id === confirm.id)) setConfirm(null);
  }, [confirm, chat.messages]);

  const askDelete = useCallback((m: Message, opener: HTMLElement) => {
    openerRef.current = opener;
    setConfirm(m);
  }, []);

  return (
    <section className={cx("chorus-root", "chorus-chat", className)} aria-labelledby={headingId}>
      <header className="chorus-chat__header">
        <h2 id={headingId} className="chorus-chat__title">
          {title ?? "Chat"}
        </h2>
        {chat.joined && chat.online.length > 0 && (
          <span className="chorus-chat__online">{chat.online.length} online</span>
        )}
        {showConnection && <ConnectionDot />}
      </header>

      <MessageLog chat={chat} userId={userId} mayDelete={mayDelete} onDelete={askDelete} />

      <TypingIndicator typing={chat.typing} />

      <Composer
        chat={chat}
        inputRef={composerRef}
        placeholder={placeholder ?? (title ? `Message ${title}` : "Write a message")}
        typingIdleMs={typingIdleMs}
        mentionsOf={mentionsOf}
        disabled={chat.revoked}
      />

      {confirm && (
        <ConfirmDelete
          message={confirm}
          onCancel={() => setConfirm(null)}
          onConfirm={() => chat.deleteMessage(confirm.id)}
          onDone={() => setConfirm(null)}
          returnTo={() => {
            const opener = openerRef.current;
            return opener && opener.isConnected ? opener : composerRef.current;
          }}
        />
      )}
    </section>
  );
}

// ---- message list -------------------------------------------------------------

function MessageLog({
  chat,
  userId,
  mayDelete,
  onDelete,
}: {
  chat: UseCommunityResult;
  userId: string | null;
  mayDelete: (m: Message) => boolean;
  onDelete: (m: Message, opener: HTMLElement) => void;
}) {
  const connection = useConnectionState();
  const logRef = useRef<HTMLDivElement>(null);
  const stickRef = useRef(true); // follow the newest message
  const anchorRef = useRef<{ height: number; top: number } | null>(null);
  const edgesRef = useRef<{ first?: string; last?: string }>({});
  const [unseen, setUnseen] = useState(false);
  const [loadingOlder, setLoadingOlder] = useState(false);
  const messages = chat.messages;

  const onScroll = () => {
    const el = logRef.current;
    if (!el) return;
    const atBottom = el.scrollHeight - el.scrollTop - el.clientHeight <= STICKY_PX;
    stickRef.current = atBottom;
    if (atBottom) setUnseen(false);
  };

  const scrollToBottom = () => {
    const el = logRef.current;
    if (el) el.scrollTop = el.scrollHeight;
    stickRef.current = true;
    setUnseen(false);
  };

  useLayoutEffect(() => {
    const el = logRef.current;
    const first = messages[0]?.id;
    const last = messages[messages.length - 1]?.id;
    const prev = edgesRef.current;
    edgesRef.current = { first, last };
    if (!el) return;
    if (anchorRef.current && first !== prev.first && last === prev.last) {
      // Older messages were put above: keep the same message under the user's eyes.
      el.scrollTop = anchorRef.current.top + (el.scrollHeight - anchorRef.current.height);
      anchorRef.current = null;
      return;
    }
    if (last === prev.last) return;
    const newest = messages[messages.length - 1];
    if (stickRef.current || prev.last === undefined || (newest && userId !== null && newest.sender.id === userId)) {
      el.scrollTop = el.scrollHeight;
      stickRef.current = true;
    } else {
      setUnseen(true);
    }
  }, [messages, userId]);

  const loadOlder = async () => {
    const el = logRef.current;
    if (el) anchorRef.current = { height: el.scrollHeight, top: el.scrollTop };
    setLoadingOlder(true);
    try {
      await chat.loadOlder();
    } catch {
      anchorRef.current = null;
    } finally {
      setLoadingOlder(false);
    }
  };

  let status: ReactNode = null;
  if (chat.revoked) {
    status = <div className="chorus-chat__status chorus-chat__status--error" role="alert">You are no longer a member of this community.</div>;
  } else if (chat.error) {
    status = (
      <div className="chorus-chat__status chorus-chat__status--error" role="alert">
        Could not join: {chat.error.message}{" "}
        <button type="button" className="chorus-button" onClick={chat.retry}>
          Retry
        </button>
      </div>
    );
  } else if (!chat.joined) {
    status = (
      <div className="chorus-chat__status" role="status">
        {connection === "open" ? "Joining…" : connection === "reconnecting" ? "Reconnecting…" : "Connecting…"}
      </div>
    );
  }

  return (
    <>
      {status}
      <div
        ref={logRef}
        className="chorus-chat__log"
        role="log"
        aria-label="Messages"
        aria-live="polite"
        aria-relevant="additions"
        tabIndex={0}
        onScroll={onScroll}
      >
        {chat.hasOlder && messages.length > 0 && (
          <div className="chorus-chat__older">
            <button type="button" className="chorus-button" onClick={loadOlder} disabled={loadingOlder}>
              {loadingOlder ? "Loading…" : "Load older messages"}
            </button>
          </div>
        )}
        {chat.joined && messages.length === 0 && <div className="chorus-chat__empty">No messages yet. Say hello!</div>}
        {messages.map((m) => (
          <MessageItem key={m.id} message={m} own={userId !== null && m.sender.id === userId} deletable={mayDelete(m)} onDelete={onDelete} />
        ))}
      </div>
      {unseen && (
        <button type="button" className="chorus-button chorus-button--primary chorus-chat__jump" onClick={scrollToBottom}>
          New messages ↓
        </button>
      )}
    </>
  );
}

function renderContent(content: string, mentions: string[]): ReactNode[] {
  const parts: ReactNode[] = [];
  let last = 0;
  for (const m of content.matchAll(MENTION)) {
    const start = m.index! + m[1]!.length;
    const id = m[2]!.replace(/\.+$/, "");
    if (!mentions.includes(id)) continue;
    if (start > last) parts.push(content.slice(last, start));
    parts.push(
      <span key={start} className="chorus-mention">
        @{id}
      </span>,
    );
    last = start + 1 + id.length;
  }
  if (last < content.length) parts.push(content.slice(last));
  return parts;
}

function MessageItem({
  message: m,
  own,
  deletable,
  onDelete,
}: {
  message: Message;
  own: boolean;
  deletable: boolean;
  onDelete: (m: Message, opener: HTMLElement) => void;
}) {
  const name = m.sender.name || m.sender.id;
  return (
    <div
      className={cx("chorus-message", own && "chorus-message--own")}
      data-testid="message"
      data-seq={m.seq}
      data-message-id={m.id}
    >
      <Avatar id={m.sender.id} name={name} src={m.sender.avatar} />
      <div className="chorus-message__body">
        <div className="chorus-message__meta">
          <span className="chorus-message__sender">{name}</span>
          <time className="chorus-message__time" dateTime={m.createdAt}>
            {formatTime(m.createdAt)}
          </time>
        </div>
        <p className="chorus-message__content">{renderContent(m.content, m.mentions ?? [])}</p>
      </div>
      {deletable && (
        <div className="chorus-message__actions">
          <button
            type="button"
            className="chorus-icon-button"
            aria-label="Delete message"
            title="Delete message"
            onClick={(e) => onDelete(m, e.currentTarget)}
          >
            <TrashIcon />
          </button>
        </div>
      )}
    </div>
  );
}

function TrashIcon() {
  return (
    <svg width="16" height="16" viewBox="0 0 16 16" aria-hidden="true" focusable="false">
      <path
        fill="currentColor"
        d="M6 1.5h4a.5.5 0 0 1 .5.5v1H13a.5.5 0 0 1 0 1h-.55l-.7 9.1A1.5 1.5 0 0 1 10.25 14.5h-4.5a1.5 1.5 0 0 1-1.5-1.4L3.55 4H3a.5.5 0 0 1 0-1h2.5V2a.5.5 0 0 1 .5-.5Zm.5 1.5h3v-.5h-3V3ZM4.55 4l.7 9.03a.5.5 0 0 0 .5.47h4.5a.5.5 0 0 0 .5-.47L11.45 4h-6.9Z"
      />
    </svg>
  );
}

// ---- typing indicator ---------------------------------------------------------

function TypingIndicator({ typing }: { typing: { userId: string; name: string }[] }) {
  const text = typingText(typing);
  // Always present (a live region must exist before its content changes), empty when nobody types.
  return (
    <div className="chorus-typing" data-testid="typing-indicator" aria-live="polite" aria-atomic="true">
      {text && (
        <>
          <span className="chorus-typing__dots" aria-hidden="true">
            <span />
            <span />
            <span />
          </span>
          <span>{text}</span>
        </>
      )}
    </div>
  );
}

// ---- composer -------------------------------------------------------------------

function Composer({
  chat,
  inputRef,
  placeholder,
  typingIdleMs,
  mentionsOf,
  disabled,
}: {
  chat: UseCommunityResult;
  inputRef: RefObject<HTMLTextAreaElement | null>;
  placeholder: string;
  typingIdleMs: number;
  mentionsOf: (text: string) => string[];
  disabled: boolean;
}) {
  const [draft, setDraft] = useState("");
  const [error, setError] = useState<string | null>(null);
  const typing = useRef<{ active: boolean; lastTrueAt: number; timer: ReturnType<typeof setTimeout> | null }>({
    active: false,
    lastTrueAt: 0,
    timer: null,
  });
  const setTypingRef = useRef(chat.setTyping);
  setTypingRef.current = chat.setTyping;
  const errorId = useId();

  const stopTyping = useCallback(() => {
    const t = typing.current;
    if (t.timer !== null) {
      clearTimeout(t.timer);
      t.timer = null;
    }
    if (t.active) {
      t.active = false;
      setTypingRef.current(false);
    }
  }, []);

  const keystroke = useCallback(
    (text: string) => {
      if (text.trim() === "") {
        stopTyping();
        return;
      }
      const t = typing.current;
      const now = Date.now();
      if (!t.active || now - t.lastTrueAt >= TYPING_REFRESH_MS) {
        t.active = true;
        t.lastTrueAt = now;
        setTypingRef.current(true);
      }
      if (t.timer !== null) clearTimeout(t.timer);
      t.timer = setTimeout(stopTyping, typingIdleMs);
    },
    [stopTyping, typingIdleMs],
  );

  useEffect(() => stopTyping, [stopTyping]);

  const autoSize = (el: HTMLTextAreaElement) => {
    el.style.height = "auto";
    if (el.scrollHeight > 0) el.style.height = `${el.scrollHeight + 2}px`;
  };

  const onChange = (e: ChangeEvent<HTMLTextAreaElement>) => {
    setDraft(e.target.value);
    if (error) setError(null);
    autoSize(e.target);
    keystroke(e.target.value);
  };

  const send = () => {
    const content = draft.trim();
    stopTyping();
    if (!content) return;
    setDraft("");
    if (inputRef.current) {
      inputRef.current.style.height = "";
    }
    chat.sendMessage(content, mentionsOf(content)).catch((err: unknown) => {
      setError(`Not sent: ${err instanceof Error ? err.message : String(err)}`);
      // Give the text back unless the user already wrote something else.
      setDraft((current) => (current === "" ? content : current));
    });
  };

  const onSubmit = (e: FormEvent) => {
    e.preventDefault();
    send();
  };

  const onKeyDown = (e: KeyboardEvent<HTMLTextAreaElement>) => {
    if (e.key === "Enter" && !e.shiftKey && !e.altKey && !e.nativeEvent.isComposing) {
      e.preventDefault();
      send();
    }
  };

  return (
    <>
      {error && (
        <div className="chorus-composer__error" id={errorId} role="alert">
          {error}
        </div>
      )}
      <form className="chorus-composer" onSubmit={onSubmit}>
        <textarea
          ref={inputRef}
          className="chorus-composer__input"
          aria-label="Message"
          aria-describedby={error ? errorId : undefined}
          placeholder={placeholder}
          rows={1}
          value={draft}
          disabled={disabled}
          onChange={onChange}
          onKeyDown={onKeyDown}
          onBlur={stopTyping}
        />
        <button type="submit" className="chorus-button chorus-button--primary" disabled={disabled || draft.trim() === ""}>
          Send
        </button>
      </form>
    </>
  );
}

// ---- delete confirmation ----------------------------------------------------------

function ConfirmDelete({
  message,
  onCancel,
  onConfirm,
  onDone,
  returnTo,
}: {
  message: Message;
  onCancel: () => void;
  onConfirm: () => Promise<void>;
  onDone: () => void;
  returnTo: () => HTMLElement | null;
}) {
  const dialogRef = useRef<HTMLDivElement>(null);
  const cancelRef = useRef<HTMLButtonElement>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const titleId = useId();
  const textId = useId();
  useDialogFocus(true, dialogRef, () => !busy && onCancel(), { initialRef: cancelRef, returnTo, trap: true });

  const preview = message.content.length > 120 ? `${message.content.slice(0, 120)}…` : message.content;

  const confirm = async () => {
    setBusy(true);
    setError(null);
    try {
      await onConfirm();
      onDone();
    } catch (err) {
      setBusy(false);
      setError(err instanceof Error ? err.message : String(err));
    }
  };

  return (
    <div className="chorus-backdrop" onMouseDown={(e) => e.target === e.currentTarget && !busy && onCancel()}>
      <div
        ref={dialogRef}
        className="chorus-dialog"
        role="dialog"
        aria-modal="true"
        aria-labelledby={titleId}
        aria-describedby={textId}
      >
        <h3 id={titleId} className="chorus-dialog__title">
          Delete message?
        </h3>
        <p id={textId} className="chorus-dialog__text">
          “{preview}” will be deleted for everyone.
        </p>
        {error && (
          <p className="chorus-chat__status--error" role="alert">
            Could not delete: {error}
          </p>
        )}
        <div className="chorus-dialog__actions">
          <button ref={cancelRef} type="button" className="chorus-button" onClick={onCancel} disabled={busy}>
            Cancel
          </button>
          <button type="button" className="chorus-button chorus-button--danger" onClick={confirm} disabled={busy}>
            Delete
          </button>
        </div>
      </div>
    </div>
  );
}
