//! `colo-testsrv`: the deterministic service the two VM namespaces run, and the
//! client the client namespace runs. std::net only, one thread per connection.
//!
//! ```text
//! colo-testsrv serve [--lifetime SECS] MODE:PORT...
//!     MODE = bulk | bulk-close | echo | nondet | nondet-close | udp-echo | udp-nondet
//! colo-testsrv client [--bind-port PORT] bulk ADDR:PORT BYTES     prints the bytes received
//! colo-testsrv client [--bind-port PORT] echo ADDR:PORT CONN COUNT prints the replies received
//! colo-testsrv client echo-many ADDR:PORT CONNS COUNT   CONNS concurrent echo connections
//!                                                       (ids 1..=CONNS); prints their
//!                                                       replies, connection after connection
//! colo-testsrv client nondet ADDR:PORT LINE             one request, reads until the server closes
//! colo-testsrv client udp-echo ADDR:PORT COUNT          COUNT datagrams, one at a time; prints the replies
//! colo-testsrv client udp-once ADDR:PORT LINE            one datagram, waits up to 30 s for one reply
//! colo-testsrv client rtt ADDR:PORT COUNT               COUNT echo round trips on one connection;
//!                                                       prints `rtt_us <p50> <p90> <p99> <max>`
//! ```
//!
//! A bulk client also prints `received <bytes> in <micros> us` on stderr (from its
//! request to the last byte), for benchmarks.
//!
//! The server listens on both IPv4 and IPv6 where it can (`[::]`, dual stack), prints
//! `READY` once every listener is bound, one line `accepted <mode> <peer>` per TCP
//! connection, `sent <reply>` for every nondet reply, and exits by itself after its
//! lifetime (default 120 s) so that nothing outlives a killed test. Clients print
//! `local=<addr:port>` on stderr once connected, `progress <bytes>` on stderr every
//! 4 MiB of a bulk download, and what they received on stdout.
//! The protocol is in `colo_integration::proto`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use colo_integration::proto;

const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a UDP client waits for a reply before sending the datagram again.
const UDP_RETRY: Duration = Duration::from_secs(1);
const UDP_ATTEMPTS: u32 = 5;
const PROGRESS_EVERY: u64 = 4 << 20;

/// One line on stdout at a time, flushed (the tests read stdout line by line).
static STDOUT: Mutex<()> = Mutex::new(());

