//! `colo-proxy demo --live`: the real primary and secondary roles in one process over
//! loopback Unix sockets; the client's streams must verify, and with
//! nondeterminism the primary must ask for checkpoints that the demo takes.

use std::process::Command;

fn live(extra: &[&str]) -> (std::process::ExitStatus, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_colo-proxy"))
        .args(["demo", "--live", "--json"])
        .args(extra)
        .output()
        .expect("run colo-proxy demo --live");
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text:?} {}", String::from_utf8_lossy(&out.stderr)));
    (out.status, v)
}

#[test]
fn demo_live_deterministic_releases_everything_without_checkpoints() {
    let (status, v) = live(&["--connections", "5", "--bytes-per-connection", "40K"]);
    assert!(status.success(), "{v}");
    assert_eq!(v["verified"], 5, "{v}");
    assert_eq!(v["checkpoints_taken"], 0, "{v}");
    let requested: u64 = v["primary"]["checkpoints"]["requested"]
        .as_object()
        .unwrap()
        .values()
        .map(|x| x.as_u64().unwrap())
        .sum();
    assert_eq!(requested, 0, "{v}");
    assert_eq!(v["primary"]["mode"], "compare", "{v}");
}

#[test]
fn demo_live_nondeterministic_takes_checkpoints_and_still_verifies() {
    let (status, v) = live(&[
        "--connections",
        "6",
        "--bytes-per-connection",
        "20K",
        "--diverge-every",
        "3",
    ]);
    assert!(status.success(), "{v}");
    assert_eq!(v["verified"], 6, "{v}");
    assert_eq!(v["checkpoints_taken"], 2, "{v}");
    assert_eq!(
        v["primary"]["checkpoints"]["requested"]["payload"], 2,
        "{v}"
    );
}
