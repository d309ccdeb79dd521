//! The replay report: a serde model (the `--format json` schema, documented in
//! docs/replay.md) and its text rendering.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// Schema identifier of the JSON report.
pub const SCHEMA: &str = "colo-proxy-replay/1";

/// The checkpoint model of the replay (docs/replay.md, *Checkpoints*): at every
/// completed checkpoint a diverged connection resumes with each side at the position it
/// had reached; connections that had not diverged go on being compared.
pub const CHECKPOINT_MODEL: &str = "resync_at_send_positions";

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always [`SCHEMA`].
    pub schema: &'static str,
    /// The two captures: primary first.
    pub inputs: Vec<InputReport>,
    /// `absolute` or `relative`.
    pub clock: &'static str,
    /// Settings that shape the verdicts.
    pub config: ConfigReport,
    /// Every connection or datagram flow carrying VM output.
    pub connections: Vec<ConnReport>,
    /// Totals.
    pub summary: Summary,
    /// Warnings about the inputs (clock offsets, missing handshakes ...).
    pub warnings: Vec<String>,
    /// identical, diverged, incomplete (parts could not be compared) or damaged_input.
    pub result: &'static str,
    /// The process exit code: 0 identical, 1 diverged or incomplete, 3 damaged input.
    pub exit_code: u8,
}

/// One capture.
#[derive(Debug, Clone, Serialize)]
pub struct InputReport {
    /// `primary` or `secondary`.
    pub role: &'static str,
    /// The file.
    pub path: String,
    /// `pcap` or `pcapng`.
    pub format: &'static str,
    /// Link types found.
    pub link_types: Vec<&'static str>,
    /// Packets read.
    pub packets: u64,
    /// Captured bytes read.
    pub bytes: u64,
    /// Frames cut short by the snaplen (not compared).
    pub cut_frames: u64,
    /// How the VM side was chosen.
    pub vm_side: VmSideReport,
    /// VM → client frames.
    pub vm_frames: u64,
    /// Client → VM frames.
    pub client_frames: u64,
    /// Frames of flows without VM output (ignored).
    pub other_frames: u64,
    /// Time of the first packet (`secs.nanos` since the Unix epoch).
    pub first_time: Option<String>,
    /// Where reading stopped, if the file is damaged.
    pub error: Option<InputError>,
}

/// How the VM side was chosen.
#[derive(Debug, Clone, Serialize)]
pub struct VmSideReport {
    /// `options` or `guessed`.
    pub how: &'static str,
    /// In words.
    pub description: String,
}

/// A damaged capture.
#[derive(Debug, Clone, Serialize)]
pub struct InputError {
    /// Byte offset of the record or block.
    pub offset: u64,
    /// What is wrong.
    pub problem: String,
}

/// Settings.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigReport {
    /// compare_timeout in ms.
    pub compare_timeout_ms: u64,
    /// checkpoint_min_interval in ms.
    pub checkpoint_min_interval_ms: u64,
    /// Assumed checkpoint duration in ms.
    pub checkpoint_duration_ms: u64,
    /// Whether the ACK gate was on.
    pub ack_gate: bool,
}

/// One side of a connection.
#[derive(Debug, Clone, Serialize)]
pub struct SideReport {
    /// VM endpoint.
    pub vm: String,
    /// Client endpoint.
    pub client: String,
    /// First packet number of the flow in this capture.
    pub first_packet: u64,
    /// Its time.
    pub first_time: String,
    /// VM → client frames.
    pub frames: u64,
    /// TCP payload bytes the VM sent (retransmissions included).
    pub payload_bytes: u64,
    /// Length of the VM's byte stream (highest offset sent).
    pub stream_bytes: u64,
    /// Datagrams the VM sent (non-TCP flows).
    pub datagrams: u64,
    /// `open`, `fin@OFFSET` or `rst@OFFSET`.
    pub close: String,
    /// Frames cut by the snaplen.
    pub cut_frames: u64,
}

/// Bytes around a divergence on one side.
#[derive(Debug, Clone, Serialize)]
pub struct Excerpt {
    /// Packet number carrying the diverging byte (or event), when found.
    pub packet: Option<u64>,
    /// Its time.
    pub time: Option<String>,
    /// Stream offset of the first byte shown.
    pub from_offset: u64,
    /// The bytes as hex (`..` for bytes not captured).
    pub hex: String,
    /// The bytes as escaped text.
    pub text: String,
}

/// The first divergence of a connection.
#[derive(Debug, Clone, Serialize)]
pub struct DivergenceReport {
    /// Reason class (payload, retransmission, tcp_control, datagram,
    /// secondary_too_slow, secondary_unmatched, limit).
    pub reason: &'static str,
    /// The engine's description.
    pub description: String,
    /// When it was detected (`secs.nanos` since the epoch, primary's clock).
    pub time: String,
    /// Stream offset, for payload, retransmission and close divergences.
    pub offset: Option<u64>,
    /// Datagram index, for datagram divergences.
    pub datagram: Option<u64>,
    /// Primary bytes around it.
    pub primary: Option<Excerpt>,
    /// Secondary bytes around it.
    pub secondary: Option<Excerpt>,
    /// Evidence file, with `--evidence`.
    pub evidence: Option<String>,
}

