//! Real guests behind `colo-proxy compare` (issue 8), with the scripts of `qemu-glue/`:
//! tiny Debian-kernel/busybox guests under TCG, QEMU's filter-mirror/redirectors and
//! filter-rewriter feeding the proxy, the client in a network namespace the pair
//! script creates and removes, and `qemu-glue/guest-client.py` checking every byte.
//!
//! - two independently booted guests with the same deterministic services: many
//!   connections and a bulk transfer, every byte once and identical, no checkpoint;
//! - a live COLO pair (patched QEMU) with the QMP checkpoint driver: deterministic
//!   traffic asks for no checkpoint; each nondeterministic reply costs exactly one,
//!   the client gets the primary's bytes, and traffic continues afterwards;
//! - failover: the primary QEMU killed in the middle of a long echo stream, which
//!   completes through the secondary with every byte once.
//!
//! Each runs in topology (a) and, as `topology_b_*`, in topology (b): `colo-proxy
//! primary`/`secondary` facing the guests through stream netdevs, no QEMU filters,
//! the QMP driver in `primary`.
//!
//! The scenarios take turns (a lock file): each boots two TCG guests. Without root,
//! /dev/net/tun, QEMU, python3 or (for COLO) the patched QEMU of
//! `qemu-glue/build-qemu.sh`, a scenario prints `SKIPPED: <reason>` and returns.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const GUEST_IP: &str = "10.77.0.2";
/// Two TCG guests on a loaded 2-core machine can drift seconds apart; the default
/// 3 s compare timeout would then ask for checkpoints that have nothing to do with
/// determinism, which is what these scenarios check.
const SLOW_MACHINE: (&str, &str) = ("COLO_PROXY_ARGS", "--compare-timeout 10000");

