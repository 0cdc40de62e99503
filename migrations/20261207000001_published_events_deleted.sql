-- Published outbox rows are deleted, not marked (issues 11 and 14). A mark
-- was an update of `published_at`, a column the partial indexes' predicates
-- name, so it could never be a HOT update: each post's event was written
-- twice more after its insert (a new version of the row, payload and all,
-- with a new primary-key entry, then the retention purge's delete an hour
-- later), for rows nothing reads once published. A delete only stamps the
-- row's header. Every reader already asks for `published_at is null`, so
-- rows marked by API processes of the previous version during a rolling
-- upgrade are still skipped, and the purge removes them.
--
-- `chorus_post_messages_direct` is the function of
-- `20261206000001_post_function_marks_by_id.sql` (explained in
-- `20261205000002_posts_publish_themselves.sql`) with the published ids
-- deleted instead of marked, with the same locking: a row another session
-- holds is skipped, one already gone is left alone.

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
    foreach v_mark in array coalesce(p_published, '{}') loop
        delete from outbox
            where id = (select id from outbox
                        where id = v_mark and published_at is null
                        for update skip locked);
    end loop;
    for i in 1 .. cardinality(p_ids) loop
        v_id := 0;
        v_refusal := null;
        <<post>>
        begin
            update communities set head_seq = head_seq + 1 where id = p_community_ids[i]
                returning head_seq into v_seq;
            if not found then
                v_seq := -404;
                exit post;
            end if;
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
