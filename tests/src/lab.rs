//! The lab: a client, a primary VM and a secondary VM as network namespaces, each
//! with one TAP device as its NIC, and a [`Relay`] between the taps.
//!
//! The two VM namespaces are configured identically (the secondary is a clone of the
//! primary): same MAC, same address. Only the relay connects them to the client.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use colo_core::sim::{CLIENT_MAC, VM_MAC};

use crate::netns::Netns;
use crate::process::ChildGuard;
use crate::relay::{Relay, RelayConfig, RelayReport, RelayTaps};
use crate::tap::{Tap, TapSetup, mac_string};

/// The VMs' address (both of them).
pub const VM_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The client's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// Prefix length of the lab network.
pub const PREFIX_LEN: u8 = 24;
/// The NIC name inside every namespace.
pub const NIC: &str = "eth0";

/// How to build a [`Lab`].
#[derive(Debug, Clone, Default)]
pub struct LabConfig {
    /// The relay's settings.
    pub relay: RelayConfig,
    /// The namespaces' settings.
    pub net: NetConfig,
}

/// How to set up the namespaces of a [`LabNet`].
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// `net.ipv4.tcp_timestamps` for the secondary VM, if it should differ from the
    /// Linux default (1: timestamps with a per-connection random offset). Linux
    /// derives that offset from a boot-wide secret and the addresses, not from the
    /// namespace, so two namespaces with the same addresses send the *same* TSvals;
    /// `2` (timestamps without the random offset) gives the secondary a different
    /// timestamp clock, as a real second VM would have.
    pub secondary_tcp_timestamps: Option<u8>,
    /// Give the VMs a permanent ARP entry for the client, so that they never send
    /// ARP requests of their own. Linux sends neighbour probes after timers (5 s
    /// `delay_first_probe_time`) unless TCP traffic confirmed the neighbour, which
    /// makes them timing-dependent: the two VMs may disagree. The client still
    /// resolves the VMs' address by ARP, and both VMs answer.
    pub static_neighbours_on_vms: bool,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            secondary_tcp_timestamps: Some(2),
            static_neighbours_on_vms: true,
        }
    }
}

/// Why the lab cannot be built on this machine, if it cannot (not root, no `ip`,
/// no `/dev/net/tun`, or `ip netns add` fails). Checked once per process.
#[must_use]
pub fn unavailable_reason() -> Option<String> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON.get_or_init(probe).clone()
}

fn probe() -> Option<String> {
    match effective_uid() {
        Some(0) => {}
        Some(uid) => return Some(format!("needs root (effective uid is {uid})")),
        None => return Some("cannot read the effective uid from /proc/self/status".into()),
    }
    if let Err(e) = crate::netns::ip(["-V"]) {
        return Some(format!("iproute2 `ip` cannot be run: {e}"));
    }
    if let Err(e) = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        return Some(format!("/dev/net/tun cannot be opened: {e}"));
    }
    match Netns::create("probe") {
        Ok(ns) => drop(ns),
        Err(e) => return Some(format!("cannot create a network namespace: {e}")),
    }
    match Tap::create() {
        Ok(tap) => drop(tap),
        Err(e) => return Some(format!("cannot create a TAP device: {e}")),
    }
    None
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The three namespaces, deleted when dropped. Build them with [`LabNet::create`],
/// which also returns the configured TAP devices, to be served by a [`Relay`] (as
/// [`Lab`] does) or by anything else that speaks for the two proxies.
#[derive(Debug)]
pub struct LabNet {
    /// The client's namespace: `eth0` is [`CLIENT_IP`] with MAC `CLIENT_MAC`.
    pub client: Netns,
    /// The primary VM's namespace: `eth0` is [`VM_IP`] with MAC `VM_MAC`.
    pub primary: Netns,
    /// The secondary VM's namespace: configured exactly like the primary's.
    pub secondary: Netns,
}

