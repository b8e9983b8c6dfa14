//! Connection bounds on the real binary: 2,000 half-open sockets (request heads that never
//! finish) are closed within the header timeout while real requests are served meanwhile; an
//! idle keep-alive connection lives exactly its keep-alive timeout; a stalled body gets 408.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn addr(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_string()
}

/// Raises this process's open-file limit (the child server inherits it) so 2,000 sockets on
/// each side fit.
fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on this process.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Whether the server closed `s` (EOF or reset) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let _ = s.set_read_timeout(Some(within));
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn half_open_sockets_are_closed_and_real_clients_are_served() {
    raise_fd_limit(8192);
    let server = Server::builder(&tiny_model_dir())
        .args(["--header-read-timeout", "3", "--keep-alive-timeout", "30"])
        .start();
    let a = addr(&server);
    let mut idle: Vec<(Instant, TcpStream)> = Vec::with_capacity(2000);
    for i in 0..2000 {
        let mut s = TcpStream::connect(&a).expect("connect");
        // Half of them send part of a head, half nothing at all.
        if i % 2 == 0 {
            s.write_all(b"POST /embed HTTP/1.1\r\nHost: x\r\n")
                .expect("partial head");
        }
        idle.push((Instant::now(), s));
    }
    // Served meanwhile: the newest half-open sockets are well inside their timeout.
    let t = Instant::now();
    let (status, body) = server.post_json("/embed", serde_json::json!({"inputs": "still served"}));
    assert_eq!(status, 200, "{body}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the real request waited {:?} behind 2,000 half-open sockets",
        t.elapsed()
    );
    // Every half-open socket closed within the timeout from its opening (plus the check
    // interval and a margin for this 2-core machine).
    let mut still_open = 0;
    for (opened, s) in &mut idle {
        let deadline = *opened + Duration::from_secs(3) + Duration::from_secs(4);
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10));
        if !closed_within(s, left) {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open, 0,
        "sockets the server left open past the header timeout"
    );
    let (status, _) = server.post_json("/embed", serde_json::json!({"inputs": "after"}));
    assert_eq!(status, 200);
}

#[test]
fn idle_keep_alive_connections_live_their_timeout_and_stalled_bodies_get_408() {
    let server = Server::builder(&tiny_model_dir())
        .args([
            "--header-read-timeout",
            "2",
            "--keep-alive-timeout",
            "4",
            "--body-read-timeout",
            "1",
        ])
        .start();
    let a = addr(&server);
    let request = b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"inputs\": \"hi\"}\n";
    let mut s = TcpStream::connect(&a).expect("connect");
    s.write_all(request).expect("request");
    let mut got = Vec::new();
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("]]") {
        let n = s.read(&mut buf).expect("response");
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    // Idle past the header timeout but inside the keep-alive timeout: still usable.
    std::thread::sleep(Duration::from_millis(2500));
    s.write_all(request)
        .expect("second request on the idle connection");
    got.clear();
    while !String::from_utf8_lossy(&got).contains("]]") {
        let n = s.read(&mut buf).expect("second response");
        assert!(
            n > 0,
            "the keep-alive connection was closed before its timeout"
        );
        got.extend_from_slice(&buf[..n]);
    }
    // Then idle past the keep-alive timeout: closed.
    let idle_from = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(8)),
        "never closed"
    );
    let waited = idle_from.elapsed();
    assert!(
        waited >= Duration::from_millis(3500) && waited < Duration::from_secs(6),
        "closed after {waited:?}, keep-alive timeout 4 s"
    );

    // A body that stalls: 408 after the body timeout.
    let mut s = TcpStream::connect(&a).expect("connect");
    s.write_all(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{\"inputs\"")
        .expect("partial body");
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = s.read(&mut buf).expect("response");
        assert!(n > 0, "closed without a response");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}
