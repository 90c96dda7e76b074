//! Reading Linux /proc (a process's resident memory and CPU time) and raising this process's
//! open-file limit. Parsers are pure; the `read_*` functions do the file I/O.

use std::time::Duration;

/// Clock ticks per second of /proc/PID/stat times (USER_HZ, 100 on every Linux ABI we run on).
const USER_HZ: u64 = 100;

/// `VmRSS` of proc(5) status, in bytes.
pub fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut fields = line["VmRSS:".len()..].split_ascii_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next()? {
        "kB" => Some(value * 1024),
        _ => None,
    }
}

/// utime + stime of a process, all threads included (fields 14 and 15 of proc(5) stat).
pub fn parse_stat_cpu(stat: &str) -> Option<Duration> {
    // The command name (field 2) is in parentheses and may hold spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11); // field 3 is index 0
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / USER_HZ))
}

/// Resident set size of process `pid` ("self" for this one), in bytes.
pub fn read_rss(pid: &str) -> Option<u64> {
    parse_status_rss(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// CPU time used so far by process `pid` ("self" for this one).
pub fn read_cpu(pid: &str) -> Option<Duration> {
    parse_stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Raises the soft RLIMIT_NOFILE to at least `wanted` (capped at the hard limit); returns the
/// soft limit now in force.
pub fn raise_nofile(wanted: u64) -> nix::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= wanted {
        return Ok(soft);
    }
    let new = wanted.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, new, hard)?;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_rss() {
        let status = "Name:\tsignaling\nVmPeak:\t  200000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss(status), Some(12345 * 1024));
        assert_eq!(parse_status_rss("Name: x\n"), None);
        assert_eq!(parse_status_rss("VmRSS: 12 MB\n"), None);
    }

    #[test]
    fn stat_with_spaces_in_name() {
        let stat = "1234 (sig naling) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 4 0 \
                    12345 100000 500 18446744073709551615";
        assert_eq!(parse_stat_cpu(stat), Some(Duration::from_millis(3250)));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn own_process_is_readable() {
        assert!(read_rss("self").is_some_and(|b| b > 0));
        assert!(read_cpu("self").is_some());
    }
}
