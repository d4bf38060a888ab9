//! HTTP transport: routes, JSON extraction with our error codes, auth.

use crate::accounts::AuthDevice;
use crate::app::AppState;
use crate::error::Error;
use axum::extract::rejection::JsonRejection;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State,
};
use axum::http::{StatusCode, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use tonari_wire::{
    ClaimedKeyPackages, CreateRoomRequest, DeviceInfo, ErrorBody, ErrorCode, KeyPackageCount,
    KeyPackageUpload, LoginRequest, LoginResponse, MessagePage, RegisterRequest, RegisterResponse,
    RoomInfo, RoomList, ServerFrame, SubmitRequest, WelcomeList, paths,
};

/// The HTTP face of [`Error`]: JSON body with a stable code.
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.0.log("request");
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.0.retry_after;
        let body = ErrorBody {
            code: self.0.code.as_str().to_string(),
            message: self.0.message,
        };
        let mut resp = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        resp
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// JSON body extractor whose rejections are our JSON errors (413 for size).
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => {
                let err = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Error::new(ErrorCode::PayloadTooLarge, "the request body is too large")
                } else {
                    Error::new(
                        ErrorCode::InvalidRequest,
                        format!(
                            "the request body is not valid JSON for this call: {}",
                            rejection.body_text()
                        ),
                    )
                };
                Err(ApiError(err))
            }
        }
    }
}

/// The bearer token of a request, if any.
pub fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// An authenticated request: the session's user and device. A session
/// that still has to enrol TOTP gets 403 `totp_enrollment_required`.
pub struct Auth(pub AuthDevice, pub String);

/// Any live session, including one that still has to enrol TOTP (for the
/// TOTP enrolment calls and logout).
pub struct AnySession(pub AuthDevice, pub String);

async fn session_of(parts: &Parts, state: &AppState) -> Result<(AuthDevice, String), ApiError> {
    let token = bearer(parts)
        .ok_or_else(Error::unauthenticated)?
        .to_string();
    let device = state.accounts.authenticate(&token).await?;
    Ok((device, token))
}

pub fn totp_enrollment_required() -> Error {
    Error::new(
        ErrorCode::TotpEnrollmentRequired,
        "your role requires a second factor: enrol TOTP (/v1/totp/enroll, then /v1/totp/confirm) first",
    )
}

impl FromRequestParts<Arc<AppState>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let (device, token) = session_of(parts, state).await?;
        if device.restricted {
            return Err(totp_enrollment_required().into());
        }
        Ok(Auth(device, token))
    }
}