fn say(line: &str) {
    let _guard = STDOUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut out = io::stdout().lock();
    // A closed stdout only loses the announcement.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Send the bytes, then wait for the client's FIN before closing.
    Bulk,
    /// Send the bytes and close at once (the server's FIN comes first).
    BulkClose,
    Echo,
    Nondet,
    /// Answer one request with the time in it, then close.
    NondetClose,
    UdpEcho,
    /// Answer every datagram with the time in it.
    UdpNondet,
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: colo-testsrv serve [--lifetime SECS] MODE:PORT...\n       \
         colo-testsrv client [--bind-port PORT] bulk ADDR:PORT BYTES\n       \
         colo-testsrv client [--bind-port PORT] echo ADDR:PORT CONN COUNT\n       \
         colo-testsrv client echo-many ADDR:PORT CONNS COUNT\n       \
         colo-testsrv client nondet ADDR:PORT LINE\n       \
         colo-testsrv client udp-echo ADDR:PORT COUNT\n       \
         colo-testsrv client rtt ADDR:PORT COUNT\n       \
         colo-testsrv client udp-once ADDR:PORT LINE"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut bind_port = 0u16;
    if let ["client", "--bind-port", port, ..] = args.as_slice() {
        let Ok(port) = port.parse() else {
            return usage();
        };
        bind_port = port;
        args.drain(1..3);
    }
    let result = match args.as_slice() {
        ["serve", rest @ ..] => serve(rest),
        ["client", "bulk", addr, n] => match (addr.parse(), n.parse()) {
            (Ok(addr), Ok(n)) => client_bulk(addr, bind_port, n),
            _ => return usage(),
        },
        ["client", "echo", addr, conn, count] => {
            match (addr.parse(), conn.parse(), count.parse()) {
                (Ok(addr), Ok(conn), Ok(count)) => client_echo_print(addr, bind_port, conn, count),
                _ => return usage(),
            }
        }
        ["client", "echo-many", addr, conns, count] => {
            match (addr.parse(), conns.parse(), count.parse()) {
                (Ok(addr), Ok(conns), Ok(count)) => client_echo_many(addr, conns, count),
                _ => return usage(),
            }
        }
        ["client", "nondet", addr, line] => match addr.parse() {
            Ok(addr) => client_nondet(addr, line),
            Err(_) => return usage(),
        },
        ["client", "udp-once", addr, line] => match addr.parse() {
            Ok(addr) => client_udp_once(addr, line),
            Err(_) => return usage(),
        },
        ["client", "rtt", addr, count] => match (addr.parse(), count.parse()) {
            (Ok(addr), Ok(count)) => client_rtt(addr, count),
            _ => return usage(),
        },
        ["client", "udp-echo", addr, count] => match (addr.parse(), count.parse()) {
            (Ok(addr), Ok(count)) => client_udp_echo(addr, count),
            _ => return usage(),
        },
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("colo-testsrv: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Bind `[::]:port` (dual stack), or `0.0.0.0:port` where IPv6 is unavailable.
fn bind_tcp(port: u16) -> io::Result<TcpListener> {
    TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
        .or_else(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
}

fn bind_udp(port: u16) -> io::Result<UdpSocket> {
    UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port))
        .or_else(|_| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))
}

fn serve(args: &[&str]) -> io::Result<()> {
    let mut lifetime = Duration::from_secs(120);
    let mut listeners = Vec::new();
    let mut udp = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if *arg == "--lifetime" {
            let secs = it
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| io::Error::other("--lifetime needs seconds"))?;
            lifetime = Duration::from_secs(secs);
            continue;
        }
        let (mode, port) = arg
            .split_once(':')
            .ok_or_else(|| io::Error::other(format!("bad listener {arg:?}")))?;
        let mode = match mode {
            "bulk" => Mode::Bulk,
            "bulk-close" => Mode::BulkClose,
            "echo" => Mode::Echo,
            "nondet" => Mode::Nondet,
            "nondet-close" => Mode::NondetClose,
            "udp-echo" => Mode::UdpEcho,
            "udp-nondet" => Mode::UdpNondet,
            other => return Err(io::Error::other(format!("unknown mode {other:?}"))),
        };
        let port: u16 = port
            .parse()
            .map_err(|_| io::Error::other(format!("bad port in {arg:?}")))?;
        if matches!(mode, Mode::UdpEcho | Mode::UdpNondet) {
            udp.push((mode, bind_udp(port)?));
        } else {
            listeners.push((mode, bind_tcp(port)?));
        }
    }
    if listeners.is_empty() && udp.is_empty() {
        return Err(io::Error::other("no listener given"));
    }
    for (mode, listener) in listeners {
        thread::spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => {
                        let peer = s
                            .peer_addr()
                            .map_or_else(|_| "?".to_owned(), |a| canonical(a).to_string());
                        say(&format!("accepted {} {peer}", mode_name(mode)));
                        thread::spawn(move || {
                            if let Err(e) = handle(mode, s) {
                                eprintln!("colo-testsrv: {mode:?} connection: {e}");
                            }
                        });
                    }
                    Err(e) => eprintln!("colo-testsrv: accept: {e}"),
                }
            }
        });
    }
    for (mode, socket) in udp {
        thread::spawn(move || {
            if let Err(e) = udp_echo(&socket, matches!(mode, Mode::UdpNondet)) {
                eprintln!("colo-testsrv: udp-echo: {e}");
            }
        });
    }
    say("READY");
    thread::sleep(lifetime);
    Ok(())
}

/// An IPv4 peer of a dual-stack listener as IPv4 (`::ffff:a.b.c.d` -> `a.b.c.d`).
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().map_or(addr, |v4| {
            SocketAddr::new(std::net::IpAddr::V4(v4), v6.port())
        }),
        SocketAddr::V4(_) => addr,
    }
}

const fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Bulk => "bulk",
        Mode::BulkClose => "bulk-close",
        Mode::Echo => "echo",
        Mode::Nondet => "nondet",
        Mode::NondetClose => "nondet-close",
        Mode::UdpEcho => "udp-echo",
        Mode::UdpNondet => "udp-nondet",
    }
}

