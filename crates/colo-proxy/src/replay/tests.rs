//! Unit and property tests of the replay.

use std::path::{Path, PathBuf};

use clap::Parser;
use proptest::prelude::*;

use super::args::ReplayArgs;
use super::capture::{CaptureReader, Link, to_ethernet};
use super::headers;
use super::progress::Progress;
use super::run;

#[derive(Debug, Parser)]
struct Wrap {
    #[command(flatten)]
    args: ReplayArgs,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/replay")
        .join(name)
}

fn replay(extra: &[&str], p: &Path, s: &Path) -> super::report::Report {
    let mut argv = vec![
        "replay".to_string(),
        p.display().to_string(),
        s.display().to_string(),
    ];
    argv.extend(extra.iter().map(|a| (*a).to_string()));
    let args = Wrap::parse_from(argv).args;
    run::replay(&args, &mut Progress::new(false)).expect("replay")
}

/// A classic little-endian pcap: (ts_sec, ts_frac, captured, wire length) per record.
type Record = ([u32; 4], Vec<u8>);

fn read_pcap(bytes: &[u8]) -> (Vec<u8>, Vec<Record>) {
    let header = bytes[..24].to_vec();
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let w = |i: usize| u32::from_le_bytes(bytes[at + i..at + i + 4].try_into().unwrap());
        let h = [w(0), w(4), w(8), w(12)];
        let n = h[2] as usize;
        out.push((h, bytes[at + 16..at + 16 + n].to_vec()));
        at += 16 + n;
    }
    (header, out)
}

fn write_pcap(header: &[u8], recs: &[Record]) -> Vec<u8> {
    let mut v = header.to_vec();
    for (h, d) in recs {
        for w in h {
            v.extend_from_slice(&w.to_le_bytes());
        }
        v.extend_from_slice(d);
    }
    v
}

