//! The two-host lab of issue 6: a client, a primary VM and a secondary VM as network
//! namespaces, each with its own Linux TCP stack, and the real `colo-proxy primary`
//! and `colo-proxy secondary` daemons between them as child processes in the root
//! namespace.
//!
//! ```text
//!  client ns                       root ns                          pvm ns
//!  br0 10.77.0.2 fd77::2 ── tap ── colo-proxy primary ── tap ────── eth0 10.77.0.1 fd77::1
//!   │                                 │ link: tcp 127.0.0.1 (loopback)
//!   └──────────────────────── tap ── colo-proxy secondary ── tap ── eth0 (svm ns, same
//!                    (--client, used after failover)                MAC and addresses)
//! ```
//!
//! The proxies create their TAP devices (`tap:IFNAME`); the lab waits for each to
//! appear, moves its kernel side into the namespace and configures it there. Both
//! proxies' client ports are ports of one bridge in the client namespace, so that
//! after a failover the secondary reaches the same client (its gratuitous ARP moves
//! the VM's MAC to its port). The link between the proxies is loopback TCP.
//!
//! [`PathKind::Direct`] builds the same namespaces with the primary VM wired straight
//! to the bridge (a veth pair, no proxy): the baseline for benchmarks and a check of
//! the lab itself.
//!
//! Noise control, so that the two VMs send identical frames: no IPv6 link-local
//! address, DAD, router solicitations or autoconfiguration on the VMs; MLDv1 with
//! the unsolicited reports sent at once (two identical reports when the address is
//! added, in both VMs within milliseconds); permanent neighbour entries for the
//! client, so the VMs never resolve it by timer-driven probes; the secondary uses
//! `tcp_timestamps=2` (no per-connection offset) so that its TCP timestamps differ
//! from the primary's, as a second machine's would.

use std::ffi::OsStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use colo_core::sim::{CLIENT_MAC, VM_MAC};
use serde_json::Value;

use crate::control::ControlClient;
use crate::lab::{CLIENT_IP, NIC, PREFIX_LEN, VM_IP};
use crate::netns::{Netns, ip};
use crate::process::{ChildGuard, WatchedOutput};
use crate::proxy::{ProxyProcess, colo_proxy_bin};
use crate::tap::{TapSetup, mac_string, move_link_into};

/// The VMs' IPv6 address (both of them).
pub const VM_IP6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
/// The client's IPv6 address.
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
/// IPv6 prefix length of the lab network.
pub const PREFIX6_LEN: u8 = 64;
/// The bridge in the client namespace that carries the client's addresses.
pub const CLIENT_BRIDGE: &str = "br0";

/// How long the lab waits for a proxy to create a device, open its control socket
/// or bring the link up.
const STARTUP: Duration = Duration::from_secs(15);
/// How long the VMs' IPv6 start-up reports are given to cross the proxies.
const SETTLE: Duration = Duration::from_millis(300);

/// What sits between the client and the VMs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathKind {
    /// `colo-proxy primary` and `colo-proxy secondary`.
    Proxies,
    /// The primary VM straight on the client's bridge; no secondary, no proxy.
    Direct,
}

/// How to build a [`TwinLab`].
#[derive(Debug, Clone)]
pub struct TwinConfig {
    /// Proxies or the direct path.
    pub path: PathKind,
    /// Extra arguments for `colo-proxy primary` (`--compare-timeout 500` ...).
    pub primary_args: Vec<String>,
    /// Extra arguments for `colo-proxy secondary`.
    pub secondary_args: Vec<String>,
    /// `RUST_LOG` for the proxies.
    pub log_filter: String,
    /// `net.ipv4.tcp_timestamps` of the secondary VM (see [`crate::lab::NetConfig`]).
    pub secondary_tcp_timestamps: Option<u8>,
    /// The largest TCP receive and send buffers in the client namespace
    /// (`tcp_rmem`/`tcp_wmem` max), in bytes. The primary VM can run ahead of the
    /// secondary by at most what is in flight between it and the client, and its
    /// output waits that long for the secondary's; bounding the client's buffers
    /// bounds the wait in both directions (downloads and uploads), which must stay
    /// under the compare timeout when the secondary's path (rewriter, link) is slower
    /// than the primary's.
    pub client_buffer_max: Option<u32>,
}

