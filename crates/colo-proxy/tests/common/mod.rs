//! Helpers shared by the daemon tests: run the built `colo-proxy compare` (or another role),
//! connect to its endpoints, build traffic with `colo_core::sim`, and read and write
//! QEMU framing.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use colo_core::Frame;
use colo_core::classify::TcpFlags;
use colo_core::codec::{DecoderConfig, FrameDecoder, encode_frame};
use colo_core::sim::{FlowAddrs, TcpSender, Towards, plain_tcp, udp_frame};
use serde_json::Value;

/// The client's initial sequence number in the rewrite tests' passive open.
pub const C_ISN: u32 = 1_000;
/// The primary VM's initial sequence number in the rewrite tests' passive open.
pub const P_ISN: u32 = 5_000_000;
/// The secondary VM's initial sequence number in the rewrite tests' passive open.
pub const S_ISN: u32 = 77;

/// A TCP segment of flow `FlowAddrs::v4(1)` travelling `towards` (no options).
pub fn seg(towards: Towards, seq: u32, ack: u32, flags: TcpFlags, payload: &[u8]) -> Frame {
    plain_tcp(&FlowAddrs::v4(1), towards, seq, ack, flags, payload)
}

/// The arguments of `colo-proxy compare` with the usual three endpoints (`pri.sock`,
/// `sec.sock`, `out.sock` in `{dir}`) plus `extra` options.
pub fn compare_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--primary-in",
        "unix:{dir}/pri.sock",
        "--secondary-in",
        "unix:{dir}/sec.sock",
        "--outdev",
        "unix:{dir}/out.sock",
    ];
    args.extend_from_slice(extra);
    args
}

/// The arguments of `colo-proxy rewrite` with its endpoints `to_in.sock`,
/// `to_out.sock` and `from_in.sock` in `{dir}` and from-secondary-out
/// `from_secondary_out`, plus `extra` options.
pub fn rewrite_args<'a>(from_secondary_out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--to-secondary-in",
        "unix:{dir}/to_in.sock",
        "--to-secondary-out",
        "unix:{dir}/to_out.sock",
        "--from-secondary-in",
        "unix:{dir}/from_in.sock",
        "--from-secondary-out",
        from_secondary_out,
    ];
    args.extend_from_slice(extra);
    args
}

/// A running `colo-proxy compare`, stopped with SIGTERM on drop.
pub struct Proxy {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl Proxy {
    /// `colo-proxy compare` with the usual three endpoints (`pri.sock`, `sec.sock`,
    /// `out.sock` in the temporary directory) plus `extra` options.
    pub fn start_compare(extra: &[&str]) -> Self {
        Self::start(&compare_args(extra))
    }

    /// `colo-proxy rewrite` with its endpoints `to_in.sock`, `to_out.sock` and
    /// `from_in.sock` in a fresh temp dir, writing from-secondary-out to
    /// `from_secondary_out` (which may use `{dir}`), plus `extra` options.
    pub fn start_rewrite(from_secondary_out: &str, extra: &[&str]) -> Self {
        Self::start_role("rewrite", &rewrite_args(from_secondary_out, extra))
    }

