//! The demo's end-to-end check: did the client receive exactly what the primary sent?
//!
//! Per TCP connection the client's stream, reassembled by sequence number, must equal
//! the primary's response byte for byte, with nothing missing, nothing conflicting and
//! the FIN right after the last byte; every UDP query must have been answered exactly
//! once with the primary's answer; and the engine must have released every primary
//! frame it was given, exactly once (none still held, none dropped).

use serde::Serialize;

use super::client::ConnReport;
use super::sim::{Outcome, Sim};

/// How many problems are listed individually.
const MAX_LISTED: usize = 10;

/// The verdict, with enough numbers to see how close a failure came.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// Everything checked out.
    pub verified: bool,
    /// Connections whose stream matched.
    pub connections_ok: usize,
    /// Connections checked.
    pub connections: usize,
    /// Bytes the primary sent, over all connections.
    pub bytes_expected: u64,
    /// Bytes the client received in order, over all connections.
    pub bytes_received: u64,
    /// Bytes the client received twice, identically (the primary's own duplicates).
    pub duplicate_bytes: u64,
    /// Queries answered exactly once with the primary's answer.
    pub datagrams_ok: u32,
    /// Queries sent.
    pub datagrams: u32,
    /// Frames the primary sent the engine.
    pub primary_frames: u64,
    /// Frames the engine released.
    pub released_frames: u64,
    /// What went wrong (the first few).
    pub problems: Vec<String>,
}

/// Check one connection: `expected` is what the primary sent (`None`: it never
/// answered).
pub fn check_stream(expected: Option<&[u8]>, got: &ConnReport<'_>) -> Result<(), String> {
    let Some(expected) = expected else {
        return Err("the primary never received the request".into());
    };
    if got.conflicting_bytes > 0 {
        return Err(format!(
            "{} bytes arrived twice with different values",
            got.conflicting_bytes
        ));
    }
    if got.data != expected {
        let n = got.data.len().min(expected.len());
        return Err(
            match got.data[..n].iter().zip(expected).position(|(a, b)| a != b) {
                Some(at) => format!("byte {at} differs from what the primary sent"),
                None => format!(
                    "received {} of {} bytes in order ({} more beyond a gap)",
                    got.data.len(),
                    expected.len(),
                    got.pending_bytes
                ),
            },
        );
    }
    if got.pending_bytes > 0 {
        return Err(format!("{} bytes beyond the end", got.pending_bytes));
    }
    match got.fin_at {
        Some(at) if at == expected.len() as u64 => {}
        Some(at) => return Err(format!("FIN at offset {at}, expected {}", expected.len())),
        None => return Err("no FIN received".into()),
    }
    if !got.done {
        return Err("the close handshake did not complete".into());
    }
    Ok(())
}

/// Check the whole run.
#[must_use]
pub fn verify(sim: &Sim, outcome: &Outcome, connections: usize, datagrams: u32) -> Verification {
    let mut problems = Vec::new();
    let mut v = Verification {
        verified: false,
        connections_ok: 0,
        connections,
        bytes_expected: 0,
        bytes_received: 0,
        duplicate_bytes: 0,
        datagrams_ok: 0,
        datagrams,
        primary_frames: outcome.engine.frames_in[0],
        released_frames: outcome.engine.released_frames,
        problems: Vec::new(),
    };
    if let Some(why) = &outcome.stalled {
        problems.push(format!("the simulation stalled: {why}"));
    }
    for conn in 0..connections {
        let Some(got) = sim.client().report(conn) else {
            continue;
        };
        let expected = sim.primary().response(conn).map(|b| &b[..]);
        v.bytes_expected += expected.map_or(0, |e| e.len() as u64);
        v.bytes_received += got.data.len() as u64;
        v.duplicate_bytes += got.duplicate_bytes;
        match check_stream(expected, &got) {
            Ok(()) => v.connections_ok += 1,
            Err(why) => problems.push(format!("connection {conn}: {why}")),
        }
    }
    for q in 0..datagrams {
        let (count, answer) = sim.client().answer(q).unwrap_or((0, None));
        let expected = sim.primary_answer(q);
        match (count, answer, expected) {
            (_, _, None) => problems.push(format!("query {q}: the primary never answered")),
            (0, _, _) => problems.push(format!("query {q}: no answer reached the client")),
            (1, Some(a), Some(e)) if a == e => v.datagrams_ok += 1,
            (1, _, _) => problems.push(format!("query {q}: the answer differs from the primary's")),
            (n, _, _) => problems.push(format!("query {q}: answered {n} times")),
        }
    }
    if v.released_frames != v.primary_frames {
        problems.push(format!(
            "the engine released {} frames but the primary sent {} ({} still held)",
            v.released_frames, v.primary_frames, outcome.engine.held_frames
        ));
    }
    let unexpected = sim.client().unexpected_frames();
    if unexpected > 0 {
        problems.push(format!(
            "{unexpected} released frames belonged to no connection"
        ));
    }
    v.verified = problems.is_empty();
    if problems.len() > MAX_LISTED {
        let more = problems.len() - MAX_LISTED;
        problems.truncate(MAX_LISTED);
        problems.push(format!("... and {more} more"));
    }
    v.problems = problems;
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report<'a>(data: &'a [u8], fin_at: Option<u64>, done: bool) -> ConnReport<'a> {
        ConnReport {
            data,
            pending_bytes: 0,
            duplicate_bytes: 0,
            conflicting_bytes: 0,
            fin_at,
            done,
        }
    }

    #[test]
    fn a_complete_identical_stream_passes() {
        assert_eq!(
            check_stream(Some(b"abc"), &report(b"abc", Some(3), true)),
            Ok(())
        );
    }

    #[test]
    fn every_kind_of_damage_is_named() {
        let e = |exp: Option<&[u8]>, r: ConnReport<'_>| check_stream(exp, &r).unwrap_err();
        assert!(e(None, report(b"", None, false)).contains("never"));
        assert!(e(Some(b"abc"), report(b"abd", Some(3), true)).contains("byte 2"));
        assert!(e(Some(b"abc"), report(b"ab", Some(3), true)).contains("2 of 3"));
        assert!(e(Some(b"abc"), report(b"abc", None, true)).contains("no FIN"));
        assert!(e(Some(b"abc"), report(b"abc", Some(4), true)).contains("FIN at offset 4"));
        assert!(e(Some(b"abc"), report(b"abc", Some(3), false)).contains("close"));
        let mut r = report(b"abc", Some(3), true);
        r.conflicting_bytes = 1;
        assert!(e(Some(b"abc"), r).contains("different values"));
    }
}
