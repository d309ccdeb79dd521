//! The batched entry point: [`Engine::handle_frames`].
//!
//! At a million connections each frame's first touches of the connection index and of
//! its slab entry are cache (and TLB) misses, and one frame at a time they are paid one
//! after the other. A batch classifies and hashes a group of frames, then reads the
//! index for all of them, then finds and touches each one's slab entry, and only then
//! handles them in order: the misses of different frames overlap. Each frame is
//! classified once and probed once; the probe's answer is reused unless an earlier
//! frame of the group inserted or removed a connection, in which case the frame is
//! looked up again. The outcome is exactly that of [`Engine::handle_frame`] on each
//! frame in turn.

use std::hint::black_box;

use crate::classify::{Classified, classify};
use crate::frame::{Frame, Side};
use crate::time::Instant;

use super::table::ConnKey;
use super::{Engine, Mode};

/// Frames whose misses are overlapped together. Enough to cover the memory latency
/// with the out-of-order window of one core, small enough that the group's entries
/// are still in L1/L2 when they are handled.
const GROUP: usize = 16;

/// A frame of the current group, classified and probed.
#[derive(Debug)]
pub(super) struct Pending {
    frame: Frame,
    classified: Classified,
    key: ConnKey,
    hash: u64,
    slot: Option<u32>,
}

impl Engine {
    /// Feed frames one VM produced, in order, that arrived together (one read's
    /// worth). Same result as [`Engine::handle_frame`] on each of them in turn, but
    /// cheaper when they belong to many different connections.
    pub fn handle_frames(
        &mut self,
        now: Instant,
        side: Side,
        frames: impl IntoIterator<Item = Frame>,
    ) {
        let mut frames = frames.into_iter();
        if self.mode != Mode::Compare
            || !self.policies.is_empty()
            || self.table.len() < self.config.batch_from_connections
        {
            // Pass-through and policies look connections up differently, and a small
            // table has no misses to overlap.
            for frame in frames {
                self.handle_frame(now, side, frame);
            }
            return;
        }
        let mut group = std::mem::take(&mut self.batch);
        let s = side.index();
        loop {
            group.clear();
            for frame in frames.by_ref().take(GROUP) {
                let classified = classify(frame.ethernet_bytes());
                let key = ConnKey {
                    flow: classified.key,
                    dir: classified.dir,
                };
                let hash = self.table.hash(&key);
                group.push(Pending {
                    frame,
                    classified,
                    key,
                    hash,
                    slot: None,
                });
            }
            if group.is_empty() {
                break;
            }
            // Each pass below only loads, so the out-of-order core keeps the misses of
            // the whole group in flight at once: first the index (control group and
            // slot number), then the candidate entries' hot lines.
            for p in &mut group {
                p.slot = Some(self.table.touch_index(p.hash));
            }
            let mut entry_words = 0u64;
            for p in &group {
                entry_words ^= p.slot.map_or(0, |slot| self.table.touch_entry(slot, s));
            }
            black_box(entry_words);
            // Everything is in cache now: the real lookup, comparing keys.
            for p in &mut group {
                p.slot = self.table.lookup_hashed(p.hash, &p.key);
            }
            let version = self.table.version();
            for p in group.drain(..) {
                // Handling a frame may insert (a new connection) or remove (an
                // eviction) entries: then the later frames' probes may be stale.
                let slot = if self.table.version() == version {
                    p.slot
                } else {
                    self.table.lookup_hashed(p.hash, &p.key)
                };
                self.handle_probed(now, side, p.frame, p.classified, Some(slot));
            }
        }
        self.batch = group;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::engine::{EngineConfig, Output};
    use crate::sim::{FlowAddrs, TcpSender, Towards, udp_frame};
    use crate::time::Duration;

    /// One frame a VM sends on one of a few flows.
    #[derive(Debug, Clone)]
    enum Send {
        /// A data segment of `len` bytes; `bad` makes its payload differ on the
        /// secondary (a divergence).
        Data {
            flow: u8,
            len: u8,
            bad: bool,
        },
        Fin {
            flow: u8,
        },
        Rst {
            flow: u8,
        },
        Udp {
            flow: u8,
            byte: u8,
        },
        /// Bytes no parser accepts: compared raw.
        Junk {
            byte: u8,
        },
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// Frames from one VM that arrived in one read.
        Frames(Side, Vec<Send>),
        Advance(u16),
        CheckpointDone,
    }

    fn send() -> impl Strategy<Value = Send> {
        prop_oneof![
            6 => (0..8u8, 1..80u8, proptest::bool::weighted(0.05))
                .prop_map(|(flow, len, bad)| Send::Data { flow, len, bad }),
            1 => (0..8u8).prop_map(|flow| Send::Fin { flow }),
            1 => (0..8u8).prop_map(|flow| Send::Rst { flow }),
            1 => (0..8u8, any::<u8>()).prop_map(|(flow, byte)| Send::Udp { flow, byte }),
            1 => any::<u8>().prop_map(|byte| Send::Junk { byte }),
        ]
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            8 => (any::<bool>(), proptest::collection::vec(send(), 0..40)).prop_map(
                |(primary, sends)| {
                    let side = if primary { Side::Primary } else { Side::Secondary };
                    Step::Frames(side, sends)
                }
            ),
            1 => (0..3000u16).prop_map(Step::Advance),
            1 => Just(Step::CheckpointDone),
        ]
    }