impl Default for TwinConfig {
    fn default() -> Self {
        Self {
            path: PathKind::Proxies,
            primary_args: Vec::new(),
            secondary_args: Vec::new(),
            log_filter: "info".into(),
            secondary_tcp_timestamps: Some(2),
            client_buffer_max: Some(1 << 20),
        }
    }
}

/// Which VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vm {
    /// The primary VM.
    Primary,
    /// The secondary VM.
    Secondary,
}

/// A running two-host lab. Dropping it stops the services, then the proxies (whose
/// logs are printed when a test is failing), then deletes the namespaces.
#[derive(Debug)]
pub struct TwinLab {
    // Fields drop in declaration order.
    services: Vec<(Vm, ChildGuard)>,
    client_servers: Vec<ChildGuard>,
    primary_ctl: Option<ControlClient>,
    secondary_ctl: Option<ControlClient>,
    primary: Option<ProxyProcess>,
    secondary: Option<ProxyProcess>,
    /// The client's namespace: `br0` has [`CLIENT_IP`] and [`CLIENT_IP6`].
    pub client: Netns,
    /// The primary VM's namespace: `eth0` has [`VM_IP`], [`VM_IP6`] and `VM_MAC`.
    pub pvm: Netns,
    /// The secondary VM's namespace: configured exactly like the primary's.
    pub svm: Netns,
    dir: tempfile::TempDir,
    started: Instant,
}

/// Why the two-host lab cannot be built here, if it cannot: what
/// [`crate::unavailable_reason`] checks (root, `ip`, `/dev/net/tun`, namespaces), and
/// bridge and veth devices (kernel modules `bridge`, `veth`). Checked once per process.
#[must_use]
pub fn unavailable_reason() -> Option<String> {
    static REASON: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    REASON
        .get_or_init(|| crate::unavailable_reason().or_else(probe_bridge_and_veth))
        .clone()
}

fn probe_bridge_and_veth() -> Option<String> {
    let ns = match Netns::create("probe") {
        Ok(ns) => ns,
        Err(e) => return Some(format!("cannot create a network namespace: {e}")),
    };
    if let Err(e) = ns.ip(["link", "add", "probebr", "type", "bridge"]) {
        return Some(format!(
            "cannot create a bridge device (kernel module `bridge`): {e}"
        ));
    }
    if let Err(e) = ns.ip([
        "link", "add", "probev0", "type", "veth", "peer", "name", "probev1",
    ]) {
        return Some(format!(
            "cannot create a veth pair (kernel module `veth`): {e}"
        ));
    }
    None
}

/// Names of the devices the proxies create (at most 15 bytes).
fn dev_name(kind: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{kind}{}x{n}", std::process::id() % 10_000_000)
}

fn free_loopback_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Set `net.ipv6.conf.{default,all}.<key>` in `ns` for each `key=value`.
fn ipv6_defaults(ns: &Netns, settings: &[(&str, &str)]) -> io::Result<()> {
    for (key, value) in settings {
        for scope in ["default", "all"] {
            ns.set_sysctl(&format!("net/ipv6/conf/{scope}/{key}"), value)?;
        }
    }
    Ok(())
}

/// IPv6 without autoconfiguration noise: no link-local address, no DAD, no router
/// solicitations; MLDv1 reports sent at once and not repeated later.
const QUIET_IPV6: &[(&str, &str)] = &[
    ("addr_gen_mode", "1"),
    ("accept_dad", "0"),
    ("dad_transmits", "0"),
    ("accept_ra", "0"),
    ("router_solicitations", "0"),
    ("force_mld_version", "1"),
    ("mldv1_unsolicited_report_interval", "0"),
];

