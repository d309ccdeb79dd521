//! The cheapest possible "proxy", to measure colo-bench's own ceiling (throughput) and
//! floor (closed-loop latency): it copies primary_in to outdev byte for byte and
//! discards secondary_in, comparing nothing. One blocking thread per input.
//!
//! ```sh
//! cargo run --release -p colo-bench --example forward -- /tmp/fwd &
//! colo-bench --connect --primary-in /tmp/fwd/pri.sock --secondary-in /tmp/fwd/sec.sock \
//!     --outdev /tmp/fwd/out.sock --mode closed-loop --seconds 3
//! ```
//!
//! It serves one run and exits when primary_in closes.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".to_owned()));
    std::fs::create_dir_all(&dir)?;
    let listen = |n: &str| {
        let p = dir.join(n);
        let _ = std::fs::remove_file(&p);
        UnixListener::bind(p)
    };
    let (lp, ls, lo) = (
        listen("pri.sock")?,
        listen("sec.sock")?,
        listen("out.sock")?,
    );
    // colo-bench connects outdev first, then primary_in, then secondary_in.
    let (mut out, _) = lo.accept()?;
    let (mut pri, _) = lp.accept()?;
    let (mut sec, _) = ls.accept()?;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        while matches!(sec.read(&mut buf), Ok(n) if n > 0) {}
    });
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = pri.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        out.write_all(&buf[..n])?;
    }
}
