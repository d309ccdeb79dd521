//! Pass 2: merge the two captures by time and drive the compare engine, then build
//! the report.

use std::collections::BTreeMap;

use bytes::Bytes;
use colo_core::classify::{Classified, L4, TcpFlags, classify};
use colo_core::engine::{Divergence, DivergenceKind, Engine, EngineConfig, Output};
use colo_core::flow::{FlowKey, FlowProto};
use colo_core::{Duration, Frame, Instant, Side};

use super::align::{self, Aligner, SeqAlign};
use super::args::{Clock, ReplayArgs};
use super::capture::{CaptureError, CaptureReader, normalize};
use super::context;
use super::headers::{self, Rewrite};
use super::index::{self, CaptureIndex, ConnInfo, ConnMap, FastMap, PairedBy, VmOptions, VmSide};
use super::progress::Progress;
use super::report::{
    CHECKPOINT_MODEL, ConfigReport, ConnReport, InputError, InputReport, OneSided, Report, SCHEMA,
    SideReport, Summary, VmSideReport, time_str,
};
use super::{EXIT_DIVERGED, EXIT_IDENTICAL, EXIT_INPUT};

/// One side's view of a connection's VM output, tracked by the shell (the engine
/// keeps its own; this one survives the engine forgetting the connection).
#[derive(Debug, Clone, Default)]
pub struct Track {
    /// Stream origin: sequence number of the first payload byte.
    pub base: Option<u32>,
    /// Highest stream offset sent.
    pub end: u64,
    /// VM frames.
    pub frames: u64,
    /// Payload bytes (retransmissions included).
    pub payload: u64,
    /// Datagrams (non-TCP flows).
    pub datagrams: u64,
    /// Stream offset of the VM's FIN.
    pub fin_at: Option<u64>,
    /// Stream offset of the VM's RST.
    pub rst_at: Option<u64>,
    /// Frames cut by the snaplen.
    pub cut: u64,
}

impl Track {
    /// Place a TCP segment (as the engine does with `SeqAlignment::PerSideIsn`) and
    /// return its start offset.
    pub fn tcp(&mut self, seq: u32, flags: TcpFlags, len: usize) -> i64 {
        self.frames += 1;
        self.payload += len as u64;
        let syn = flags.contains(TcpFlags::SYN);
        let pseq = if syn { seq.wrapping_add(1) } else { seq };
        let base = *self.base.get_or_insert(pseq);
        let rel = i64::from(pseq.wrapping_sub(base.wrapping_add(self.end as u32)) as i32);
        let start = self.end as i64 + rel;
        let end = start + len as i64;
        if end > self.end as i64 {
            self.end = end as u64;
        }
        if flags.contains(TcpFlags::FIN) && self.fin_at.is_none() {
            self.fin_at = Some(end.max(0) as u64);
        }
        if flags.contains(TcpFlags::RST) && self.rst_at.is_none() {
            self.rst_at = Some(start.max(0) as u64);
        }
        start
    }

    /// `open`, `fin@N` or `rst@N`.
    #[must_use]
    pub fn close(&self) -> String {
        match (self.fin_at, self.rst_at) {
            (_, Some(r)) => format!("rst@{r}"),
            (Some(f), None) => format!("fin@{f}"),
            (None, None) => "open".to_string(),
        }
    }

    fn close_kind(&self) -> u8 {
        match (self.fin_at, self.rst_at) {
            (_, Some(_)) => 2,
            (Some(_), None) => 1,
            (None, None) => 0,
        }
    }
}

/// A connection (or datagram flow) across both captures.
#[derive(Debug, Clone)]
pub struct Conn {
    /// Protocol.
    pub proto: FlowProto,
    /// The primary's and the secondary's view (either may be missing).
    pub info: [Option<ConnInfo>; 2],
    /// How they were paired.
    pub paired_by: Option<PairedBy>,
    /// Secondary → primary rewrite.
    pub rewrite: Option<Rewrite>,
    /// The flow key the engine sees.
    pub engine_key: FlowKey,
    /// Per side tracking.
    pub track: [Track; 2],
    /// How the secondary's sequence numbers are aligned (paired TCP connections).
    pub align: Option<SeqAlign>,
    /// Secondary frames waiting for the rewriter to learn this connection's offsets.
    pub parked: Vec<Vec<u8>>,
    /// The first divergence the engine reported.
    pub divergence: Option<Divergence>,
    /// Every divergence the engine reported (later ones follow checkpoints).
    pub divergences: u64,
    /// Why the shell stopped feeding it (snaplen-cut frames, offsets never learnt).
    pub stopped: Option<String>,
    /// Stream bytes matched when comparison stopped.
    pub compared_at_stop: Option<u64>,
}