fn wait_for_device(name: &str, proxy: &mut ProxyProcess) -> io::Result<()> {
    let path = PathBuf::from(format!("/sys/class/net/{name}"));
    let deadline = Instant::now() + STARTUP;
    while !path.exists() {
        if let Some(status) = proxy.try_wait()? {
            return Err(io::Error::other(format!(
                "{} exited ({status}) before creating TAP device {name}; its log:\n{}",
                proxy.label(),
                proxy.log_tail(40)
            )));
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{} did not create TAP device {name} within {STARTUP:?}; its log:\n{}",
                    proxy.label(),
                    proxy.log_tail(40)
                ),
            ));
        }
        thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Move `dev` into a VM namespace and make it the VM's NIC.
fn configure_vm_nic(dev: &str, ns: &Netns) -> io::Result<()> {
    move_link_into(
        dev,
        ns,
        &TapSetup {
            name: NIC.into(),
            mac: VM_MAC,
            ipv4: (VM_IP, PREFIX_LEN),
            disable_ipv6: false,
        },
    )?;
    let client_mac = mac_string(CLIENT_MAC);
    for addr in [CLIENT_IP.to_string(), CLIENT_IP6.to_string()] {
        ns.ip([
            "neigh",
            "replace",
            &addr,
            "lladdr",
            &client_mac,
            "dev",
            NIC,
            "nud",
            "permanent",
        ])?;
    }
    ns.ip([
        "-6",
        "addr",
        "add",
        &format!("{VM_IP6}/{PREFIX6_LEN}"),
        "dev",
        NIC,
        "nodad",
    ])?;
    Ok(())
}

/// Move `dev` into the client namespace as a port of its bridge.
fn attach_to_client_bridge(dev: &str, client: &Netns) -> io::Result<()> {
    ip(["link", "set", "dev", dev, "netns", client.name()])?;
    client.ip(["link", "set", "dev", dev, "master", CLIENT_BRIDGE])?;
    client.ip(["link", "set", "dev", dev, "up"])?;
    Ok(())
}

