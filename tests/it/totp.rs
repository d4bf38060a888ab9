//! TOTP second factor: enrol, confirm, then logins need a fresh code.

use super::common::*;
use tonari_sdk::Client;
use tonari_wire::ErrorCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_is_required_once_on_and_codes_are_single_use() {
    let dir = tmp();
    let server = TestServer::start(dir.path()).await;
    register(&server, "tia").await;
    let phone = login(&server, dir.path(), "tia", "phone").await;

    let enrolment = phone.totp_enroll().await.expect("enroll");
    assert!(
        enrolment
            .otpauth_uri
            .starts_with("otpauth://totp/Tonari:tia?secret=")
    );
    let secret = enrolment.secret_base32.clone();
    let now = totp_code(&secret, 0);
    let err = phone.totp_confirm(&wrong_code(&now)).await.unwrap_err();
    assert!(err.is_code(ErrorCode::TotpInvalid), "{err}");
    phone.totp_confirm(&now).await.expect("confirm");
    let err = phone.totp_enroll().await.unwrap_err();
    assert!(err.is_code(ErrorCode::TotpAlreadyEnabled), "{err}");

    let laptop_dir = dir.path().join("tia-laptop");
    let attempt = |totp: Option<String>| {
        let (url, dir) = (server.url.clone(), laptop_dir.clone());
        async move {
            Client::login_with_totp(&url, &dir, "tia", PASSWORD, "laptop", totp.as_deref()).await
        }
    };
    let err = attempt(None).await.unwrap_err();
    assert!(err.is_code(ErrorCode::TotpRequired), "{err}");
    let next = totp_code(&secret, 30);
    let err = attempt(Some(wrong_code(&next))).await.unwrap_err();
    assert!(err.is_code(ErrorCode::TotpInvalid), "{err}");
    // The code used to confirm cannot log in again (replay).
    let err = attempt(Some(now.clone())).await.unwrap_err();
    assert!(err.is_code(ErrorCode::TotpInvalid), "{err}");
    let laptop = attempt(Some(next.clone()))
        .await
        .expect("login with a fresh code");
    assert_eq!(laptop.user_id(), phone.user_id());
    let err = Client::login_with_totp(
        &server.url,
        &dir.path().join("tia-tablet"),
        "tia",
        PASSWORD,
        "tablet",
        Some(&next),
    )
    .await
    .unwrap_err();
    assert!(
        err.is_code(ErrorCode::TotpInvalid),
        "a used code is refused: {err}"
    );

    let entries = server.stop_and_read_audit().await;
    assert!(entries.iter().any(|e| e.event.event == "totp_enabled"));
    assert!(
        entries.iter().all(|e| !e.event.details.contains(&secret)),
        "no secret in the audit log"
    );
}
