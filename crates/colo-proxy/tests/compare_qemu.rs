//! Wire compatibility with QEMU's own colo-compare (Debian's `qemu-system-x86`):
//! the same primary/secondary input through QEMU's colo-compare and through
//! `colo-proxy compare` must come out of outdev as the same bytes, framing included,
//! with and without vnet headers.
//!
//! QEMU runs standalone (`-M none`, no guest) with three socket chardevs that
//! connect to this test's listeners. Traffic is in-order IPv4 TCP and UDP, and the
//! reader keeps up, which avoids QEMU's known faults (LIFO release under
//! backpressure, IPv6 passed uncompared). Without QEMU the test prints
//! `SKIPPED: qemu-system-x86_64 not found` and passes.

mod common;

use std::io::Write as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use colo_core::sim::{FlowAddrs, Towards, udp_frame};
use common::{Proxy, QEMU, Qemu, qemu_path, read_for, traffic, wire, write_split};

/// Feed `bytes` to the primary and `sec_bytes` to the secondary, and collect outdev
/// until `want` bytes came (or 10 s passed), plus a short quiet period.
fn feed_and_collect(
    pri: &mut UnixStream,
    sec: &mut UnixStream,
    out: &mut UnixStream,
    bytes: &[u8],
    sec_bytes: &[u8],
    want: usize,
) -> Vec<u8> {
    // Frame by frame alternating sides would be closest to real life; split writes
    // stress the readers too. The secondary goes first so nothing waits long.
    let mut sec_w = sec.try_clone().unwrap();
    let b = sec_bytes.to_vec();
    let t = std::thread::spawn(move || write_split(&mut sec_w, &b, 21));
    t.join().unwrap();
    write_split(pri, bytes, 22);
    pri.flush().unwrap();
    // Collect until expected length or quiet.
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < want && Instant::now() < deadline {
        got.extend(read_for(out, Duration::from_millis(200)));
    }
    got.extend(read_for(out, Duration::from_millis(300)));
    got
}

fn through_qemu(
    qemu_bin: &str,
    bytes: &[u8],
    sec_bytes: &[u8],
    want: usize,
    vnet: bool,
) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n);
    let lp = UnixListener::bind(path("pri.sock")).unwrap();
    let ls = UnixListener::bind(path("sec.sock")).unwrap();
    let lo = UnixListener::bind(path("out.sock")).unwrap();
    let log = path("qemu.log");
    let mut cc =
        "colo-compare,id=cc0,primary_in=pri,secondary_in=sec,outdev=out,iothread=iot0".to_owned();
    if vnet {
        cc.push_str(",vnet_hdr_support=on");
    }
    let chardev = |id: &str| {
        format!(
            "socket,id={id},path={}",
            path(&format!("{id}.sock")).display()
        )
    };
    let mut args: Vec<String> = vec!["-object".into(), "iothread,id=iot0".into()];
    for id in ["pri", "sec", "out"] {
        args.extend(["-chardev".into(), chardev(id)]);
    }
    args.extend(["-object".into(), cc]);
    let mut qemu = Qemu::start(qemu_bin, &args, log);
    let mut pri = qemu.accept(&lp, "primary_in");
    let mut sec = qemu.accept(&ls, "secondary_in");
    let mut out = qemu.accept(&lo, "outdev");
    let got = feed_and_collect(&mut pri, &mut sec, &mut out, bytes, sec_bytes, want);
    qemu.assert_running();
    got
}

fn through_colo_proxy(bytes: &[u8], sec_bytes: &[u8], want: usize, vnet: bool) -> Vec<u8> {
    let extra: &[&str] = if vnet { &["--vnet-hdr-support"] } else { &[] };
    let mut proxy = Proxy::start_compare(extra);
    let mut pri = proxy.connect("pri.sock");
    let mut sec = proxy.connect("sec.sock");
    let mut out = proxy.connect("out.sock");
    let got = feed_and_collect(&mut pri, &mut sec, &mut out, bytes, sec_bytes, want);
    assert!(proxy.stop().success());
    got
}

fn same_output_as_qemu(vnet: bool) {
    let Some(qemu) = qemu_path() else {
        println!("SKIPPED: {QEMU} not found");
        return;
    };
    let frames = traffic(4, 8, vnet);
    let bytes = wire(&frames, vnet);
    let from_qemu = through_qemu(&qemu, &bytes, &bytes, bytes.len(), vnet);
    let ours = through_colo_proxy(&bytes, &bytes, bytes.len(), vnet);
    println!(
        "vnet={vnet}: input {} frames / {} bytes; QEMU released {} bytes, colo-proxy {} bytes",
        frames.len(),
        bytes.len(),
        from_qemu.len(),
        ours.len()
    );
    assert_eq!(
        from_qemu.len(),
        bytes.len(),
        "QEMU released everything (sanity of the setup)"
    );
    assert_eq!(
        ours, from_qemu,
        "colo-proxy's outdev bytes differ from QEMU's"
    );
}

/// One UDP datagram differs on the secondary: both hold exactly that frame and
/// release everything else identically.
fn same_output_as_qemu_with_divergence(vnet: bool) {
    let Some(qemu) = qemu_path() else {
        println!("SKIPPED: {QEMU} not found");
        return;
    };
    let frames = traffic(4, 8, vnet);
    let bad = FlowAddrs::v4(1000 + 5);
    let index = frames
        .iter()
        .position(|f| f.data.windows(10).any(|w| w == b"datagram 5"))
        .expect("datagram 5 in the traffic");
    let mut sec_frames = frames.clone();
    sec_frames[index] = common::with_vnet(udp_frame(&bad, Towards::Client, b"datagrXm 5"), vnet);
    assert_eq!(sec_frames[index].data.len(), frames[index].data.len());
    let bytes = wire(&frames, vnet);
    let sec_bytes = wire(&sec_frames, vnet);
    let mut expected = frames.clone();
    expected.remove(index);
    let expected = wire(&expected, vnet);

    let from_qemu = through_qemu(&qemu, &bytes, &sec_bytes, expected.len(), vnet);
    let ours = through_colo_proxy(&bytes, &sec_bytes, expected.len(), vnet);
    println!(
        "vnet={vnet}, one diverging datagram: QEMU released {} bytes, colo-proxy {} bytes, expected {}",
        from_qemu.len(),
        ours.len(),
        expected.len()
    );
    assert_eq!(
        from_qemu, expected,
        "QEMU held the diverging datagram only (setup sanity)"
    );
    assert_eq!(
        ours, from_qemu,
        "colo-proxy's outdev bytes differ from QEMU's"
    );
}

#[test]
fn compare_qemu_same_released_bytes_with_divergence() {
    same_output_as_qemu_with_divergence(false);
}

#[test]
fn compare_qemu_same_released_bytes_with_divergence_vnet() {
    same_output_as_qemu_with_divergence(true);
}

#[test]
fn compare_qemu_same_released_bytes() {
    same_output_as_qemu(false);
}

#[test]
fn compare_qemu_same_released_bytes_vnet() {
    same_output_as_qemu(true);
}
