-- Chorus initial schema. Migrations are append-only: never edit a released
-- file, add a new one.

-- Users are known from the tokens they present (or from being added to a
-- community by id). Profiles are refreshed from token claims.
create table users (
    id         text primary key,
    name       text not null,
    avatar     text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

-- head_seq is the community's event sequence: every message creation and
-- deletion takes head_seq + 1 inside its transaction, so the row lock
-- serializes writers per community and committed seqs have no gaps.
create table communities (
    id         uuid primary key,
    name       text not null,
    is_public  boolean not null default true,
    created_by text not null references users (id),
    created_at timestamptz not null default now(),
    head_seq   bigint not null default 0
);

create table community_members (
    community_id uuid not null references communities (id) on delete cascade,
    user_id      text not null references users (id),
    role         text not null check (role in ('owner', 'member')),
    joined_at    timestamptz not null default now(),
    primary key (community_id, user_id)
);

-- "Which communities do I belong to?"
create index community_members_by_user on community_members (user_id);

-- A message takes seq at creation and deleted_seq at deletion; both are
-- positions in the community's sequence. The unique (community_id, seq)
-- index also serves keyset pagination of history.
create table messages (
    id           uuid primary key,
    community_id uuid not null references communities (id) on delete cascade,
    seq          bigint not null,
    sender_id    text not null references users (id),
    content      text not null,
    mentions     text[] not null default '{}',
    created_at   timestamptz not null default now(),
    deleted_at   timestamptz,
    deleted_seq  bigint,
    unique (community_id, seq)
);

-- Deletions are events too: backfill reads them by their seq.
create unique index messages_by_deleted_seq on messages (community_id, deleted_seq)
    where deleted_seq is not null;

-- Notification ids are UUIDv7, so ordering by id is ordering by creation
-- time and the id itself is the pagination cursor.
create table notifications (
    id         uuid primary key,
    user_id    text not null references users (id),
    type       text not null,
    title      text not null,
    message    text not null,
    data       jsonb not null default '{}',
    read       boolean not null default false,
    created_at timestamptz not null default now()
);

create index notifications_by_user on notifications (user_id, id desc);
create index notifications_unread_by_user on notifications (user_id) where not read;

-- Idempotency-Key records for message POSTs. status is null while the first
-- request is in flight; then status/body hold the response to replay.
create table idempotency_keys (
    user_id      text not null,
    key          text not null,
    request_hash bytea not null,
    status       smallint,
    body         text,
    created_at   timestamptz not null default now(),
    primary key (user_id, key)
);

create index idempotency_keys_by_age on idempotency_keys (created_at);

-- Transactional outbox: events are written in the same transaction as the
-- change they describe and published to Redis afterwards, in id order.
-- Within a community, id order is seq order because both are taken under
-- the community row lock.
create table outbox (
    id           bigserial primary key,
    channel      text not null,
    payload      bytea not null,
    created_at   timestamptz not null default now(),
    published_at timestamptz
);

create index outbox_unpublished on outbox (id) where published_at is null;
