//! `colo-proxy --config FILE`: a role runs from the file alone, flags still win,
//! `--print-config` shows the result, and a bad file is a usage error (exit 2) that
//! names the file, the line and the key.

mod common;

use std::process::Command;

use common::{Proxy, read_frames, traffic, wire, write_split};

fn colo_proxy(args: &[&str], env_config: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_colo-proxy"));
    cmd.args(args).env_remove("COLO_PROXY_CONFIG");
    if let Some(path) = env_config {
        cmd.env("COLO_PROXY_CONFIG", path);
    }
    cmd.output().expect("run colo-proxy")
}

/// Write `text` to `colo.toml` in `dir`; returns its path.
fn write_config(dir: &tempfile::TempDir, text: &str) -> String {
    let config = dir.path().join("colo.toml");
    std::fs::write(&config, text).expect("write the config file");
    config.display().to_string()
}

#[test]
fn compare_runs_from_the_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let cfg = write_config(
        &dir,
        &format!(
            "[compare]\nprimary-in = \"unix:{d}/pri.sock\"\nsecondary-in = \"unix:{d}/sec.sock\"\n\
             outdev = \"unix:{d}/out.sock\"\nvnet-hdr-support = true\n\
             control = \"unix:{d}/wrong.sock\"\n"
        ),
    );
    let mut proxy = Proxy::start_in(dir, &["--config", &cfg, "--control", "unix:{dir}/ctl.sock"]);
    let mut pri = proxy.connect("pri.sock");
    let mut sec = proxy.connect("sec.sock");
    let mut out = proxy.connect("out.sock");
    drop(proxy.connect("ctl.sock"));
    assert!(
        !proxy.path("wrong.sock").exists(),
        "the --control flag wins over the file"
    );
    let frames = traffic(2, 2, true);
    let bytes = wire(&frames, true);
    write_split(&mut pri, &bytes, 1);
    write_split(&mut sec, &bytes, 2);
    let (got, raw) = read_frames(&mut out, frames.len(), true);
    assert_eq!(got, frames);
    assert_eq!(raw, bytes, "vnet headers on, as the file says");
    assert!(proxy.stop().success(), "{}", proxy.log_text());
}

#[test]
fn bad_files_are_usage_errors_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        "log-level = \"info\"\n\n[compare]\nprimary-in = \"unix:/a\"\nmax-queue = 5\n",
    );
    for out in [
        colo_proxy(&["--config", &cfg, "compare"], None),
        colo_proxy(&["compare"], Some(&cfg)),
    ] {
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{cfg}:5: [compare] max-queue: unknown key")),
            "{err}"
        );
        assert!(
            err.contains("max-queue-size"),
            "lists what is accepted: {err}"
        );
    }
    let out = colo_proxy(&["--config", "/nonexistent/colo.toml", "rewrite"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/colo.toml"));
}

#[test]
fn print_config_shows_file_flags_and_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        "[compare]\nprimary-in = \"unix:/a\"\ncompare-timeout = 2000\npass-port = [\"udp:123\"]\n",
    );
    let out = colo_proxy(
        &[
            "--config",
            &cfg,
            "compare",
            "--outdev",
            "tcp::9",
            "--print-config",
        ],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "[compare]",
        "primary-in = \"unix:/a\"",
        "outdev = \"tcp::9\"",
        "compare-timeout = 2000",
        "max-queue-size = 16384",
        "pass-port = [\"udp:123\"]",
        "# secondary-in =",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
}
