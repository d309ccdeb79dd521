//! Golden tests of `colo-proxy replay` on captures from real Linux TCP stacks
//! (tests/fixtures/replay, made by scripts/make-fixtures.sh): every expectation in
//! the manifest, the shape of the text and JSON reports, exit codes, damaged input
//! and evidence files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/replay")
}

fn replay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_colo-proxy"))
        .arg("replay")
        .args(args)
        .current_dir(dir())
        .output()
        .expect("run colo-proxy")
}

fn json(args: &[&str]) -> (i32, Value) {
    let mut a = args.to_vec();
    a.extend(["--format", "json"]);
    let out = replay(&a);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap_or(-1), v)
}

fn manifest() -> Vec<Value> {
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap())
            .unwrap();
    m["fixtures"].as_array().unwrap().clone()
}

#[test]
fn replay_fixtures_match_manifest() {
    let fixtures = manifest();
    assert!(fixtures.len() >= 7);
    for f in fixtures {
        let name = f["name"].as_str().unwrap();
        let (p, s) = (
            f["primary"].as_str().unwrap(),
            f["secondary"].as_str().unwrap(),
        );
        for file in [p, s] {
            let len = std::fs::metadata(dir().join(file)).unwrap().len();
            assert!(len < 200_000, "{file} is {len} bytes");
        }
        let (code, r) = json(&[p, s]);
        let ctx = format!("{name}: {}", serde_json::to_string_pretty(&r).unwrap());
        assert_eq!(i64::from(code), f["exit"].as_i64().unwrap(), "{ctx}");
        assert_eq!(r["exit_code"], f["exit"], "{ctx}");
        assert_eq!(r["result"], f["result"], "{ctx}");
        assert_eq!(r["summary"]["verdicts"], f["verdicts"], "{ctx}");
        assert_eq!(r["summary"]["checkpoints"], f["checkpoints"], "{ctx}");
        if let Some(d) = f.get("divergences") {
            assert_eq!(&r["summary"]["divergences_by_reason"], d, "{ctx}");
        }
        if let Some(b) = f.get("bytes_compared") {
            assert_eq!(&r["summary"]["bytes_compared"], b, "{ctx}");
        }
        if let Some(n) = f.get("datagrams_compared") {
            assert_eq!(&r["summary"]["datagrams_compared"], n, "{ctx}");
        }
        if let Some(how) = f.get("paired_by") {
            for c in r["connections"].as_array().unwrap() {
                assert_eq!(&c["paired_by"], how, "{ctx}");
            }
        }
        if let Some(l) = f.get("link_type") {
            assert_eq!(&r["inputs"][0]["link_types"][0], l, "{ctx}");
        }
        if f.get("cut_frames").is_some() {
            assert!(r["inputs"][0]["cut_frames"].as_u64().unwrap() > 0, "{ctx}");
            assert!(
                r["connections"][0]["note"]
                    .as_str()
                    .unwrap()
                    .contains("snaplen"),
                "{ctx}"
            );
        }
        if let Some(c) = f.get("close_differs") {
            assert_eq!(&r["connections"][0]["close_differs"], c, "{ctx}");
        }
        if let Some(d) = f.get("first_divergence") {
            let got = &r["connections"][0]["divergence"];
            assert_eq!(got["reason"], d["reason"], "{ctx}");
            assert_eq!(got["offset"], d["offset"], "{ctx}");
            let pb = format!("[{}]", d["primary_byte"].as_str().unwrap());
            let sb = format!("[{}]", d["secondary_byte"].as_str().unwrap());
            assert!(
                got["primary"]["hex"].as_str().unwrap().contains(&pb),
                "{ctx}"
            );
            assert!(
                got["secondary"]["hex"].as_str().unwrap().contains(&sb),
                "{ctx}"
            );
            assert!(got["primary"]["packet"].as_u64().is_some(), "{ctx}");
            assert!(got["secondary"]["packet"].as_u64().is_some(), "{ctx}");
        }
    }
}

#[test]
fn replay_json_report_shape() {
    let (_, r) = json(&["nondet.primary.pcap", "nondet.secondary.pcap"]);
    assert_eq!(r["schema"], "colo-proxy-replay/1");
    for key in [
        "inputs",
        "clock",
        "config",
        "connections",
        "summary",
        "warnings",
        "result",
        "exit_code",
    ] {
        assert!(r.get(key).is_some(), "missing {key}");
    }
    let i = &r["inputs"][0];
    for key in [
        "role",
        "path",
        "format",
        "link_types",
        "packets",
        "bytes",
        "cut_frames",
        "vm_side",
        "vm_frames",
        "client_frames",
        "other_frames",
        "first_time",
        "error",
    ] {
        assert!(i.get(key).is_some(), "inputs[0] missing {key}");
    }
    assert_eq!(i["vm_side"]["how"], "guessed");
    let c = &r["connections"][0];
    for key in [
        "id",
        "proto",
        "flow",
        "verdict",
        "paired_by",
        "seq_alignment",
        "divergences",
        "primary",
        "secondary",
        "bytes_compared",
        "datagrams_compared",
        "divergence",
        "one_sided",
        "close_differs",
        "note",
    ] {
        assert!(c.get(key).is_some(), "connection missing {key}");
    }
    let d = &c["divergence"];
    for key in [
        "reason",
        "description",
        "time",
        "offset",
        "datagram",
        "primary",
        "secondary",
        "evidence",
    ] {
        assert!(d.get(key).is_some(), "divergence missing {key}");
    }
    for key in ["packet", "time", "from_offset", "hex", "text"] {
        assert!(d["primary"].get(key).is_some(), "excerpt missing {key}");
    }
    // The secondary went through the live rewriter; one divergence, one checkpoint,
    // counted under the documented model.
    assert_eq!(c["seq_alignment"], "rewriter");
    assert_eq!(c["divergences"], 1);
    let s = &r["summary"];
    assert_eq!(s["checkpoints"], 1);
    assert_eq!(s["checkpoint_model"], "resync_at_send_positions");
    assert_eq!(s["divergences_by_reason"]["payload"], 1);
}

