//! Streaming capture reader: pcap and pcapng (parsed with `pcap-file`), every frame
//! turned into an Ethernet frame for colo-core's classifier.
//!
//! The file is read in chunks, so a capture of any size costs a few megabytes of
//! memory, and every record's file offset is known: a damaged capture gives a
//! [`CaptureError`] naming the file, the offset and the problem. Packets read before
//! the damage stay valid; the caller decides what to do with them.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use pcap_file::pcap::{PcapHeader, PcapParser};
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgParser};
use pcap_file::{Endianness, PcapError, TsResolution};

/// Largest record or block accepted (a corrupt length field must not make us read
/// gigabytes looking for the end of a record).
const MAX_RECORD: usize = 64 << 20;
/// Read granularity.
const CHUNK: usize = 4 << 20;

/// A link-layer type we can turn into Ethernet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// DLT_EN10MB.
    Ethernet,
    /// Linux cooked capture v1 (DLT 113).
    Sll,
    /// Linux cooked capture v2 (DLT 276).
    Sll2,
    /// Raw IPv4 or IPv6, version from the first nibble (DLT 101, 12, 14).
    RawIp,
    /// Raw IPv4 (DLT 228).
    Ipv4,
    /// Raw IPv6 (DLT 229).
    Ipv6,
    /// BSD loopback: a 4-byte address family in host or network order (DLT 0, 108).
    Null,
}

impl Link {
    /// The link type for a DLT/LINKTYPE number, if supported.
    #[must_use]
    pub fn from_dlt(dlt: u32) -> Option<Self> {
        Some(match dlt {
            1 => Self::Ethernet,
            113 => Self::Sll,
            276 => Self::Sll2,
            101 | 12 | 14 => Self::RawIp,
            228 => Self::Ipv4,
            229 => Self::Ipv6,
            0 | 108 => Self::Null,
            _ => return None,
        })
    }

    /// Short name for reports.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ethernet => "ethernet",
            Self::Sll => "linux_sll",
            Self::Sll2 => "linux_sll2",
            Self::RawIp => "raw_ip",
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
            Self::Null => "null",
        }
    }
}

/// The container format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Classic libpcap.
    Pcap,
    /// pcapng.
    PcapNg,
}

impl Format {
    /// Short name for reports.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Pcap => "pcap",
            Self::PcapNg => "pcapng",
        }
    }
}

/// A damaged or unreadable capture: which file, where, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureError {
    /// The file.
    pub path: PathBuf,
    /// Byte offset of the record or block that could not be read.
    pub offset: u64,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: at offset {}: {}",
            self.path.display(),
            self.offset,
            self.problem
        )
    }
}

impl std::error::Error for CaptureError {}

/// One captured packet, borrowed from the reader's buffer.
#[derive(Debug)]
pub struct Packet<'a> {
    /// 1-based packet number in the file (as Wireshark counts).
    pub number: u64,
    /// Capture time, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// Length on the wire.
    pub orig_len: u32,
    /// The captured bytes, link header included.
    pub data: &'a [u8],
    /// Its link type.
    pub link: Link,
}

impl Packet<'_> {
    /// Fewer bytes were captured than were on the wire (snaplen).
    #[must_use]
    pub fn is_cut(&self) -> bool {
        (self.data.len() as u64) < u64::from(self.orig_len)
    }
}

#[derive(Debug, Clone, Copy)]
struct Iface {
    link: Option<Link>,
    dlt: u32,
    /// Timestamp units per second.
    units: u64,
}

enum Kind {
    Start,
    Pcap {
        parser: PcapParser,
        link: Link,
        nanos: bool,
    },
    PcapNg {
        parser: PcapNgParser,
        ifaces: Vec<Iface>,
        last_ts: u64,
    },
}