/// A copy of an Ethernet/IPv4 capture in which every connection's two ISNs, every
/// TCP timestamp value and the capture clock are shifted.
fn shifted(bytes: &[u8], seed: u32, ts_delta: u32, clock_secs: u32) -> Vec<u8> {
    let (header, mut recs) = read_pcap(bytes);
    for (h, d) in &mut recs {
        h[0] += clock_secs;
        if d.len() < 38 || d[12..14] != [0x08, 0x00] {
            continue;
        }
        let src_port = u16::from_be_bytes([d[34], d[35]]);
        let dst_port = u16::from_be_bytes([d[36], d[37]]);
        // Per-connection deltas, from the client's port.
        let from_vm = d[26..30] == [10, 77, 0, 2];
        let client_port = u32::from(if from_vm { dst_port } else { src_port });
        let vm_delta = seed.wrapping_mul(client_port | 1).rotate_left(7);
        let client_delta = seed.wrapping_add(client_port).wrapping_mul(0x9e37_79b9);
        let (mine, theirs) = if from_vm {
            (vm_delta, client_delta)
        } else {
            (client_delta, vm_delta)
        };
        headers::shift_tcp(d, mine, theirs, ts_delta);
    }
    write_pcap(&header, &recs)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// A capture compared with a copy of itself whose ISNs (both sides, every
    /// connection), TCP timestamps and capture clock are shifted is identical.
    #[test]
    fn shifted_copy_is_identical(
        seed in any::<u32>(),
        ts_delta in any::<u32>(),
        clock in 0u32..100_000,
        name in prop::sample::select(vec!["many-short.primary.pcap", "nondet.secondary.pcap", "rst-vs-fin.secondary.pcap", "snaplen.secondary.pcap"]),
    ) {
        let original = std::fs::read(fixture(name)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("shifted.pcap");
        std::fs::write(&copy, shifted(&original, seed, ts_delta, clock)).unwrap();
        let r = replay(&["--clock", "relative"], &fixture(name), &copy);
        let bad: Vec<_> = r.connections.iter().filter(|c| !matches!(c.verdict, "identical" | "incomplete")).collect();
        prop_assert!(bad.is_empty(), "{}", r.text());
        prop_assert_eq!(r.summary.checkpoints, 0);
        prop_assert!(r.summary.frames_compared[1] > 0);
    }
}

#[test]
fn fixture_identical_to_itself() {
    for name in [
        "segmentation.secondary.pcapng",
        "cooked.primary.pcap",
        "udp.primary.pcapng",
    ] {
        let r = replay(&[], &fixture(name), &fixture(name));
        assert_eq!(r.result, "identical", "{name}: {}", r.text());
    }
}

#[test]
fn link_types_become_ethernet() {
    let ip = [
        0x45u8, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    let mut out = Vec::new();
    to_ethernet(Link::RawIp, &ip, &mut out);
    assert_eq!(&out[12..14], &[0x08, 0x00]);
    assert_eq!(&out[14..], &ip);
    let mut sll = vec![0, 4, 0, 1, 0, 6, 2, 0, 0, 0, 0, 9, 0, 0, 0x08, 0x00];
    sll.extend_from_slice(&ip);
    to_ethernet(Link::Sll, &sll, &mut out);
    assert_eq!(&out[6..12], &[2, 0, 0, 0, 0, 9]);
    assert_eq!(&out[14..], &ip);
    let mut sll2 = vec![
        0x86, 0xdd, 0, 0, 0, 0, 0, 1, 0, 1, 4, 6, 2, 0, 0, 0, 0, 7, 0, 0,
    ];
    sll2.extend_from_slice(&[0x60; 40]);
    to_ethernet(Link::Sll2, &sll2, &mut out);
    assert_eq!(&out[12..14], &[0x86, 0xdd]);
    assert_eq!(&out[6..12], &[2, 0, 0, 0, 0, 7]);
    let mut null = 2u32.to_le_bytes().to_vec();
    null.extend_from_slice(&ip);
    to_ethernet(Link::Null, &null, &mut out);
    assert_eq!(&out[14..], &ip);
}

#[test]
fn damaged_captures_name_offset_and_problem() {
    let good = std::fs::read(fixture("nondet.primary.pcap")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "cut.pcap",
            good[..good.len() - 7].to_vec(),
            "file truncated",
        ),
        (
            "link.pcap",
            {
                let mut b = good.clone();
                b[20] = 147;
                b
            },
            "unknown link type 147",
        ),
        (
            "len.pcap",
            {
                let mut b = good.clone();
                b[24 + 8..24 + 12].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
                b
            },
            "bad packet record length",
        ),
        (
            "magic.pcap",
            b"hello world, not a capture".to_vec(),
            "not a pcap or pcapng file",
        ),
    ];
    for (name, bytes, problem) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let mut r = CaptureReader::open(&path);
        let err = loop {
            match r {
                Err(e) => break e,
                Ok(ref mut reader) => match reader.next_packet() {
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("{name}: read to the end"),
                    Err(e) => break e,
                },
            }
        };
        assert!(err.problem.contains(problem), "{name}: {err}");
        assert!(err.to_string().contains(name), "{err}");
    }
    // pcapng: a bad block length.
    let mut ng = std::fs::read(fixture("udp.primary.pcapng")).unwrap();
    let shb = u32::from_le_bytes(ng[4..8].try_into().unwrap()) as usize;
    let idb = u32::from_le_bytes(ng[shb + 4..shb + 8].try_into().unwrap()) as usize;
    let at = shb + idb;
    ng[at + 4..at + 8].copy_from_slice(&13u32.to_le_bytes());
    let path = dir.path().join("block.pcapng");
    std::fs::write(&path, &ng).unwrap();
    let mut reader = CaptureReader::open(&path).unwrap();
    let err = reader.next_packet().unwrap_err();
    assert_eq!(err.offset, at as u64);
    assert!(err.problem.contains("bad block length 13"), "{err}");
}
