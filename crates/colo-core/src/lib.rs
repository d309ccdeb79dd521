//! # colo-core
//!
//! The sans-IO heart of colo-proxy. It contains no networking code, spawns no threads
//! and reads no clock: time comes in as an [`Instant`] argument and work comes out of
//! `poll_*` calls. The tokio daemon and the offline pcap replay are thin shells around
//! the same types.
//!
//! Layers, bottom up:
//! - [`codec`]: QEMU's socket framing (be32 length, optional be32 vnet header length).
//! - [`classify`]: Ethernet/VLAN/IP/TCP/UDP/ICMP/ARP parsing with etherparse into a
//!   normalised [`flow::FlowKey`] and the fields the engine compares.
//! - [`reassembly`]: per-direction TCP byte-stream reassembly on `smoltcp::storage::Assembler`.
//! - [`engine`]: the compare engine: connection table, byte-stream comparison, release
//!   ordering, the ACK gate, datagram comparison, checkpoint requests and epochs.
//! - [`rewrite`]: the secondary-side TCP rewriter (seq/ack, SACK, timestamps).
//! - [`announce`]: failover announcements (gratuitous ARP, unsolicited NA, dup ACKs).
//! - [`sim`]: deterministic frame builders shared by tests, benchmarks and the demo.
#![forbid(unsafe_code)]

pub mod announce;
pub mod checksum;
pub mod classify;
pub mod codec;
pub mod engine;
pub mod flow;
pub mod frame;
pub mod reassembly;
pub mod rewrite;
pub mod seq;
pub mod sim;
pub mod time;

pub use frame::{Frame, Side};
pub use seq::Seq;
pub use time::{Duration, Instant};
