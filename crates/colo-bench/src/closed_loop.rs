//! Closed loop: one frame in flight, one thread. Send the secondary's copy, then the
//! primary's (timestamped), then read outdev until that frame is back; repeat over
//! the flows round-robin. No thread hand-off in the generator, so the latency is the
//! two socket hops and the proxy. With `busy_poll` the generator spins on a
//! non-blocking outdev instead of sleeping in `read`, which takes its own wake-up out
//! of the measured latency (and costs a core).

use std::io::Write as _;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::endpoint::Conns;
use crate::frames::FlowSet;
use crate::outdev::OutdevReader;
use crate::report::Report;

/// How the closed loop runs.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Pieces per segment on the secondary.
    pub split: u32,
    /// The vnet_hdr_len field is on the wire.
    pub vnet: bool,
    /// Stop after this many frames.
    pub frames: u64,
    /// Stop at this time.
    pub until: Option<Instant>,
    /// Give up on a frame not released within this long.
    pub drain_timeout: Duration,
    /// Spin on a non-blocking outdev instead of sleeping in `read`.
    pub busy_poll: bool,
}

/// Runs the closed loop until `frames` or `until`.
pub fn run(conns: Conns, set: &FlowSet, cfg: Settings) -> Report {
    let Settings {
        split,
        vnet,
        frames,
        until,
        drain_timeout,
        busy_poll,
    } = cfg;
    let Conns {
        mut pri,
        mut sec,
        mut out,
    } = conns;
    let mut rd = OutdevReader::new(vnet);
    let mut rep = Report::default();
    let _ = out.set_read_timeout(Some(drain_timeout));
    if busy_poll && let Err(e) = out.set_nonblocking(true) {
        rep.error(format!("cannot make outdev non-blocking: {e}"));
        return rep;
    }
    let mut next_k = vec![0u32; set.len()];
    let (mut pbuf, mut sbuf) = (BytesMut::new(), BytesMut::new());
    let same = set.secondary_is_primary(split);
    let start = Instant::now();
    let mut flow = 0usize;
    'run: while rep.sent < frames && until.is_none_or(|t| Instant::now() < t) {
        let k = next_k[flow];
        next_k[flow] = k.wrapping_add(1);
        pbuf.clear();
        sbuf.clear();
        if !same {
            set.put_secondary(flow, k, split, &mut sbuf);
        }
        set.put_primary(flow, k, &mut pbuf);
        if let Err(e) = sec.write_all(if same { &pbuf } else { &sbuf }) {
            rep.error(format!("sending to secondary_in: {e}"));
            break;
        }
        let t0 = Instant::now();
        if let Err(e) = pri.write_all(&pbuf) {
            rep.error(format!("sending to primary_in: {e}"));
            break;
        }
        rep.sent += 1;
        let now = loop {
            match rd.next_frame() {
                Ok(Some(frame)) => {
                    let now = Instant::now();
                    if !set.is_segment(flow, k, frame) {
                        rep.corrupt += 1;
                        rep.error(format!(
                            "flow {flow}: segment {k} is not what was sent: got flow {:?} \
                             field {:?}",
                            set.flow_of(frame),
                            set.field_of(frame)
                        ));
                    }
                    break now;
                }
                Ok(None) => {}
                Err(e) => {
                    rep.error(format!("outdev framing: {e}"));
                    break 'run;
                }
            }
            match rd.fill(&mut out) {
                Ok(0) => {
                    rep.error("outdev closed by the proxy".to_owned());
                    break 'run;
                }
                Ok(n) => {
                    rep.bytes += n as u64;
                }
                Err(e) if busy_poll && e.kind() == std::io::ErrorKind::WouldBlock => {
                    if t0.elapsed() > drain_timeout {
                        rep.error("no release within the drain timeout".to_owned());
                        break 'run;
                    }
                    std::hint::spin_loop();
                }
                Err(e) => {
                    rep.error(format!("no release within the drain timeout: {e}"));
                    break 'run;
                }
            }
        };
        rep.latency(now.duration_since(t0));
        rep.released += 1;
        rep.elapsed = now.duration_since(start);
        flow = (flow + 1) % set.len();
    }
    rep.finish(start);
    rep
}