impl TwinLab {
    /// Build the lab: namespaces, the client's bridge, and the proxies (or the
    /// direct path), with every device configured and the link up.
    ///
    /// # Errors
    /// A setup step failed (the message carries the proxy's log where it is the
    /// cause); whatever was created is removed again.
    pub fn start(config: &TwinConfig) -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("colo-twin-").tempdir()?;
        let mut lab = Self {
            services: Vec::new(),
            client_servers: Vec::new(),
            primary_ctl: None,
            secondary_ctl: None,
            primary: None,
            secondary: None,
            client: Netns::create("client")?,
            pvm: Netns::create("pvm")?,
            svm: Netns::create("svm")?,
            dir,
            started: Instant::now(),
        };
        for ns in [&lab.client, &lab.pvm, &lab.svm] {
            ipv6_defaults(ns, QUIET_IPV6)?;
        }
        if let Some(v) = config.secondary_tcp_timestamps {
            lab.svm
                .set_sysctl("net/ipv4/tcp_timestamps", &v.to_string())?;
        }
        if let Some(max) = config.client_buffer_max {
            lab.client
                .set_sysctl("net/ipv4/tcp_rmem", &format!("4096 131072 {max}"))?;
            lab.client
                .set_sysctl("net/ipv4/tcp_wmem", &format!("4096 16384 {max}"))?;
        }
        lab.create_client_bridge()?;
        match config.path {
            PathKind::Direct => lab.wire_direct()?,
            PathKind::Proxies => lab.start_proxies(config)?,
        }
        thread::sleep(SETTLE);
        Ok(lab)
    }

    fn create_client_bridge(&self) -> io::Result<()> {
        let c = &self.client;
        c.ip([
            "link",
            "add",
            CLIENT_BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        c.ip([
            "link",
            "set",
            "dev",
            CLIENT_BRIDGE,
            "address",
            &mac_string(CLIENT_MAC),
        ])?;
        c.ip(["link", "set", "dev", CLIENT_BRIDGE, "up"])?;
        c.ip([
            "addr",
            "add",
            &format!("{CLIENT_IP}/{PREFIX_LEN}"),
            "dev",
            CLIENT_BRIDGE,
        ])?;
        c.ip([
            "-6",
            "addr",
            "add",
            &format!("{CLIENT_IP6}/{PREFIX6_LEN}"),
            "dev",
            CLIENT_BRIDGE,
            "nodad",
        ])?;
        Ok(())
    }

    fn wire_direct(&self) -> io::Result<()> {
        let outer = dev_name("dvc");
        let inner = dev_name("dvv");
        ip([
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ])?;
        attach_to_client_bridge(&outer, &self.client)?;
        configure_vm_nic(&inner, &self.pvm)
    }

    fn start_proxies(&mut self, config: &TwinConfig) -> io::Result<()> {
        let bin = colo_proxy_bin()?;
        let link_port = free_loopback_port()?;
        let p_client = dev_name("cpc");
        let p_vm = dev_name("cpv");
        let s_client = dev_name("csc");
        let s_vm = dev_name("csv");
        let p_ctl = self.dir.path().join("primary.ctl");
        let s_ctl = self.dir.path().join("secondary.ctl");

        let secondary_args = [
            "--svm".to_owned(),
            format!("tap:{s_vm}"),
            "--client".into(),
            format!("tap:{s_client}"),
            "--link".into(),
            format!("tcp:127.0.0.1:{link_port}"),
            "--control".into(),
            format!("unix:{}", s_ctl.display()),
        ];
        self.secondary = Some(self.spawn_proxy(
            &bin,
            config,
            "secondary",
            &secondary_args,
            &config.secondary_args,
        )?);
        let primary_args = [
            "--client".to_owned(),
            format!("tap:{p_client}"),
            "--pvm".into(),
            format!("tap:{p_vm}"),
            "--link".into(),
            format!("tcp:127.0.0.1:{link_port},connect"),
            "--control".into(),
            format!("unix:{}", p_ctl.display()),
        ];
        self.primary =
            Some(self.spawn_proxy(&bin, config, "primary", &primary_args, &config.primary_args)?);

        for (dev, vm) in [
            (&s_vm, Vm::Secondary),
            (&s_client, Vm::Secondary),
            (&p_vm, Vm::Primary),
            (&p_client, Vm::Primary),
        ] {
            let proxy = self
                .proxy_process(vm)
                .ok_or_else(|| io::Error::other("proxy not started"))?;
            wait_for_device(dev, proxy)?;
        }
        self.secondary_ctl = Some(self.connect_control(&s_ctl, Vm::Secondary)?);
        self.primary_ctl = Some(self.connect_control(&p_ctl, Vm::Primary)?);
        self.wait_link_up()?;

        attach_to_client_bridge(&p_client, &self.client)?;
        attach_to_client_bridge(&s_client, &self.client)?;
        // Both VMs back to back: their identical start-up reports stay close.
        configure_vm_nic(&p_vm, &self.pvm)?;
        configure_vm_nic(&s_vm, &self.svm)?;
        Ok(())
    }

    /// Start `colo-proxy <role> args... extra...`, logging to `<role>.log`.
    fn spawn_proxy(
        &self,
        bin: &Path,
        config: &TwinConfig,
        role: &str,
        args: &[String],
        extra: &[String],
    ) -> io::Result<ProxyProcess> {
        let mut cmd = orphan_proof_command(bin);
        cmd.env("RUST_LOG", &config.log_filter)
            .arg(role)
            .args(args)
            .args(extra);
        ProxyProcess::spawn(
            &mut cmd,
            &format!("colo-proxy {role}"),
            &self.dir.path().join(format!("{role}.log")),
        )
    }

    fn connect_control(&self, path: &Path, vm: Vm) -> io::Result<ControlClient> {
        let proxy = self.proxy(vm)?;
        ControlClient::connect(path, proxy.label(), STARTUP)
            .map_err(|e| io::Error::new(e.kind(), format!("{e}; its log:\n{}", proxy.log_tail(40))))
    }

    fn proxy(&self, vm: Vm) -> io::Result<&ProxyProcess> {
        match vm {
            Vm::Primary => self.primary.as_ref(),
            Vm::Secondary => self.secondary.as_ref(),
        }
        .ok_or_else(|| io::Error::other(format!("no {vm:?} proxy in this lab")))
    }

    /// The proxy in front of `vm`, while it runs.
    #[must_use]
    pub fn proxy_process(&mut self, vm: Vm) -> Option<&mut ProxyProcess> {
        match vm {
            Vm::Primary => self.primary.as_mut(),
            Vm::Secondary => self.secondary.as_mut(),
        }
    }

    /// The control client of the proxy in front of `vm`.
    ///
    /// # Panics
    /// The lab has no proxies (direct path).
    #[must_use]
    pub fn control(&mut self, vm: Vm) -> &mut ControlClient {
        match vm {
            Vm::Primary => self.primary_ctl.as_mut(),
            Vm::Secondary => self.secondary_ctl.as_mut(),
        }
        .expect("this lab has no proxies")
    }

    /// Wait until the primary reports its link to the secondary up (`stats`).
    fn wait_link_up(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + STARTUP;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            let reply = self
                .primary_ctl
                .as_mut()
                .ok_or_else(|| io::Error::other("no primary control"))?
                .command("stats", Duration::from_secs(5))?;
            if link_up(&reply) == Some(true) {
                return Ok(());
            }
            last = reply;
            thread::sleep(Duration::from_millis(50));
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the primary's link to the secondary did not come up within {STARTUP:?}; \
                 last stats: {last}\nprimary log:\n{}\nsecondary log:\n{}",
                self.proxy(Vm::Primary)?.log_tail(30),
                self.proxy(Vm::Secondary)?.log_tail(30)
            ),
        ))
    }

    /// Start `colo-testsrv`-like `program args...` in both VM namespaces (the same
    /// service on a VM and its clone) and wait until each prints `READY`.
    ///
    /// # Errors
    /// A process could not be started or did not get ready in time.
    pub fn start_service<I, S>(&mut self, program: &OsStr, args: I) -> io::Result<()>
    where
        I: IntoIterator<Item = S> + Clone,
        S: AsRef<OsStr>,
    {
        for (vm, ns) in [(Vm::Primary, &self.pvm), (Vm::Secondary, &self.svm)] {
            let mut cmd = ns_command(ns, program);
            cmd.args(args.clone());
            let mut child = ChildGuard::spawn(&mut cmd, format!("{vm:?} VM service"))?;
            child.wait_for_line("READY", STARTUP)?;
            self.services.push((vm, child));
        }
        Ok(())
    }

    /// Stdout lines the services of `vm` printed since the last call.
    pub fn service_lines(&mut self, vm: Vm) -> Vec<String> {
        self.services
            .iter_mut()
            .filter(|(v, _)| *v == vm)
            .flat_map(|(_, c)| c.drain_lines())
            .collect()
    }

    /// Start a server in the client namespace (for connections the VMs open) and
    /// wait for `READY`; returns its index for [`TwinLab::client_server_lines`].
    ///
    /// # Errors
    /// It could not be started or did not get ready in time.
    pub fn start_client_server<I, S>(&mut self, program: &OsStr, args: I) -> io::Result<usize>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = ns_command(&self.client, program);
        cmd.args(args);
        let mut child = ChildGuard::spawn(&mut cmd, "client-side server")?;
        child.wait_for_line("READY", STARTUP)?;
        self.client_servers.push(child);
        Ok(self.client_servers.len() - 1)
    }

    /// Stdout lines of client-side server `index` since the last call.
    pub fn client_server_lines(&mut self, index: usize) -> Vec<String> {
        self.client_servers
            .get_mut(index)
            .map(ChildGuard::drain_lines)
            .unwrap_or_default()
    }

    /// Run `program args...` in the client namespace, watching its stderr.
    ///
    /// # Errors
    /// It could not be started.
    pub fn run_in_client<I, S>(
        &self,
        program: &OsStr,
        args: I,
        label: &str,
    ) -> io::Result<WatchedOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_in(&self.client, program, args, label)
    }

    /// Run `program args...` in a VM namespace, watching its stderr.
    ///
    /// # Errors
    /// It could not be started.
    pub fn run_in_vm<I, S>(
        &self,
        vm: Vm,
        program: &OsStr,
        args: I,
        label: &str,
    ) -> io::Result<WatchedOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let ns = match vm {
            Vm::Primary => &self.pvm,
            Vm::Secondary => &self.svm,
        };
        run_in(ns, program, args, label)
    }

    /// Kill the proxy in front of `vm` at once (SIGKILL), as a host that vanishes:
    /// its TAP devices disappear with it and the link drops.
    ///
    /// # Errors
    /// It was not running.
    pub fn kill_proxy(&mut self, vm: Vm) -> io::Result<()> {
        let proxy = self
            .proxy_process(vm)
            .ok_or_else(|| io::Error::other(format!("no {vm:?} proxy")))?;
        proxy.kill().map(drop)
    }

    /// Time since the lab was started.
    #[must_use]
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// Both proxies' logs, for a report.
    #[must_use]
    pub fn proxy_logs(&self) -> String {
        let mut out = String::new();
        for p in [&self.primary, &self.secondary].into_iter().flatten() {
            out.push_str(&format!("---- {} ----\n{}\n", p.label(), p.log_tail(60)));
        }
        out
    }
}

