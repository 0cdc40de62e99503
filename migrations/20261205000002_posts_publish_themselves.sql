-- Posts that publish themselves (issues 11 and 14). The outbox publisher
-- used to read back every post the writer had just committed, publish it
-- and mark it: two more statements and a task wake-up per batch, and a
-- Postgres round trip between the commit and the publication. Now the
-- post writer publishes a batch's events itself, from memory, right after
-- the commit, when that keeps each channel in order; the outbox row is
-- still written in the same transaction and stays the guarantee: if the
-- writer's publication fails or the API dies first, the publisher finds
-- the row unpublished and publishes it, as before.
--
-- When may a writer publish an event itself? Only when everything earlier
-- on its channel is already in Redis, that is, marked published (a mark
-- is only ever written after Redis accepted the event). The community row
-- lock orders a community's writers, so once we hold it every earlier
-- event of the channel is committed; `clean` says none of them is
-- unpublished (the previous migration's index on `channel`). Later events of the channel then cannot overtake ours:
-- they find ours unpublished until it is marked, and go through the
-- publisher, which waits for the writers' publications in flight.
--
-- `chorus_post_messages_direct` is `chorus_post_messages` with, in
-- addition:
-- - `p_published`: outbox ids the writers published in earlier batches,
--   marked here, in the same commit (no statement of their own). Rows
--   another session is marking right now (another replica's publisher
--   publishing them again) are skipped, not waited for: their marks come
--   from that session, and two sessions locking the same rows in
--   different orders could otherwise deadlock, failing the batch;
-- - for each post, its outbox row's id and whether it is clean (checked
--   once per community, at its first post in the batch, under the lock;
--   the batch's later posts of that community follow it).
-- `chorus_post_messages` stays for API processes of the previous version
-- during a rolling upgrade.

create function chorus_post_messages_direct(
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
begin
    seqs := '{}';
    outbox_ids := '{}';
    clean := '{}';
    if cardinality(p_published) > 0 then
        update outbox set published_at = now()
            where id in (select id from outbox
                         where id = any(p_published) and published_at is null
                         for update skip locked);
    end if;
    for i in 1 .. cardinality(p_ids) loop
        -- Each post leaves the block with its seq, or a refusal code and
        -- nothing written (`v_id` stays 0); one entry per post is appended
        -- after it.
        v_id := 0;
        v_refusal := null;
        <<post>>
        begin
            perform 1 from communities where id = p_community_ids[i] for no key update;
            if not found then
                v_seq := -404;
                exit post;
            end if;
            if v_community is distinct from p_community_ids[i] then
                v_community := p_community_ids[i];
                v_clean := not exists (
                    select 1 from outbox where published_at is null and channel = p_channels[i]);
            end if;
            perform 1 from community_members
                where community_id = p_community_ids[i] and user_id = p_sender_ids[i];
            if not found then
                v_seq := -403;
                exit post;
            end if;
            update communities set head_seq = head_seq + 1 where id = p_community_ids[i]
                returning head_seq into v_seq;
            if p_keys[i] is not null then
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
                if v_refusal is not null then
                    -- The seq goes back: nobody took a later one, we hold the lock.
                    update communities set head_seq = head_seq - 1 where id = p_community_ids[i];
                    v_seq := v_refusal;
                    exit post;
                end if;
            end if;
            insert into messages (id, community_id, seq, sender_id, content, created_at)
                values (p_ids[i], p_community_ids[i], v_seq, p_sender_ids[i], p_contents[i], p_created_at[i]);
            v_seq_mp := '\xcf'::bytea || int8send(v_seq);
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
