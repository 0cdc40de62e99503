import { ChorusClient, type CommunityJson, type Message } from "@chorus/client";
import {
  Avatar,
  ChorusProvider,
  ConnectionDot,
  NotificationCenter,
  RealtimeChat,
  useConnectionState,
  useNotifications,
} from "@chorus/client/react";
import { useCallback, useEffect, useId, useMemo, useRef, useState, type FormEvent } from "react";
import { clearToken, readConfig, saveCommunity, saveToken, savedCommunity, takeInitialToken } from "./config";
import { decodeToken, isExpired, type TokenInfo } from "./jwt";

export function App() {
  const [token, setToken] = useState<string | null>(() => takeInitialToken());
  const [notice, setNotice] = useState<string | null>(null);
  const info = useMemo(() => (token ? decodeToken(token) : null), [token]);

  // A `#token=` put in the address bar of an open page (a same-document navigation) signs in too.
  useEffect(() => {
    const onHash = () => {
      if (!/(^#|&)token=/.test(window.location.hash)) return;
      const t = takeInitialToken();
      if (t) {
        setNotice(null);
        setToken(t);
      }
    };
    window.addEventListener("hashchange", onHash);
    return () => window.removeEventListener("hashchange", onHash);
  }, []);

  const signOut = useCallback((why?: string) => {
    clearToken();
    setToken(null);
    setNotice(why ?? null);
  }, []);

  if (!token || !info || info instanceof Error) {
    return (
      <SignIn
        notice={notice ?? (info instanceof Error ? `The stored token could not be read: ${info.message}` : null)}
        onSignIn={(t) => {
          saveToken(t);
          setNotice(null);
          setToken(t);
        }}
      />
    );
  }
  return <Session key={token} token={token} info={info} onSignOut={signOut} />;
}

// ---- sign in -------------------------------------------------------------------

function SignIn({ notice, onSignIn }: { notice: string | null; onSignIn: (token: string) => void }) {
  const [text, setText] = useState("");
  const [error, setError] = useState<string | null>(null);
  const fieldId = useId();
  const hintId = useId();

  const submit = (e: FormEvent) => {
    e.preventDefault();
    const token = text.trim();
    const info = decodeToken(token);
    if (info instanceof Error) {
      setError(info.message);
      return;
    }
    if (isExpired(info)) {
      setError("This token has expired. Make a new one.");
      return;
    }
    onSignIn(token);
  };

  return (
    <main className="signin">
      <form className="signin__card" onSubmit={submit} aria-labelledby="signin-title">
        <div className="brand brand--large">
          <span className="brand__mark" aria-hidden="true" />
          Chorus
        </div>
        <h1 id="signin-title" className="signin__title">
          Sign in
        </h1>
        {notice && (
          <p className="signin__notice" role="status">
            {notice}
          </p>
        )}
        <label htmlFor={fieldId} className="field-label">
          Token
        </label>
        <textarea
          id={fieldId}
          className="input signin__token"
          aria-describedby={hintId}
          aria-invalid={error ? true : undefined}
          rows={5}
          spellCheck={false}
          autoComplete="off"
          placeholder="eyJhbGciOiJIUzI1NiIs…"
          value={text}
          onChange={(e) => {
            setText(e.target.value);
            setError(null);
          }}
          autoFocus
        />
        <p id={hintId} className="hint">
          Paste a development JWT (HS256, signed with the server's <code>CHORUS_JWT_SECRET</code>), or open this page
          with <code>#token=…</code>. It is kept in this tab only.
        </p>
        {error && (
          <p className="form-error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" className="btn btn--primary" disabled={text.trim() === ""}>
          Sign in
        </button>
      </form>
    </main>
  );
}

// ---- signed in -----------------------------------------------------------------

function Session({ token, info, onSignOut }: { token: string; info: TokenInfo; onSignOut: (why?: string) => void }) {
  const [client, setClient] = useState<ChorusClient | null>(null);
  const signOutRef = useRef(onSignOut);
  signOutRef.current = onSignOut;

  useEffect(() => {
    const config = readConfig();
    const c = new ChorusClient({
      gatewayUrl: config.gatewayUrls.length === 1 ? config.gatewayUrls[0]! : config.gatewayUrls,
      apiUrl: config.apiUrl,
      token: ({ reason }) => {
        if (reason === "expired" && isExpired(info)) {
          // A development token cannot be renewed: back to the sign-in screen.
          queueMicrotask(() => signOutRef.current("Your token has expired. Paste a new one."));
        }
        return token;
      },
    });
    const offError = c.on("error", (err) => console.warn("[chorus]", err));
    c.connect();
    setClient(c);
    return () => {
      offError();
      c.close();
    };
  }, [token, info]);

  if (!client) return null;
  return (
    <ChorusProvider client={client}>
      <Shell client={client} info={info} onSignOut={onSignOut} />
    </ChorusProvider>
  );
}

const STATE_LABEL = {
  idle: "Offline",
  connecting: "Connecting…",
  open: "Connected",
  reconnecting: "Reconnecting…",
  closed: "Disconnected",
} as const;

function Shell({ client, info, onSignOut }: { client: ChorusClient; info: TokenInfo; onSignOut: (why?: string) => void }) {
  const state = useConnectionState();
  const { unreadCount } = useNotifications();
  useEffect(() => {
    document.title = unreadCount > 0 ? `(${unreadCount}) Chorus` : "Chorus";
  }, [unreadCount]);
  const [communities, setCommunities] = useState<CommunityJson[] | null>(null);
  const [listError, setListError] = useState<string | null>(null);
  const [selected, setSelected] = useState<string | null>(() => savedCommunity());

  const select = useCallback((id: string | null) => {
    setSelected(id);
    saveCommunity(id);
  }, []);

  const load = useCallback(async () => {
    setListError(null);
    try {
      const list = await client.api.listCommunities();
      setCommunities(list);
    } catch (err) {
      if (codeOf(err) === "unauthorized") {
        onSignOut("The server refused this token (expired, or signed with another secret).");
        return;
      }
      setListError(describe(err));
    }
  }, [client, onSignOut]);

  useEffect(() => {
    void load();
  }, [load]);

  const add = useCallback(
    (c: CommunityJson) => {
      setCommunities((list) => (list ? [...list.filter((x) => x.id !== c.id), c] : [c]));
      select(c.id);
    },
    [select],
  );

  const current = communities?.find((c) => c.id === selected) ?? null;
  const canDelete = useMemo(
    () => (info.role === "official" ? () => true : (m: Message) => m.sender.id === info.userId),
    [info],
  );

  return (
    <div className="app">
      <header className="topbar">
        <h1 className="brand">
          <span className="brand__mark" aria-hidden="true" />
          Chorus
        </h1>
        <div className="topbar__spacer" />
        <div className="conn" title={STATE_LABEL[state]}>
          <ConnectionDot />
          <span className="conn__text">{STATE_LABEL[state]}</span>
        </div>
        <NotificationCenter className="topbar__bell" />
        <div className="me" aria-label={`Signed in as ${info.name}`}>
          <Avatar id={info.userId} name={info.name} src={info.avatar} />
          <span className="me__text">
            <span className="me__name">{info.name}</span>
            <span className="me__id">
              @{info.userId}
              {info.role === "official" && <span className="role-badge">official</span>}
            </span>
          </span>
        </div>
        <button type="button" className="btn" onClick={() => onSignOut()}>
          Sign out
        </button>
      </header>

      <div className="layout">
        <aside className="sidebar" aria-label="Communities">
          <div className="sidebar__head">
            <h2 className="sidebar__title">Communities</h2>
            <button type="button" className="btn btn--small" onClick={() => void load()} aria-label="Refresh communities">
              Refresh
            </button>
          </div>
          {listError && (
            <p className="form-error" role="alert">
              {listError}
            </p>
          )}
          <CommunityList communities={communities} selected={selected} onSelect={select} />
          <CreateCommunity client={client} onCreated={add} />
          <JoinCommunity client={client} onJoined={add} />
        </aside>

        <main className="main">
          {selected ? (
            <>
              <div className="main__bar">
                <span className="main__label">Community ID</span>
                <code className="main__id" data-testid="community-id">
                  {selected}
                </code>
                <CopyButton text={selected} />
                {current && <span className="pill">{current.isPublic ? "public" : "private"}</span>}
              </div>
              <RealtimeChat
                communityId={selected}
                title={current?.name ?? "Community"}
                canDelete={canDelete}
                showConnection={false}
                placeholder={current ? `Message ${current.name} (@userId to mention)` : "Write a message (@userId to mention)"}
                className="main__chat"
              />
            </>
          ) : (
            <div className="empty">
              <h2>Welcome, {info.name}</h2>
              <p>Pick a community on the left, create one, or join a public one by its ID.</p>
            </div>
          )}
        </main>
      </div>
    </div>
  );
}

function CommunityList({
  communities,
  selected,
  onSelect,
}: {
  communities: CommunityJson[] | null;
  selected: string | null;
  onSelect: (id: string) => void;
}) {
  if (communities === null) return <p className="muted sidebar__pad">Loading…</p>;
  if (communities.length === 0) return <p className="muted sidebar__pad">You are not in any community yet.</p>;
  const sorted = [...communities].sort((a, b) => a.name.localeCompare(b.name));
  return (
    <nav aria-label="Your communities">
      <ul className="communities">
        {sorted.map((c) => (
          <li key={c.id}>
            <button
              type="button"
              className="community"
              aria-current={c.id === selected ? "page" : undefined}
              data-community-id={c.id}
              onClick={() => onSelect(c.id)}
            >
              <span className="community__hash" aria-hidden="true">
                #
              </span>
              <span className="community__name">{c.name}</span>
              {!c.isPublic && <span className="pill pill--small">private</span>}
            </button>
          </li>
        ))}
      </ul>
    </nav>
  );
}

function CreateCommunity({ client, onCreated }: { client: ChorusClient; onCreated: (c: CommunityJson) => void }) {
  const [name, setName] = useState("");
  const [isPublic, setIsPublic] = useState(true);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const nameId = useId();

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    const trimmed = name.trim();
    if (!trimmed) return;
    setBusy(true);
    setError(null);
    try {
      const c = await client.api.createCommunity(trimmed, isPublic);
      setName("");
      onCreated(c);
    } catch (err) {
      setError(describe(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <form className="side-form" onSubmit={submit} aria-labelledby={`${nameId}-title`}>
      <h3 id={`${nameId}-title`} className="side-form__title">
        New community
      </h3>
      <label htmlFor={nameId} className="sr-only">
        Community name
      </label>
      <div className="side-form__row">
        <input
          id={nameId}
          className="input"
          placeholder="Name"
          maxLength={100}
          value={name}
          onChange={(e) => setName(e.target.value)}
        />
        <button type="submit" className="btn btn--primary" disabled={busy || name.trim() === ""}>
          Create
        </button>
      </div>
      <label className="check">
        <input type="checkbox" checked={isPublic} onChange={(e) => setIsPublic(e.target.checked)} /> Public
      </label>
      {error && (
        <p className="form-error" role="alert">
          {error}
        </p>
      )}
    </form>
  );
}

function JoinCommunity({ client, onJoined }: { client: ChorusClient; onJoined: (c: CommunityJson) => void }) {
  const [id, setId] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const fieldId = useId();

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    const trimmed = id.trim();
    if (!trimmed) return;
    setBusy(true);
    setError(null);
    try {
      const c = await client.api.joinCommunity(trimmed);
      setId("");
      onJoined(c);
    } catch (err) {
      setError(
        codeOf(err) === "forbidden"
          ? "That community is private: ask its owner to add you."
          : codeOf(err) === "not_found"
            ? "No community has that ID."
            : describe(err),
      );
    } finally {
      setBusy(false);
    }
  };

  return (
    <form className="side-form" onSubmit={submit} aria-labelledby={`${fieldId}-title`}>
      <h3 id={`${fieldId}-title`} className="side-form__title">
        Join a public community
      </h3>
      <label htmlFor={fieldId} className="sr-only">
        Community ID
      </label>
      <div className="side-form__row">
        <input
          id={fieldId}
          className="input"
          placeholder="Community ID"
          spellCheck={false}
          autoComplete="off"
          value={id}
          onChange={(e) => setId(e.target.value)}
        />
        <button type="submit" className="btn" disabled={busy || id.trim() === ""}>
          Join
        </button>
      </div>
      {error && (
        <p className="form-error" role="alert">
          {error}
        </p>
      )}
    </form>
  );
}

function CopyButton({ text }: { text: string }) {
  const [copied, setCopied] = useState(false);
  useEffect(() => {
    if (!copied) return;
    const t = setTimeout(() => setCopied(false), 1500);
    return () => clearTimeout(t);
  }, [copied]);
  return (
    <button
      type="button"
      className="btn btn--small"
      onClick={() => {
        navigator.clipboard?.writeText(text).then(
          () => setCopied(true),
          () => {},
        );
      }}
    >
      {copied ? "Copied" : "Copy"}
    </button>
  );
}

// ---- helpers ---------------------------------------------------------------------

function codeOf(err: unknown): string | undefined {
  return typeof err === "object" && err !== null && "code" in err ? String((err as { code: unknown }).code) : undefined;
}

function describe(err: unknown): string {
  if (codeOf(err) === "rate_limited") return "Too many requests: try again in a moment.";
  if (err instanceof Error) return err.message;
  return String(err);
}
