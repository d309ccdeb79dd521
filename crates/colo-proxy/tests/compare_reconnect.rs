//! `colo-proxy compare` peers coming and going: any connection order, a secondary
//! reconnect, an outdev reconnect with frames queued meanwhile, `,connect` and TCP
//! endpoints, and a hostile length prefix that costs only its own connection.

mod common;

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use colo_core::Frame;
use colo_core::sim::{FlowAddrs, TcpSender};
use common::{Proxy, read_for, read_frames, wire, write_split};

/// Data segments of a fresh connection (same on both sides).
fn conn_frames(n: u32, count: usize) -> Vec<Frame> {
    let mut s = TcpSender::new(FlowAddrs::v4(n), 10_000 * n, 77);
    let mut v = vec![s.syn_ack()];
    for i in 0..count {
        v.push(s.data(format!("flow {n} segment {i}").as_bytes()));
    }
    v
}

fn send_both(pri: &mut impl std::io::Write, sec: &mut impl std::io::Write, frames: &[Frame]) {
    let w = wire(frames, false);
    write_split(pri, &w, 11);
    write_split(sec, &w, 12);
}

#[test]
fn compare_any_connect_order_and_secondary_reconnect() {
    let mut proxy = Proxy::start_compare(&[]);
    // Outdev first, then secondary, then primary.
    let mut out = proxy.connect("out.sock");
    let mut sec = proxy.connect("sec.sock");
    let mut pri = proxy.connect("pri.sock");

    let a = conn_frames(1, 3);
    send_both(&mut pri, &mut sec, &a);
    assert_eq!(read_frames(&mut out, a.len(), false).0, a);

    // The secondary drops and comes back; comparison goes on.
    drop(sec);
    std::thread::sleep(Duration::from_millis(100));
    let mut sec = proxy.connect("sec.sock");
    let b = conn_frames(2, 4);
    send_both(&mut pri, &mut sec, &b);
    assert_eq!(read_frames(&mut out, b.len(), false).0, b);

    // The primary too.
    drop(pri);
    std::thread::sleep(Duration::from_millis(100));
    let mut pri = proxy.connect("pri.sock");
    let c = conn_frames(3, 2);
    send_both(&mut pri, &mut sec, &c);
    assert_eq!(read_frames(&mut out, c.len(), false).0, c);

    let log = proxy.log_text();
    assert!(log.matches("role=\"secondary_in\"").count() >= 3, "{log}");
    assert!(proxy.stop().success());
}

#[test]
fn compare_outdev_reconnect_keeps_queued_frames() {
    let mut proxy = Proxy::start_compare(&["--control", "unix:{dir}/ctl.sock"]);
    let mut pri = proxy.connect("pri.sock");
    let mut sec = proxy.connect("sec.sock");
    // No outdev yet: released frames queue up.
    let a = conn_frames(1, 5);
    send_both(&mut pri, &mut sec, &a);
    let mut ctl = common::Control::new(proxy.connect("ctl.sock"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = ctl.command("stats");
        if s["stats"]["outdev"]["queued_frames"] == a.len() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{s}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = proxy.connect("out.sock");
    assert_eq!(read_frames(&mut out, a.len(), false).0, a);

    // Outdev leaves; more frames are released meanwhile; a new outdev gets them.
    drop(out);
    std::thread::sleep(Duration::from_millis(100));
    let b = conn_frames(2, 5);
    send_both(&mut pri, &mut sec, &b);
    std::thread::sleep(Duration::from_millis(200));
    let mut out = proxy.connect("out.sock");
    let (got, _) = read_frames(&mut out, b.len(), false);
    assert_eq!(got, b);
    let s = ctl.command("stats");
    assert_eq!(s["stats"]["outdev"]["dropped_frames"], 0, "{s}");
    assert!(proxy.stop().success());
}

#[test]
fn compare_connect_mode_and_tcp_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    // Our outdev listens; the proxy dials it (and retries until it is there).
    let out_path = dir.path().join("out.sock");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let pri_ep = format!("tcp:127.0.0.1:{port}");
    let out_ep = format!("unix:{},connect", out_path.display());
    let mut proxy = Proxy::start_in(
        dir,
        &[
            "--primary-in",
            &pri_ep,
            "--secondary-in",
            "unix:{dir}/sec.sock",
            "--outdev",
            &out_ep,
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let listener = UnixListener::bind(&out_path).unwrap();
    let mut pri = {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut sec = proxy.connect("sec.sock");
    let (mut out, _) = listener.accept().unwrap();
    out.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let a = conn_frames(4, 3);
    send_both(&mut pri, &mut sec, &a);
    assert_eq!(read_frames(&mut out, a.len(), false).0, a);
    assert!(proxy.stop().success());
}

#[test]
fn compare_hostile_length_prefix_drops_only_that_connection() {
    let mut proxy = Proxy::start_compare(&[]);
    let mut out = proxy.connect("out.sock");
    let mut sec = proxy.connect("sec.sock");
    let mut evil = proxy.connect("pri.sock");
    evil.write_all(&[0xff, 0xff, 0xff, 0xf0, 1, 2, 3, 4])
        .unwrap();
    // The proxy hangs up on it.
    let mut buf = [0u8; 16];
    evil.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let r = evil.read(&mut buf);
    assert!(
        matches!(r, Ok(0)) || r.is_err(),
        "connection should be closed: {r:?}"
    );
    assert!(proxy.alive(), "the process survives:\n{}", proxy.log_text());
    let log = proxy.log_text();
    assert!(log.contains("exceeds max_frame_len"), "{log}");
    assert!(log.contains("framing error"), "{log}");

    // A new primary connection works.
    let mut pri = proxy.connect("pri.sock");
    let a = conn_frames(5, 3);
    send_both(&mut pri, &mut sec, &a);
    assert_eq!(read_frames(&mut out, a.len(), false).0, a);
    assert!(read_for(&mut out, Duration::from_millis(100)).is_empty());
    assert!(proxy.stop().success());
}
