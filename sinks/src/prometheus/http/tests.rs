use super::*;
use std::io::{Read, Write};
use std::net::SocketAddr;

/// A server on a loopback port of its own, on a runtime of its own thread.
struct Running {
    addr: SocketAddr,
    feed: Arc<Feed>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    _runtime: tokio::runtime::Runtime,
}

fn start(web: WebConfig, limits: Limits) -> Running {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let feed = Arc::new(Feed::default());
    feed.publish("m 1\n".to_string(), true, Duration::from_secs(30));
    let listener = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = runtime.spawn(serve(Arc::new(listener), feed.clone(), web, limits));
    Running {
        addr,
        feed,
        server,
        _runtime: runtime,
    }
}

/// One request on a connection of its own; the whole response.
fn exchange(addr: SocketAddr, request: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read");
    String::from_utf8_lossy(&response).into_owned()
}

fn request(method: &str, path: &str, extra: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n")
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[test]
fn get_head_and_the_other_methods() {
    let s = start(WebConfig::default(), Limits::default());
    let ok = exchange(s.addr, &request("GET", "/metrics?x=1", ""));
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert!(ok.contains(CONTENT_TYPE), "{ok}");
    assert!(body(&ok).starts_with("m 1\n"), "{ok}");
    assert!(body(&ok).contains("process_"), "process metrics: {ok}");
    let head = exchange(s.addr, &request("HEAD", "/metrics", ""));
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body(&head), "", "HEAD has no body: {head}");
    let head_missing = exchange(s.addr, &request("HEAD", "/nope", ""));
    assert!(head_missing.starts_with("HTTP/1.1 404"), "{head_missing}");
    assert_eq!(body(&head_missing), "", "{head_missing}");
    assert!(exchange(s.addr, &request("GET", "/nope", "")).starts_with("HTTP/1.1 404"));
    for path in ["/metrics", "/", "/-/healthy"] {
        let post = exchange(s.addr, &request("POST", path, "Content-Length: 0\r\n"));
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        assert!(post.contains("\r\nallow: GET, HEAD\r\n"), "{post}");
    }
    let landing = exchange(s.addr, &request("GET", "/", ""));
    assert!(landing.starts_with("HTTP/1.1 200"), "{landing}");
    assert!(landing.contains("href=\"metrics\""), "{landing}");
    let health = exchange(s.addr, &request("GET", "/-/healthy", ""));
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(body(&health).starts_with("ok: last full scan"), "{health}");
}

#[test]
fn health_fails_after_three_intervals_without_a_full_scan() {
    let feed = Feed::default();
    let t0 = Instant::now();
    assert!(feed.health(t0).is_ok(), "no scan yet, just started");
    let before = Instant::now();
    feed.publish(String::new(), true, Duration::from_secs(10));
    let scanned = Instant::now();
    assert!(feed.health(before + Duration::from_secs(30)).is_ok());
    feed.publish(String::new(), false, Duration::from_secs(10));
    let stale = feed
        .health(scanned + Duration::from_secs(31))
        .expect_err("a GPU poll is not a full scan");
    assert!(stale.contains("more than three intervals (30s)"), "{stale}");
    let fresh = Feed::default();
    let never = fresh
        .health(Instant::now() + Duration::from_secs(91))
        .expect_err("never scanned");
    assert!(never.contains("no full scan"), "{never}");
}

#[test]
fn wrong_or_missing_credentials_get_401() {
    let hash = bcrypt::hash("right", 4).expect("hash");
    let web = WebConfig {
        tls: None,
        users: [("prometheus".to_string(), hash)].into_iter().collect(),
    };
    let s = start(web, Limits::default());
    let auth = |user: &str, password: &str| {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Authorization: Basic {token}\r\n")
    };
    let none = exchange(s.addr, &request("GET", "/metrics", ""));
    assert!(none.starts_with("HTTP/1.1 401"), "{none}");
    assert!(
        none.contains("www-authenticate: Basic realm=\"detect-workloads\""),
        "{none}"
    );
    assert!(!body(&none).contains("m 1"), "{none}");
    for (user, password) in [
        ("prometheus", "wrong"),
        ("other", "right"),
        ("prometheus", ""),
    ] {
        let r = exchange(s.addr, &request("GET", "/metrics", &auth(user, password)));
        assert!(r.starts_with("HTTP/1.1 401"), "{user}:{password}: {r}");
    }
    let garbage = exchange(
        s.addr,
        &request("GET", "/metrics", "Authorization: Basic !!!\r\n"),
    );
    assert!(garbage.starts_with("HTTP/1.1 401"), "{garbage}");
    // Twice: the second is answered from the cache of verified passwords.
    for _ in 0..2 {
        let ok = exchange(
            s.addr,
            &request("GET", "/metrics", &auth("prometheus", "right")),
        );
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(body(&ok).starts_with("m 1\n"), "{ok}");
    }
    let after = exchange(
        s.addr,
        &request("GET", "/metrics", &auth("prometheus", "righ")),
    );
    assert!(after.starts_with("HTTP/1.1 401"), "{after}");
}

