-- Message creation in batches (issues 11 and 14): the common post (no
-- mentions) was six round trips and a transaction of five statements, one
-- commit each. `chorus_post_messages` creates a batch of posts, called as
-- one autocommit statement by the API's post writer, so concurrent posts
-- share one round trip and one commit (one WAL flush).
--
-- For each post, in the order given (the caller sorts the batch by
-- community, which keeps every community's posts in arrival order and
-- makes all batches take community locks in the same order, so two
-- batches cannot deadlock), the order and locking of the multi-statement
-- path (`create_message` in api/src/store/postgres/messages.rs, which
-- posts with mentions still take):
-- 1. the community row lock (`for no key update`, the lock `remove_member`
--    takes before deleting);
-- 2. the sender's membership, checked under that lock. A volatile plpgsql
--    function takes a fresh snapshot for each statement, so this check
--    sees a removal that committed while we waited for the lock: a
--    removed member never posts after the removal;
-- 3. the next seq; the lock is held to the batch's commit, so seqs are
--    gap-free and committed in order;
-- 4. with an `Idempotency-Key`, its record, completed (201 and the
--    response body: head, seq, tail). A key that already has a record
--    gives the seq back (we still hold the lock, nobody took a later one)
--    and the caller takes the full idempotency path (replay, conflict, or
--    in flight); a key another batch is creating at this moment (its
--    transaction-level advisory lock on (user, key) is taken) is in
--    flight: -423, answered 409;
-- 5. the message and its outbox row. The caller encodes the envelope with
--    a placeholder seq and sends it cut at its two occurrences (head, mid,
--    tail); the seq goes in as a MessagePack uint64 (0xcf and eight bytes,
--    big-endian, what `int8send` gives).
-- The result has one entry per post: its seq, or -404 (unknown
-- community), -403 (sender not a member), -409 (key already recorded), for
-- which nothing was written.
create function chorus_post_messages(
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
    p_body_tails     text[]
) returns bigint[]
language plpgsql
as $$
declare
    v_out    bigint[] := '{}';
    v_seq    bigint;
    v_seq_mp bytea;
begin
    for i in 1 .. cardinality(p_ids) loop
        perform 1 from communities where id = p_community_ids[i] for no key update;
        if not found then
            v_out := v_out || -404::bigint;
            continue;
        end if;
        perform 1 from community_members
            where community_id = p_community_ids[i] and user_id = p_sender_ids[i];
        if not found then
            v_out := v_out || -403::bigint;
            continue;
        end if;
        update communities set head_seq = head_seq + 1 where id = p_community_ids[i]
            returning head_seq into v_seq;
        if p_keys[i] is not null then
            -- The same key being created by another batch right now: that
            -- request is in flight, which the contract answers with 409
            -- (instead of waiting here for its commit and replaying it).
            if not pg_try_advisory_xact_lock(hashtext(p_sender_ids[i]), hashtext(p_keys[i])) then
                update communities set head_seq = head_seq - 1 where id = p_community_ids[i];
                v_out := v_out || -423::bigint;
                continue;
            end if;
            insert into idempotency_keys (user_id, key, request_hash, status, body)
                values (p_sender_ids[i], p_keys[i], p_request_hashes[i], 201,
                        p_body_heads[i] || v_seq || p_body_tails[i])
                on conflict (user_id, key) do nothing;
            if not found then
                update communities set head_seq = head_seq - 1 where id = p_community_ids[i];
                v_out := v_out || -409::bigint;
                continue;
            end if;
        end if;
        insert into messages (id, community_id, seq, sender_id, content, created_at)
            values (p_ids[i], p_community_ids[i], v_seq, p_sender_ids[i], p_contents[i], p_created_at[i]);
        v_seq_mp := '\xcf'::bytea || int8send(v_seq);
        insert into outbox (channel, payload)
            values (p_channels[i],
                    p_payload_heads[i] || v_seq_mp || p_payload_mids[i] || v_seq_mp || p_payload_tails[i]);
        v_out := v_out || v_seq;
    end loop;
    return v_out;
end;
$$;
