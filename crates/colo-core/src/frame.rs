//! A guest frame as it travels between QEMU and the proxy.

use bytes::Bytes;

/// Which VM produced a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The primary VM: its output is what the client sees.
    Primary,
    /// The secondary VM: its output is only compared, never released.
    Secondary,
}

impl Side {
    /// Index usable for `[T; 2]` arrays (primary = 0, secondary = 1).
    #[must_use]
    pub const fn index(self) -> usize {
        match self {
            Self::Primary => 0,
            Self::Secondary => 1,
        }
    }

    /// Lower-case name, for logs and reports.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Secondary => "secondary",
        }
    }
}

/// One frame with QEMU's optional virtio-net header.
///
/// `data` holds exactly the bytes QEMU puts after the length prefix: the virtio-net
/// header (`vnet_hdr_len` bytes, possibly zero) followed by the Ethernet frame. This
/// is also what the proxy writes back out, so released frames keep their framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Length of the virtio-net header at the front of `data` (0 when vnet headers are off).
    pub vnet_hdr_len: u32,
    /// The vnet header (if any) and the Ethernet frame.
    pub data: Bytes,
}

impl Frame {
    /// A frame without a virtio-net header.
    #[must_use]
    pub fn ethernet(data: impl Into<Bytes>) -> Self {
        Self {
            vnet_hdr_len: 0,
            data: data.into(),
        }
    }

    /// The Ethernet frame, without the vnet header. Empty if `vnet_hdr_len` exceeds the data.
    #[must_use]
    pub fn ethernet_bytes(&self) -> &[u8] {
        let start = usize::try_from(self.vnet_hdr_len).unwrap_or(usize::MAX);
        self.data.get(start..).unwrap_or(&[])
    }

    /// The virtio-net header bytes (empty when there is none).
    #[must_use]
    pub fn vnet_header(&self) -> &[u8] {
        let end = usize::try_from(self.vnet_hdr_len)
            .unwrap_or(usize::MAX)
            .min(self.data.len());
        &self.data[..end]
    }
}
