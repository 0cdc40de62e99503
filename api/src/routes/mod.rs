//! HTTP routes: the public contract under `/api` (the public listener),
//! and on the admin listener the operational endpoints plus the
//! gateway-only endpoints under `/internal`.

mod communities;
mod internal;
mod messages;
mod notifications;
pub mod openapi;
pub mod ops;
mod status;

use std::path::PathBuf;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use chorus_shared::protocol::{Community, MAX_BODY_BYTES, MemberRole};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::{ServeDir, ServeFile};
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;
use chorus_shared::auth::AuthUser;

/// What the public listener serves besides the contract's `/api/*`.
#[derive(Debug, Clone, Default)]
pub struct PublicOptions {
    /// Browser origins allowed to call the API from another origin (CORS);
    /// empty: none (same-origin pages and non-browser clients only); `*`:
    /// any. Tokens travel in `Authorization`, never in cookies, so CORS
    /// exposes nothing a page could not already do with the token.
    pub allowed_origins: Vec<HeaderValue>,
    /// A built web front end, served at every path outside `/api` (unknown
    /// paths get its `index.html`, for client-side routing).
    pub web_dir: Option<PathBuf>,
}

/// What a page of the web front end may do: scripts and styles from this
/// origin only (React sets inline styles), sockets to any gateway, images
/// (avatars) from anywhere, and no framing (the delete confirmation must
/// not be clickjacked).
const WEB_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                       img-src https: http: data:; connect-src 'self' ws: wss:; \
                       frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The headers of the web front end's files (everything outside `/api`):
/// its content security policy, no sniffing, no referrer (a page's address
/// never leaks to an avatar's host), and revalidation on every load
/// (`app.js` has a fixed name, so a cached copy would outlive an upgrade).
async fn web_headers(req: Request, next: Next) -> Response {
    let api = req.uri().path() == "/api" || req.uri().path().starts_with("/api/");
    let mut res = next.run(req).await;
    if !api {
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(WEB_CSP),
        );
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    res
}

/// Longest a browser may cache a CORS preflight answer: ten minutes spares
/// a preflight per write without pinning a stale policy for long.
const CORS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// The public router: the contract's `/api/*`, the API's own OpenAPI
/// document, and, when configured, the web front end and CORS.
pub fn api_router(state: AppState, options: &PublicOptions) -> Router {
    let router = Router::new()
        .route("/api/openapi.json", get(openapi::serve))
        .route(
            "/api/communities",
            post(communities::create).get(communities::list),
        )
        .route("/api/communities/{id}/join", post(communities::join))
        .route(
            "/api/communities/{id}/members",
            post(communities::add_member).get(communities::members),
        )
        .route("/api/communities/{id}/presence", get(communities::presence))
        .route("/api/socket-status", get(status::socket_status))
        .route(
            "/api/communities/{id}/members/{user_id}",
            delete(communities::remove_member),
        )
        .route(
            "/api/messages-realtime",
            post(messages::create).get(messages::history),
        )
        .route("/api/messages-realtime/{id}", delete(messages::delete))
        .route(
            "/api/notifications-broadcast",
            post(notifications::create).get(notifications::list),
        )
        .route(
            "/api/notifications-broadcast/read-all",
            post(notifications::read_all),
        )
        .route(
            "/api/notifications-broadcast/{id}/read",
            post(notifications::read),
        )
        .route(
            "/api/notifications-broadcast/{id}",
            delete(notifications::delete),
        )
        // Unknown `/api` paths are the contract's 404 even when a web
        // front end takes every other path.
        .route("/api", any(not_found))
        .route("/api/{*rest}", any(not_found));
    let router = match &options.web_dir {
        Some(dir) => router
            .fallback_service(ServeDir::new(dir).fallback(ServeFile::new(dir.join("index.html"))))
            .layer(middleware::from_fn(web_headers)),
        None => router.fallback(not_found),
    };
    let router = router
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(deadline))
        .layer(middleware::from_fn(track))
        .with_state(state);
    if options.allowed_origins.is_empty() {
        return router;
    }
    let origins = if options.allowed_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(options.allowed_origins.iter().cloned())
    };
    // Outermost, so a preflight is answered before routing.
    router.layer(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static(REQUEST_ID),
            ])
            .expose_headers([header::RETRY_AFTER, HeaderName::from_static(REQUEST_ID)])
            .max_age(CORS_MAX_AGE),
    )
}

