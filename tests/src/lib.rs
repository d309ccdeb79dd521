//! # colo-integration
//!
//! colo-core against real Linux TCP stacks. A lab of three network namespaces:
//! `client`, `pvm` (the primary VM) and `svm` (the secondary, a clone of the primary:
//! same MAC, same address), each with a TAP device as its NIC, and a relay in this
//! process that does what the primary and secondary proxies do:
//!
//! - client frames go to the primary unchanged, and through the
//!   [`Rewriter`](colo_core::rewrite::Rewriter) (`ToSecondary`) to the secondary;
//! - the primary's frames go to the [`Engine`](colo_core::engine::Engine) as primary
//!   output; the secondary's go through the rewriter (`FromSecondary`) to the engine
//!   as secondary output;
//! - what the engine releases goes to the client.
//!
//! Pieces, usable on their own:
//! - [`netns`]: [`Netns`], a namespace deleted on drop; stale ones from killed runs
//!   are removed on first use; commands run inside with `ip netns exec`.
//! - [`tap`]: [`Tap`], a TAP device (the `tun-tap` crate) created in the root namespace
//!   and moved into a namespace; [`tap::move_link_into`] for any other device.
//! - [`relay`]: [`Relay`], the single-threaded relay, its events and its report.
//! - [`process`]: child processes killed on drop; bounded waits.
//! - [`lab`]: [`LabNet`], the three configured namespaces and their taps; [`Lab`],
//!   that plus the relay and the services; [`unavailable_reason`] for skipping.
//! - [`proto`]: the deterministic protocol of the `colo-testsrv` binary.
//! - [`twin`]: [`TwinLab`](twin::TwinLab), the two-host lab of issue 6: the same
//!   three namespaces with the real `colo-proxy primary` and `colo-proxy secondary`
//!   daemons ([`proxy`]) between them, driven through their control sockets
//!   ([`control`]); or the direct path without proxies, for comparison.
//!
//! The tests need root (namespaces, TAP devices). Where that is not available they
//! print `SKIPPED: <reason>` and return.

pub mod control;
pub mod lab;
pub mod netns;
pub mod process;
pub mod proto;
pub mod proxy;
pub mod relay;
pub mod tap;
pub mod twin;

pub use lab::{Lab, LabConfig, LabNet, NetConfig, unavailable_reason};
pub use netns::Netns;
pub use relay::{CheckpointPolicy, Relay, RelayConfig, RelayEvent, RelayReport};
pub use tap::Tap;