/// Output one side has and the other has not.
#[derive(Debug, Clone, Serialize)]
pub struct OneSided {
    /// The side with more.
    pub side: &'static str,
    /// Extra stream bytes.
    pub bytes: u64,
    /// Extra datagrams.
    pub datagrams: u64,
    /// Stream offset (or datagram index) where the extra output starts.
    pub from: u64,
}

/// One connection or datagram flow.
#[derive(Debug, Clone, Serialize)]
pub struct ConnReport {
    /// 1-based id in the report.
    pub id: usize,
    /// `tcp`, `udp`, `icmp`, `arp` ...
    pub proto: String,
    /// The flow (primary's endpoints when paired).
    pub flow: String,
    /// identical, diverged, close_differs, one_sided, incomplete, only_primary, only_secondary.
    pub verdict: &'static str,
    /// How the pair was made (null when unpaired).
    pub paired_by: Option<&'static str>,
    /// How the secondary's TCP sequence numbers were aligned: `rewriter`,
    /// `first_segment` (a handshake is missing from a capture) or `unaligned` (null for
    /// unpaired connections and datagram flows).
    pub seq_alignment: Option<&'static str>,
    /// Divergences on this connection: the first is `divergence`; each later one came
    /// after a checkpoint resynchronised it (see `summary.checkpoint_model`).
    pub divergences: u64,
    /// Primary side.
    pub primary: Option<SideReport>,
    /// Secondary side.
    pub secondary: Option<SideReport>,
    /// Stream bytes compared and found equal (TCP), up to the divergence.
    pub bytes_compared: u64,
    /// Datagrams compared (non-TCP).
    pub datagrams_compared: u64,
    /// The first divergence.
    pub divergence: Option<DivergenceReport>,
    /// Output on one side only.
    pub one_sided: Option<OneSided>,
    /// Set when the sides closed differently (`primary`, `secondary` close states).
    pub close_differs: Option<[String; 2]>,
    /// Why comparison stopped early (snaplen-cut frames).
    pub note: Option<String>,
}

/// Totals.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Summary {
    /// Connections and flows reported.
    pub connections: usize,
    /// Count per verdict.
    pub verdicts: BTreeMap<&'static str, u64>,
    /// TCP payload bytes matched by the engine.
    pub bytes_compared: u64,
    /// Datagrams matched by the engine.
    pub datagrams_compared: u64,
    /// Divergences per reason (every one, also those after a checkpoint).
    pub divergences_by_reason: BTreeMap<&'static str, u64>,
    /// Checkpoints the live proxy would have asked for, exact under
    /// `checkpoint_model`.
    pub checkpoints: u64,
    /// The model under which `checkpoints` is counted: [`CHECKPOINT_MODEL`].
    pub checkpoint_model: &'static str,
    /// Checkpoint requests per reason of their cause.
    pub checkpoints_by_reason: BTreeMap<&'static str, u64>,
    /// Frames fed to the engine, primary and secondary.
    pub frames_compared: [u64; 2],
    /// Wall-clock seconds the replay took.
    pub wall_seconds: f64,
}

fn side_line(out: &mut String, name: &str, s: &SideReport) {
    let _ = writeln!(
        out,
        "    {name:<9} {} -> {}  first #{} at {}, {} frames, {} stream bytes{}, close {}{}",
        s.vm,
        s.client,
        s.first_packet,
        s.first_time,
        s.frames,
        s.stream_bytes,
        if s.datagrams > 0 {
            format!(", {} datagrams", s.datagrams)
        } else {
            String::new()
        },
        s.close,
        if s.cut_frames > 0 {
            format!(", {} cut frames", s.cut_frames)
        } else {
            String::new()
        },
    );
}

fn excerpt_lines(out: &mut String, name: &str, e: &Excerpt) {
    let at = match (&e.packet, &e.time) {
        (Some(p), Some(t)) => format!("packet #{p} at {t}"),
        _ => "packet not found".to_string(),
    };
    let _ = writeln!(out, "      {name:<9} {at}, from offset {}:", e.from_offset);
    let _ = writeln!(out, "        hex  {}", e.hex);
    let _ = writeln!(out, "        text {}", e.text);
}