    /// Start `colo-proxy compare` with endpoints in a fresh temp dir. `args` may use
    /// `{dir}` for that directory.
    pub fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, args)
    }

    /// Like [`Proxy::start`] in a given directory.
    pub fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Self {
        Self::start_role_in("compare", dir, args)
    }

    /// Start another role (`rewrite`, ...) in a fresh temp dir.
    pub fn start_role(role: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_role_in(role, dir, args)
    }

    /// Start `colo-proxy ROLE` in a given directory.
    pub fn start_role_in(role: &str, dir: tempfile::TempDir, args: &[&str]) -> Self {
        Self::start_logged("info,colo_proxy=debug", role, dir, args)
    }

    /// Start `colo-proxy --log-level LEVEL ROLE` in a given directory.
    pub fn start_logged(level: &str, role: &str, dir: tempfile::TempDir, args: &[&str]) -> Self {
        let d = dir.path().display().to_string();
        let log = dir.path().join("proxy.log");
        let args: Vec<String> = args.iter().map(|a| a.replace("{dir}", &d)).collect();
        let child = Command::new(env!("CARGO_BIN_EXE_colo-proxy"))
            .args(["--log-level", level, role])
            .args(&args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn colo-proxy");
        Self { child, dir, log }
    }

    /// A path in the proxy's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Connect to a Unix endpoint the proxy listens on (waits for it to appear).
    pub fn connect(&mut self, name: &str) -> UnixStream {
        let path = self.path(name);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(s) = UnixStream::connect(&path) {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                return s;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("colo-proxy exited early ({status}):\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "{} never appeared:\n{}",
                path.display(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for a log line containing `marker` and return the text of its field
    /// `name=VALUE` (up to the next space).
    pub fn log_field(&mut self, marker: &str, name: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let key = format!("{name}=");
        loop {
            let log = self.log_text();
            if let Some(line) = log.lines().find(|l| l.contains(marker))
                && let Some(at) = line.find(&key)
            {
                let rest = &line[at + key.len()..];
                return rest.split_whitespace().next().unwrap_or("").to_owned();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("colo-proxy exited early ({status}):\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "no {marker:?} in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The proxy's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// SIGTERM, then wait; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("colo-proxy did not stop on SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A control-socket client.
pub struct Control {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Control {
    pub fn new(stream: UnixStream) -> Self {
        Self {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    /// Next line as JSON.
    pub fn next(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("control read");
        assert!(n > 0, "control socket closed");
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    /// Next event named `name`, skipping others.
    pub fn event(&mut self, name: &str) -> Value {
        loop {
            let v = self.next();
            if v["event"] == name {
                return v;
            }
        }
    }

    /// Send a command and return its reply (events in between are skipped).
    pub fn command(&mut self, cmd: &str) -> Value {
        self.request(&serde_json::json!({"v": 1, "cmd": cmd}))
    }

    /// Send a whole command object and return its reply.
    pub fn request(&mut self, request: &Value) -> Value {
        writeln!(self.writer, "{request}").unwrap();
        loop {
            let v = self.next();
            if v.get("ok").is_some() {
                return v;
            }
        }
    }
}

/// Prepend a 10-byte virtio-net header (all zero: no offloads) when `vnet`.
pub fn with_vnet(frame: Frame, vnet: bool) -> Frame {
    if !vnet {
        return frame;
    }
    let mut data = vec![0u8; 10];
    data[0] = 0; // flags
    data.extend_from_slice(&frame.data);
    Frame {
        vnet_hdr_len: 10,
        data: Bytes::from(data),
    }
}

/// VM output for `conns` TCP connections (SYN-ACK, data, FIN) and `datagrams` UDP
/// datagrams on flow 1000, all IPv4, interleaved flow by flow.
pub fn traffic(conns: u32, datagrams: u32, vnet: bool) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut senders: Vec<TcpSender> = (0..conns)
        .map(|i| TcpSender::new(FlowAddrs::v4(i), 1000 + i * 7919, 5000 + i))
        .collect();
    for s in &mut senders {
        out.push(s.syn_ack());
    }
    for round in 0..4u32 {
        for (i, s) in senders.iter_mut().enumerate() {
            let body = format!(
                "conn {i} round {round}: {}\n",
                "x".repeat(100 + round as usize * 50)
            );
            out.push(s.data(body.as_bytes()));
        }
        for d in 0..datagrams {
            if d % 4 == round {
                let p = format!("datagram {d}");
                out.push(udp_frame(
                    &FlowAddrs::v4(1000 + d),
                    Towards::Client,
                    p.as_bytes(),
                ));
            }
        }
    }
    for s in &mut senders {
        out.push(s.fin());
    }
    out.into_iter().map(|f| with_vnet(f, vnet)).collect()
}

/// The wire bytes of `frames`.
pub fn wire(frames: &[Frame], vnet: bool) -> Vec<u8> {
    let mut out = BytesMut::new();
    for f in frames {
        encode_frame(f, vnet, &mut out);
    }
    out.to_vec()
}

/// Write `bytes` in pseudo-random pieces (1..=97 bytes), pausing now and then so
/// the pieces arrive as separate reads.
pub fn write_split(stream: &mut impl std::io::Write, bytes: &[u8], seed: u64) {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut at = 0;
    let mut n = 0;
    while at < bytes.len() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = (((x >> 33) % 97) as usize + 1).min(bytes.len() - at);
        stream.write_all(&bytes[at..at + len]).expect("write");
        at += len;
        n += 1;
        if n % 16 == 0 {
            stream.flush().unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Read `n` frames from `stream`; panics after `timeout`. Returns the frames and the
/// raw bytes they came in.
pub fn read_frames(stream: &mut impl std::io::Read, n: usize, vnet: bool) -> (Vec<Frame>, Vec<u8>) {
    let mut dec = FrameDecoder::new(DecoderConfig {
        vnet_hdr: vnet,
        ..DecoderConfig::default()
    });
    let mut frames = Vec::new();
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    while frames.len() < n {
        let got = stream
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("reading outdev after {} of {n} frames: {e}", frames.len()));
        assert!(
            got > 0,
            "outdev closed after {} of {n} frames",
            frames.len()
        );
        raw.extend_from_slice(&buf[..got]);
        dec.push(&buf[..got]);
        while let Some(f) = dec.poll_frame().expect("outdev framing") {
            frames.push(f);
        }
    }
    (frames, raw)
}

/// Read whatever arrives within `wait` (no frame boundary assumed).
pub fn read_for(stream: &mut UnixStream, wait: Duration) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    out
}

/// Path helper.
pub fn p(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// Run `colo-proxy ctl --control PATH ARGS...`; returns the exit success and the reply.
pub fn ctl(control: &Path, args: &[&str]) -> (bool, Value) {
    let (code, reply, stderr) = ctl_raw(control, args);
    let reply = reply.unwrap_or_else(|| panic!("ctl printed no JSON: {stderr}"));
    (code == Some(0), reply)
}

/// Run `colo-proxy ctl`: exit code, the reply if stdout was JSON, and stderr.
pub fn ctl_raw(control: &Path, args: &[&str]) -> (Option<i32>, Option<Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_colo-proxy"))
        .args(["ctl", "--control", &format!("unix:{}", control.display())])
        .args(args)
        .output()
        .expect("run colo-proxy ctl");
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).ok(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One HTTP/1.1 request to `addr`; returns the status code and the body.
pub fn http(addr: &str, request: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the HTTP response");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// Poll `stats` until `pred` holds (10 s at most).
pub fn wait_for_stats(ctl: &mut Control, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = ctl.command("stats");
        if pred(&s["stats"]) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `colo-proxy secondary` with stream ports `svm.sock` and `client.sock`, the link
/// listening on `link.sock` and the control socket `ctl.sock`, plus `extra`.
pub fn start_secondary(dir: tempfile::TempDir, extra: &[&str]) -> Proxy {
    let mut args = vec![
        "--svm",
        "stream:unix:{dir}/svm.sock",
        "--client",
        "stream:unix:{dir}/client.sock",
        "--link",
        "unix:{dir}/link.sock",
        "--control",
        "unix:{dir}/ctl.sock",
    ];
    args.extend_from_slice(extra);
    Proxy::start_role_in("secondary", dir, &args)
}

/// `colo-proxy primary` with stream ports `client.sock` and `pvm.sock`, dialling the
/// link at `link` (an ENDPOINT), control socket `ctl.sock`, plus `extra`.
pub fn start_primary(dir: tempfile::TempDir, link: &str, extra: &[&str]) -> Proxy {
    let mut args = vec![
        "--client",
        "stream:unix:{dir}/client.sock",
        "--pvm",
        "stream:unix:{dir}/pvm.sock",
        "--link",
        link,
        "--control",
        "unix:{dir}/ctl.sock",
    ];
    args.extend_from_slice(extra);
    Proxy::start_role_in("primary", dir, &args)
}

/// A QEMU-framed stream peer (a VM or client played by the test) that keeps its
/// decoder across reads, so no frame is lost between calls.
pub struct FramedPeer {
    pub stream: UnixStream,
    dec: FrameDecoder,
    ready: std::collections::VecDeque<Frame>,
    vnet: bool,
}

impl FramedPeer {
    pub fn new(stream: UnixStream) -> Self {
        Self::with_vnet(stream, false)
    }

    /// A peer whose framing carries the vnet header length field when `vnet`.
    pub fn with_vnet(stream: UnixStream, vnet: bool) -> Self {
        Self {
            stream,
            dec: FrameDecoder::new(DecoderConfig {
                vnet_hdr: vnet,
                ..DecoderConfig::default()
            }),
            ready: std::collections::VecDeque::new(),
            vnet,
        }
    }

    /// Send frames (in pieces, to exercise reassembly).
    pub fn send(&mut self, frames: &[Frame]) {
        write_split(
            &mut self.stream,
            &wire(frames, self.vnet),
            frames.len() as u64,
        );
    }

    fn fill(&mut self, timeout: Duration) -> bool {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 65536];
        let got = match self.stream.read(&mut buf) {
            Ok(0) => panic!("peer closed the stream"),
            Ok(n) => n,
            Err(_) => return false,
        };
        self.dec.push(&buf[..got]);
        while let Some(f) = self.dec.poll_frame().expect("framing") {
            self.ready.push_back(f);
        }
        true
    }

    /// The next frame (10 s at most).
    pub fn next(&mut self) -> Frame {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(f) = self.ready.pop_front() {
                return f;
            }
            assert!(Instant::now() < deadline, "no frame within 10 s");
            self.fill(Duration::from_millis(100));
        }
    }

    /// The next `n` frames.
    pub fn take(&mut self, n: usize) -> Vec<Frame> {
        (0..n).map(|_| self.next()).collect()
    }

    /// Whether nothing arrives within `wait`.
    pub fn quiet(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while self.ready.is_empty() && Instant::now() < deadline {
            self.fill(Duration::from_millis(20));
        }
        self.ready.is_empty()
    }
}

/// The QEMU binary the wire-compatibility tests run (Debian's `qemu-system-x86`).
pub const QEMU: &str = "qemu-system-x86_64";

/// Where `qemu-system-x86_64` is, if it is installed.
pub fn qemu_path() -> Option<String> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {QEMU}")])
        .output()
        .ok()?;
    let path = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !path.is_empty()).then_some(path)
}

/// A standalone QEMU (`-M none`, no guest, no display), killed on drop; its stderr
/// goes to `log`.
pub struct Qemu {
    pub child: Child,
    pub log: PathBuf,
}

impl Qemu {
    /// Start `bin -M none -nodefaults ... ARGS`.
    pub fn start(bin: &str, args: &[String], log: PathBuf) -> Self {
        let child = Command::new(bin)
            .args(["-M", "none", "-nodefaults", "-display", "none"])
            .args(["-monitor", "none", "-serial", "none"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("QEMU log file"))
            .spawn()
            .expect("start QEMU");
        Self { child, log }
    }

    /// QEMU's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panic with QEMU's log if it has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("QEMU exited ({st}): {}", self.log_text());
        }
    }

    /// Accept QEMU's connection on `l` (a socket chardev or a stream netdev in
    /// client mode); waits up to 20 s, watching that QEMU is still running.
    pub fn accept(&mut self, l: &UnixListener, what: &str) -> UnixStream {
        l.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    return s;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("accept {what}: {e}"),
            }
            self.assert_running();
            assert!(Instant::now() < deadline, "QEMU never connected {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until QEMU's main loop runs and every stream netdev in `netdevs` (id and
    /// socket path, client mode) has its connection up: a client stream netdev
    /// starts with its link down and silently drops what the hub delivers until the
    /// main loop has handled the connect, which can come after QMP answers. Polls
    /// `info network` over QMP (QEMU started with `-qmp unix:PATH,server=on,wait=off`)
    /// until each netdev shows its peer's address instead of "connecting".
    pub fn wait_ready(&mut self, qmp: &Path, netdevs: &[(&str, PathBuf)]) {
        let mut qmp = Qmp::connect(self, qmp);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let info = qmp.hmp("info network");
            let up = |(id, path): &(&str, PathBuf)| {
                let want = format!("{id}: index=0,type=stream,unix:{}", path.display());
                info.lines().any(|l| l.trim().ends_with(&want))
            };
            if netdevs.iter().all(up) {
                return;
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "stream netdevs never connected: {info}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A QMP client (line-delimited JSON; events skipped).
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connect to QEMU's QMP socket `path` (waits for it), read the greeting and
    /// leave capabilities negotiation.
    pub fn connect(qemu: &mut Qemu, path: &Path) -> Self {
        let deadline = Instant::now() + Duration::from_secs(20);
        let stream = loop {
            if let Ok(s) = UnixStream::connect(path) {
                break s;
            }
            qemu.assert_running();
            assert!(
                Instant::now() < deadline,
                "QEMU's QMP socket never appeared"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut qmp = Self {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        };
        // QEMU 7.2 may send events (NETDEV_STREAM_CONNECTED) ahead of the greeting.
        loop {
            let v = qmp.next();
            if v.get("QMP").is_some() {
                break;
            }
            assert!(v.get("event").is_some(), "not a QMP greeting: {v}");
        }
        qmp.execute(&serde_json::json!({"execute": "qmp_capabilities"}));
        qmp
    }

    fn next(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("QMP read");
        assert!(n > 0, "QMP closed");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP sent {line:?}: {e}"))
    }

    /// Run a command; its `return` value (panics on an error reply).
    pub fn execute(&mut self, cmd: &Value) -> Value {
        writeln!(self.writer, "{cmd}").unwrap();
        loop {
            let mut v = self.next();
            if let Some(r) = v.get_mut("return") {
                return r.take();
            }
            assert!(v.get("error").is_none(), "QMP {cmd}: {v}");
        }
    }

    /// Run a human monitor command; its text output.
    pub fn hmp(&mut self, line: &str) -> String {
        let r = self.execute(&serde_json::json!({
            "execute": "human-monitor-command",
            "arguments": {"command-line": line},
        }));
        r.as_str().unwrap_or_default().to_owned()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait until each of `paths` exists (a daemon's listening sockets), panicking with
/// the proxy's log after 10 s.
pub fn wait_for_paths(proxy: &mut Proxy, paths: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for name in paths {
        while !proxy.path(name).exists() {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!("colo-proxy exited early ({status}):\n{}", proxy.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "{name} never appeared:\n{}",
                proxy.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