/// A command for `program` that is killed when the thread that started it ends (a
/// test process killed without unwinding leaves no proxy behind): through
/// `setpriv --pdeathsig KILL` (util-linux) where it is installed, which execs the
/// program (same pid).
fn orphan_proof_command(program: &Path) -> Command {
    orphan_proof(program.as_os_str(), |p| Command::new(p))
}

/// `program` run inside `ns`, killed when the thread that started it ends (see
/// [`orphan_proof_command`]).
fn ns_command(ns: &Netns, program: &OsStr) -> Command {
    orphan_proof(program, |p| ns.command(p))
}

/// `program` wrapped in `setpriv --pdeathsig KILL --` where setpriv is installed,
/// else `program` alone; `command` makes the command for what is run first.
fn orphan_proof(program: &OsStr, command: impl FnOnce(&OsStr) -> Command) -> Command {
    const SETPRIV: &str = "/usr/bin/setpriv";
    if Path::new(SETPRIV).exists() {
        let mut cmd = command(OsStr::new(SETPRIV));
        cmd.args(["--pdeathsig", "KILL", "--"]).arg(program);
        cmd
    } else {
        command(program)
    }
}

fn run_in<I, S>(ns: &Netns, program: &OsStr, args: I, label: &str) -> io::Result<WatchedOutput>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = ns_command(ns, program);
    cmd.args(args);
    WatchedOutput::spawn(&mut cmd, label)
}

