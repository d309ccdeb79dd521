//! Optional window clamping: a released primary frame advertises no more receive
//! window than the secondary last did, so after a failover the client has not sent
//! more than the secondary was ready to take.

use bytes::BytesMut;

use crate::classify::classify;
use crate::frame::Frame;

/// The frame with its TCP window lowered to `window`, or `None` if it is not TCP or
/// already advertises no more than that.
pub(crate) fn clamp(frame: &Frame, window: u16) -> Option<Frame> {
    let tcp = classify(frame.ethernet_bytes()).tcp().cloned()?;
    if tcp.window <= window {
        return None;
    }
    let vnet = usize::try_from(frame.vnet_hdr_len).ok()?;
    // With NEEDS_CSUM the field holds only the pseudo-header sum and the device
    // completes it over the rewritten header: leave it alone.
    let partial = crate::checksum::vnet_needs_csum(frame.vnet_header());
    let mut data = BytesMut::from(&frame.data[..]);
    let at = vnet + tcp.tcp_offset;
    data[at + 14..at + 16].copy_from_slice(&window.to_be_bytes());
    if !partial {
        let old = u16::from_be_bytes([data[at + 16], data[at + 17]]);
        let new = crate::checksum::update_u16(old, tcp.window, window);
        data[at + 16..at + 18].copy_from_slice(&new.to_be_bytes());
    }
    Some(Frame {
        vnet_hdr_len: frame.vnet_hdr_len,
        data: data.freeze(),
    })
}
