//! Identifier rules from the contract: user ids come from the JWT `sub` and
//! are short and restricted; everything else is a UUID. Parsing lives here so
//! that "not a UUID" means `not_found` in both services alike.

use uuid::Uuid;

/// Longest accepted user id (`sub`), as the contract fixes it.
pub const MAX_USER_ID_LEN: usize = 64;

/// True when `id` is 1-64 chars of `[A-Za-z0-9_.-]`.
pub fn is_valid_user_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_USER_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Parses a UUID in its canonical hyphenated form (what the services emit).
/// Anything else, including the braced and URN forms, is `None`, which the
/// callers turn into `not_found`.
pub fn parse_uuid(s: &str) -> Option<Uuid> {
    if s.len() != 36 {
        return None;
    }
    Uuid::try_parse(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids() {
        assert!(is_valid_user_id("alice"));
        assert!(is_valid_user_id("a.b_c-D9"));
        assert!(is_valid_user_id(&"x".repeat(64)));
        assert!(!is_valid_user_id(""));
        assert!(!is_valid_user_id(&"x".repeat(65)));
        assert!(!is_valid_user_id("al ice"));
        assert!(!is_valid_user_id("alice@example"));
        assert!(!is_valid_user_id("é"));
    }

    #[test]
    fn uuids() {
        assert!(parse_uuid("67e55044-10b1-426f-9247-bb680e5fe0c8").is_some());
        assert!(parse_uuid("67e5504410b1426f9247bb680e5fe0c8").is_none());
        assert!(parse_uuid("not-a-uuid").is_none());
        assert!(parse_uuid("").is_none());
    }
}
