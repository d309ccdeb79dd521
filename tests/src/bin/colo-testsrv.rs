//! `colo-testsrv`: the deterministic service the two VM namespaces run, and the
//! client the client namespace runs. std::net only, one thread per connection.
//!
//! ```text
//! colo-testsrv serve [--lifetime SECS] MODE:PORT...
//!     MODE = bulk | bulk-close | echo | nondet
//! colo-testsrv client bulk ADDR:PORT BYTES            prints the bytes received
//! colo-testsrv client echo ADDR:PORT CONN COUNT       prints the replies received
//! ```
//!
//! The server prints `READY` once every listener is bound, and exits by itself after
//! its lifetime (default 120 s) so that nothing outlives a killed test. Clients print
//! `local=<addr:port>` on stderr once connected, and what they received on stdout.
//! The protocol is in `colo_integration::proto`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use colo_integration::proto;

const IO_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Send the bytes, then wait for the client's FIN before closing.
    Bulk,
    /// Send the bytes and close at once (the server's FIN comes first).
    BulkClose,
    Echo,
    Nondet,
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: colo-testsrv serve [--lifetime SECS] MODE:PORT...\n       \
         colo-testsrv client bulk ADDR:PORT BYTES\n       \
         colo-testsrv client echo ADDR:PORT CONN COUNT"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["serve", rest @ ..] => serve(rest),
        ["client", "bulk", addr, n] => match (addr.parse(), n.parse()) {
            (Ok(addr), Ok(n)) => client_bulk(addr, n),
            _ => return usage(),
        },
        ["client", "echo", addr, conn, count] => {
            match (addr.parse(), conn.parse(), count.parse()) {
                (Ok(addr), Ok(conn), Ok(count)) => client_echo(addr, conn, count),
                _ => return usage(),
            }
        }
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

fn serve(args: &[&str]) -> io::Result<()> {
    let mut lifetime = Duration::from_secs(120);
    let mut listeners = Vec::new();
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
            other => return Err(io::Error::other(format!("unknown mode {other:?}"))),
        };
        let port: u16 = port
            .parse()
            .map_err(|_| io::Error::other(format!("bad port in {arg:?}")))?;
        listeners.push((mode, TcpListener::bind(("0.0.0.0", port))?));
    }
    if listeners.is_empty() {
        return Err(io::Error::other("no listener given"));
    }
    for (mode, listener) in listeners {
        thread::spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => {
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
    println!("READY");
    io::stdout().flush()?;
    thread::sleep(lifetime);
    Ok(())
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
            let reply = match mode {
                Mode::Nondet => {
                    let nanos = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos());
                    proto::nondet_reply(line, nanos)
                }
                _ => proto::echo_reply(line),
            };
            writer.write_all(reply.as_bytes())?;
        },
    }
    Ok(())
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    eprintln!("local={}", stream.local_addr()?);
    Ok(stream)
}

fn client_bulk(addr: SocketAddr, n: u64) -> io::Result<()> {
    let mut stream = connect(addr)?;
    stream.write_all(proto::bulk_request(n).as_bytes())?;
    let mut got = vec![0u8; usize::try_from(n).unwrap_or(0)];
    stream.read_exact(&mut got)?;
    // The client closes first (unless the server already did), then waits for the
    // server's FIN; anything after the expected bytes is kept, to be noticed.
    stream.shutdown(Shutdown::Write)?;
    stream.read_to_end(&mut got)?;
    let mut out = io::stdout().lock();
    out.write_all(&got)?;
    out.flush()
}

fn client_echo(addr: SocketAddr, conn: u32, count: u32) -> io::Result<()> {
    let stream = connect(addr)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut got = Vec::new();
    for i in 0..count {
        writer.write_all(proto::echo_request(conn, i).as_bytes())?;
        let n = reader.read_until(b'\n', &mut got)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed before reply {i}"),
            ));
        }
    }
    writer.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest)?;
    got.extend_from_slice(&rest);
    let mut out = io::stdout().lock();
    out.write_all(&got)?;
    out.flush()
}