/// Longest a request may take from its head to its response, the body
/// upload included: a client trickling a 64 KiB body must not hold a
/// handler (and a database connection) for long. Far above any honest
/// request; the pool's own acquire timeout is 5 s.
const REQUEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Ends a request that outlasts [`REQUEST_DEADLINE`] with 503.
async fn deadline(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_DEADLINE, next.run(req)).await {
        Ok(r) => r,
        Err(_) => {
            metrics::counter!("chorus_api_request_deadline_exceeded_total").increment(1);
            ApiError::Unavailable("request took too long").into_response()
        }
    }
}

/// The gateway-only endpoints (service token), served on the admin
/// listener with the same error envelope and request metrics as `/api/*`.
pub(crate) fn internal_routes() -> Router<AppState> {
    Router::new()
        .route("/internal/communities/{id}/events", get(internal::events))
        .route("/internal/access", post(internal::access_many))
        .route(
            "/internal/communities/{id}/access/{user_id}",
            get(internal::access),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(track))
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::NotFound("route")
}

async fn method_not_allowed() -> Response {
    let (_, body) = ApiError::bad_request("method not allowed on this path").body();
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}

/// Header carrying a request's id, from the client or made here.
const REQUEST_ID: &str = "x-request-id";
/// Longest client-sent request id kept (longer ones are replaced): enough
/// for any UUID or trace id, short enough for every log line.
const MAX_REQUEST_ID_LEN: usize = 64;

/// The `route` label of requests no route matched (404) and of requests
/// whose method a route does not serve (405): one label for both, so
/// neither a client's paths nor its methods can add series.
const UNMATCHED_ROUTE: &str = "unmatched";

/// Request count and latency by route template, method and status. Every
/// label value comes from a fixed set: the route templates of this router,
/// [`method_label`]'s methods and the statuses the handlers produce, so the
/// number of series is bounded whatever clients send.
///
/// Each request also runs in a `request` span (route, method, request id,
/// status), so every log line it causes carries them. The request id is the
/// client's `X-Request-Id` when it sends a short one, else a fresh one, and
/// is echoed in the response.
async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let method = method_label(req.method());
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= MAX_REQUEST_ID_LEN)
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    let span = tracing::info_span!(
        "request",
        route = route.as_deref().unwrap_or(UNMATCHED_ROUTE),
        method,
        request_id = %request_id,
        status = tracing::field::Empty,
    );
    let mut resp = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    let status = resp.status();
    span.record("status", status.as_u16());
    if let Ok(v) = axum::http::HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    let route = match route {
        Some(r) if status != StatusCode::METHOD_NOT_ALLOWED => r,
        _ => UNMATCHED_ROUTE.to_owned(),
    };
    let labels = [
        ("method", method.to_owned()),
        ("route", route),
        ("status", status.as_u16().to_string()),
    ];
    metrics::counter!("chorus_api_requests_total", &labels).increment(1);
    metrics::histogram!("chorus_api_request_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    resp
}

/// The `method` label: the methods HTTP APIs use, anything else `other`.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// How a user relates to a community.
#[derive(Debug)]
pub(crate) struct Access {
    pub community: Community,
    pub role: Option<MemberRole>,
}

impl Access {
    /// Members and officials may read.
    pub fn can_read(&self, user: &AuthUser) -> bool {
        self.role.is_some() || user.is_official()
    }

    /// Owners and officials manage members.
    pub fn can_manage(&self, user: &AuthUser) -> bool {
        self.role == Some(MemberRole::Owner) || user.is_official()
    }
}

/// Loads the community (`not_found` if unknown) and the user's role in it.
pub(crate) async fn access(state: &AppState, id: Uuid, user_id: &str) -> Result<Access, ApiError> {
    let (community, role) = state
        .store()
        .access(id, user_id)
        .await?
        .ok_or(ApiError::NotFound("community"))?;
    Ok(Access { community, role })
}

/// Trims `s` and checks its length in Unicode scalar values.
pub(crate) fn trimmed<'a>(s: &'a str, field: &str, max: usize) -> Result<&'a str, ApiError> {
    let t = s.trim();
    let n = t.chars().count();
    if n == 0 || n > max {
        return Err(ApiError::bad_request(format!(
            "{field} must be 1-{max} characters after trimming"
        )));
    }
    Ok(t)
}