fn glue() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../qemu-glue")
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Why the scenario cannot run here, if it cannot.
fn skip_reason(colo: bool) -> Option<String> {
    if !is_root() {
        return Some("needs root (network namespace, TAP devices)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    for cmd in ["qemu-system-x86_64", "python3", "ip", "apt-get", "dpkg-deb"] {
        if !have(cmd) {
            return Some(format!("{cmd} not found"));
        }
    }
    if colo {
        let st = Command::new(glue().join("build-qemu.sh"))
            .arg("--cached")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !st.is_ok_and(|s| s.success()) {
            return Some(
                "the patched QEMU is not built (qemu-glue/build-qemu.sh; .ci/run builds it)".into(),
            );
        }
    }
    None
}

/// Hold the lock that makes the scenarios take turns.
fn take_turn() -> std::fs::File {
    let f = std::fs::File::create(std::env::temp_dir().join("colo-proxy-real-guests.lock"))
        .expect("lock file");
    f.lock().expect("lock");
    f
}

/// A pair brought up by `colo-pair-up.sh`, torn down on drop.
struct Pair {
    dir: PathBuf,
    ns: String,
    _turn: std::fs::File,
}

impl Pair {
    fn up(name: &str, env: &[(&str, &str)]) -> Self {
        let turn = take_turn();
        let id = format!("{name}-{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("colo-pair-{id}"));
        let ns = format!("cpair-{id}");
        let mut cmd = Command::new(glue().join("colo-pair-up.sh"));
        cmd.env("COLO_DIR", &dir)
            .env("COLO_NS", &ns)
            .env("COLO_PROXY", env!("CARGO_BIN_EXE_colo-proxy"))
            .env("COLO_PROXY_LOG", "info")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let pair = Self {
            dir,
            ns,
            _turn: turn,
        };
        let started = Instant::now();
        let out = cmd.output().expect("run colo-pair-up.sh");
        eprintln!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "colo-pair-up.sh failed: {}",
            out.status
        );
        eprintln!("pair up in {:.1} s", started.elapsed().as_secs_f64());
        pair
    }

    /// Run guest-client.py in the client namespace; its JSON result.
    fn client(&self, args: &[&str]) -> Value {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(glue().join("guest-client.py"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run guest-client.py");
        let text = String::from_utf8_lossy(&out.stdout);
        eprintln!("client {args:?}: {}", text.trim());
        serde_json::from_str(text.trim()).unwrap_or_else(|e| {
            panic!(
                "guest-client.py said {text:?} ({e}); stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    fn stats(&self) -> Value {
        self.stats_of("ctl.sock")
    }

    /// `stats` of the proxy behind the control socket `ctl` (topology (b)'s
    /// secondary: `ctl-sec.sock`).
    fn stats_of(&self, ctl: &str) -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_colo-proxy"))
            .args(["ctl", "--control"])
            .arg(self.dir.join(ctl))
            .arg("stats")
            .output()
            .expect("colo-proxy ctl");
        assert!(
            out.status.success(),
            "ctl stats: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
        v["stats"].clone()
    }

    /// Poll stats until `pred` holds (20 s).
    fn wait_stats(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.stats();
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "never {what}: {}", s["qmp"]);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pid(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.pid")))
            .expect("pid file")
            .trim()
            .to_owned()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for f in [
                "proxy.log",
                "proxy-sec.log",
                "pvm.log",
                "svm.log",
                "pvm.console",
                "svm.console",
                "failover.log",
            ] {
                let text = self.log(f);
                let tail: Vec<&str> = text.lines().rev().take(25).collect();
                eprintln!("--- {f} (last lines)");
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        let out = Command::new(glue().join("colo-pair-down.sh"))
            .env("COLO_DIR", &self.dir)
            .env("COLO_NS", &self.ns)
            .output();
        if let Ok(out) = out {
            eprint!("{}", String::from_utf8_lossy(&out.stdout));
        }
    }
}

fn sum(v: &Value) -> u64 {
    v.as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}

fn ok(result: &Value) {
    assert_eq!(result["ok"], true, "client check failed: {result}");
}

#[test]
fn two_independent_guests_same_services_no_checkpoint() {
    independent_pair("a");
}

/// Topology (b): `colo-proxy primary`/`secondary` face the guests through stream
/// netdevs, no QEMU filters.
#[test]
fn topology_b_two_independent_guests_same_services_no_checkpoint() {
    independent_pair("b");
}

fn independent_pair(topology: &str) {
    if let Some(why) = skip_reason(false) {
        println!("SKIPPED: {why}");
        return;
    }
    let pair = Pair::up(
        &format!("ind{topology}"),
        &[
            ("COLO_MODE", "independent"),
            ("COLO_TOPOLOGY", topology),
            SLOW_MACHINE,
        ],
    );
    // Many connections (4 at a time), then two bulk transfers of 700 kB each.
    let echo = pair.client(&["echo", GUEST_IP, "60", "10", "4"]);
    ok(&echo);
    assert_eq!(echo["bad_lines"], 0);
    for _ in 0..2 {
        let bulk = pair.client(&["bulk", GUEST_IP, "100000"]);
        ok(&bulk);
        assert_eq!(bulk["bytes"], 700_000);
    }
    let s = pair.stats();
    eprintln!("stats: {s}");
    assert_eq!(
        sum(&s["divergences"]),
        0,
        "divergences: {}",
        s["divergences"]
    );
    assert_eq!(sum(&s["checkpoints"]["requested"]), 0);
    assert_eq!(s["qmp"]["requests"], 0, "no checkpoint asked for");
    assert_eq!(s["qmp"]["asks"], 0);
    assert!(
        s["released"]["bytes"].as_u64() > Some(1_400_000),
        "{}",
        s["released"]
    );
    assert_eq!(s["released"]["unchecked"], 0, "everything compared");
}

/// The primary's bytes from each `checkpoint requested ... primary "..." vs` log line.
fn primary_snippets(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("checkpoint requested") && l.contains("reason=payload"))
        .filter_map(|l| {
            let rest = &l[l.find(": primary \"")? + 11..];
            let end = rest.find("\" vs secondary")?;
            Some(rest[..end].replace("\\n", "\n"))
        })
        .collect()
}

#[test]
fn colo_pair_checkpoints_once_per_divergence() {
    colo_pair("a");
}

/// Topology (b): the live pair behind `colo-proxy primary`/`secondary` (stream
/// netdevs), the QMP checkpoint driver in `primary`.
#[test]
fn topology_b_colo_pair_checkpoints_once_per_divergence() {
    colo_pair("b");
}

fn colo_pair(topology: &str) {
    if let Some(why) = skip_reason(true) {
        println!("SKIPPED: {why}");
        return;
    }
    // Periodic checkpoints every 10 s; the proxy asks for the others.
    let pair = Pair::up(
        &format!("colo{topology}"),
        &[
            ("COLO_CHECKPOINT_DELAY", "10000"),
            ("COLO_TOPOLOGY", topology),
            SLOW_MACHINE,
        ],
    );
    let before = pair.stats();
    ok(&pair.client(&["echo", GUEST_IP, "30", "10", "4"]));
    let bulk = pair.client(&["bulk", GUEST_IP, "100000"]);
    ok(&bulk);
    let s = pair.stats();
    assert_eq!(
        sum(&s["divergences"]),
        0,
        "deterministic traffic diverged: {}",
        s["divergences"]
    );
    assert_eq!(s["qmp"]["requests"], 0, "a checkpoint was asked for");
    assert_eq!(s["qmp"]["requested_done"], 0);
    eprintln!(
        "deterministic: {} periodic checkpoints during the traffic",
        s["qmp"]["unrequested_done"].as_u64().unwrap_or(0)
            - before["qmp"]["unrequested_done"].as_u64().unwrap_or(0)
    );

    // Nondeterministic replies: one random UUID per connection.
    let mut uuids = Vec::new();
    for i in 1..=3u64 {
        let r = pair.client(&["uuid", GUEST_IP, "1"]);
        ok(&r);
        uuids.push(r["uuids"][0].as_str().unwrap().to_owned());
        let s = pair.wait_stats("checkpoint done", |s| {
            s["qmp"]["requested_done"].as_u64() >= Some(i)
        });
        assert_eq!(s["divergences"]["payload"], i, "one divergence per reply");
        assert_eq!(
            s["qmp"]["requests"], i,
            "one checkpoint request per divergence"
        );
        assert_eq!(
            s["qmp"]["requested_done"], i,
            "one checkpoint per divergence"
        );
        // The stream continues after the checkpoint.
        ok(&pair.client(&["echo", GUEST_IP, "3", "5", "1"]));
    }
    let s = pair.stats();
    assert_eq!(s["qmp"]["requested_done"], 3, "{}", s["qmp"]);
    assert_eq!(sum(&s["divergences"]), 3, "{}", s["divergences"]);
    // The client got the primary's bytes: the log names them at each divergence.
    let snippets = primary_snippets(&pair.log("proxy.log"));
    assert_eq!(snippets.len(), 3, "{snippets:?}");
    for (uuid, snip) in uuids.iter().zip(&snippets) {
        let got = format!("{uuid}\n");
        assert!(
            got.contains(snip.as_str()),
            "client got {got:?}, primary said {snip:?}"
        );
    }
    if topology == "b" {
        // The primary's QMP driver forwarded every completed checkpoint (periodic
        // ones too) over the link: the secondary's rewriter started a new epoch.
        let sec = pair.stats_of("ctl-sec.sock");
        let done = s["qmp"]["requested_done"].as_u64().unwrap_or(0)
            + s["qmp"]["unrequested_done"].as_u64().unwrap_or(0);
        assert!(
            sec["checkpoints"]["link"].as_u64() >= Some(3),
            "secondary saw {} over the link, primary completed {done}",
            sec["checkpoints"]
        );
        eprintln!("secondary: checkpoints {}", sec["checkpoints"]);
    }
    eprintln!(
        "checkpoint latency (request -> primary RESUME): {}",
        s["qmp"]["latency"]
    );
    eprintln!("VM pause (STOP -> RESUME): {}", s["qmp"]["pause"]);
}

#[test]
fn colo_failover_when_the_primary_dies_mid_transfer() {
    failover_mid_transfer("a");
}

/// Topology (b): the primary proxy's QMP driver fails over; the hook tells the
/// secondary proxy, which then takes the client on tap-svm.
#[test]
fn topology_b_colo_failover_when_the_primary_dies_mid_transfer() {
    failover_mid_transfer("b");
}

fn failover_mid_transfer(topology: &str) {
    if let Some(why) = skip_reason(true) {
        println!("SKIPPED: {why}");
        return;
    }
    let pair = Pair::up(
        &format!("fail{topology}"),
        &[("COLO_HEARTBEAT", "500"), ("COLO_TOPOLOGY", topology)],
    );
    let ns = pair.ns.clone();
    // 600 echoed lines, 10 ms apart: a long-lived connection of about 10 s.
    let client = std::thread::spawn(move || {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(glue().join("guest-client.py"))
            .args(["stream", GUEST_IP, "600", "10"])
            .output()
            .expect("guest-client.py");
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    std::thread::sleep(Duration::from_secs(3));
    let pvm = pair.pid("pvm");
    eprintln!("killing the primary QEMU (pid {pvm})");
    assert!(
        Command::new("kill")
            .args(["-KILL", &pvm])
            .status()
            .unwrap()
            .success()
    );
    let text = client.join().expect("client thread");
    eprintln!("client: {}", text.trim());
    let r: Value = serde_json::from_str(text.trim()).expect("client JSON");
    ok(&r);
    assert_eq!(r["lines"], 600);
    assert_eq!(r["bad_lines"], 0, "every echoed line once and intact");
    assert_eq!(r["extra_bytes"], 0, "no duplicated bytes");
    let s = pair.stats();
    assert_eq!(s["qmp"]["failed_over"], "secondary", "{}", s["qmp"]);
    assert_eq!(s["mode"], "pass-through");
    assert!(
        pair.log("failover.log").contains("moves to tap-svm"),
        "{}",
        pair.log("failover.log")
    );
    if topology == "b" {
        // The rest of the stream went through the secondary proxy's client port.
        let sec = pair.stats_of("ctl-sec.sock");
        eprintln!("secondary: {sec}");
        assert_eq!(sec["failover"], true, "{sec}");
        assert!(
            sec["frames_in"]["client_port"]["frames"].as_u64() > Some(0),
            "no client frame reached the secondary proxy: {}",
            sec["frames_in"]
        );
    }
}

#[test]
fn libvirt_domains_validate_and_the_hook_runs_the_proxy() {
    if !is_root() {
        println!("SKIPPED: needs root (/run/colo-proxy)");
        return;
    }
    if !have("virt-xml-validate") || !have("xmllint") || !have("python3") {
        println!(
            "SKIPPED: virt-xml-validate, xmllint or python3 not found (apt-get install libvirt-clients libxml2-utils)"
        );
        return;
    }
    let _turn = take_turn();
    let dir = glue().join("libvirt");
    for xml in ["colo-pvm.xml", "colo-svm.xml"] {
        let out = Command::new("virt-xml-validate")
            .arg(dir.join(xml))
            .arg("domain")
            .output()
            .expect("virt-xml-validate");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && text.contains("validates"),
            "{xml}: {text}"
        );
    }
    // The hook as libvirt calls it: prepare starts colo-proxy from the metadata,
    // release stops it; a domain without a proxy role starts nothing.
    let state = Path::new("/run/colo-proxy/colo-pvm");
    let _ = std::fs::remove_dir_all(state);
    let hook = |dom: &str, op: &str, xml: Option<&str>| {
        let stdin = match xml {
            Some(x) => Stdio::from(std::fs::File::open(dir.join(x)).unwrap()),
            None => Stdio::null(),
        };
        let st = Command::new(dir.join("colo-proxy-hook"))
            .args([dom, op, "begin", "-"])
            .env("COLO_PROXY", env!("CARGO_BIN_EXE_colo-proxy"))
            .stdin(stdin)
            .status()
            .expect("hook");
        assert!(st.success(), "hook {dom} {op}: {st}");
    };
    hook("colo-pvm", "prepare", Some("colo-pvm.xml"));
    let ctl = state.join("ctl.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let out = Command::new(env!("CARGO_BIN_EXE_colo-proxy"))
            .args(["ctl", "--control"])
            .arg(&ctl)
            .arg("stats")
            .output()
            .unwrap();
        if out.status.success() {
            break serde_json::from_slice::<Value>(&out.stdout).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the hook's colo-proxy never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(stats["stats"]["mode"], "compare", "{stats}");
    assert!(
        stats["stats"]["qmp"].is_object(),
        "QMP driver configured from the metadata"
    );
    let pid = std::fs::read_to_string(state.join("proxy.pid")).unwrap();
    hook("colo-pvm", "release", None);
    let proc_dir = PathBuf::from(format!("/proc/{}", pid.trim()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while proc_dir.exists()
        && !std::fs::read_to_string(proc_dir.join("stat"))
            .unwrap_or_default()
            .contains(") Z")
    {
        assert!(
            Instant::now() < deadline,
            "colo-proxy still running after release"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    hook("colo-svm", "prepare", Some("colo-svm.xml"));
    assert!(
        Path::new("/run/colo-proxy/colo-svm").is_dir(),
        "state dir made"
    );
    assert!(!Path::new("/run/colo-proxy/colo-svm/proxy.pid").exists());
    let _ = std::fs::remove_dir_all("/run/colo-proxy");
}

/// A file this test replaces for its duration, restored (or removed) on drop.
struct Replaced {
    path: PathBuf,
    before: Option<Vec<u8>>,
    link_before: Option<PathBuf>,
    /// The directory made for it, removed again if empty.
    made_dir: Option<PathBuf>,
}

impl Replaced {
    fn with(path: &str, install: impl FnOnce(&Path)) -> Self {
        let path = PathBuf::from(path);
        let link_before = std::fs::read_link(&path).ok();
        let before = if link_before.is_some() {
            None
        } else {
            std::fs::read(&path).ok()
        };
        let dir = path.parent().unwrap().to_owned();
        let made_dir = (!dir.exists()).then(|| dir.clone());
        std::fs::create_dir_all(&dir).expect("config dir");
        let _ = std::fs::remove_file(&path);
        install(&path);
        Self {
            path,
            before,
            link_before,
            made_dir,
        }
    }
}

impl Drop for Replaced {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(target) = &self.link_before {
            let _ = std::os::unix::fs::symlink(target, &self.path);
        } else if let Some(bytes) = &self.before {
            let _ = std::fs::write(&self.path, bytes);
        }
        if let Some(dir) = &self.made_dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// libvirtd (and virtlogd) as this test found or started them; on drop the libvirt
/// pair is torn down (`colo-libvirt-up.sh --down`) and what the test started is stopped.
struct Libvirt {
    ns: String,
    xml_dir: PathBuf,
    started: Vec<(&'static str, String)>,
    /// Restored after the daemons stopped: qemu.conf, the hook, hook.env.
    _files: Vec<Replaced>,
}

fn virsh_answers() -> bool {
    Command::new("virsh")
        .args(["-c", "qemu:///system", "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A live (not zombie) process named `daemon`.
fn running(daemon: &str) -> bool {
    Command::new("pgrep")
        .args(["-x", "-r", "R,S,D", daemon])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Libvirt {
    /// Install the hook and start the daemons; `Err(reason)` to skip.
    fn start() -> Result<Self, String> {
        let mut files = Vec::new();
        let already = virsh_answers();
        if already && !Path::new("/etc/libvirt/hooks/qemu").exists() {
            // libvirtd looks for hooks only when it starts.
            return Err(
                "libvirtd runs without /etc/libvirt/hooks/qemu; stop it so the test starts it with the hook"
                    .into(),
            );
        }
        let hook = glue().join("libvirt/colo-proxy-hook");
        files.push(Replaced::with("/etc/libvirt/hooks/qemu", |p| {
            std::os::unix::fs::symlink(&hook, p).expect("install the hook")
        }));
        files.push(Replaced::with("/etc/colo-proxy/hook.env", |p| {
            std::fs::write(
                p,
                format!("COLO_PROXY={}\n", env!("CARGO_BIN_EXE_colo-proxy")),
            )
            .expect("hook.env")
        }));
        let mut me = Self {
            ns: format!("clv-{}", std::process::id()),
            xml_dir: std::env::temp_dir().join(format!("colo-libvirt-{}", std::process::id())),
            started: Vec::new(),
            _files: Vec::new(),
        };
        if !already {
            // A container: QEMU as root, no security driver, namespaces or cgroups.
            let conf = std::fs::read_to_string("/etc/libvirt/qemu.conf").unwrap_or_default();
            files.push(Replaced::with("/etc/libvirt/qemu.conf", |p| {
                std::fs::write(
                    p,
                    conf + "\n# colo-proxy real_guests test\nuser = \"root\"\ngroup = \"root\"\n\
                     security_driver = \"none\"\nnamespaces = [ ]\ncgroup_controllers = [ ]\n",
                )
                .expect("qemu.conf")
            }));
            for daemon in ["virtlogd", "libvirtd"] {
                if running(daemon) {
                    continue;
                }
                let st = if daemon == "libvirtd"
                    && Path::new("/dev/kvm").exists()
                    && have("unshare")
                {
                    // Our QEMU is built without KVM; where /dev/kvm looks usable, libvirtd
                    // re-probes its capabilities at every lookup (~20 s per define). In
                    // its own mount namespace a read-only empty file stands in for it.
                    let no_kvm = std::env::temp_dir().join("colo-libvirt-no-kvm");
                    std::fs::write(&no_kvm, b"").expect("no-kvm file");
                    Command::new("unshare")
                        .args(["-m", "--propagation", "private", "sh", "-c"])
                        .arg(format!(
                            "mount --bind {} /dev/kvm && mount -o remount,bind,ro /dev/kvm; exec libvirtd -d",
                            no_kvm.display()
                        ))
                        .status()
                } else {
                    Command::new(daemon).arg("-d").status()
                };
                if !st.is_ok_and(|s| s.success()) {
                    me._files = files;
                    return Err(format!("{daemon} -d did not start"));
                }
                let pid = std::fs::read_to_string(format!("/run/{daemon}.pid"))
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                me.started.push((daemon, pid));
            }
        }
        me._files = files;
        let deadline = Instant::now() + Duration::from_secs(15);
        while !virsh_answers() {
            if Instant::now() > deadline {
                return Err("libvirtd does not answer virsh -c qemu:///system".into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(me)
    }

    fn script(&self, args: &[&str]) -> std::process::Output {
        Command::new(glue().join("libvirt/colo-libvirt-up.sh"))
            .args(args)
            .env("COLO_NS", &self.ns)
            .env("COLO_LIBVIRT_DIR", &self.xml_dir)
            .stdin(Stdio::null())
            .output()
            .expect("run colo-libvirt-up.sh")
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for f in ["colo-pvm/proxy.log", "colo-pvm/console.log"] {
                let text = std::fs::read_to_string(Path::new("/run/colo-proxy").join(f))
                    .unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(25).collect();
                eprintln!("--- {f} (last lines)");
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        let out = self.script(&["--down"]);
        eprint!("{}", String::from_utf8_lossy(&out.stdout));
        let _ = std::fs::remove_dir_all(&self.xml_dir);
        for dom in ["colo-pvm", "colo-svm"] {
            let _ = std::fs::remove_dir_all(Path::new("/run/colo-proxy").join(dom));
        }
        for (daemon, pid) in self.started.iter().rev() {
            if pid.is_empty() {
                continue;
            }
            let _ = Command::new("kill").args(["-TERM", pid]).status();
            let proc_dir = PathBuf::from(format!("/proc/{pid}"));
            let deadline = Instant::now() + Duration::from_secs(10);
            while proc_dir.exists()
                && !std::fs::read_to_string(proc_dir.join("stat"))
                    .unwrap_or_default()
                    .contains(") Z")
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!("stopped {daemon} (pid {pid})");
        }
    }
}

/// Issue 8's libvirt check: libvirtd defines colo-pvm/colo-svm from our XML and
/// starts them under TCG, the hook starts colo-proxy from the domain metadata,
/// `colo-libvirt-up.sh` brings up live COLO over `virsh qemu-monitor-command`, and
/// client traffic through the proxy arrives every byte once with no checkpoint asked.
#[test]
fn libvirt_colo_pair_starts_under_tcg_with_traffic_through_the_proxy() {
    if let Some(why) = skip_reason(true) {
        println!("SKIPPED: {why}");
        return;
    }
    for cmd in ["virsh", "libvirtd", "virtlogd", "pgrep"] {
        if !have(cmd) {
            println!(
                "SKIPPED: {cmd} not found (apt-get install --no-install-recommends libvirt-daemon-system libvirt-daemon-driver-qemu)"
            );
            return;
        }
    }
    let _turn = take_turn();
    let lv = match Libvirt::start() {
        Ok(lv) => lv,
        Err(why) => {
            println!("SKIPPED: {why}");
            return;
        }
    };
    let started = Instant::now();
    let out = lv.script(&[]);
    eprintln!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "colo-libvirt-up.sh: {}", out.status);
    eprintln!(
        "libvirt pair up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let client = |args: &[&str]| -> Value {
        let out = Command::new("ip")
            .args(["netns", "exec", &lv.ns])
            .arg(glue().join("guest-client.py"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run guest-client.py");
        let text = String::from_utf8_lossy(&out.stdout);
        eprintln!("client {args:?}: {}", text.trim());
        serde_json::from_str(text.trim()).unwrap_or_else(|e| {
            panic!(
                "guest-client.py said {text:?} ({e}); stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    let echo = client(&["echo", GUEST_IP, "20", "10", "4"]);
    ok(&echo);
    assert_eq!(echo["bad_lines"], 0);
    let bulk = client(&["bulk", GUEST_IP, "100000"]);
    ok(&bulk);
    assert_eq!(bulk["bytes"], 700_000);
    let out = Command::new(env!("CARGO_BIN_EXE_colo-proxy"))
        .args([
            "ctl",
            "--control",
            "/run/colo-proxy/colo-pvm/ctl.sock",
            "stats",
        ])
        .output()
        .expect("colo-proxy ctl");
    assert!(out.status.success(), "the hook's colo-proxy answers ctl");
    let s: Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    let s = &s["stats"];
    eprintln!("stats: {s}");
    assert_eq!(s["mode"], "compare");
    assert_eq!(sum(&s["divergences"]), 0, "{}", s["divergences"]);
    assert_eq!(
        sum(&s["checkpoints"]["requested"]),
        0,
        "{}",
        s["checkpoints"]
    );
    assert_eq!(s["qmp"]["requests"], 0, "no checkpoint asked for");
    assert_eq!(s["qmp"]["primary_up"], true);
    assert!(
        s["released"]["bytes"].as_u64() > Some(700_000),
        "the client's traffic went through colo-proxy: {}",
        s["released"]
    );
}
