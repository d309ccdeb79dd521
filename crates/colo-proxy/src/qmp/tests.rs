//! State-machine tests of the checkpoint driver (no sockets, a fake clock).

use colo_core::{Duration, Instant};
use serde_json::{Value, json};

use super::machine::{CheckpointDriver, FailoverCause, QmpAction, QmpConfig, QmpInput, Vm};

fn ms(t: u64) -> Instant {
    Instant::from_millis(t)
}

fn ev(name: &str) -> QmpInput {
    QmpInput::Event {
        name: name.into(),
        data: Value::Null,
    }
}

fn actions(d: &mut CheckpointDriver) -> Vec<QmpAction> {
    std::iter::from_fn(|| d.poll_action()).collect()
}

fn executes(a: &[QmpAction]) -> Vec<(Vm, String)> {
    a.iter()
        .filter_map(|a| match a {
            QmpAction::Send { vm, command } => {
                Some((*vm, command["execute"].as_str().unwrap().to_owned()))
            }
            _ => None,
        })
        .collect()
}

fn connected() -> CheckpointDriver {
    let mut d = CheckpointDriver::new(QmpConfig::default(), true, true);
    d.handle_input(ms(0), Vm::Primary, QmpInput::Connected);
    d.handle_input(ms(0), Vm::Secondary, QmpInput::Connected);
    let a = actions(&mut d);
    assert_eq!(
        executes(&a),
        vec![(Vm::Primary, "query-migrate-parameters".into())]
    );
    d
}

/// A connected driver that has seen COLO run one (periodic) checkpoint, ending at 30 ms.
fn colo_running() -> CheckpointDriver {
    let mut d = connected();
    d.handle_input(ms(10), Vm::Primary, ev("STOP"));
    d.handle_input(ms(20), Vm::Secondary, ev("RESUME"));
    d.handle_input(ms(30), Vm::Primary, ev("RESUME"));
    let _ = actions(&mut d);
    d
}

#[test]
fn learns_the_delay_and_asks_with_it() {
    let mut d = connected();
    d.handle_input(
        ms(1),
        Vm::Primary,
        QmpInput::Reply {
            id: Some("params-1".into()),
            result: Ok(json!({"x-checkpoint-delay": 5000})),
        },
    );
    d.request_checkpoint(ms(2));
    let a = actions(&mut d);
    let [QmpAction::Send { vm, command }] = a.as_slice() else {
        panic!("{a:?}")
    };
    assert_eq!(*vm, Vm::Primary);
    assert_eq!(command["execute"], "migrate-set-parameters");
    assert_eq!(command["arguments"], json!({"x-checkpoint-delay": 5000}));
    assert!(d.pending());
}

#[test]
fn one_checkpoint_flushes_once_at_the_secondary_resume_and_measures_latency() {
    let mut d = connected();
    d.request_checkpoint(ms(10));
    d.request_checkpoint(ms(11)); // level-triggered: nothing more
    assert_eq!(executes(&actions(&mut d)).len(), 1);
    d.handle_input(ms(14), Vm::Primary, ev("STOP"));
    assert!(!d.pending() && d.running());
    d.handle_input(
        ms(15),
        Vm::Primary,
        QmpInput::Event {
            name: "MIGRATION_PASS".into(),
            data: json!({"pass": 3}),
        },
    );
    assert!(actions(&mut d).is_empty(), "nothing before the flush point");
    d.handle_input(ms(20), Vm::Secondary, ev("RESUME"));
    assert_eq!(
        actions(&mut d),
        vec![QmpAction::CheckpointDone {
            pass: Some(3),
            requested: true
        }]
    );
    d.handle_input(ms(21), Vm::Primary, ev("RESUME"));
    assert!(actions(&mut d).is_empty(), "flushed once");
    let s = d.stats();
    assert_eq!((s.requests, s.asks, s.started, s.flushed), (2, 1, 1, 1));
    assert_eq!(s.latency.count(), 1);
    assert_eq!(s.latency.quantile_us(0.5), Some(11_000));
    assert_eq!(s.pause.quantile_us(0.5), Some(7_000));
}

#[test]
fn re_asks_when_no_checkpoint_starts() {
    let mut d = connected();
    d.request_checkpoint(ms(0));
    let _ = actions(&mut d);
    let reask_at = d.poll_timeout().unwrap();
    assert!(reask_at <= ms(200));
    d.handle_timeout(ms(199));
    assert!(
        executes(&actions(&mut d))
            .iter()
            .all(|(_, e)| e != "migrate-set-parameters")
    );
    d.handle_timeout(ms(200));
    assert!(executes(&actions(&mut d)).contains(&(Vm::Primary, "migrate-set-parameters".into())));
    assert_eq!(d.stats().reasks, 1);
}

#[test]
fn a_request_during_a_checkpoint_is_asked_after_it() {
    let mut d = connected();
    // A periodic checkpoint starts without a request.
    d.handle_input(ms(5), Vm::Primary, ev("STOP"));
    d.request_checkpoint(ms(6));
    assert!(
        executes(&actions(&mut d)).is_empty(),
        "QEMU would absorb it"
    );
    d.handle_input(ms(8), Vm::Secondary, ev("RESUME"));
    assert_eq!(
        actions(&mut d),
        vec![QmpAction::CheckpointDone {
            pass: None,
            requested: false
        }]
    );
    d.handle_input(ms(9), Vm::Primary, ev("RESUME"));
    assert_eq!(
        executes(&actions(&mut d)),
        vec![(Vm::Primary, "migrate-set-parameters".into())]
    );
    assert_eq!(d.stats().unrequested_done, 1);
    assert_eq!(d.stats().latency.count(), 0);
}

