-- The post function can no longer be planned at every post, and runs
-- fewer statements per post (issues 11 and 14). PL/pgSQL keeps a plan for
-- each statement, but Postgres's plan cache plans a statement again at
-- every call while a custom plan (made for the call's arguments) looks
-- cheaper than the generic one, a choice it makes from a session's first
-- calls. The statement that marked the events the writers published
-- (`id = any(p_published)` in a locking subquery joined to the update)
-- could go either way. Measured with pg_stat_statements (track_planning)
-- on Postgres 15, posts of one message at 500 a second: in sessions
-- driven by pgbench it was planned at 14,035 of 15,120 calls, 115 µs of
-- planning each, out of about 400 µs for the whole function; in the API's
-- own two sessions, 12 times in 9,928 calls.
--
-- Forcing generic plans instead (`plan_cache_mode`) is not safe here: the
-- first call of a session makes them, possibly on an empty outbox, and the
-- generic plan of that statement then ran at 160 to 320 µs per call. Now
-- each published id is marked by its own statement, on the primary key:
-- its generic plan is right whatever the table's size, and is made once
-- per session, whatever the first calls were. The pgbench run: 42 µs of
-- execution per call, no planning.
--
-- Each statement also costs its own executor start and end, which a
-- profile showed as a quarter of the function's time. A post now runs
-- three statements, where it ran six (a community's first post in a
-- batch) or five, with the same lock modes, lock order and outcomes:
-- - the community's row lock is taken by the update that takes the seq,
--   given back on a refusal, as a refused `Idempotency-Key` already did
--   (a non-member's post, which only locked the row, now also writes it
--   twice: refusals are rare);
-- - membership and the channel's unpublished events are checked in one
--   statement, after the lock's (so its snapshot sees every commit before
--   the lock was granted: a removal, an earlier event);
-- - the message and its outbox row are inserted by one statement.
--
-- The rest of the function is unchanged from
-- `20261205000002_posts_publish_themselves.sql`, which explains it.

create or replace function chorus_post_messages_direct(
    p_published      bigint[],
    p_ids            uuid[],
    p_community_ids  uuid[],
    p_sender_ids     text[],
    p_contents       text[],
    p_created_at     timestamptz[],
    p_channels       text[],
    p_payload_heads  bytea[],
    p_payload_mids   bytea[],
    p_payload_tails  bytea[],
    p_keys           text[],
    p_request_hashes bytea[],
    p_body_heads     text[],
    p_body_tails     text[],
    out seqs         bigint[],
    out outbox_ids   bigint[],
    out clean        boolean[]
)
language plpgsql
as $$
declare
    v_seq       bigint;
    v_seq_mp    bytea;
    v_id        bigint;
    v_refusal   bigint;
    v_community uuid;
    v_clean     boolean := false;
    v_mark      bigint;
    v_member    boolean;
begin
    seqs := '{}';
    outbox_ids := '{}';
    clean := '{}';
    -- One row at a time, by key, so that the plan is the generic one. A
    -- row another session holds is skipped, and one it marked already
    -- (another replica's publisher publishing it again) is left as it is.
    foreach v_mark in array coalesce(p_published, '{}') loop
        update outbox set published_at = now()
            where id = (select id from outbox
                        where id = v_mark and published_at is null
                        for update skip locked);
    end loop;
    for i in 1 .. cardinality(p_ids) loop
        -- Each post leaves the block with its seq, or a refusal code and
        -- nothing written (`v_id` stays 0); one entry per post is appended
        -- after it.
        v_id := 0;
        v_refusal := null;
        <<post>>
        begin
            -- The community's row lock and the post's seq in one statement
            -- (the seq is given back below if the post is refused: nobody
            -- took a later one, we hold the lock).
            update communities set head_seq = head_seq + 1 where id = p_community_ids[i]
                returning head_seq into v_seq;
            if not found then
                v_seq := -404;
                exit post;
            end if;
            -- A statement after the lock's: its snapshot sees every commit
            -- before it (a removal, an earlier event of the channel).
            -- Clean is checked once per community, at its first post in
            -- the batch; the batch's later posts of it follow that one.
            select exists (select 1 from community_members
                           where community_id = p_community_ids[i] and user_id = p_sender_ids[i]),
                   case when v_community is distinct from p_community_ids[i]
                        then not exists (select 1 from outbox
                                         where published_at is null and channel = p_channels[i])
                        else v_clean end
                into v_member, v_clean;
            v_community := p_community_ids[i];
            if not v_member then
                v_refusal := -403;
            elsif p_keys[i] is not null then
                if not pg_try_advisory_xact_lock(hashtext(p_sender_ids[i]), hashtext(p_keys[i])) then
                    v_refusal := -423;
                else
                    insert into idempotency_keys (user_id, key, request_hash, status, body)
                        values (p_sender_ids[i], p_keys[i], p_request_hashes[i], 201,
                                p_body_heads[i] || v_seq || p_body_tails[i])
                        on conflict (user_id, key) do nothing;
                    if not found then
                        v_refusal := -409;
                    end if;
                end if;
            end if;
            if v_refusal is not null then
                update communities set head_seq = head_seq - 1 where id = p_community_ids[i];
                v_seq := v_refusal;
                exit post;
            end if;
            v_seq_mp := '\xcf'::bytea || int8send(v_seq);
            with message as (
                insert into messages (id, community_id, seq, sender_id, content, created_at)
                    values (p_ids[i], p_community_ids[i], v_seq, p_sender_ids[i], p_contents[i], p_created_at[i]))
            insert into outbox (channel, payload)
                values (p_channels[i],
                        p_payload_heads[i] || v_seq_mp || p_payload_mids[i] || v_seq_mp || p_payload_tails[i])
                returning id into v_id;
        end;
        seqs := seqs || v_seq;
        outbox_ids := outbox_ids || v_id;
        clean := clean || (v_id > 0 and v_clean);
    end loop;
end;
$$;