impl Conn {
    fn is_stopped(&self) -> bool {
        self.stopped.is_some()
    }
}

/// Most secondary frames of one connection kept while the rewriter learns its offsets.
const MAX_PARKED: usize = 256;
/// Most such frames kept over all connections.
const MAX_PARKED_TOTAL: usize = 65_536;

/// Everything pass 2 produced, for pass 3 and the report.
#[derive(Debug)]
pub struct State {
    /// The connections.
    pub conns: Vec<Conn>,
    /// Per capture: flow key and packet number → connection.
    pub maps: [ConnMap; 2],
    /// Per capture VM side.
    pub vm: [VmSide; 2],
    /// Capture time of engine time zero, per capture (ns).
    pub zero: [u64; 2],
}

struct Head {
    number: u64,
    ts_ns: u64,
    cut: bool,
    missing: usize,
    eth: Vec<u8>,
}

fn pull(reader: &mut Option<CaptureReader>, err: &mut Option<CaptureError>) -> Option<Head> {
    let r = reader.as_mut()?;
    match r.next_packet() {
        Ok(Some(p)) => {
            let mut eth = Vec::with_capacity(p.data.len() + 14);
            let missing = normalize(&p, &mut eth);
            Some(Head {
                number: p.number,
                ts_ns: p.ts_ns,
                cut: missing.is_some(),
                missing: missing.unwrap_or(0),
                eth,
            })
        }
        Ok(None) => {
            *reader = None;
            None
        }
        Err(e) => {
            *err = Some(e);
            *reader = None;
            None
        }
    }
}

fn vm_options(args: &ReplayArgs, s: usize) -> VmOptions {
    VmOptions {
        mac: args.vm_mac.map(|m| m.0[s]),
        addr: args.vm_addr.map(|a| a.0[s]),
        port: args.vm_port.map(|p| p.0[s]),
    }
}

