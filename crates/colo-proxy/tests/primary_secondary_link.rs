//! The link between `colo-proxy primary` and `secondary` under stress: dgram ports
//! on UDP loopback with the link on TCP loopback, restarts of either proxy in any
//! order, a peer that keeps the connection open but stops talking (heartbeat
//! timeout), and peers that speak something else.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, UdpSocket};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use colo_core::Frame;
use colo_core::sim::{FlowAddrs, Towards, udp_frame};
use common::{Control, Proxy, wait_for_stats};

/// A free loopback port (bound then released: the proxy binds it right after).
fn free_udp() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_tcp() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A test-side UDP peer of a dgram port.
fn udp_peer() -> (UdpSocket, u16) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let port = s.local_addr().unwrap().port();
    (s, port)
}

fn recv(sock: &UdpSocket) -> Vec<u8> {
    let mut buf = [0u8; 65536];
    let (n, _) = sock.recv_from(&mut buf).expect("a datagram within 10 s");
    buf[..n].to_vec()
}

fn dgram(local: u16, remote: u16) -> String {
    format!("dgram:127.0.0.1:{local}=127.0.0.1:{remote}")
}

#[test]
fn dgram_ports_and_link_reconnect_in_both_orders() {
    let (client, client_port) = udp_peer();
    let (pvm, pvm_port) = udp_peer();
    let (svm, svm_port) = udp_peer();
    let (p_client, p_pvm, s_svm) = (free_udp(), free_udp(), free_udp());
    let link_port = free_tcp();
    let p_args = [
        "--client".to_owned(),
        dgram(p_client, client_port),
        "--pvm".to_owned(),
        dgram(p_pvm, pvm_port),
        "--link".to_owned(),
        format!("tcp:127.0.0.1:{link_port},connect"),
        "--control".to_owned(),
        "unix:{dir}/ctl.sock".to_owned(),
    ];
    let s_args = [
        "--svm".to_owned(),
        dgram(s_svm, svm_port),
        "--link".to_owned(),
        format!("tcp:127.0.0.1:{link_port}"),
        "--control".to_owned(),
        "unix:{dir}/ctl.sock".to_owned(),
    ];
    let p_args: Vec<&str> = p_args.iter().map(String::as_str).collect();
    let s_args: Vec<&str> = s_args.iter().map(String::as_str).collect();

    // The primary first: it dials until the secondary listens.
    let mut primary = Proxy::start_role("primary", &p_args);
    let mut pctl = Control::new(primary.connect("ctl.sock"));
    std::thread::sleep(Duration::from_millis(200));
    let mut secondary = Proxy::start_role("secondary", &s_args);
    let mut sctl = Control::new(secondary.connect("ctl.sock"));
    wait_for_stats(&mut pctl, "link up", |s| s["link"]["up"] == true);

    let exchange = |n: u32, pctl: &mut Control| {
        let addrs = FlowAddrs::v4(100 + n);
        let req = udp_frame(&addrs, Towards::Vm, format!("request {n}").as_bytes());
        client.send_to(&req.data, ("127.0.0.1", p_client)).unwrap();
        assert_eq!(
            recv(&pvm),
            req.data,
            "client datagram reaches the primary VM"
        );
        assert_eq!(recv(&svm), req.data, "and the secondary VM over the link");
        let reply: Frame = udp_frame(&addrs, Towards::Client, format!("reply {n}").as_bytes());
        pvm.send_to(&reply.data, ("127.0.0.1", p_pvm)).unwrap();
        svm.send_to(&reply.data, ("127.0.0.1", s_svm)).unwrap();
        assert_eq!(
            recv(&client),
            reply.data,
            "identical replies: released once"
        );
        let st = pctl.command("stats");
        assert_eq!(st["stats"]["mode"], "compare", "{st}");
    };
    exchange(1, &mut pctl);

    // The primary restarts: the secondary keeps listening and takes the new link.
    assert!(primary.stop().success());
    wait_for_stats(&mut sctl, "link down", |s| s["link"]["up"] == false);
    let mut primary = Proxy::start_role("primary", &p_args);
    let mut pctl = Control::new(primary.connect("ctl.sock"));
    wait_for_stats(&mut pctl, "link up again", |s| s["link"]["up"] == true);
    wait_for_stats(&mut sctl, "secondary sees the link", |s| {
        s["link"]["up"] == true
    });
    exchange(2, &mut pctl);

    // The secondary restarts: the primary redials.
    assert!(secondary.stop().success());
    pctl.event("degraded");
    let mut secondary = Proxy::start_role("secondary", &s_args);
    pctl.event("secondary-back");
    pctl.command("checkpoint-done");
    let mut sctl = Control::new(secondary.connect("ctl.sock"));
    wait_for_stats(&mut sctl, "checkpoint forwarded", |s| {
        s["checkpoints"]["link"] == 1
    });
    exchange(3, &mut pctl);
    assert!(primary.stop().success());
    assert!(secondary.stop().success());
}

/// A hello as `role` (1 primary, 2 secondary) would send it.
fn hello(role: u8) -> Vec<u8> {
    let mut h = b"COLOLINK".to_vec();
    h.extend_from_slice(&[0, 1, role]);
    h
}

/// `colo-proxy primary` (with `extra`) whose link connects to a listener of the test
/// standing in for the secondary, with its control socket connected. The returned
/// directory holds the listener's socket.
fn primary_with_fake_secondary(
    extra: &[&str],
) -> (tempfile::TempDir, UnixListener, Proxy, Control) {
    let dir = tempfile::tempdir().unwrap();
    let link_path = dir.path().join("fake-secondary.sock");
    let listener = UnixListener::bind(&link_path).unwrap();
    let link = format!("unix:{},connect", link_path.display());
    let mut primary = common::start_primary(tempfile::tempdir().unwrap(), &link, extra);
    let pctl = Control::new(primary.connect("ctl.sock"));
    (dir, listener, primary, pctl)
}