#[test]
fn idle_connections_at_the_cap_do_not_lock_a_scrape_out() {
    let limits = Limits {
        max_connections: 4,
        ..Limits::default()
    };
    let s = start(WebConfig::default(), limits);
    let idle: Vec<std::net::TcpStream> = (0..20)
        .map(|_| std::net::TcpStream::connect(s.addr).expect("connect"))
        .collect();
    for _ in 0..3 {
        let ok = exchange(s.addr, &request("GET", "/metrics", ""));
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    }
    drop(idle);
    let _ = &s.feed;
}

#[test]
fn a_connection_that_sends_no_request_is_closed_at_the_header_timeout() {
    let limits = Limits {
        header_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let s = start(WebConfig::default(), limits);
    let mut silent = std::net::TcpStream::connect(s.addr).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    // Closed by the server (end of stream, or a 408 then the end): not the
    // 10 s read timeout.
    let started = Instant::now();
    loop {
        match silent.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) => panic!("not closed by the server: {e}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // After a response, an idle keep-alive connection is closed too.
    let mut kept = std::net::TcpStream::connect(s.addr).expect("connect");
    kept.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    kept.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut all = Vec::new();
    loop {
        match kept.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) => panic!("idle keep-alive connection not closed: {e}"),
        }
    }
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200"));
}

#[test]
fn at_the_cap_a_connection_that_never_sent_a_request_goes_first() {
    let slots = Slots {
        max: 3,
        inner: Mutex::default(),
    };
    let t0 = Instant::now();
    let (scraper, _) = slots.admit(t0).expect("first");
    slots.set_busy(scraper, true);
    slots.set_busy(scraper, false);
    let (idle_a, _) = slots.admit(Instant::now()).expect("second");
    let (busy, _) = slots.admit(Instant::now()).expect("third");
    slots.set_busy(busy, true);
    // The scraper is the oldest, but it served a request: idle_a goes.
    let (fourth, _) = slots.admit(Instant::now()).expect("fourth");
    let open: Vec<u64> = slots.lock().open.keys().copied().collect();
    assert!(open.contains(&scraper) && open.contains(&busy), "{open:?}");
    assert!(!open.contains(&idle_a), "{open:?}");
    // Every other slot busy: the scraper's keep-alive goes next, and when all
    // are busy a newcomer is refused.
    slots.set_busy(fourth, true);
    let (fifth, _) = slots.admit(Instant::now()).expect("fifth");
    assert!(!slots.lock().open.contains_key(&scraper));
    slots.set_busy(fifth, true);
    let open: Vec<u64> = slots.lock().open.keys().copied().collect();
    for id in open {
        slots.set_busy(id, true);
    }
    assert!(slots.admit(Instant::now()).is_none(), "all busy: refused");
}

#[test]
fn a_stopped_server_closes_its_open_connections() {
    // A reload aborts the old server's task: a keep-alive connection opened
    // before must not go on being served by it (old feed, old credentials).
    let running = start(WebConfig::default(), Limits::default());
    let mut stream = std::net::TcpStream::connect(running.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut first = [0u8; 4096];
    let n = stream.read(&mut first).expect("read");
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    running.server.abort();
    std::thread::sleep(Duration::from_millis(300));
    let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut again = [0u8; 4096];
    // Closed: end of file or a reset; served: another response.
    let answer = match stream.read(&mut again) {
        Ok(n) => String::from_utf8_lossy(&again[..n]).into_owned(),
        Err(e) => format!("error: {e}"),
    };
    assert!(
        !answer.starts_with("HTTP/1.1"),
        "the old connection was still served: {answer}"
    );
}