/// Run the whole replay and build the report. An `Err` means nothing could be read.
pub fn replay(args: &ReplayArgs, progress: &mut Progress) -> Result<Report, CaptureError> {
    let started = std::time::Instant::now();
    let paths = [args.primary.as_path(), args.secondary.as_path()];
    // Pass 1.
    let total: u64 = paths
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    progress.stage("pass 1/2 (index)", total);
    let mut ix: Vec<CaptureIndex> = Vec::new();
    let mut base = 0;
    for p in paths {
        progress.set_base(base);
        let i = index::index_capture(p, progress)?;
        base += i.size;
        ix.push(i);
    }
    let vm = [
        index::decide_vm(&ix[0], &vm_options(args, 0)),
        index::decide_vm(&ix[1], &vm_options(args, 1)),
    ];
    let conns_of = [
        index::connections(&ix[0], &vm[0]),
        index::connections(&ix[1], &vm[1]),
    ];
    let pairs = index::pair(&conns_of[0], &conns_of[1]);

    let mut warnings = Vec::new();
    let mut conns = Vec::new();
    let mut maps: [ConnMap; 2] = [ConnMap::default(), ConnMap::default()];
    // Engine flow key → the connection using it now (4-tuples may be reused).
    let mut engine_keys: FastMap<FlowKey, usize> = FastMap::default();
    let mut gens: [Vec<(u64, FlowKey, usize)>; 2] = [Vec::new(), Vec::new()];
    let mut no_isn = 0;
    for (p, s, how) in pairs {
        let pi = p.map(|i| conns_of[0][i].clone());
        let si = s.map(|i| conns_of[1][i].clone());
        let id = conns.len();
        let engine_key = pi
            .as_ref()
            .or(si.as_ref())
            .map(|c| c.key)
            .unwrap_or_else(|| unreachable!());
        let mut rewrite = None;
        let mut seq_align = None;
        if let (Some(pc), Some(sc)) = (&pi, &si) {
            let (how, seq_delta) = align::decide(pc, sc);
            if pc.key.proto == FlowProto::Tcp {
                seq_align = Some(how);
            }
            let v4 = |e: &colo_core::flow::Endpoint| {
                e.addr[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]
            };
            let ack_delta = match (pc.client_isn, sc.client_isn) {
                (Some(a), Some(b)) => a.wrapping_sub(b),
                _ => {
                    if pc.key.proto == FlowProto::Tcp {
                        no_isn += 1;
                    }
                    0
                }
            };
            if v4(&pc.vm) == v4(&sc.vm) && (pc.key != sc.key || ack_delta != 0 || seq_delta != 0) {
                rewrite = Some(Rewrite {
                    src: (pc.vm.addr, pc.vm.port),
                    dst: (pc.client.addr, pc.client.port),
                    ack_delta,
                    seq_delta,
                });
            }
        }
        if let Some(c) = &pi {
            gens[0].push((c.first.0, c.key, id));
        }
        if let Some(c) = &si {
            gens[1].push((c.first.0, c.key, id));
        }
        conns.push(Conn {
            proto: engine_key.proto,
            info: [pi, si],
            paired_by: how,
            rewrite,
            engine_key,
            track: [Track::default(), Track::default()],
            align: seq_align,
            parked: Vec::new(),
            divergence: None,
            divergences: 0,
            stopped: None,
            compared_at_stop: None,
        });
    }
    for (s, g) in gens.iter_mut().enumerate() {
        g.sort_unstable_by_key(|x| x.0);
        for &(first, key, id) in g.iter() {
            maps[s].insert(key, first, id);
        }
    }
    if no_isn > 0 && !args.no_ack_gate {
        warnings.push(format!(
            "{no_isn} paired TCP connection(s) lack the client's handshake in a capture: their \
             acknowledgement numbers cannot be aligned; if they time out, rerun with --no-ack-gate"
        ));
    }
    let first = [ix[0].first_ts.unwrap_or(0), ix[1].first_ts.unwrap_or(0)];
    let zero = match args.clock {
        Clock::Absolute => {
            let z = first[0].min(first[1]);
            let gap = first[0].abs_diff(first[1]);
            if ix[0].first_ts.is_some() && ix[1].first_ts.is_some() && gap > 60_000_000_000 {
                warnings.push(format!(
                    "the captures start {}s apart; if their clocks are not synchronised, rerun with --clock relative",
                    gap / 1_000_000_000
                ));
            }
            [z, z]
        }
        Clock::Relative => first,
    };

    // Pass 2.
    let config = EngineConfig {
        compare_timeout: Duration::from_millis(args.compare_timeout),
        checkpoint_min_interval: Duration::from_millis(args.checkpoint_min_interval),
        ack_gate: !args.no_ack_gate,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config);
    progress.stage("pass 2/2 (compare)", total);
    let mut readers = [
        Some(CaptureReader::open(paths[0])?),
        Some(CaptureReader::open(paths[1])?),
    ];
    let mut errs: [Option<CaptureError>; 2] = [None, None];
    let mut heads = [None, None];
    for s in 0..2 {
        heads[s] = pull(&mut readers[s], &mut errs[s]);
    }
    let mut counts = [[0u64; 4]; 2]; // vm, client, other, cut
    let mut aligner = Aligner::new();
    let mut gate = Checkpoints {
        duration: Duration::from_millis(args.checkpoint_duration),
        ..Checkpoints::default()
    };
    let mut now = Instant::ZERO;
    let to_instant = |s: usize, ts: u64| Instant::from_micros(ts.saturating_sub(zero[s]) / 1000);
    loop {
        let s = match (&heads[0], &heads[1]) {
            (None, None) => break,
            (Some(_), None) => 0,
            (None, Some(_)) => 1,
            (Some(a), Some(b)) => {
                if to_instant(1, b.ts_ns) < to_instant(0, a.ts_ns) {
                    1
                } else {
                    0
                }
            }
        };
        let Some(head) = heads[s].take() else { break };
        heads[s] = pull(&mut readers[s], &mut errs[s]);
        if let Some(r) = &readers[s] {
            progress.set_base(if s == 1 { ix[0].size } else { 0 });
            progress.tick(r.position());
        }
        let t = to_instant(s, head.ts_ns);
        now = now.max(t);
        // Deadlines and completed checkpoints before this frame, at their own time.
        let mut guard = 0;
        loop {
            let timer = engine.poll_timeout().filter(|t| *t <= now);
            let done = gate.done_at.filter(|t| *t <= now);
            let (at, is_done) = match (timer, done) {
                (None, None) => break,
                (Some(t), Some(d)) if d <= t => (d, true),
                (Some(t), _) => (t, false),
                (None, Some(d)) => (d, true),
            };
            guard += 1;
            if guard > 1_000_000 {
                break;
            }
            if is_done {
                gate.done_at = None;
                engine.handle_checkpoint_resync(at);
            } else {
                engine.handle_timeout(at);
            }
            drain(&mut engine, &mut conns, &engine_keys, &mut gate, at);
        }
        feed(
            &mut Feed {
                engine: &mut engine,
                aligner: &mut aligner,
                conns: &mut conns,
                engine_keys: &mut engine_keys,
                map: &maps[s],
                vm: &vm[s],
                counts: &mut counts[s],
            },
            s,
            head,
            now,
        );
        drain(&mut engine, &mut conns, &engine_keys, &mut gate, now);
    }
    let parked: usize = conns.iter().map(|c| c.parked.len()).sum();
    if parked > 0 {
        warnings.push(format!(
            "{parked} secondary frame(s) were never compared: the rewriter did not learn their \
             connection's sequence offset (the primary capture lacks the client's handshake ACK)"
        ));
    }
    let stats = engine.stats();
    // Global divergences (no flow) also count for checkpoints.
    let state = State {
        conns,
        maps,
        vm,
        zero,
    };

    // Pass 3: context for divergences.
    let mut state = state;
    let details = context::gather(args, &ix, &mut state, progress);

    // Report.
    let mut connections = Vec::new();
    let mut summary = Summary {
        bytes_compared: stats.bytes_matched,
        datagrams_compared: stats.datagrams_matched,
        frames_compared: stats.frames_in,
        ..Summary::default()
    };
    for (id, c) in state.conns.iter().enumerate() {
        let side = |i: usize| {
            c.info[i].as_ref().map(|ci| SideReport {
                vm: ci.vm.to_string(),
                client: ci.client.to_string(),
                first_packet: ci.first.0,
                first_time: time_str(ci.first.1),
                frames: c.track[i].frames,
                payload_bytes: c.track[i].payload,
                stream_bytes: c.track[i].end,
                datagrams: c.track[i].datagrams,
                close: if c.proto == FlowProto::Tcp {
                    c.track[i].close()
                } else {
                    "-".into()
                },
                cut_frames: c.track[i].cut,
            })
        };
        let tcp = c.proto == FlowProto::Tcp;
        let [tp, ts] = &c.track;
        let paired = c.info[0].is_some() && c.info[1].is_some();
        let mut one_sided = None;
        let mut close_differs = None;
        let (bytes_compared, datagrams_compared);
        if tcp {
            bytes_compared = match &c.divergence {
                Some(d) => match &d.kind {
                    DivergenceKind::Payload { offset, .. }
                    | DivergenceKind::Retransmission { offset, .. } => *offset,
                    _ => tp.end.min(ts.end),
                },
                None => c.compared_at_stop.unwrap_or_else(|| tp.end.min(ts.end)),
            }
            .min(tp.end.min(ts.end));
            datagrams_compared = 0;
        } else {
            bytes_compared = 0;
            datagrams_compared = match &c.divergence {
                Some(Divergence {
                    kind: DivergenceKind::Datagram { index, .. },
                    ..
                }) => *index,
                _ => tp.datagrams.min(ts.datagrams),
            };
        }
        if paired && c.divergence.is_none() && c.stopped.is_none() {
            if tcp && tp.end != ts.end {
                let (side, bytes) = if tp.end > ts.end {
                    ("primary", tp.end - ts.end)
                } else {
                    ("secondary", ts.end - tp.end)
                };
                one_sided = Some(OneSided {
                    side,
                    bytes,
                    datagrams: 0,
                    from: tp.end.min(ts.end),
                });
            } else if !tcp && tp.datagrams != ts.datagrams {
                let (side, n) = if tp.datagrams > ts.datagrams {
                    ("primary", tp.datagrams - ts.datagrams)
                } else {
                    ("secondary", ts.datagrams - tp.datagrams)
                };
                one_sided = Some(OneSided {
                    side,
                    bytes: 0,
                    datagrams: n,
                    from: tp.datagrams.min(ts.datagrams),
                });
            }
        }
        if paired && tcp && tp.close_kind() != ts.close_kind() {
            close_differs = Some([tp.close(), ts.close()]);
        }
        let verdict = if !paired {
            if c.info[0].is_some() {
                "only_primary"
            } else {
                "only_secondary"
            }
        } else if c.divergence.is_some() {
            "diverged"
        } else if close_differs.is_some() {
            "close_differs"
        } else if one_sided.is_some() {
            "one_sided"
        } else if c.stopped.is_some() {
            "incomplete"
        } else {
            "identical"
        };
        *summary.verdicts.entry(verdict).or_default() += 1;
        connections.push(ConnReport {
            id: id + 1,
            proto: proto_name(c.proto),
            flow: flow_name(c),
            verdict,
            paired_by: c.paired_by.map(PairedBy::as_str),
            seq_alignment: c.align.map(SeqAlign::as_str),
            divergences: c.divergences,
            primary: side(0),
            secondary: side(1),
            bytes_compared,
            datagrams_compared,
            divergence: details.get(&id).cloned(),
            one_sided,
            close_differs,
            note: c.stopped.clone(),
        });
    }
    summary.checkpoints = gate.count;
    summary.checkpoints_by_reason = gate.by_reason;
    summary.divergences_by_reason = gate.divergences_by_reason;
    summary.checkpoint_model = CHECKPOINT_MODEL;
    summary.connections = connections.len();
    summary.wall_seconds = started.elapsed().as_secs_f64();
    let damaged = ix.iter().any(|i| i.error.is_some()) || errs.iter().any(Option::is_some);
    let diverged = connections.iter().any(|c| c.verdict != "identical");
    let result = if damaged {
        "damaged_input"
    } else if connections
        .iter()
        .any(|c| !matches!(c.verdict, "identical" | "incomplete"))
    {
        "diverged"
    } else if diverged {
        "incomplete"
    } else {
        "identical"
    };
    let exit_code = if damaged {
        EXIT_INPUT
    } else if diverged {
        EXIT_DIVERGED
    } else {
        EXIT_IDENTICAL
    };
    let inputs = (0..2)
        .map(|s| {
            let i = &ix[s];
            let error = i.error.clone().or_else(|| errs[s].clone());
            InputReport {
                role: if s == 0 { "primary" } else { "secondary" },
                path: paths[s].display().to_string(),
                format: i.format,
                link_types: i.links.clone(),
                packets: i.packets,
                bytes: i.bytes,
                cut_frames: counts[s][3],
                vm_side: VmSideReport {
                    how: state.vm[s].how,
                    description: state.vm[s].description.clone(),
                },
                vm_frames: counts[s][0],
                client_frames: counts[s][1],
                other_frames: counts[s][2],
                first_time: i.first_ts.map(time_str),
                error: error.map(|e| InputError {
                    offset: e.offset,
                    problem: e.problem,
                }),
            }
        })
        .collect();
    Ok(Report {
        schema: SCHEMA,
        inputs,
        clock: match args.clock {
            Clock::Absolute => "absolute",
            Clock::Relative => "relative",
        },
        config: ConfigReport {
            compare_timeout_ms: args.compare_timeout,
            checkpoint_min_interval_ms: args.checkpoint_min_interval,
            checkpoint_duration_ms: args.checkpoint_duration,
            ack_gate: !args.no_ack_gate,
        },
        connections,
        summary,
        warnings,
        result,
        exit_code,
    })
}