fn udp_echo(socket: &UdpSocket, nondet: bool) -> io::Result<()> {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, peer) = socket.recv_from(&mut buf)?;
        let line = String::from_utf8_lossy(&buf[..n]);
        let line = line.trim_end_matches('\n');
        let reply = if nondet {
            let reply = proto::nondet_reply(line, now_nanos());
            say(&format!("sent {}", reply.trim_end()));
            reply
        } else {
            proto::echo_reply(line)
        };
        socket.send_to(reply.as_bytes(), peer)?;
    }
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn handle(mode: Mode, stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    match mode {
        Mode::Bulk | Mode::BulkClose => {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let n = proto::parse_bulk_request(line.trim_end())
                .ok_or_else(|| io::Error::other(format!("bad request {line:?}")))?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut sent = 0u64;
            while sent < n {
                let len = usize::try_from((n - sent).min(buf.len() as u64)).unwrap_or(0);
                proto::fill_bulk(sent, &mut buf[..len]);
                writer.write_all(&buf[..len])?;
                sent += len as u64;
            }
            if matches!(mode, Mode::BulkClose) {
                writer.shutdown(Shutdown::Write)?;
            }
            // Wait for the client's FIN.
            let mut rest = Vec::new();
            reader.read_to_end(&mut rest)?;
        }
        Mode::Echo | Mode::Nondet => loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                break;
            }
            let line = line.trim_end_matches('\n');
            let reply = if matches!(mode, Mode::Nondet) {
                let reply = proto::nondet_reply(line, now_nanos());
                say(&format!("sent {}", reply.trim_end()));
                reply
            } else {
                proto::echo_reply(line)
            };
            writer.write_all(reply.as_bytes())?;
        },
        Mode::NondetClose => {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let reply = proto::nondet_reply(line.trim_end_matches('\n'), now_nanos());
            say(&format!("sent {}", reply.trim_end()));
            writer.write_all(reply.as_bytes())?;
            writer.shutdown(Shutdown::Write)?;
            let mut rest = Vec::new();
            reader.read_to_end(&mut rest)?;
        }
        Mode::UdpEcho | Mode::UdpNondet => unreachable!("UDP is not served by TCP listeners"),
    }
    Ok(())
}

fn connect(addr: SocketAddr, bind_port: u16) -> io::Result<TcpStream> {
    let stream = if bind_port == 0 {
        TcpStream::connect_timeout(&addr, IO_TIMEOUT)?
    } else {
        connect_from_port(addr, bind_port)?
    };
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    eprintln!("local={}", stream.local_addr()?);
    Ok(stream)
}

/// Connect from a fixed local port: the two VMs must choose the same one, as a VM
/// and its checkpointed copy would (Linux picks ephemeral ports with a boot-wide
/// perturbation table, so two namespaces would not agree).
fn connect_from_port(addr: SocketAddr, port: u16) -> io::Result<TcpStream> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    let local: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, port).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, port).into()
    };
    socket.bind(&local.into())?;
    socket.connect_timeout(&addr.into(), IO_TIMEOUT)?;
    Ok(socket.into())
}

fn client_bulk(addr: SocketAddr, bind_port: u16, n: u64) -> io::Result<()> {
    let mut stream = connect(addr, bind_port)?;
    let started = Instant::now();
    stream.write_all(proto::bulk_request(n).as_bytes())?;
    let mut got = vec![0u8; usize::try_from(n).unwrap_or(0)];
    let mut filled = 0usize;
    let mut next_progress = PROGRESS_EVERY;
    while filled < got.len() {
        let k = stream.read(&mut got[filled..])?;
        if k == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed after {filled} of {n} bytes"),
            ));
        }
        filled += k;
        if filled as u64 >= next_progress {
            eprintln!("progress {filled}");
            next_progress += PROGRESS_EVERY;
        }
    }
    eprintln!("received {filled} in {} us", started.elapsed().as_micros());
    // The client closes first (unless the server already did), then waits for the
    // server's FIN; anything after the expected bytes is kept, to be noticed.
    stream.shutdown(Shutdown::Write)?;
    stream.read_to_end(&mut got)?;
    let mut out = io::stdout().lock();
    out.write_all(&got)?;
    out.flush()
}

fn client_echo(addr: SocketAddr, bind_port: u16, conn: u32, count: u32) -> io::Result<Vec<u8>> {
    let stream = connect(addr, bind_port)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut got = Vec::new();
    for i in 0..count {
        writer.write_all(proto::echo_request(conn, i).as_bytes())?;
        let n = reader.read_until(b'\n', &mut got)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection {conn} closed before reply {i}"),
            ));
        }
    }
    writer.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest)?;
    got.extend_from_slice(&rest);
    Ok(got)
}

