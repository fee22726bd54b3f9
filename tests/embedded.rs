//! The library API the agent embeds: `Server::start` in process, a request, runtime fault control through
//! `RunningServer::faults()`, and a graceful `shutdown()` after which the data directory can be reopened.

use std::time::Duration;

use ossmirror::remote::Credentials;
use ossmirror::server::{DownMode, FaultConfig, Server, ServerConfig, ServerError};

fn config(root: &std::path::Path) -> ServerConfig {
    let mut config = ServerConfig::new(root);
    config.listen = "127.0.0.1:0".parse().expect("a socket address");
    config.buckets = vec!["embedded".into()];
    config.fsync = false;
    config
}

#[tokio::test]
async fn start_serve_control_and_shut_down() {
    let dir = tempfile::tempdir().expect("temp dir");
    let running = Server::start(config(dir.path())).await.expect("server starts");
    assert_ne!(running.addr().port(), 0);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    let url = format!("{}/embedded/hello.txt", running.endpoint());

    let put = http.put(&url).body("hello").send().await.expect("PUT");
    assert_eq!(put.status(), 200);
    assert_eq!(put.headers()["etag"], "\"5D41402ABC4B2A76B9719D911017C592\"");
    assert_eq!(put.headers()["x-oss-hash-crc64ecma"], "11177612005948864433");
    assert_eq!(http.get(&url).send().await.expect("GET").text().await.expect("body"), "hello");

    // Faults can be driven directly, without the HTTP control API.
    running.faults().set_config(FaultConfig { error_rate: 1.0, ..FaultConfig::default() });
    let failed = http.get(&url).send().await.expect("GET");
    assert!(failed.status().is_server_error());
    running.faults().set_config(FaultConfig::default());
    running.faults().set_down(DownMode::Refuse);
    // Refused, or (if the listener was not closed yet) accepted and reset: an error either way.
    assert!(reqwest::Client::new().get(&url).send().await.is_err(), "no answer while down");
    running.faults().set_down(DownMode::Up);
    let mut ok = false;
    for _ in 0..200 {
        if let Ok(r) = reqwest::Client::new().get(&url).send().await {
            ok = r.status() == 200;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "the server listens again after the outage");
    let stats = running.stats();
    assert_eq!(stats.operations["PutObject"].requests, 1);
    assert_eq!(stats.faults.errors, 1);

    running.shutdown().await;
    assert!(reqwest::Client::new().get(&url).send().await.is_err(), "nothing listens after shutdown");
    // The data directory was released and keeps the object.
    let running = Server::start(config(dir.path())).await.expect("restart");
    let url = format!("{}/embedded/hello.txt", running.endpoint());
    assert_eq!(http.get(&url).send().await.expect("GET").text().await.expect("body"), "hello");
    running.shutdown().await;
}

#[tokio::test]
async fn one_server_per_data_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = Server::start(config(dir.path())).await.expect("server starts");
    match Server::start(config(dir.path())).await {
        Err(ServerError::RootLocked(_)) => {}
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a second server opened the same data directory"),
    }
    first.shutdown().await;
}

#[tokio::test]
async fn credentials_are_enforced_in_process() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config(dir.path());
    cfg.credentials = Some(Credentials::new("AK", "SK"));
    let running = Server::start(cfg).await.expect("server starts");
    let r = reqwest::get(format!("{}/embedded/k", running.endpoint())).await.expect("GET");
    assert_eq!(r.status(), 403);
    assert!(r.text().await.expect("body").contains("<Code>AccessDenied</Code>"));
    running.shutdown().await;
}