#[test]
fn heartbeat_timeout_drops_a_silent_peer_that_keeps_the_connection() {
    let (_dir, listener, mut primary, mut pctl) =
        primary_with_fake_secondary(&["--heartbeat-interval", "50", "--heartbeat-timeout", "400"]);
    let (mut peer, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut theirs = [0u8; 11];
    peer.read_exact(&mut theirs).unwrap();
    assert_eq!(&theirs[..], &hello(1)[..], "the primary's hello");
    peer.write_all(&hello(2)).unwrap();
    // Heartbeats arrive (be32 length 1, type 4) while we say nothing.
    let mut hb = [0u8; 5];
    peer.read_exact(&mut hb).unwrap();
    assert_eq!(hb, [0, 0, 0, 1, 4]);
    let started = Instant::now();
    let ev = pctl.event("degraded");
    assert_eq!(ev["reason"], "link disconnected", "{ev}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        primary.log_text().contains("heartbeat timeout"),
        "{}",
        primary.log_text()
    );
    // The socket is still open on our side; the primary dials again.
    let (_again, _) = listener.accept().unwrap();
    drop(peer);
    assert!(primary.stop().success());
}

#[test]
fn garbage_on_the_link_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut secondary = common::start_secondary(dir, &["--heartbeat-timeout", "2000"]);
    let mut sctl = Control::new(secondary.connect("ctl.sock"));
    let link = secondary.path("link.sock");
    let connect = || {
        let s = UnixStream::connect(&link).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    let read_to_end = |s: &mut UnixStream| {
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all);
        all
    };

    // Something else entirely (an HTTP client, say).
    let mut s = connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let ev = sctl.event("link-error");
    assert!(
        ev["error"]
            .as_str()
            .unwrap()
            .contains("does not speak the colo-proxy link protocol"),
        "{ev}"
    );
    assert_eq!(
        &read_to_end(&mut s)[..],
        &hello(2)[..],
        "our hello, then closed"
    );

    // Another secondary (wrong role).
    let mut s = connect();
    s.write_all(&hello(2)).unwrap();
    let ev = sctl.event("link-error");
    assert!(
        ev["error"].as_str().unwrap().contains("secondary proxy"),
        "{ev}"
    );
    read_to_end(&mut s);

    // A right hello, then a hostile length prefix.
    let mut s = connect();
    s.write_all(&hello(1)).unwrap();
    sctl.event("peer-connected");
    s.write_all(&[0xff, 0xff, 0xff, 0xff, 1]).unwrap();
    let ev = sctl.event("link-error");
    assert!(
        ev["error"]
            .as_str()
            .unwrap()
            .contains("exceeds the maximum"),
        "{ev}"
    );
    read_to_end(&mut s);

    // A right hello, then random bytes: an error, never a panic.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let junk: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut s = connect();
    s.write_all(&hello(1)).unwrap();
    let _ = s.write_all(&junk);
    sctl.event("link-error");
    drop(s);

    let st = wait_for_stats(&mut sctl, "errors counted", |s| {
        s["link"]["protocol_errors"].as_u64() >= Some(4)
    });
    assert_eq!(
        st["stats"]["frames_in"]["client_via_link"]["frames"], 0,
        "{st}"
    );
    assert!(secondary.alive(), "{}", secondary.log_text());
    assert!(!secondary.log_text().contains("panicked"));
    assert!(secondary.stop().success());
}

#[test]
fn a_stuck_link_never_blocks_client_to_pvm_and_overflow_asks_for_a_checkpoint() {
    let (_dir, listener, mut primary, mut pctl) =
        primary_with_fake_secondary(&["--out-buffer", "64K", "--heartbeat-timeout", "60000"]);
    let mut client = common::FramedPeer::new(primary.connect("client.sock"));
    let mut pvm = common::FramedPeer::new(primary.connect("pvm.sock"));
    // A secondary that says hello and then never reads.
    let (mut peer, _) = listener.accept().unwrap();
    peer.write_all(&hello(2)).unwrap();
    wait_for_stats(&mut pctl, "link up", |s| s["link"]["up"] == true);

    let addrs = FlowAddrs::v4(9);
    let payload = vec![0x5a; 1400];
    let frames: Vec<Frame> = (0..400)
        .map(|_| udp_frame(&addrs, Towards::Vm, &payload))
        .collect();
    // 400 x ~1.4 KB is far more than the socket buffer plus the 64 KiB queue.
    let reader = std::thread::spawn(move || {
        let got = pvm.take(400);
        (pvm, got)
    });
    for chunk in frames.chunks(50) {
        client.send(chunk);
    }
    let (_pvm, got) = reader.join().unwrap();
    assert_eq!(
        got, frames,
        "every client frame reached the primary VM, in order"
    );
    let ev = pctl.event("checkpoint-requested");
    assert_eq!(ev["reason"], "mirror-overflow", "{ev}");
    let st = pctl.command("stats");
    let m = &st["stats"]["mirror"];
    assert!(m["overflow"].as_u64() > Some(0), "{st}");
    assert_eq!(
        m["overflow_checkpoints"], 1,
        "asked once until a checkpoint: {st}"
    );
    assert_eq!(
        m["mirrored"].as_u64().unwrap() + m["overflow"].as_u64().unwrap(),
        400,
        "{st}"
    );
    drop(peer);
    assert!(primary.stop().success());
}
