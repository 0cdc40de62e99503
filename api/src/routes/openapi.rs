//! The public API's OpenAPI 3.1 document, derived from the handlers'
//! `#[utoipa::path]` attributes and the protocol types' `ToSchema`, so it
//! cannot drift from the code by hand. It is served at
//! `/api/openapi.json`, printed by `chorus-api openapi`, and committed as
//! `api/openapi.json` (a test fails when the two differ); the TypeScript
//! SDK's types are checked against the committed copy.
//!
//! The WebSocket frames' payloads are listed as components too, so one
//! document describes every JSON shape a client sees.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use chorus_shared::error::{ErrorBody, ErrorCode, ErrorDetail};
use chorus_shared::protocol::{
    DeleteMessage, JoinAck, JoinCommunity, LeaveCommunity, MembershipRevoked, MessageData,
    MessageDeleted, NotificationData, Ready, Reconnect, Typing, UserJoined, UserLeft, UserTyping,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Chorus API",
        description = "The public HTTP API of Chorus. Errors are `{\"error\":{\"code\",\"message\"}}` \
                       with the contract's codes. Every operation needs a user JWT \
                       (`Authorization: Bearer`). Live events travel over the gateways' \
                       WebSocket (`/ws`); the payloads of its frames are components of this \
                       document too (`Ready`, `JoinAck`, `MessageData`, ...)."
    ),
    paths(
        super::communities::create,
        super::communities::list,
        super::communities::join,
        super::communities::add_member,
        super::communities::remove_member,
        super::communities::members,
        super::communities::presence,
        super::messages::create,
        super::messages::history,
        super::messages::delete,
        super::notifications::create,
        super::notifications::list,
        super::notifications::read,
        super::notifications::read_all,
        super::notifications::delete,
        super::status::socket_status,
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        ErrorCode,
        Ready,
        JoinCommunity,
        JoinAck,
        LeaveCommunity,
        DeleteMessage,
        Typing,
        MessageData,
        MessageDeleted,
        UserJoined,
        UserLeft,
        UserTyping,
        NotificationData,
        MembershipRevoked,
        Reconnect,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "communities", description = "Communities, members and presence"),
        (name = "messages", description = "Messages: send, history, delete"),
        (name = "notifications", description = "The notification center"),
        (name = "status", description = "Gateways' status"),
    )
)]
struct ApiDoc;

/// Declares the `bearer` security scheme every operation uses.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The document, as pretty JSON with a final newline (the committed form).
pub fn document() -> String {
    let mut json = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    json.push('\n');
    json
}

/// Rendered once: the document is fixed for the life of the binary.
static DOCUMENT: LazyLock<String> = LazyLock::new(document);

/// `GET /api/openapi.json` (no token needed: the document is public).
pub async fn serve() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed document is what the code generates; when this fails,
    /// regenerate it: `cargo run -p chorus-api -- openapi > api/openapi.json`.
    #[test]
    fn committed_document_matches_the_code() {
        let committed = include_str!("../../openapi.json");
        let generated: serde_json::Value =
            serde_json::from_str(&document()).expect("generated document is JSON");
        let on_disk: serde_json::Value =
            serde_json::from_str(committed).expect("api/openapi.json is JSON");
        assert!(
            generated == on_disk,
            "api/openapi.json is stale: run `cargo run -p chorus-api -- openapi > api/openapi.json`"
        );
    }

    #[test]
    fn document_is_openapi_3_1_with_every_public_route() {
        let doc: serde_json::Value = serde_json::from_str(&document()).expect("JSON");
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1")),
            "{}",
            doc["openapi"]
        );
        let paths = doc["paths"].as_object().expect("paths");
        for (path, methods) in [
            ("/api/communities", &["get", "post"][..]),
            ("/api/communities/{id}/join", &["post"]),
            ("/api/communities/{id}/members", &["get", "post"]),
            ("/api/communities/{id}/members/{user_id}", &["delete"]),
            ("/api/communities/{id}/presence", &["get"]),
            ("/api/messages-realtime", &["get", "post"]),
            ("/api/messages-realtime/{id}", &["delete"]),
            ("/api/notifications-broadcast", &["get", "post"]),
            ("/api/notifications-broadcast/read-all", &["post"]),
            ("/api/notifications-broadcast/{id}/read", &["post"]),
            ("/api/notifications-broadcast/{id}", &["delete"]),
            ("/api/socket-status", &["get"]),
        ] {
            for m in methods {
                assert!(
                    paths[path].get(*m).is_some(),
                    "{m} {path} is not documented"
                );
            }
        }
        assert_eq!(paths.len(), 12, "a documented path the test does not know");
    }
}
