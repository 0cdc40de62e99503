-- Message creation in one statement (issues 11 and 14): the common post
-- (no mentions) was six round trips and a transaction of five statements;
-- `chorus_post_message` does the same work server-side, called as a single
-- autocommit statement, so a post is one round trip and one commit.
--
-- The order and the locking are those of the multi-statement path
-- (`create_message` in api/src/store/postgres/messages.rs), which mentions
-- still take:
-- 1. the community row lock and the next seq (`update ... returning`);
-- 2. the sender's membership, checked under that lock. A volatile
--    plpgsql function takes a fresh snapshot for each statement, so this
--    check sees a removal that committed while we waited for the lock
--    (`remove_member` takes the same lock before deleting): a removed
--    member never posts after the removal;
-- 3. the message and its outbox row. The caller encodes the envelope with
--    a placeholder seq and sends it cut at the placeholders (`p_payload`);
--    the seq is spliced in as a MessagePack uint64 (0xcf and eight bytes,
--    big-endian, what `int8send` gives);
-- 4. with an `Idempotency-Key`, its record, completed (201 and the
--    response body, `p_body` joined with the seq). A key that already has
--    a record raises CH409 and the caller takes the full idempotency path
--    (replay, conflict, or in flight).
-- Refusals raise, so the whole statement rolls back and gives its seq
-- back: CH404 unknown community, CH403 sender not a member.
create function chorus_post_message(
    p_id           uuid,
    p_community_id uuid,
    p_sender_id    text,
    p_content      text,
    p_created_at   timestamptz,
    p_channel      text,
    p_payload      bytea[],
    p_key          text,
    p_request_hash bytea,
    p_body         text[]
) returns bigint
language plpgsql
as $$
declare
    v_seq     bigint;
    v_seq_mp  bytea;
    v_payload bytea;
begin
    update communities set head_seq = head_seq + 1 where id = p_community_id
        returning head_seq into v_seq;
    if not found then
        raise exception 'community not found' using errcode = 'CH404';
    end if;
    perform 1 from community_members where community_id = p_community_id and user_id = p_sender_id;
    if not found then
        raise exception 'only members can post in this community' using errcode = 'CH403';
    end if;
    insert into messages (id, community_id, seq, sender_id, content, created_at)
        values (p_id, p_community_id, v_seq, p_sender_id, p_content, p_created_at);
    v_seq_mp := '\xcf'::bytea || int8send(v_seq);
    v_payload := p_payload[1];
    for i in 2 .. cardinality(p_payload) loop
        v_payload := v_payload || v_seq_mp || p_payload[i];
    end loop;
    insert into outbox (channel, payload) values (p_channel, v_payload);
    if p_key is not null then
        insert into idempotency_keys (user_id, key, request_hash, status, body)
            values (p_sender_id, p_key, p_request_hash, 201, array_to_string(p_body, v_seq::text))
            on conflict (user_id, key) do nothing;
        if not found then
            raise exception 'idempotency key already recorded' using errcode = 'CH409';
        end if;
    end if;
    return v_seq;
end;
$$;

-- The publisher now deletes the rows it published instead of marking them
-- (no second row version, nothing left for a purge); rows marked by
-- earlier versions go now.
delete from outbox where published_at is not null;