impl LabNet {
    /// Create the namespaces and one TAP device per namespace (created here, moved
    /// there, configured, up).
    ///
    /// # Errors
    /// Any setup step failed; whatever was created is removed again.
    pub fn create(config: &NetConfig) -> io::Result<(Self, RelayTaps)> {
        let net = Self {
            client: Netns::create("client")?,
            primary: Netns::create("pvm")?,
            secondary: Netns::create("svm")?,
        };
        if let Some(v) = config.secondary_tcp_timestamps {
            net.secondary
                .set_sysctl("net/ipv4/tcp_timestamps", &v.to_string())?;
        }
        let vm = TapSetup {
            name: NIC.into(),
            mac: VM_MAC,
            ipv4: (VM_IP, PREFIX_LEN),
            disable_ipv6: true,
        };
        let mut taps = RelayTaps {
            client: Tap::create()?,
            primary: Tap::create()?,
            secondary: Tap::create()?,
        };
        taps.client.move_into(
            &net.client,
            &TapSetup {
                name: NIC.into(),
                mac: CLIENT_MAC,
                ipv4: (CLIENT_IP, PREFIX_LEN),
                disable_ipv6: true,
            },
        )?;
        taps.primary.move_into(&net.primary, &vm)?;
        taps.secondary.move_into(&net.secondary, &vm)?;
        if config.static_neighbours_on_vms {
            for ns in [&net.primary, &net.secondary] {
                ns.ip([
                    "neigh",
                    "replace",
                    &CLIENT_IP.to_string(),
                    "lladdr",
                    &mac_string(CLIENT_MAC),
                    "dev",
                    NIC,
                    "nud",
                    "permanent",
                ])?;
            }
        }
        Ok((net, taps))
    }
}

/// A running lab. Dropping it stops the services, then the relay (closing the taps),
/// then deletes the namespaces, also while a failing test unwinds.
#[derive(Debug)]
pub struct Lab {
    // Fields drop in declaration order: processes, relay, namespaces.
    servers: Vec<ChildGuard>,
    relay: Option<Relay>,
    net: LabNet,
}

impl Lab {
    /// Create the namespaces and taps ([`LabNet::create`]) and start the relay.
    ///
    /// # Errors
    /// Any setup step failed; whatever was created is removed again.
    pub fn start(config: LabConfig) -> io::Result<Self> {
        let (net, taps) = LabNet::create(&config.net)?;
        let relay = Relay::start(taps, config.relay)?;
        Ok(Self {
            servers: Vec::new(),
            relay: Some(relay),
            net,
        })
    }

    /// The namespaces.
    #[must_use]
    pub fn net(&self) -> &LabNet {
        &self.net
    }

    /// The relay, while it runs.
    #[must_use]
    pub fn relay(&self) -> Option<&Relay> {
        self.relay.as_ref()
    }

    /// Start `program args...` in both VM namespaces (the same service in both, as
    /// on a VM and its clone) and wait until each prints a line `READY`. The
    /// processes are killed when the lab stops or is dropped.
    ///
    /// # Errors
    /// A process could not be started or did not get ready within `timeout`.
    pub fn start_service<I, S>(
        &mut self,
        program: &OsStr,
        args: I,
        timeout: Duration,
    ) -> io::Result<()>
    where
        I: IntoIterator<Item = S> + Clone,
        S: AsRef<OsStr>,
    {
        for (ns, label) in [
            (&self.net.primary, "primary"),
            (&self.net.secondary, "secondary"),
        ] {
            let mut cmd = ns.command(program);
            cmd.args(args.clone());
            let mut child = ChildGuard::spawn(&mut cmd, format!("{label} service"))?;
            child.wait_for_line("READY", timeout)?;
            self.servers.push(child);
        }
        Ok(())
    }

    /// A command that runs `program` in the client namespace.
    #[must_use]
    pub fn client_command(&self, program: impl AsRef<OsStr>) -> Command {
        self.net.client.command(program)
    }

    /// Stop the services and the relay; return the relay's report.
    ///
    /// # Errors
    /// The relay did not stop in time, or was already stopped.
    pub fn stop(&mut self) -> io::Result<RelayReport> {
        self.servers.clear();
        let mut relay = self
            .relay
            .take()
            .ok_or_else(|| io::Error::other("the relay was already stopped"))?;
        relay.stop(Duration::from_secs(10))
    }
}
