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
    RoomInfo, RoomList, ServerFrame, SubmitRequest, UserDevices, WelcomeList, paths,
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

/// An authenticated request: the session's user and device.
pub struct Auth(pub AuthDevice, pub String);

impl FromRequestParts<Arc<AppState>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)
            .ok_or_else(Error::unauthenticated)?
            .to_string();
        let device = state.accounts.authenticate(&token).await?;
        Ok(Auth(device, token))
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let max_body = state.config.max_body_bytes;
    Router::new()
        .route(paths::HEALTH, get(|| async { "ok" }))
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
        .route(paths::WS, get(crate::ws::upgrade))
        .method_not_allowed_fallback(|| async {
            ApiError(Error::new(
                ErrorCode::MethodNotAllowed,
                "this endpoint does not take that HTTP method",
            ))
        })
        .fallback(|| async { ApiError(Error::new(ErrorCode::NotFound, "no such endpoint")) })
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

async fn logout(State(s): State<Arc<AppState>>, Auth(auth, token): Auth) -> ApiResult<StatusCode> {
    s.accounts.logout(auth, &token).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn totp_enroll(
    State(s): State<Arc<AppState>>,
    Auth(auth, _): Auth,
) -> ApiResult<Json<tonari_wire::TotpEnrollment>> {
    Ok(Json(s.accounts.totp_enroll(auth).await?))
}

async fn totp_confirm(
    State(s): State<Arc<AppState>>,
    Auth(auth, _): Auth,
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
    Auth(..): Auth,
    Path(username): Path<String>,
) -> ApiResult<Json<UserDevices>> {
    Ok(Json(s.accounts.user_devices(&username).await?))
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
    let ack = pending.durable().await?;
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
