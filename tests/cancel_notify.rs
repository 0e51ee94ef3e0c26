//! Query cancellation through the proxy's own BackendKeyData, and
//! LISTEN/NOTIFY between two proxy clients.

mod support;

use futures_util::StreamExt;
use std::time::{Duration, Instant};
use support::{proxy_client, proxy_pg_config, start_proxy, within, TestRegions};
use tokio_postgres::{AsyncMessage, NoTls};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_stops_a_running_query() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(regions.proxy_config()).await;
    for region in ["eu", "us"] {
        let client = proxy_client(&proxy, region).await;
        let token = client.cancel_token();
        let started = Instant::now();
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            token.cancel_query(NoTls).await
        });
        let result = within(
            10,
            "cancelled pg_sleep",
            client.simple_query("SELECT pg_sleep(30)"),
        )
        .await;
        let elapsed = started.elapsed();
        canceller.await.expect("join").expect("send cancel request");
        let err = result.expect_err("the query was cancelled");
        assert_eq!(support::sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
        assert!(elapsed < Duration::from_secs(5), "cancel took {elapsed:?}");
        // The session survives the cancel.
        let n: i32 = client
            .query_one("SELECT 5", &[])
            .await
            .expect("after cancel")
            .get(0);
        assert_eq!(n, 5);

        // Extended protocol too.
        let token = client.cancel_token();
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            token.cancel_query(NoTls).await
        });
        let result = within(
            10,
            "cancelled extended pg_sleep",
            client.query("SELECT pg_sleep($1)", &[&30f64]),
        )
        .await;
        canceller.await.expect("join").expect("send cancel");
        assert_eq!(
            support::sqlstate(&result.expect_err("cancelled")).as_deref(),
            Some("57014")
        );
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_with_a_wrong_key_does_nothing() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(regions.proxy_config()).await;
    let client = proxy_client(&proxy, "eu").await;
    // A CancelRequest with a made-up key: 16 bytes, code 80877102.
    let mut packet = Vec::new();
    packet.extend_from_slice(&16i32.to_be_bytes());
    packet.extend_from_slice(&80877102i32.to_be_bytes());
    packet.extend_from_slice(&12345i32.to_be_bytes());
    packet.extend_from_slice(&67890i32.to_be_bytes());
    let query = tokio::spawn(async move {
        let r = client.query_one("SELECT pg_sleep(1.5)::text", &[]).await;
        (client, r)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(proxy.local_addr())
            .await
            .expect("connect");
        s.write_all(&packet).await.expect("send cancel");
        let mut buf = [0u8; 16];
        let n = within(5, "proxy closes the cancel connection", s.read(&mut buf)).await;
        assert!(matches!(n, Ok(0) | Err(_)), "no answer to a CancelRequest");
    }
    let (_client, r) = within(10, "query finishes", query).await.expect("join");
    r.expect("a cancel with the wrong key must not cancel anything");
    proxy.shutdown().await;
}

/// A proxy client whose notifications arrive on a channel.
async fn listener_client(
    proxy: &regionguard::server::Proxy,
    region: &str,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
) {
    let (client, mut connection) = proxy_pg_config(proxy, Some(region))
        .connect(NoTls)
        .await
        .expect("connect listener");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(msg) = messages.next().await {
            match msg {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    (client, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_between_two_proxy_clients() {
    let regions = TestRegions::start().await;
    let proxy = start_proxy(regions.proxy_config()).await;
    let (listener, mut notes) = listener_client(&proxy, "us").await;
    listener
        .batch_execute("LISTEN jobs; LISTEN \"Other Channel\"")
        .await
        .expect("listen");
    let sender = proxy_client(&proxy, "us").await;
    sender
        .batch_execute("NOTIFY jobs, 'first'")
        .await
        .expect("notify");
    sender
        .query("SELECT pg_notify('Other Channel', $1)", &[&"second ☃"])
        .await
        .expect("pg_notify");
    // Notifications sent inside a transaction arrive at commit only.
    sender
        .batch_execute("BEGIN; NOTIFY jobs, 'third'; NOTIFY jobs, 'fourth'; COMMIT")
        .await
        .expect("notify in transaction");
    let mut got = Vec::new();
    for _ in 0..4 {
        let n = within(10, "notification", notes.recv())
            .await
            .expect("a notification");
        got.push((n.channel().to_string(), n.payload().to_string()));
    }
    assert_eq!(
        got,
        vec![
            ("jobs".to_string(), "first".to_string()),
            ("Other Channel".to_string(), "second ☃".to_string()),
            ("jobs".to_string(), "third".to_string()),
            ("jobs".to_string(), "fourth".to_string()),
        ]
    );
    // An idle listener gets a notification without sending anything itself,
    // and the notifying backend's pid is the listener's backend's peer.
    let sender_pid: i32 = sender
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let direct = regions.client("us").await;
    direct
        .batch_execute("NOTIFY jobs, 'from direct'")
        .await
        .expect("direct notify");
    let n = within(10, "notification from a direct session", notes.recv())
        .await
        .expect("note");
    assert_eq!(n.payload(), "from direct");
    assert_ne!(n.process_id(), sender_pid);
    // Other regions do not hear it: LISTEN is per region.
    let (eu_listener, mut eu_notes) = listener_client(&proxy, "eu").await;
    eu_listener
        .batch_execute("LISTEN jobs")
        .await
        .expect("listen eu");
    sender
        .batch_execute("NOTIFY jobs, 'us only'")
        .await
        .expect("notify");
    let n = within(10, "us notification", notes.recv())
        .await
        .expect("note");
    assert_eq!(n.payload(), "us only");
    let none = tokio::time::timeout(Duration::from_millis(500), eu_notes.recv()).await;
    assert!(none.is_err(), "eu listener heard a us notification");
    listener
        .batch_execute("UNLISTEN *")
        .await
        .expect("unlisten");
    proxy.shutdown().await;
}