impl Report {
    /// The text report.
    #[must_use]
    pub fn text(&self) -> String {
        let mut out = String::new();
        for i in &self.inputs {
            let _ = writeln!(
                out,
                "{:<9} {} ({}, {}): {} packets, {} bytes; {}",
                i.role,
                i.path,
                i.format,
                i.link_types.join("+"),
                i.packets,
                i.bytes,
                i.vm_side.description
            );
            let _ = writeln!(
                out,
                "          VM frames {}, client frames {}, other {}{}",
                i.vm_frames,
                i.client_frames,
                i.other_frames,
                if i.cut_frames > 0 {
                    format!(
                        ", {} frames cut by the snaplen (not compared)",
                        i.cut_frames
                    )
                } else {
                    String::new()
                }
            );
            if let Some(e) = &i.error {
                let _ = writeln!(
                    out,
                    "          DAMAGED at offset {}: {} (report covers what was read before)",
                    e.offset, e.problem
                );
            }
        }
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        let _ = writeln!(out);
        for c in &self.connections {
            let _ = writeln!(
                out,
                "#{} {} {}: {}{}",
                c.id,
                c.proto,
                c.flow,
                c.verdict.to_uppercase().replace('_', " "),
                c.paired_by
                    .map(|p| format!(" (paired by {})", p.replace('_', " ")))
                    .unwrap_or_default()
            );
            if let Some(a) = c.seq_alignment.filter(|a| *a != "rewriter") {
                let _ = writeln!(out, "    sequence numbers aligned: {}", a.replace('_', " "));
            }
            if let Some(p) = &c.primary {
                side_line(&mut out, "primary", p);
            }
            if let Some(s) = &c.secondary {
                side_line(&mut out, "secondary", s);
            }
            if c.proto == "tcp" {
                let _ = writeln!(out, "    compared {} bytes", c.bytes_compared);
            } else if c.datagrams_compared > 0 {
                let _ = writeln!(out, "    compared {} datagrams", c.datagrams_compared);
            }
            if let Some(d) = &c.divergence {
                let _ = writeln!(out, "    DIVERGENCE {} at {}", d.description, d.time);
                if let Some(e) = &d.primary {
                    excerpt_lines(&mut out, "primary", e);
                }
                if let Some(e) = &d.secondary {
                    excerpt_lines(&mut out, "secondary", e);
                }
                if let Some(ev) = &d.evidence {
                    let _ = writeln!(out, "      evidence: {ev}");
                }
                if c.divergences > 1 {
                    let _ = writeln!(
                        out,
                        "    {} more divergence(s) after checkpoints",
                        c.divergences - 1
                    );
                }
            }
            if let Some([p, s]) = &c.close_differs {
                let _ = writeln!(out, "    CLOSE DIFFERS: primary {p}, secondary {s}");
            }
            if let Some(o) = &c.one_sided {
                if o.datagrams > 0 {
                    let _ = writeln!(
                        out,
                        "    ONE-SIDED: {} datagrams only in the {} capture, from datagram #{}",
                        o.datagrams, o.side, o.from
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "    ONE-SIDED: {} bytes only in the {} capture, from stream offset {}",
                        o.bytes, o.side, o.from
                    );
                }
            }
            if let Some(n) = &c.note {
                let _ = writeln!(out, "    note: {n}");
            }
        }
        let s = &self.summary;
        let _ = writeln!(out);
        let verdicts: Vec<String> = s
            .verdicts
            .iter()
            .map(|(k, v)| format!("{v} {}", k.replace('_', " ")))
            .collect();
        let _ = writeln!(
            out,
            "summary: {} connections: {}",
            s.connections,
            verdicts.join(", ")
        );
        let _ = writeln!(
            out,
            "  compared {} TCP bytes and {} datagrams ({} primary, {} secondary frames) in {:.2}s",
            s.bytes_compared,
            s.datagrams_compared,
            s.frames_compared[0],
            s.frames_compared[1],
            s.wall_seconds
        );
        if !s.divergences_by_reason.is_empty() {
            let r: Vec<String> = s
                .divergences_by_reason
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(out, "  divergences: {}", r.join(", "));
        }
        let _ = writeln!(
            out,
            "  checkpoints the live proxy would have asked for: {} (compare_timeout {}ms, min interval {}ms, duration {}ms; model {})",
            s.checkpoints,
            self.config.compare_timeout_ms,
            self.config.checkpoint_min_interval_ms,
            self.config.checkpoint_duration_ms,
            s.checkpoint_model
        );
        let verdict = match self.result {
            "identical" => "IDENTICAL",
            "diverged" => "DIVERGED",
            "incomplete" => "INCOMPLETE: no divergence, but parts could not be compared",
            _ => "DAMAGED INPUT: a capture could not be read to the end (see above)",
        };
        let _ = writeln!(out, "result: {verdict}");
        out
    }
}

/// Format a capture time.
#[must_use]
pub fn time_str(ns: u64) -> String {
    format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000)
}

/// Hex and escaped text of `bytes` (`None` = not captured).
#[must_use]
pub fn hex_text(bytes: &[Option<u8>], mark: usize) -> (String, String) {
    let mut hex = String::new();
    let mut text = String::new();
    for (i, b) in bytes.iter().enumerate() {
        if i == mark {
            hex.push('[');
            text.push('[');
        } else if i > 0 {
            hex.push(' ');
        }
        match b {
            Some(b) => {
                let _ = write!(hex, "{b:02x}");
                for c in std::ascii::escape_default(*b) {
                    text.push(char::from(c));
                }
            }
            None => {
                hex.push_str("..");
                text.push('.');
            }
        }
        if i == mark {
            hex.push(']');
            text.push(']');
        }
    }
    (hex, text)
}
