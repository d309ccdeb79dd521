//! TAP devices created in the root namespace (so that this process holds their file
//! descriptors) and then moved into a network namespace, where they are the NIC of
//! the "VM" or client that lives there.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

use tun_tap::{Iface, Mode};

use crate::netns::{Netns, ip};

static NEXT_TAP: AtomicU32 = AtomicU32::new(0);

/// Format a MAC address as `aa:bb:cc:dd:ee:ff`.
#[must_use]
pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// How a TAP device is set up inside its namespace.
#[derive(Debug, Clone)]
pub struct TapSetup {
    /// The interface name inside the namespace (`eth0`).
    pub name: String,
    /// Its MAC address.
    pub mac: [u8; 6],
    /// Its IPv4 address and prefix length.
    pub ipv4: (Ipv4Addr, u8),
    /// Disable IPv6 on it (no DAD, router solicitations or MLD reports, which are
    /// sent after random delays and so differ between the two VMs).
    pub disable_ipv6: bool,
}

/// Move network device `dev` (a TAP created by anyone, one end of a veth pair ...)
/// from the current namespace into `ns` and configure it there as `setup` says:
/// MAC (set before the move), optionally no IPv6, new name, IPv4 address, up.
///
/// # Errors
/// An `ip` or sysctl command failed.
pub fn move_link_into(dev: &str, ns: &Netns, setup: &TapSetup) -> io::Result<()> {
    ip(["link", "set", "dev", dev, "address", &mac_string(setup.mac)])?;
    if setup.disable_ipv6 {
        // A device moved in gets the namespace's defaults: no IPv6 from the start.
        ns.set_sysctl("net/ipv6/conf/default/disable_ipv6", "1")?;
        ns.set_sysctl("net/ipv6/conf/all/disable_ipv6", "1")?;
    }
    ip(["link", "set", "dev", dev, "netns", ns.name()])?;
    if dev != setup.name {
        ns.ip(["link", "set", "dev", dev, "name", &setup.name])?;
    }
    if setup.disable_ipv6 {
        ns.set_sysctl(&format!("net/ipv6/conf/{}/disable_ipv6", setup.name), "1")?;
    }
    let (addr, prefix) = setup.ipv4;
    ns.ip([
        "addr",
        "add",
        &format!("{addr}/{prefix}"),
        "dev",
        &setup.name,
    ])?;
    ns.ip(["link", "set", "dev", &setup.name, "up"])?;
    Ok(())
}

/// A TAP device: the frames its namespace sends come out of [`Tap::recv`], and what
/// is passed to [`Tap::send`] arrives in the namespace as if from the wire.
/// The device disappears when the `Tap` is dropped (its last fd closes).
#[derive(Debug)]
pub struct Tap {
    iface: Iface,
    name: String,
    netns: Option<String>,
}

impl Tap {
    /// Create a TAP device (Ethernet frames, no packet-info header) in the current
    /// namespace, with a name unique to this process: `ct<pid>x<n>`.
    ///
    /// # Errors
    /// `/dev/net/tun` cannot be opened or the device cannot be created.
    pub fn create() -> io::Result<Self> {
        let n = NEXT_TAP.fetch_add(1, Ordering::Relaxed);
        let wanted = format!("ct{}x{n}", std::process::id());
        let iface = Iface::without_packet_info(&wanted, Mode::Tap)?;
        let name = iface.name().to_owned();
        Ok(Self {
            iface,
            name,
            netns: None,
        })
    }

    /// The device's current name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace the device lives in, `None` for the one it was created in.
    #[must_use]
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// Move the device into `ns` and configure it there: rename, MAC, IPv4 address,
    /// optionally no IPv6, up.
    ///
    /// # Errors
    /// An `ip` or sysctl command failed.
    pub fn move_into(&mut self, ns: &Netns, setup: &TapSetup) -> io::Result<()> {
        move_link_into(&self.name, ns, setup)?;
        self.netns = Some(ns.name().to_owned());
        self.name.clone_from(&setup.name);
        Ok(())
    }

    /// Receive one frame the namespace sent (blocking unless non-blocking was set).
    ///
    /// # Errors
    /// The read failed (`WouldBlock` when non-blocking and nothing is queued).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.iface.recv(buf)
    }

    /// Deliver one Ethernet frame into the namespace.
    ///
    /// # Errors
    /// The write failed.
    pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
        self.iface.send(frame)
    }

    /// Make [`Tap::recv`] and [`Tap::send`] non-blocking.
    ///
    /// # Errors
    /// The ioctl failed.
    pub fn set_non_blocking(&self) -> io::Result<()> {
        self.iface.set_non_blocking()
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.iface.as_raw_fd()
    }
}
