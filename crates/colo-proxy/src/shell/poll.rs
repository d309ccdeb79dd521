//! Polling instead of sleeping, for a while after each burst of work.
//!
//! A role's runtime is one thread. When nothing is ready it sleeps in `epoll_wait`,
//! and the next frame costs a wake-up: several microseconds on a VM, more than the
//! proxy's own work on a small frame. Request/response traffic arrives in bursts a
//! few microseconds apart (a VM's reply, then the next request), so right after a
//! burst the next frame is likely near. The poller is a task that, while the driver
//! saw work within the last `--poll-us` microseconds, only yields: the runtime then
//! never sleeps, and at each turn asks the kernel for ready sockets without waiting.
//! Once the window has passed with nothing new it waits, and the runtime sleeps as
//! before. `--busy-poll` spins all the time. (QEMU's iothreads poll the same way, up
//! to `poll-max-ns`, 32 µs by default.)
//!
//! The driver marks activity with [`note_activity`]; the state is per thread, which
//! is the runtime's one thread.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::RuntimeArgs;

/// The poller's state on this thread.
struct State {
    /// When the driver last saw work.
    last_work: Cell<Instant>,
    /// The poller is waiting for work (not spinning).
    idle: Cell<bool>,
    /// Wakes an idle poller.
    wake: Arc<Notify>,
}

thread_local! {
    static STATE: State = State {
        last_work: Cell::new(Instant::now()),
        idle: Cell::new(true),
        wake: Arc::new(Notify::new()),
    };
}

/// The driver has just handled work: poll for the next `--poll-us` at least.
pub fn note_activity() {
    STATE.with(|s| {
        s.last_work.set(Instant::now());
        if s.idle.replace(false) {
            s.wake.notify_one();
        }
    });
}

/// Start the poller on the current (single-threaded) runtime, unless polling is off.
#[must_use]
pub fn start(args: RuntimeArgs) -> Option<tokio::task::JoinHandle<()>> {
    if args.busy_poll {
        tracing::info!("busy-poll: polling the sockets without sleeping (one core busy)");
        return Some(tokio::spawn(async {
            loop {
                tokio::task::yield_now().await;
            }
        }));
    }
    if args.poll_us == 0 {
        return None;
    }
    let window = Duration::from_micros(args.poll_us);
    let wake = STATE.with(|s| Arc::clone(&s.wake));
    Some(tokio::spawn(async move {
        loop {
            while STATE.with(|s| s.last_work.get().elapsed() < window) {
                tokio::task::yield_now().await;
            }
            // Nothing for a whole window: sleep until the driver sees work again.
            // (One thread: nothing runs between the check above and this.)
            STATE.with(|s| s.idle.set(true));
            wake.notified().await;
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts how often the poller lets other tasks run while it polls.
    async fn turns_within(d: Duration) -> u64 {
        let end = Instant::now() + d;
        let mut turns = 0;
        while Instant::now() < end {
            tokio::task::yield_now().await;
            turns += 1;
        }
        turns
    }

    #[test]
    fn polls_after_activity_then_goes_idle_and_wakes_on_the_next() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let poller = start(RuntimeArgs {
                poll_us: 20_000,
                busy_poll: false,
            })
            .unwrap();
            note_activity();
            tokio::task::yield_now().await;
            assert!(!STATE.with(|s| s.idle.get()), "polling right after work");
            // Past the window with no work: the poller waits.
            tokio::time::sleep(Duration::from_millis(60)).await;
            let _ = turns_within(Duration::from_millis(1)).await;
            assert!(STATE.with(|s| s.idle.get()), "idle after a quiet window");
            // New work wakes it.
            note_activity();
            tokio::task::yield_now().await;
            assert!(!STATE.with(|s| s.idle.get()));
            poller.abort();
        });
    }

    #[test]
    fn off_when_zero() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(
                start(RuntimeArgs {
                    poll_us: 0,
                    busy_poll: false
                })
                .is_none()
            );
        });
    }
}
