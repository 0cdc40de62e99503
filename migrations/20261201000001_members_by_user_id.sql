-- Members are listed a page at a time, ordered by user id
-- (`GET /api/communities/{id}/members?after=<userId>`). User ids are
-- compared bytewise (collate "C") so the order is the same on every
-- database; the primary key's index has the database's default collation
-- and cannot serve that keyset scan, this one does.
create index community_members_by_user_id_c
    on community_members (community_id, user_id collate "C");
