//! Login rate limits: per client address and per account, counted (not
//! timed) against 10,000 password guesses.

use super::common::*;
use serde_json::json;

const GUESSES: usize = 10_000;

/// Send `GUESSES` logins (8 at a time); the status of each.
async fn guess(url: &str, username: impl Fn(usize) -> String) -> Vec<(u16, Option<String>)> {
    let http = reqwest::Client::new();
    let mut out = Vec::with_capacity(GUESSES);
    for chunk in (0..GUESSES).collect::<Vec<_>>().chunks(8) {
        let reqs = chunk.iter().map(|i| {
            let body = json!({
                "username": username(*i),
                "password": format!("guess number {i}"),
                "device_name": "attacker",
                "signature_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            });
            let req = http.post(format!("{url}/v1/login")).json(&body);
            async move {
                let resp = req.send().await.expect("login request");
                let retry = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                (resp.status().as_u16(), retry)
            }
        });
        out.extend(futures_util::future::join_all(reqs).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_gets_a_bounded_number_of_tries() {
    let dir = tmp();
    let server = TestServer::start(dir.path()).await;
    let results = guess(&server.url, |i| format!("nobody{i}")).await;
    let tried = results.iter().filter(|(s, _)| *s != 429).count();
    assert_eq!(
        tried, 60,
        "only the per-address limit reached the password check"
    );
    assert!(results.iter().filter(|(s, _)| *s == 429).all(|(_, retry)| {
        retry
            .as_deref()
            .is_some_and(|r| r.parse::<u64>().is_ok_and(|n| n >= 1))
    }));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_locks_after_ten_wrong_passwords() {
    let dir = tmp();
    let server =
        TestServer::start_with(dir.path(), |c| c.login_max_attempts_per_ip = 1_000_000).await;
    register(&server, "vera").await;
    let results = guess(&server.url, |_| "vera".to_string()).await;
    let wrong = results.iter().filter(|(s, _)| *s == 401).count();
    let limited = results.iter().filter(|(s, _)| *s == 429).count();
    assert_eq!(
        (wrong, limited),
        (10, GUESSES - 10),
        "10 passwords were checked, every other guess was refused unchecked"
    );
    // Even the right password is refused while the account is locked.
    let (status, body) = raw(
        reqwest::Method::POST,
        format!("{}/v1/login", server.url),
        None,
        Some(json!({
            "username": "vera", "password": PASSWORD, "device_name": "phone",
            "signature_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        })),
    )
    .await;
    assert_eq!((status, code_of(&body)), (429, "rate_limited"));
    // Other accounts are not affected.
    register(&server, "walt").await;
    login(&server, dir.path(), "walt", "phone").await;
    let entries = server.stop_and_read_audit().await;
    let count = |kind: &str| entries.iter().filter(|e| e.event.event == kind).count();
    assert_eq!((count("login_failed"), count("account_locked")), (10, 1));
}

/// `n` failed logins claiming to come from `forwarded_for`; their statuses.
async fn logins_via(url: &str, forwarded_for: &str, n: usize) -> Vec<u16> {
    let http = reqwest::Client::new();
    let mut out = Vec::new();
    for i in 0..n {
        let resp = http
            .post(format!("{url}/v1/login"))
            .header("x-forwarded-for", format!("203.0.113.9, {forwarded_for}"))
            .json(&json!({
                "username": format!("nobody{i}"), "password": "not the password",
                "device_name": "x", "signature_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            }))
            .send()
            .await
            .expect("login request");
        out.push(resp.status().as_u16());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_client_address_has_its_own_limit() {
    let dir = tmp();
    let server = TestServer::start_with(dir.path(), |c| {
        c.login_max_attempts_per_ip = 3;
        c.trusted_proxies = vec!["127.0.0.1".parse().expect("ip")];
    })
    .await;
    assert_eq!(
        logins_via(&server.url, "198.51.100.1", 4).await,
        [401, 401, 401, 429]
    );
    assert_eq!(
        logins_via(&server.url, "198.51.100.2", 1).await,
        [401],
        "another client"
    );
    server.stop().await;

    // Without a trusted proxy the header is ignored: one peer, one limit.
    let dir = tmp();
    let server = TestServer::start_with(dir.path(), |c| c.login_max_attempts_per_ip = 3).await;
    assert_eq!(
        logins_via(&server.url, "198.51.100.1", 3).await,
        [401, 401, 401]
    );
    assert_eq!(logins_via(&server.url, "198.51.100.2", 1).await, [429]);
    server.stop().await;
}
