//! The proxy's CPU time and resident memory, from `/proc/PID` (`--proxy-pid`).

/// Clock ticks per second of `/proc/PID/stat` times (`USER_HZ`, 100 on Linux).
const USER_HZ: u64 = 100;

/// One sample of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// User + system CPU time of all its threads, nanoseconds (10 ms resolution).
    pub cpu_ns: u64,
    /// Resident set size, KiB.
    pub rss_kib: u64,
}

/// Reads `/proc/PID/stat` and `/proc/PID/status`; `None` if the process is gone or
/// the files do not parse.
#[must_use]
pub fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Sample {
        cpu_ns: cpu_ticks(&stat)? * (1_000_000_000 / USER_HZ),
        rss_kib: rss_kib(&status)?,
    })
}

/// utime + stime from the text of `/proc/PID/stat`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces; fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_ascii_whitespace();
    // After ")": field 3 (state) is index 0, so utime (14) is 11 and stime (15) 12.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` from the text of `/proc/PID/status`.
fn rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_ascii_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "1234 (colo proxy) S 1 2 3 4 5 6 7 8 9 10 250 31 0 0 20 0 3 0";
        assert_eq!(cpu_ticks(stat), Some(281));
        assert_eq!(
            rss_kib("Name:\tx\nVmRSS:\t  5120 kB\nVmSwap: 0 kB\n"),
            Some(5120)
        );
        assert_eq!(rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kib > 0);
    }
}