/// Whether a `stats` reply says the link between the proxies is up: the first
/// `link`-named entry that is a boolean, a state string, or an object with a
/// `connected`/`up` boolean. `None` when the reply says nothing about a link.
#[must_use]
pub fn link_up(reply: &Value) -> Option<bool> {
    fn judge(v: &Value) -> Option<bool> {
        match v {
            Value::Bool(b) => Some(*b),
            Value::String(s) => Some(matches!(s.as_str(), "up" | "connected" | "established")),
            Value::Object(o) => ["connected", "up", "established"]
                .iter()
                .find_map(|k| o.get(*k).and_then(Value::as_bool))
                .or_else(|| o.get("state").and_then(judge)),
            _ => None,
        }
    }
    fn walk(v: &Value) -> Option<bool> {
        match v {
            Value::Object(o) => o
                .iter()
                .find_map(|(k, v)| if k.contains("link") { judge(v) } else { None })
                .or_else(|| o.values().find_map(walk)),
            Value::Array(a) => a.iter().find_map(walk),
            _ => None,
        }
    }
    walk(reply)
}

/// The address of the VMs' service on `port`, IPv4 or IPv6.
#[must_use]
pub fn vm_addr(v6: bool, port: u16) -> SocketAddr {
    lab_addr(VM_IP, VM_IP6, v6, port)
}

/// The address of a server in the client namespace on `port`, IPv4 or IPv6.
#[must_use]
pub fn client_addr(v6: bool, port: u16) -> SocketAddr {
    lab_addr(CLIENT_IP, CLIENT_IP6, v6, port)
}

fn lab_addr(v4: Ipv4Addr, v6: Ipv6Addr, want_v6: bool, port: u16) -> SocketAddr {
    let ip = if want_v6 {
        IpAddr::V6(v6)
    } else {
        IpAddr::V4(v4)
    };
    SocketAddr::new(ip, port)
}