#[test]
fn without_a_secondary_monitor_the_primary_resume_flushes() {
    let mut d = CheckpointDriver::new(QmpConfig::default(), true, false);
    d.handle_input(ms(0), Vm::Primary, QmpInput::Connected);
    d.request_checkpoint(ms(1));
    let _ = actions(&mut d);
    d.handle_input(ms(3), Vm::Primary, ev("STOP"));
    d.handle_input(ms(9), Vm::Primary, ev("RESUME"));
    assert_eq!(
        actions(&mut d),
        vec![QmpAction::CheckpointDone {
            pass: None,
            requested: true
        }]
    );
}

#[test]
fn a_request_without_a_primary_monitor_waits_for_it() {
    let mut d = CheckpointDriver::new(QmpConfig::default(), true, true);
    d.request_checkpoint(ms(0));
    assert!(actions(&mut d).is_empty());
    d.handle_input(ms(50), Vm::Primary, QmpInput::Connected);
    let e = executes(&actions(&mut d));
    assert!(
        e.contains(&(Vm::Primary, "migrate-set-parameters".into())),
        "{e:?}"
    );
}

#[test]
fn primary_lost_fails_over_to_the_secondary_after_the_heartbeat() {
    let mut d = colo_running();
    d.handle_input(ms(100), Vm::Primary, QmpInput::Disconnected);
    assert!(actions(&mut d).is_empty(), "not before the timeout");
    assert!(d.poll_timeout().unwrap() <= ms(100) + Duration::from_millis(1000));
    // The secondary keeps answering probes.
    d.handle_input(
        ms(900),
        Vm::Secondary,
        QmpInput::Reply {
            id: Some("probe-2".into()),
            result: Ok(json!({})),
        },
    );
    d.handle_timeout(ms(1100));
    let a = actions(&mut d);
    assert!(
        executes(&a).contains(&(Vm::Secondary, "x-colo-lost-heartbeat".into())),
        "{a:?}"
    );
    assert!(a.contains(&QmpAction::Failover {
        survivor: Vm::Secondary,
        cause: FailoverCause::HeartbeatLost
    }));
    assert_eq!(d.failed_over(), Some(Vm::Secondary));
    // Nothing more afterwards: no asks, no probes.
    d.request_checkpoint(ms(1200));
    d.handle_timeout(ms(5000));
    assert!(actions(&mut d).is_empty());
    assert_eq!(d.poll_timeout(), None);
}

#[test]
fn a_silent_monitor_is_lost_after_the_silence_timeout() {
    let mut d = colo_running();
    // Probes go out to both, but only the primary answers (the secondary's last word
    // was its RESUME at 20 ms).
    for t in (280..=5000).step_by(250) {
        d.handle_timeout(ms(t));
        let e = executes(&actions(&mut d));
        assert!(e.contains(&(Vm::Secondary, "query-status".into())), "{e:?}");
        d.handle_input(
            ms(t),
            Vm::Primary,
            QmpInput::Reply {
                id: None,
                result: Ok(json!({})),
            },
        );
    }
    d.handle_timeout(ms(5019));
    assert_eq!(
        d.failed_over(),
        None,
        "silence shorter than silence_timeout"
    );
    d.handle_timeout(ms(5020));
    let a = actions(&mut d);
    assert!(
        a.contains(&QmpAction::Failover {
            survivor: Vm::Primary,
            cause: FailoverCause::HeartbeatLost
        }),
        "{a:?}"
    );
    assert!(executes(&a).contains(&(Vm::Primary, "x-colo-lost-heartbeat".into())));
}

#[test]
fn no_auto_failover_before_colo_ran_a_checkpoint() {
    let mut d = connected();
    d.handle_input(ms(100), Vm::Primary, QmpInput::Disconnected);
    d.handle_input(
        ms(2000),
        Vm::Secondary,
        QmpInput::Reply {
            id: None,
            result: Ok(json!({})),
        },
    );
    d.handle_timeout(ms(3000));
    assert!(
        !actions(&mut d)
            .iter()
            .any(|a| matches!(a, QmpAction::Failover { .. })),
        "the secondary is no copy yet"
    );
    assert_eq!(d.failed_over(), None);
    // The operator can still decide.
    assert_eq!(d.failover(ms(3001)), Vm::Secondary);
}

#[test]
fn no_auto_failover_when_switched_off_but_the_command_works() {
    let cfg = QmpConfig {
        auto_failover: false,
        ..QmpConfig::default()
    };
    let mut d = CheckpointDriver::new(cfg, true, true);
    d.handle_input(ms(0), Vm::Primary, QmpInput::Connected);
    d.handle_input(ms(0), Vm::Secondary, QmpInput::Connected);
    d.handle_input(ms(10), Vm::Primary, QmpInput::Disconnected);
    d.handle_timeout(ms(5000));
    assert!(
        !actions(&mut d)
            .iter()
            .any(|a| matches!(a, QmpAction::Failover { .. }))
    );
    assert_eq!(d.failover(ms(5001)), Vm::Secondary);
    let a = actions(&mut d);
    assert!(a.contains(&QmpAction::Failover {
        survivor: Vm::Secondary,
        cause: FailoverCause::Command
    }));
}

#[test]
fn errors_are_counted_not_fatal() {
    let mut d = connected();
    d.handle_input(
        ms(1),
        Vm::Primary,
        QmpInput::Reply {
            id: Some("checkpoint-2".into()),
            result: Err("x".into()),
        },
    );
    assert_eq!(d.stats().errors, 1);
    d.request_checkpoint(ms(2));
    assert_eq!(executes(&actions(&mut d)).len(), 1);
}