impl FromRequestParts<Arc<AppState>> for AnySession {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let (device, token) = session_of(parts, state).await?;
        Ok(AnySession(device, token))
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let max_body = state.config.max_body_bytes;
    Router::new()
        .route(paths::HEALTH, get(|| async { "ok" }))
        .route(paths::READY, get(ready))
        .route(paths::METRICS, get(metrics))
        .route(paths::REGISTER, post(register))
        .route(paths::LOGIN, post(login))
        .route(paths::LOGOUT, post(logout))
        .route(
            paths::OWN_KEY_PACKAGES,
            post(upload_key_packages).get(key_package_count),
        )
        .route(paths::USER, get(user_devices))
        .route(paths::CLAIM_KEY_PACKAGES, post(claim_key_packages))
        .route(paths::DEVICE, get(device))
        .route(paths::TOTP_ENROLL, post(totp_enroll))
        .route(paths::TOTP_CONFIRM, post(totp_confirm))
        .route(paths::ROOMS, post(create_room).get(list_rooms))
        .route(paths::ROOM, get(room_info))
        .route(paths::ROOM_MESSAGES, post(submit).get(history))
        .route(paths::WELCOMES, get(welcomes))
        .route(paths::WELCOME, delete(delete_welcome))
        .route(paths::DIRECTORY, get(directory))
        .route(paths::ORGS, post(create_org).get(list_orgs))
        .route(
            paths::INVITATIONS,
            post(create_invitation).get(list_invitations),
        )
        .route(paths::ROOM_CONSENTS, post(post_consent).get(list_consents))
        .route(paths::WS, get(crate::ws::upgrade))
        .route(
            paths::NOTICES,
            get(crate::notify::get_prefs).post(crate::notify::set_prefs),
        )
        .merge(crate::ingest::router())
        .method_not_allowed_fallback(|| async {
            ApiError(Error::new(
                ErrorCode::MethodNotAllowed,
                "this endpoint does not take that HTTP method",
            ))
        })
        // `/v1/...` keeps its JSON 404; other GETs serve the web client.
        .fallback(crate::web::fallback)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn register(
    State(s): State<Arc<AppState>>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> ApiResult<Json<RegisterResponse>> {
    Ok(Json(s.accounts.register(req).await?))
}

async fn login(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<Json<LoginResponse>> {
    let client = client_address(&s.config.trusted_proxies, peer.ip(), &headers);
    Ok(Json(s.accounts.login(req, client).await?))
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy,
/// the last address it appended to `X-Forwarded-For`.
fn client_address(
    trusted: &[std::net::IpAddr],
    peer: std::net::IpAddr,
    headers: &axum::http::HeaderMap,
) -> std::net::IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .next_back()
        .unwrap_or(peer)
}

async fn logout(
    State(s): State<Arc<AppState>>,
    AnySession(auth, token): AnySession,
) -> ApiResult<StatusCode> {
    s.accounts.logout(auth, &token).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn totp_enroll(
    State(s): State<Arc<AppState>>,
    AnySession(auth, _): AnySession,
) -> ApiResult<Json<tonari_wire::TotpEnrollment>> {
    Ok(Json(s.accounts.totp_enroll(auth).await?))
}

async fn totp_confirm(
    State(s): State<Arc<AppState>>,
    AnySession(auth, _): AnySession,
    ApiJson(req): ApiJson<tonari_wire::TotpConfirm>,
) -> ApiResult<StatusCode> {
    s.accounts.totp_confirm(auth, &req.code).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn upload_key_packages(
    State(s): State<Arc<AppState>>,
    Auth(auth, _): Auth,
    ApiJson(req): ApiJson<KeyPackageUpload>,
) -> ApiResult<Json<KeyPackageCount>> {
    Ok(Json(
        s.accounts
            .upload_key_packages(auth, req.key_packages)
            .await?,
    ))
}

async fn key_package_count(
    State(s): State<Arc<AppState>>,
    Auth(auth, _): Auth,
) -> ApiResult<Json<KeyPackageCount>> {
    Ok(Json(s.accounts.key_package_count(auth.device_id).await?))
}

async fn user_devices(
    State(s): State<Arc<AppState>>,
    Auth(auth, _): Auth,
    Path(username): Path<String>,
) -> ApiResult<Json<tonari_wire::DirectoryEntry>> {
    Ok(Json(s.accounts.user_devices(auth, &username).await?))
}

async fn device(
    State(s): State<Arc<AppState>>,
    Auth(..): Auth,
    Path(device_id): Path<String>,
) -> ApiResult<Json<DeviceInfo>> {
    let device_id = device_id
        .parse()
        .map_err(|_| Error::new(ErrorCode::DeviceNotFound, "no such device"))?;
    Ok(Json(s.accounts.device(device_id).await?))
}

async fn claim_key_packages(
    State(s): State<Arc<AppState>>,
    Auth(..): Auth,
    Path(username): Path<String>,
) -> ApiResult<Json<ClaimedKeyPackages>> {
    let (claimed, low) = s.accounts.claim_key_packages(&username).await?;
    for (device_id, available) in low {
        let frame = crate::delivery::frame_text(&ServerFrame::KeyPackagesLow { available })?;
        s.cluster.notify_device(device_id, &frame);
        s.hub.notify_device(device_id, frame);
    }
    Ok(Json(claimed))
}

async fn create_room(
    State(s): State<Arc<AppState>>,
    Auth(auth, _): Auth,
    ApiJson(req): ApiJson<CreateRoomRequest>,
) -> ApiResult<Json<RoomInfo>> {
    Ok(Json(s.delivery.create_room(auth, req).await?))
}

async fn list_rooms(
    State(s): State<Arc<AppState>>,
    Auth(auth, _): Auth,
) -> ApiResult<Json<RoomList>> {
    Ok(Json(RoomList {
        rooms: s.delivery.rooms_of(auth).await?,
    }))
}

async fn room_info(
    State(s): State<Arc<AppState>>,
    Auth(auth, _): Auth,
    Path(room_id): Path<String>,
) -> ApiResult<Json<RoomInfo>> {
    Ok(Json(s.delivery.room_info(auth, &room_id).await?))
}

async fn submit(
    State(s): State<Arc<AppState>>,
    Auth(auth, _): Auth,
    Path(room_id): Path<String>,
    ApiJson(req): ApiJson<SubmitRequest>,
) -> ApiResult<Response> {
    if req.message.0.len() > s.config.ws_max_message_bytes {
        return Err(Error::new(ErrorCode::PayloadTooLarge, "the MLS message is too large").into());
    }
    let started = std::time::Instant::now();
    let pending = s.delivery.enqueue(auth, &room_id, req).await?;
    let validated = pending.validated;
    let ack = pending.durable(&s.delivery).await?;
    // Server-Timing (W3C): where the time went, in milliseconds.
    let timing = format!(
        "validate;dur={:.3}, total;dur={:.3}",
        validated.as_secs_f64() * 1000.0,
        started.elapsed().as_secs_f64() * 1000.0
    );
    Ok(([("server-timing", timing)], Json(ack)).into_response())
}

#[derive(Deserialize)]
struct HistoryQuery {
    #[serde(default)]
    after: u64,
    #[serde(default = "default_limit")]
    limit: u32,
}

fn default_limit() -> u32 {
    100
}

async fn history(
    State(s): State<Arc<AppState>>,
    Auth(auth, _): Auth,
    Path(room_id): Path<String>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<MessagePage>> {
    let Query(q) = query.map_err(|_| {
        Error::new(
            ErrorCode::InvalidRequest,
            "query parameters are after=<seq> and limit=<1..500>",
        )
    })?;
    Ok(Json(
        s.delivery.history(auth, &room_id, q.after, q.limit).await?,
    ))
}

async fn welcomes(
    State(s): State<Arc<AppState>>,
    Auth(auth, _): Auth,
) -> ApiResult<Json<WelcomeList>> {
    Ok(Json(WelcomeList {
        welcomes: s.delivery.welcomes(auth).await?,
    }))
}

async fn delete_welcome(
    State(s): State<Arc<AppState>>,
    Auth(auth, _): Auth,
    Path(welcome_id): Path<String>,
) -> ApiResult<StatusCode> {
    let welcome_id = welcome_id
        .parse()
        .map_err(|_| Error::new(ErrorCode::WelcomeNotFound, "no such welcome"))?;
    s.delivery.ack_welcome(auth, welcome_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- care team

#[derive(Deserialize)]
struct DirectoryQuery {
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    role: Option<tonari_wire::Role>,
    #[serde(default)]
    org_id: Option<i64>,
}

async fn directory(
    State(s): State<Arc<AppState>>,
    Auth(auth, _): Auth,
    query: Result<Query<DirectoryQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<tonari_wire::DirectoryPage>> {
    let Query(q) = query.map_err(|_| {
        Error::new(
            ErrorCode::InvalidRequest,
            "query parameters are q=<text>, role=<role> and org_id=<id>",
        )
    })?;
    Ok(Json(s.care.search(auth, q.q, q.role, q.org_id).await?))
}

async fn create_org(
    State(s): State<Arc<AppState>>,
    Auth(auth, _): Auth,
    ApiJson(req): ApiJson<tonari_wire::CreateOrgRequest>,
) -> ApiResult<(StatusCode, Json<tonari_wire::OrgInfo>)> {
    Ok((
        StatusCode::CREATED,
        Json(s.care.create_org(auth, req).await?),
    ))
}

async fn list_orgs(
    State(s): State<Arc<AppState>>,
    Auth(auth, _): Auth,
) -> ApiResult<Json<tonari_wire::OrgList>> {
    Ok(Json(tonari_wire::OrgList {
        orgs: s.care.orgs(auth).await?,
    }))
}

async fn create_invitation(
    State(s): State<Arc<AppState>>,
    Auth(auth, _): Auth,
    ApiJson(req): ApiJson<tonari_wire::CreateInvitation>,
) -> ApiResult<(StatusCode, Json<tonari_wire::InvitationInfo>)> {
    if let Some(room_id) = &req.room_id
        && !s.delivery.is_member(auth.device_id, room_id).await?
    {
        return Err(Error::new(
            ErrorCode::NotAMember,
            "you can only invite people into rooms you are a member of",
        )
        .into());
    }
    Ok((StatusCode::CREATED, Json(s.care.invite(auth, req).await?)))
}

async fn list_invitations(
    State(s): State<Arc<AppState>>,
    Auth(auth, _): Auth,
) -> ApiResult<Json<tonari_wire::InvitationList>> {
    Ok(Json(tonari_wire::InvitationList {
        invitations: s.care.invitations(auth).await?,
    }))
}

async fn post_consent(
    State(s): State<Arc<AppState>>,
    Auth(auth, _): Auth,
    Path(room_id): Path<String>,
    ApiJson(req): ApiJson<tonari_wire::SignedConsent>,
) -> ApiResult<StatusCode> {
    let settings = s.delivery.room_settings_any(&room_id).await?;
    let c = s.care.post_consent(auth, &room_id, &settings, req).await?;
    s.delivery
        .note_consent(&room_id, c.subject_user_id, c.granted)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_consents(
    State(s): State<Arc<AppState>>,
    Auth(auth, _): Auth,
    Path(room_id): Path<String>,
) -> ApiResult<Json<tonari_wire::ConsentList>> {
    // Members only (this also checks the room exists).
    s.delivery.room_info(auth, &room_id).await?;
    Ok(Json(tonari_wire::ConsentList {
        consents: s.care.consents(&room_id).await?,
    }))
}

// ---------------------------------------------------------------- operations

/// Readiness: 200 when the database answers and the server is not shutting
/// down; 503 otherwise (a load balancer stops sending traffic).
async fn ready(State(s): State<Arc<AppState>>) -> Response {
    let db = tokio::time::timeout(std::time::Duration::from_secs(2), s.store.ping()).await;
    let (status, database) = match db {
        Ok(Ok(())) if !s.shutdown.is_cancelled() => (StatusCode::OK, "ok"),
        Ok(Ok(())) => (StatusCode::SERVICE_UNAVAILABLE, "ok"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: database check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "error")
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
    };
    let body = serde_json::json!({
        "status": if status == StatusCode::OK { "ready" } else { "not_ready" },
        "database": database,
        "shutting_down": s.shutdown.is_cancelled(),
        // NATS down does not make the node unready: clients still get
        // everything through catch-up; only live push between nodes pauses.
        "nats": s.cluster.status(),
    });
    (status, Json(body)).into_response()
}

/// Prometheus metrics (text exposition format); 404 when turned off.
async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    if !s.config.metrics_enabled {
        return ApiError(Error::new(ErrorCode::NotFound, "metrics are turned off")).into_response();
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}