#[test]
fn replay_text_report_shape() {
    let out = replay(&["nondet.primary.pcap", "nondet.secondary.pcap"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("primary   nondet.primary.pcap (pcap, ethernet): 14 packets"),
        "{text}"
    );
    assert!(
        lines[0].contains("guessed: the VM is 10.77.0.2 (it answered 1 SYN with SYN-ACK)"),
        "{text}"
    );
    assert!(
        text.contains(": DIVERGED (paired by order client port differs)"),
        "{text}"
    );
    assert!(text.contains("DIVERGENCE payload on tcp "), "{text}");
    assert!(
        text.contains("at stream offset 17: primary \"\\n"),
        "{text}"
    );
    assert!(text.contains("text ok 11 msg 7-0 abc[\\n]ok"), "{text}");
    assert!(text.contains("text ok 11 msg 7-0 abc[ ]t="), "{text}");
    assert!(
        text.contains("summary: 1 connections: 1 diverged"),
        "{text}"
    );
    assert!(
        text.contains("checkpoints the live proxy would have asked for: 1 (compare_timeout 3000ms, min interval 100ms, duration 0ms; model resync_at_send_positions)"),
        "{text}"
    );
    assert!(
        lines.last().unwrap().starts_with("result: DIVERGED"),
        "{text}"
    );

    let out = replay(&["segmentation.primary.pcap", "segmentation.secondary.pcapng"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("IDENTICAL"), "{text}");
    assert!(text.contains("compared 60000 bytes"), "{text}");
    assert!(text.trim_end().ends_with("result: IDENTICAL"), "{text}");
}

#[test]
fn replay_vm_options_pick_the_side() {
    let (code, r) = json(&[
        "udp.primary.pcapng",
        "udp.secondary.pcap",
        "--vm-port",
        "9006",
    ]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["inputs"][0]["vm_side"]["how"], "options");
    assert_eq!(r["connections"][0]["primary"]["vm"], "10.77.0.2:9006");
    let (code, r) = json(&[
        "many-short.primary.pcap",
        "many-short.secondary.pcap",
        "--vm-addr",
        "10.77.0.2,10.77.0.2",
        "--vm-mac",
        "02:00:00:00:00:02",
    ]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["summary"]["verdicts"]["identical"], 20);
}

#[test]
fn replay_usage_and_input_errors_have_distinct_exit_codes() {
    // Usage error: clap, 2.
    let out = replay(&["only-one.pcap"]);
    assert_eq!(out.status.code(), Some(2));
    let out = replay(&["a.pcap", "b.pcap", "--vm-mac", "zz"]);
    assert_eq!(out.status.code(), Some(2));
    // Missing file: 3, naming it.
    let out = replay(&["missing.pcap", "nondet.secondary.pcap"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing.pcap: at offset 0: cannot open")
    );
}

#[test]
fn replay_truncated_capture_reports_what_was_read() {
    let tmp = tempfile::tempdir().unwrap();
    let good = std::fs::read(dir().join("many-short.primary.pcap")).unwrap();
    let cut = tmp.path().join("cut.pcap");
    std::fs::write(&cut, &good[..good.len() / 2]).unwrap();
    let cut = cut.display().to_string();
    let out = replay(&[&cut, "many-short.secondary.pcap", "--format", "json"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cut.pcap: at offset ") && stderr.contains("file truncated"),
        "{stderr}"
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["result"], "damaged_input");
    let e = &r["inputs"][0]["error"];
    assert!(e["offset"].as_u64().unwrap() > 24);
    assert!(e["problem"].as_str().unwrap().starts_with("file truncated"));
    // What was read is still compared and reported.
    let identical = r["summary"]["verdicts"]["identical"].as_u64().unwrap_or(0);
    assert!(identical >= 5, "{r}");
}

#[test]
fn replay_evidence_is_a_pcapng_per_divergence() {
    let tmp = tempfile::tempdir().unwrap();
    let ev = tmp.path().join("ev");
    let ev_s = ev.display().to_string();
    let (code, r) = json(&[
        "rst-vs-fin.primary.pcap",
        "rst-vs-fin.secondary.pcap",
        "--evidence",
        &ev_s,
    ]);
    assert_eq!(code, 1);
    let path = r["connections"][0]["divergence"]["evidence"]
        .as_str()
        .unwrap()
        .to_string();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..4], &[0x0a, 0x0d, 0x0d, 0x0a]);
    // It is itself a valid capture: replaying it against itself is identical.
    let out = replay(&[&path, &path]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