    /// The frames of each step, built once so both engines get the same bytes.
    fn frames(steps: &[Step]) -> Vec<Vec<Frame>> {
        let mut senders: Vec<[TcpSender; 2]> = (0..8)
            .map(|n| {
                let a = FlowAddrs::v4(n);
                [TcpSender::new(a, 1000, 5000), TcpSender::new(a, 1000, 5000)]
            })
            .collect();
        steps
            .iter()
            .map(|step| {
                let Step::Frames(side, sends) = step else {
                    return Vec::new();
                };
                let s = side.index();
                sends
                    .iter()
                    .map(|send| match *send {
                        Send::Data { flow, len, bad } => {
                            let fill = if bad && s == 1 { 0xee } else { len };
                            senders[usize::from(flow)][s].data(&vec![fill; usize::from(len)])
                        }
                        Send::Fin { flow } => senders[usize::from(flow)][s].fin(),
                        Send::Rst { flow } => senders[usize::from(flow)][s].rst(),
                        Send::Udp { flow, byte } => udp_frame(
                            &FlowAddrs::v4(u32::from(flow) + 100),
                            Towards::Client,
                            &[byte; 20],
                        ),
                        Send::Junk { byte } => Frame::ethernet(vec![byte; 60]),
                    })
                    .collect()
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Batched and one-by-one feeding give the same outputs, in the same order, and
        /// the same counters, including while frames of a group create, evict and
        /// close connections (a table of 4 for 8 TCP and 8 UDP flows), and when the
        /// table grows past the size from which frames are grouped.
        #[test]
        fn batched_equals_one_by_one(
            steps in proptest::collection::vec(step(), 1..40),
            batch_from_connections in 0..4usize,
        ) {
            let config = EngineConfig {
                max_connections: 4,
                batch_from_connections,
                compare_timeout: Duration::from_millis(500),
                ..EngineConfig::default()
            };
            let mut single = Engine::new(config.clone());
            let mut batched = Engine::new(config);
            let mut now = Instant::ZERO;
            for (step, frames) in steps.iter().zip(frames(&steps)) {
                match step {
                    Step::Frames(side, _) => {
                        for frame in frames.iter().cloned() {
                            single.handle_frame(now, *side, frame);
                        }
                        batched.handle_frames(now, *side, frames);
                    }
                    Step::Advance(ms) => {
                        now = now + Duration::from_millis(u64::from(*ms));
                        single.handle_timeout(now);
                        batched.handle_timeout(now);
                    }
                    Step::CheckpointDone => {
                        single.handle_checkpoint_done(now);
                        batched.handle_checkpoint_done(now);
                    }
                }
                let a: Vec<Output> = std::iter::from_fn(|| single.poll_output()).collect();
                let b: Vec<Output> = std::iter::from_fn(|| batched.poll_output()).collect();
                prop_assert_eq!(a, b);
                prop_assert_eq!(single.stats(), batched.stats());
                prop_assert_eq!(single.poll_timeout(), batched.poll_timeout());
            }
        }
    }

    /// The batched path looks connections up for real: many flows in one batch are all
    /// matched, nothing diverges.
    #[test]
    fn batch_of_many_connections_matches() {
        let mut e = Engine::new(EngineConfig {
            batch_from_connections: 0,
            ..EngineConfig::default()
        });
        let mut senders: Vec<[TcpSender; 2]> = (0..100)
            .map(|n| {
                let a = FlowAddrs::v4(n);
                [TcpSender::new(a, 1, 2), TcpSender::new(a, 1, 2)]
            })
            .collect();
        for round in 0..3u8 {
            for side in [Side::Primary, Side::Secondary] {
                let frames: Vec<Frame> = senders
                    .iter_mut()
                    .map(|s| s[side.index()].data(&[round; 30]))
                    .collect();
                e.handle_frames(Instant::ZERO, side, frames);
            }
        }
        let released = std::iter::from_fn(|| e.poll_output())
            .filter(|o| matches!(o, Output::Release(_)))
            .count();
        assert_eq!(released, 300);
        let stats = e.stats();
        assert_eq!(stats.connections_active, 100);
        assert_eq!(stats.checkpoints_total(), 0);
    }
}
