//! TOTP second factor: enrol, confirm, then logins need a fresh code.

use super::common::*;
use tonari_sdk::Client;
use tonari_wire::ErrorCode;

/// The code an authenticator app shows for `secret` at `offset_secs` from now.
fn code(secret_base32: &str, offset_secs: u64) -> String {
    let totp = totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(6)
        .with_step_duration(30)
        .with_secret(totp_rs::Secret::try_from_base32(secret_base32).expect("base32"))
        .build()
        .expect("totp");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    totp.generate(now + offset_secs).to_string()
}

fn wrong(code: &str) -> String {
    let n: u32 = code.parse().expect("digits");
    format!("{:06}", (n + 500_000) % 1_000_000)
}

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
    let now = code(&secret, 0);
    let err = phone.totp_confirm(&wrong(&now)).await.unwrap_err();
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
    let next = code(&secret, 30);
    let err = attempt(Some(wrong(&next))).await.unwrap_err();
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