fn proto_name(p: FlowProto) -> String {
    match p {
        FlowProto::Tcp => "tcp".into(),
        FlowProto::Udp => "udp".into(),
        FlowProto::Icmp => "icmp".into(),
        FlowProto::OtherIp(n) => format!("ip-proto-{n}"),
        FlowProto::Arp => "arp".into(),
        FlowProto::Ethertype(t) => format!("ethertype-{t:#06x}"),
        FlowProto::Unparsed => "unparsed".into(),
    }
}

fn flow_name(c: &Conn) -> String {
    match c.info.iter().flatten().next() {
        Some(i)
            if matches!(
                c.proto,
                FlowProto::Tcp | FlowProto::Udp | FlowProto::Icmp | FlowProto::OtherIp(_)
            ) =>
        {
            format!("{} <-> {}", i.vm, i.client)
        }
        _ => c.engine_key.to_string(),
    }
}

/// The checkpoint requests the engine made, and the completion of the outstanding one.
#[derive(Debug, Default)]
struct Checkpoints {
    /// How long a checkpoint takes (`--checkpoint-duration`).
    duration: Duration,
    /// When the outstanding checkpoint completes.
    done_at: Option<Instant>,
    /// Requests.
    count: u64,
    /// Requests per reason of their cause.
    by_reason: BTreeMap<&'static str, u64>,
    /// Every divergence per reason.
    divergences_by_reason: BTreeMap<&'static str, u64>,
}