fn client_echo_print(addr: SocketAddr, bind_port: u16, conn: u32, count: u32) -> io::Result<()> {
    let got = client_echo(addr, bind_port, conn, count)?;
    let mut out = io::stdout().lock();
    out.write_all(&got)?;
    out.flush()
}

fn client_echo_many(addr: SocketAddr, conns: u32, count: u32) -> io::Result<()> {
    let handles: Vec<_> = (1..=conns)
        .map(|c| thread::spawn(move || client_echo(addr, 0, c, count)))
        .collect();
    let mut all = Vec::new();
    for (c, h) in (1..=conns).zip(handles) {
        let got = h
            .join()
            .map_err(|_| io::Error::other(format!("connection {c} panicked")))??;
        all.extend_from_slice(&got);
    }
    let mut out = io::stdout().lock();
    out.write_all(&all)?;
    out.flush()
}

fn client_nondet(addr: SocketAddr, line: &str) -> io::Result<()> {
    let mut stream = connect(addr, 0)?;
    stream.write_all(format!("{line}\n").as_bytes())?;
    let mut got = Vec::new();
    stream.read_to_end(&mut got)?;
    let mut out = io::stdout().lock();
    out.write_all(&got)?;
    out.flush()
}

/// A UDP socket of `addr`'s family on an ephemeral port, connected to `addr`.
fn udp_connected(addr: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(addr)?;
    Ok(socket)
}

fn client_udp_echo(addr: SocketAddr, count: u32) -> io::Result<()> {
    let socket = udp_connected(addr)?;
    socket.set_read_timeout(Some(UDP_RETRY))?;
    eprintln!("local={}", socket.local_addr()?);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    for i in 0..count {
        let req = proto::echo_request(0, i);
        let want = proto::echo_reply(req.trim_end_matches('\n'));
        let mut attempt = 0;
        loop {
            attempt += 1;
            socket.send(req.as_bytes())?;
            match socket.recv(&mut buf) {
                // A late reply to an earlier attempt of the same request is the same
                // bytes; one to an earlier request is skipped.
                Ok(n) if buf[..n] == *want.as_bytes() => {
                    got.extend_from_slice(&buf[..n]);
                    break;
                }
                Ok(n) => {
                    eprintln!(
                        "udp request {i}: unexpected reply {:?}",
                        String::from_utf8_lossy(&buf[..n])
                    );
                    if attempt >= UDP_ATTEMPTS {
                        return Err(io::Error::other(format!(
                            "udp request {i}: no matching reply"
                        )));
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) && attempt < UDP_ATTEMPTS =>
                {
                    eprintln!("udp request {i}: no reply, attempt {attempt}");
                }
                Err(e) => return Err(e),
            }
        }
    }
    let mut out = io::stdout().lock();
    out.write_all(&got)?;
    out.flush()
}

fn client_rtt(addr: SocketAddr, count: u32) -> io::Result<()> {
    let stream = connect(addr, 0)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut samples = Vec::with_capacity(count as usize);
    let mut line = String::new();
    for i in 0..count {
        let req = proto::echo_request(1, i);
        let want = proto::echo_reply(req.trim_end_matches('\n'));
        let started = Instant::now();
        writer.write_all(req.as_bytes())?;
        line.clear();
        reader.read_line(&mut line)?;
        samples.push(started.elapsed().as_micros());
        if line != want {
            return Err(io::Error::other(format!(
                "round trip {i}: got {line:?}, expected {want:?}"
            )));
        }
    }
    writer.shutdown(Shutdown::Write)?;
    samples.sort_unstable();
    let pct = |p: usize| {
        samples
            .get((samples.len() * p / 100).min(samples.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "rtt_us {} {} {} {}",
        pct(50),
        pct(90),
        pct(99),
        samples.last().copied().unwrap_or(0)
    );
    Ok(())
}

fn client_udp_once(addr: SocketAddr, line: &str) -> io::Result<()> {
    let socket = udp_connected(addr)?;
    socket.set_read_timeout(Some(IO_TIMEOUT))?;
    eprintln!("local={}", socket.local_addr()?);
    socket.send(format!("{line}\n").as_bytes())?;
    let mut buf = vec![0u8; 65536];
    let n = socket.recv(&mut buf)?;
    let mut out = io::stdout().lock();
    out.write_all(&buf[..n])?;
    out.flush()
}