/// A streaming pcap/pcapng reader. See the module documentation.
pub struct CaptureReader {
    path: PathBuf,
    src: Box<dyn Read + Send>,
    buf: Vec<u8>,
    /// Valid bytes are `buf[start..end]`; `buf[start]` is at file offset `base`.
    start: usize,
    end: usize,
    base: u64,
    eof: bool,
    kind: Kind,
    format: Format,
    count: u64,
    size: Option<u64>,
    link_names: Vec<&'static str>,
}

impl fmt::Debug for CaptureReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaptureReader")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

fn perr(e: &PcapError) -> String {
    match e {
        PcapError::InvalidField(s) => (*s).to_string(),
        other => other.to_string(),
    }
}

impl CaptureReader {
    /// Open a capture file.
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        let file = File::open(path).map_err(|e| CaptureError {
            path: path.to_path_buf(),
            offset: 0,
            problem: format!("cannot open: {e}"),
        })?;
        let size = file.metadata().ok().map(|m| m.len());
        let mut r = Self::from_reader(path, Box::new(file))?;
        r.size = size;
        Ok(r)
    }

    /// Read a capture from any byte source (`path` is only used in messages).
    pub fn from_reader(path: &Path, src: Box<dyn Read + Send>) -> Result<Self, CaptureError> {
        let mut r = Self {
            path: path.to_path_buf(),
            src,
            buf: vec![0; CHUNK],
            start: 0,
            end: 0,
            base: 0,
            eof: false,
            kind: Kind::Start,
            format: Format::Pcap,
            count: 0,
            size: None,
            link_names: Vec::new(),
        };
        r.fill(4)?;
        let avail = r.end - r.start;
        if avail < 4 {
            return Err(r.error(0, format!("not a capture: file is only {avail} bytes long")));
        }
        let magic = u32::from_be_bytes([r.buf[0], r.buf[1], r.buf[2], r.buf[3]]);
        match magic {
            0x0a0d_0d0a => {
                r.format = Format::PcapNg;
                let len = r.block_len(0)?;
                r.fill(len)?;
                if r.end - r.start < len {
                    return Err(r.truncated(0, "section header block", len));
                }
                let (rest, parser) =
                    PcapNgParser::new(&r.buf[..r.end]).map_err(|e| r.error(0, perr(&e)))?;
                let used = r.end - rest.len();
                r.consume(used);
                r.kind = Kind::PcapNg {
                    parser,
                    ifaces: Vec::new(),
                    last_ts: 0,
                };
            }
            0xa1b2_c3d4 | 0xa1b2_3c4d | 0xd4c3_b2a1 | 0x4d3c_b2a1 => {
                r.fill(24)?;
                if r.end - r.start < 24 {
                    return Err(r.truncated(0, "pcap file header", 24));
                }
                let (_, header) =
                    PcapHeader::from_slice(&r.buf[..24]).map_err(|e| r.error(0, perr(&e)))?;
                let dlt = u32::from(header.datalink);
                let link = Link::from_dlt(dlt).ok_or_else(|| {
                    r.error(
                        20,
                        format!("unknown link type {dlt} ({:?})", header.datalink),
                    )
                })?;
                let (_, parser) =
                    PcapParser::new(&r.buf[..24]).map_err(|e| r.error(0, perr(&e)))?;
                r.consume(24);
                r.link_names.push(link.name());
                r.kind = Kind::Pcap {
                    parser,
                    link,
                    nanos: header.ts_resolution == TsResolution::NanoSecond,
                };
            }
            _ => {
                return Err(r.error(
                    0,
                    format!("not a pcap or pcapng file (magic {magic:#010x})"),
                ));
            }
        }
        Ok(r)
    }

    /// pcap or pcapng.
    #[must_use]
    pub fn format(&self) -> Format {
        self.format
    }

    /// Link types seen so far (pcapng may have several interfaces).
    #[must_use]
    pub fn link_names(&self) -> &[&'static str] {
        &self.link_names
    }

    /// File size, when known.
    #[must_use]
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// Bytes consumed so far.
    #[must_use]
    pub fn position(&self) -> u64 {
        self.base
    }

    fn error(&self, offset: u64, problem: String) -> CaptureError {
        CaptureError {
            path: self.path.clone(),
            offset,
            problem,
        }
    }

    fn truncated(&self, offset: u64, what: &str, need: usize) -> CaptureError {
        let have = self.end - self.start;
        self.error(
            offset,
            format!("file truncated: {what} needs {need} bytes, only {have} left"),
        )
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        self.base += n as u64;
    }

    /// Make at least `need` bytes available from `start` (fewer only at end of file).
    fn fill(&mut self, need: usize) -> Result<(), CaptureError> {
        if self.end - self.start >= need || self.eof {
            return Ok(());
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < need {
            self.buf.resize(need.max(CHUNK), 0);
        }
        while self.end < need && !self.eof {
            match self.src.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(self.error(
                        self.base + (self.end - self.start) as u64,
                        format!("read error: {e}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Validated total length of the pcapng block at `start`.
    fn block_len(&mut self, at: u64) -> Result<usize, CaptureError> {
        self.fill(12)?;
        let avail = self.end - self.start;
        if avail < 12 {
            return Err(self.truncated(at, "block header", 12));
        }
        let b = &self.buf[self.start..self.start + 12];
        let ty = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let big = if ty == 0x0a0d_0d0a {
            match [b[8], b[9], b[10], b[11]] {
                [0x1a, 0x2b, 0x3c, 0x4d] => true,
                [0x4d, 0x3c, 0x2b, 0x1a] => false,
                m => {
                    return Err(self.error(
                        at,
                        format!("section header block: bad byte-order magic {m:02x?}"),
                    ));
                }
            }
        } else {
            match &self.kind {
                Kind::PcapNg { parser, .. } => parser.section().endianness == Endianness::Big,
                Kind::Pcap { .. } | Kind::Start => true,
            }
        };
        let raw = [b[4], b[5], b[6], b[7]];
        let len = if big {
            u32::from_be_bytes(raw)
        } else {
            u32::from_le_bytes(raw)
        } as usize;
        if len < 12 || !len.is_multiple_of(4) || len > MAX_RECORD {
            return Err(self.error(
                at,
                format!(
                    "bad block length {len} (block type {:#x})",
                    if big { ty } else { ty.swap_bytes() }
                ),
            ));
        }
        Ok(len)
    }

    /// The next packet, `None` at the end of the file.
    pub fn next_packet(&mut self) -> Result<Option<Packet<'_>>, CaptureError> {
        loop {
            let at = self.base;
            let pcap_big = match &self.kind {
                Kind::Start => return Ok(None),
                Kind::Pcap { parser, .. } => Some(parser.header().endianness == Endianness::Big),
                Kind::PcapNg { .. } => None,
            };
            match pcap_big {
                Some(big) => {
                    self.fill(16)?;
                    let avail = self.end - self.start;
                    if avail == 0 {
                        return Ok(None);
                    }
                    if avail < 16 {
                        return Err(self.truncated(at, "packet record header", 16));
                    }
                    let h = &self.buf[self.start..self.start + 16];
                    let word = |i: usize| {
                        let raw = [h[i], h[i + 1], h[i + 2], h[i + 3]];
                        if big {
                            u32::from_be_bytes(raw)
                        } else {
                            u32::from_le_bytes(raw)
                        }
                    };
                    let incl = word(8) as usize;
                    let orig = word(12);
                    if incl > MAX_RECORD {
                        return Err(self.error(at, format!("bad packet record length {incl}")));
                    }
                    if incl as u64 > u64::from(orig) {
                        return Err(self.error(
                            at,
                            format!("bad packet record: captured length {incl} exceeds wire length {orig}"),
                        ));
                    }
                    self.fill(16 + incl)?;
                    if self.end - self.start < 16 + incl {
                        return Err(self.truncated(at, "packet record", 16 + incl));
                    }
                    self.consume(16 + incl);
                    self.count += 1;
                    let Kind::Pcap {
                        parser,
                        link,
                        nanos,
                    } = &self.kind
                    else {
                        unreachable!()
                    };
                    let rec = &self.buf[self.start - 16 - incl..self.start];
                    let (_, raw) = parser.next_raw_packet(rec).map_err(|e| CaptureError {
                        path: self.path.clone(),
                        offset: at,
                        problem: perr(&e),
                    })?;
                    let frac = u64::from(raw.ts_frac);
                    let ts_ns = u64::from(raw.ts_sec) * 1_000_000_000
                        + if *nanos { frac } else { frac * 1000 };
                    return Ok(Some(Packet {
                        number: self.count,
                        ts_ns,
                        orig_len: orig,
                        data: &self.buf[self.start - incl..self.start],
                        link: *link,
                    }));
                }
                None => {
                    self.fill(1)?;
                    if self.end == self.start {
                        return Ok(None);
                    }
                    let len = self.block_len(at)?;
                    self.fill(len)?;
                    if self.end - self.start < len {
                        return Err(self.truncated(at, "block", len));
                    }
                    self.consume(len);
                    let block_start = self.start - len;
                    let path = self.path.clone();
                    let Kind::PcapNg {
                        parser,
                        ifaces,
                        last_ts,
                    } = &mut self.kind
                    else {
                        unreachable!()
                    };
                    let block = &self.buf[block_start..self.start];
                    let err = |p: String| CaptureError {
                        path: path.clone(),
                        offset: at,
                        problem: p,
                    };
                    let (_, block) = parser.next_block(block).map_err(|e| match e {
                        PcapError::IncompleteBuffer => {
                            err("block shorter than its contents".into())
                        }
                        e => err(perr(&e)),
                    })?;
                    let (iface_id, ts_raw, orig_len, data) = match block {
                        Block::SectionHeader(_) => {
                            ifaces.clear();
                            continue;
                        }
                        Block::InterfaceDescription(idb) => {
                            let dlt = u32::from(idb.linktype);
                            let mut units = 1_000_000u64;
                            for o in &idb.options {
                                if let InterfaceDescriptionOption::IfTsResol(r) = o {
                                    units = if r & 0x80 == 0 {
                                        10u64.checked_pow(u32::from(*r)).unwrap_or(0)
                                    } else {
                                        1u64.checked_shl(u32::from(r & 0x7f)).unwrap_or(0)
                                    };
                                }
                            }
                            if units == 0 {
                                return Err(err(
                                    "interface description: unsupported if_tsresol".into()
                                ));
                            }
                            let link = Link::from_dlt(dlt);
                            if let Some(l) = link
                                && !self.link_names.contains(&l.name())
                            {
                                self.link_names.push(l.name());
                            }
                            ifaces.push(Iface { link, dlt, units });
                            continue;
                        }
                        Block::EnhancedPacket(epb) => {
                            // pcap-file 2.0 stores the raw timestamp units as nanoseconds.
                            let raw = u64::try_from(epb.timestamp.as_nanos()).unwrap_or(u64::MAX);
                            (epb.interface_id, Some(raw), epb.original_len, epb.data)
                        }
                        Block::Packet(pb) => (
                            u32::from(pb.interface_id),
                            Some(pb.timestamp),
                            pb.original_len,
                            pb.data,
                        ),
                        Block::SimplePacket(spb) => (0, None, spb.original_len, spb.data),
                        _ => continue,
                    };
                    let Some(iface) = ifaces.get(iface_id as usize).copied() else {
                        return Err(err(format!(
                            "packet refers to interface {iface_id}, which was not described"
                        )));
                    };
                    let Some(link) = iface.link else {
                        return Err(err(format!(
                            "unknown link type {} on interface {iface_id}",
                            iface.dlt
                        )));
                    };
                    let ts_ns = match ts_raw {
                        Some(raw) => {
                            let secs = raw / iface.units;
                            let rem = raw % iface.units;
                            secs * 1_000_000_000
                                + u64::try_from(
                                    u128::from(rem) * 1_000_000_000 / u128::from(iface.units),
                                )
                                .unwrap_or(0)
                        }
                        None => *last_ts,
                    };
                    *last_ts = ts_ns;
                    // The data is a sub-slice of our buffer: find where.
                    let (dstart, dlen) = match data {
                        std::borrow::Cow::Borrowed(d) => (
                            (d.as_ptr() as usize).wrapping_sub(self.buf.as_ptr() as usize),
                            d.len(),
                        ),
                        std::borrow::Cow::Owned(_) => {
                            return Err(err("unexpected owned packet data".into()));
                        }
                    };
                    self.count += 1;
                    return Ok(Some(Packet {
                        number: self.count,
                        ts_ns,
                        orig_len: orig_len.max(dlen as u32),
                        data: &self.buf[dstart..dstart + dlen],
                        link,
                    }));
                }
            }
        }
    }
}

/// Ethertype for an IP packet, from its version nibble.
fn ip_ethertype(ip: &[u8]) -> u16 {
    match ip.first().map(|b| b >> 4) {
        Some(6) => 0x86dd,
        _ => 0x0800,
    }
}

/// Write `data` (of link type `link`) as an Ethernet frame into `out`. Frames that
/// are not Ethernet get a synthetic header: zero destination MAC, the cooked
/// header's source address (when it is a MAC) as source, and the protocol as ethertype.
pub fn to_ethernet(link: Link, data: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut synth = |src: &[u8], ethertype: u16, payload: &[u8]| {
        out.extend_from_slice(&[0; 6]);
        let mut mac = [0u8; 6];
        if src.len() == 6 {
            mac.copy_from_slice(src);
        }
        out.extend_from_slice(&mac);
        out.extend_from_slice(&ethertype.to_be_bytes());
        out.extend_from_slice(payload);
    };
    match link {
        Link::Ethernet => out.extend_from_slice(data),
        Link::Sll if data.len() >= 16 => {
            let alen = usize::from(u16::from_be_bytes([data[4], data[5]])).min(8);
            synth(
                &data[6..6 + alen],
                u16::from_be_bytes([data[14], data[15]]),
                &data[16..],
            );
        }
        Link::Sll2 if data.len() >= 20 => {
            let alen = usize::from(data[11]).min(8);
            synth(
                &data[12..12 + alen],
                u16::from_be_bytes([data[0], data[1]]),
                &data[20..],
            );
        }
        Link::RawIp => synth(&[], ip_ethertype(data), data),
        Link::Ipv4 => synth(&[], 0x0800, data),
        Link::Ipv6 => synth(&[], 0x86dd, data),
        Link::Null if data.len() >= 4 => {
            let payload = &data[4..];
            synth(&[], ip_ethertype(payload), payload);
        }
        // Too short for its link header: keep the bytes, compared raw.
        Link::Sll | Link::Sll2 | Link::Null => synth(&[], 0, data),
    }
}

/// Turn a packet into an Ethernet frame in `out`; for a frame cut by the snaplen,
/// clip its IP length so it still classifies, and return how many bytes are missing
/// (`None` when nothing that matters was cut: at most the Ethernet padding).
pub fn normalize(p: &Packet<'_>, out: &mut Vec<u8>) -> Option<usize> {
    to_ethernet(p.link, p.data, out);
    if !p.is_cut() {
        return None;
    }
    match super::headers::ip_frame_len(out) {
        Some(l) if l <= out.len() => None,
        Some(_) => Some(super::headers::clip_cut(out)),
        None => Some(p.orig_len as usize - p.data.len()),
    }
}