/// What feeding one packet needs.
struct Feed<'a> {
    engine: &'a mut Engine,
    aligner: &'a mut Aligner,
    conns: &'a mut [Conn],
    engine_keys: &'a mut FastMap<FlowKey, usize>,
    map: &'a ConnMap,
    vm: &'a VmSide,
    counts: &'a mut [u64; 4],
}

/// Feed one packet of capture `s`.
fn feed(f: &mut Feed<'_>, s: usize, head: Head, now: Instant) {
    let Head {
        number,
        cut,
        missing,
        mut eth,
        ..
    } = head;
    let mut c = classify(&eth);
    let Some(id) = f.map.get(&c.key, number) else {
        f.counts[2] += 1;
        return;
    };
    claim_engine_key(f, id);
    let conn = &mut f.conns[id];
    let Some(info) = &conn.info[s] else { return };
    let non_ip = matches!(
        c.key.proto,
        FlowProto::Arp | FlowProto::Ethertype(_) | FlowProto::Unparsed
    );
    let from_vm = if non_ip {
        f.vm.macs.is_empty() || f.vm.is_vm_mac(headers::src_mac(&eth))
    } else {
        c.dir == info.vm_dir
    };
    if !from_vm {
        f.counts[1] += 1;
        if s == 0 && !conn.is_stopped() && !cut {
            f.engine.observe_client_classified(now, &c);
            if conn.align == Some(SeqAlign::Rewriter) {
                // What the secondary host would have received: teaches the rewriter.
                f.aligner.client_input(now, &mut eth);
                if !conn.parked.is_empty() && f.aligner.learned(&info.key) {
                    let parked = std::mem::take(&mut conn.parked);
                    f.aligner.parked -= parked.len();
                    for mut frame in parked {
                        f.aligner.secondary_output(now, &mut frame);
                        f.engine
                            .handle_frame(now, Side::Secondary, Frame::ethernet(frame));
                    }
                }
            }
        }
        return;
    }
    f.counts[0] += 1;
    let track = &mut conn.track[s];
    match &c.l4 {
        L4::Tcp(t) => {
            track.tcp(t.seq.0, t.flags, t.payload_len() + missing);
        }
        L4::Datagram(_) => {
            track.frames += 1;
            track.datagrams += 1;
        }
    }
    if cut {
        f.counts[3] += 1;
        track.cut += 1;
        if !conn.is_stopped() {
            let at = conn.track[0].end.min(conn.track[1].end);
            conn.compared_at_stop = Some(at);
            conn.stopped = Some(format!(
                "not compared after packet #{number} of the {} capture: cut by the snaplen",
                if s == 0 { "primary" } else { "secondary" }
            ));
        }
        return;
    }
    if conn.is_stopped() {
        return;
    }
    if s == 0 {
        f.engine
            .handle_classified(now, Side::Primary, Frame::ethernet(Bytes::from(eth)), c);
        return;
    }
    let mut changed = false;
    if let Some(rw) = &conn.rewrite {
        headers::rewrite(&mut eth, rw);
        changed = true;
    }
    if conn.align == Some(SeqAlign::Rewriter) && c.tcp().is_some() {
        if !conn.parked.is_empty() || !f.aligner.secondary_output(now, &mut eth) {
            // The rewriter cannot translate it yet: keep it (in order) until the
            // primary's client has shown the primary's ISN.
            if conn.parked.len() < MAX_PARKED && f.aligner.parked < MAX_PARKED_TOTAL {
                f.aligner.parked += 1;
                conn.parked.push(eth);
            } else if conn.stopped.is_none() {
                conn.compared_at_stop = Some(0);
                conn.stopped = Some(format!(
                    "not compared after packet #{number} of the secondary capture: too \
                     many secondary frames wait for the rewriter to learn the sequence offset \
                     (the primary capture lacks the client's handshake ACK?)"
                ));
            }
            return;
        }
        changed = true;
    }
    if changed {
        patch(&mut c, &eth, conn.info[0].as_ref());
    }
    f.engine
        .handle_classified(now, Side::Secondary, Frame::ethernet(Bytes::from(eth)), c);
}

/// Make connection `id` the one the engine compares under its flow key. When a later
/// connection reuses the addresses and ports of an earlier one, the engine forgets the
/// earlier one; frames of the earlier one that come after that are not compared.
fn claim_engine_key(f: &mut Feed<'_>, id: usize) {
    let key = f.conns[id].engine_key;
    let current = match f.engine_keys.get(&key) {
        Some(&current) => current,
        None => {
            f.engine_keys.insert(key, id);
            id
        }
    };
    if current == id || f.conns[id].is_stopped() {
        return;
    }
    if current < id {
        let pending = f.engine.forget_connection(&key);
        f.engine_keys.insert(key, id);
        let old = &mut f.conns[current];
        if pending && !old.is_stopped() && old.divergence.is_none() {
            old.compared_at_stop = Some(old.track[0].end.min(old.track[1].end));
            old.stopped = Some(
                "comparison cut short: a later connection reused its addresses and ports".into(),
            );
        }
    } else {
        let late = &mut f.conns[id];
        late.compared_at_stop = Some(late.track[0].end.min(late.track[1].end));
        late.stopped = Some(
            "not compared further: a later connection already reused its addresses and ports"
                .into(),
        );
    }
}

/// Bring a secondary frame's classification up to date after its addresses, ports and
/// sequence numbers were rewritten in place (lengths and offsets do not change). Only
/// TCP is patched; anything else is classified again.
fn patch(c: &mut Classified, eth: &[u8], primary: Option<&ConnInfo>) {
    let fields = match (&mut c.l4, primary) {
        (L4::Tcp(t), Some(p)) => eth
            .get(t.tcp_offset + 4..t.tcp_offset + 12)
            .map(|b| (t, p, b)),
        _ => None,
    };
    match fields {
        Some((t, p, b)) => {
            t.seq = colo_core::Seq(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            t.ack = colo_core::Seq(u32::from_be_bytes([b[4], b[5], b[6], b[7]]));
            c.key = p.key;
            c.dir = p.vm_dir;
        }
        None => *c = classify(eth),
    }
}

fn drain(
    engine: &mut Engine,
    conns: &mut [Conn],
    keys: &FastMap<FlowKey, usize>,
    gate: &mut Checkpoints,
    now: Instant,
) {
    while let Some(out) = engine.poll_output() {
        match out {
            Output::Divergence(d) => {
                *gate
                    .divergences_by_reason
                    .entry(d.reason().as_str())
                    .or_default() += 1;
                if let Some(&id) = d.flow.and_then(|f| keys.get(&f)) {
                    let c = &mut conns[id];
                    c.divergences += 1;
                    if c.divergence.is_none() {
                        c.divergence = Some(d);
                    }
                }
            }
            Output::RequestCheckpoint(r) => {
                gate.count += 1;
                *gate.by_reason.entry(r.cause.reason().as_str()).or_default() += 1;
                gate.done_at = Some(now + gate.duration);
            }
            Output::Release(_) | Output::LimitReached { .. } => {}
        }
    }
}

/// The capture time (ns) of an engine instant, on capture `s`'s clock.
#[must_use]
pub fn capture_time(zero: &[u64; 2], s: usize, at: Instant) -> u64 {
    zero[s] + at.as_micros() * 1000
}
