//! Reading Linux /proc for the benchmark and soak programs: a process's CPU time (all threads,
//! or per thread by name), resident memory and open descriptors, and [`ProcessSample`], both of
//! a process at one instant. The parsers are pure; the `read_*` functions (and
//! [`ProcessSample::read`]) do the file I/O and take a PID as text ("self" for this process).

use std::time::Duration;

/// Clock ticks per second of /proc stat times (USER_HZ, 100 on every Linux ABI we run on).
const USER_HZ: u64 = 100;

/// utime + stime (fields 14 and 15 of proc(5) `stat`) of a process (all threads) or one task.
pub fn parse_stat_cpu(stat: &str) -> Option<Duration> {
    // The command name (field 2) is in parentheses and may hold spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11); // field 3 is index 0
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / USER_HZ))
}

/// `VmRSS` of proc(5) `status` (`VmRSS:   1234 kB`), in bytes.
pub fn parse_status_rss_bytes(status: &str) -> Option<u64> {
    parse_status_kb(status, "VmRSS:")
}

/// `RssAnon` of proc(5) `status`, in bytes: the resident memory that is not file-backed (heap,
/// stacks), without the executable's and libraries' pages.
pub fn parse_status_rss_anon_bytes(status: &str) -> Option<u64> {
    parse_status_kb(status, "RssAnon:")
}

fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let mut parts = line[key.len()..].split_ascii_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next()? {
        "kB" => Some(value * 1024),
        _ => None,
    }
}

/// Busy CPU time of the whole machine, all cores (proc(5) `stat`, first line: user, nice,
/// system, irq, softirq and steal; not idle or iowait). Softirq work (the network stack, an
/// XDP program) counts here whichever process it ran in.
pub fn parse_machine_busy(stat: &str) -> Option<Duration> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice: inside user/nice]
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7).unwrap_or(&0);
    Some(Duration::from_millis(busy * 1000 / USER_HZ))
}

/// Busy CPU time of the whole machine so far ([`parse_machine_busy`] of /proc/stat).
pub fn read_machine_busy() -> Option<Duration> {
    parse_machine_busy(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// CPU time used so far by process `pid`, all threads.
pub fn read_process_cpu(pid: &str) -> Option<Duration> {
    parse_stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Time a task has spent on a CPU: the first field of proc(5) `schedstat`, in nanoseconds
/// (`stat`'s utime and stime count 10 ms ticks).
pub fn parse_schedstat(schedstat: &str) -> Option<Duration> {
    let ns: u64 = schedstat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// CPU time so far of the live threads of `pid`, summed from their `schedstat` (nanoseconds).
/// Unlike [`read_process_cpu`] it leaves out threads that have exited, so a difference of two
/// readings is exact only for threads that lived through both (check it against
/// [`read_process_cpu`], which is exact to a 10 ms tick).
pub fn read_live_threads_cpu(pid: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        // A thread that exits between the listing and the read is left out, as the ones that
        // exited before.
        if let Some(cpu) = std::fs::read_to_string(entry.path().join("schedstat"))
            .ok()
            .and_then(|s| parse_schedstat(&s))
        {
            total += cpu;
        }
    }
    Some(total)
}

/// Resident memory of process `pid`, bytes.
pub fn read_process_rss_bytes(pid: &str) -> Option<u64> {
    parse_status_rss_bytes(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Anonymous resident memory of process `pid` (`RssAnon` of /proc/PID/status), in bytes.
pub fn read_process_rss_anon_bytes(pid: &str) -> Option<u64> {
    parse_status_rss_anon_bytes(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Open file descriptors of process `pid` (entries of /proc/PID/fd).
pub fn read_process_fds(pid: &str) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// CPU time so far of each thread of `pid` whose name starts with `prefix`, as (name, cpu),
/// sorted by name.
pub fn read_thread_cpu(pid: &str, prefix: &str) -> Vec<(String, Duration)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        let name = comm.trim_end().to_string();
        if !name.starts_with(prefix) {
            continue;
        }
        // schedstat to the nanosecond where the kernel has it, stat to the tick otherwise.
        let cpu = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| parse_schedstat(&s))
            .or_else(|| {
                std::fs::read_to_string(path.join("stat"))
                    .ok()
                    .and_then(|s| parse_stat_cpu(&s))
            });
        if let Some(cpu) = cpu {
            out.push((name, cpu));
        }
    }
    out.sort();
    out
}

/// A process's CPU time so far (all threads) and resident memory at one instant; None where
/// /proc could not be read (or there is no process to read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessSample {
    /// CPU time used so far.
    pub cpu: Option<Duration>,
    /// Resident memory, bytes.
    pub rss_bytes: Option<u64>,
}

impl ProcessSample {
    /// Reads process `pid` ("self" for this one).
    pub fn read(pid: &str) -> Self {
        Self {
            cpu: read_process_cpu(pid),
            rss_bytes: read_process_rss_bytes(pid),
        }
    }

    /// Reads process `pid` if there is one (a server PID given on the command line), else
    /// nothing.
    pub fn read_pid(pid: Option<u32>) -> Self {
        pid.map_or_else(Self::default, |p| Self::read(&p.to_string()))
    }

    /// CPU time the process used from `before` to this sample, in seconds; None when either
    /// sample lacks it.
    pub fn cpu_secs_since(&self, before: &Self) -> Option<f64> {
        let (now, then) = self.cpu.zip(before.cpu)?;
        Some(now.saturating_sub(then).as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_with_spaces_and_parens_in_the_name() {
        let stat = "1234 (sfu (worker) 1) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 \
                    4 0 12345 100000 500 18446744073709551615";
        assert_eq!(parse_stat_cpu(stat), Some(Duration::from_millis(3250)));
        assert_eq!(parse_stat_cpu("garbage"), None);
        assert_eq!(parse_stat_cpu("1 (x) S 1 2"), None);
    }

    #[test]
    fn machine_busy_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 1000 7 3 40 2 0 0\ncpu0 50 2 25 500 3 1 20 1 0 0\nintr 1\n";
        // 100 + 5 + 50 + 3 + 40 + 2 = 200 ticks.
        assert_eq!(parse_machine_busy(stat), Some(Duration::from_secs(2)));
        assert_eq!(parse_machine_busy("cpu0 1 2 3\n"), None);
        assert_eq!(parse_machine_busy("cpu  1 2 x 4 5 6 7\n"), None);
        assert!(read_machine_busy().is_some());
    }

    #[test]
    fn vm_rss_in_bytes() {
        let status = "Name:\tsfu\nVmPeak:\t  200000 kB\nVmRSS:\t   12345 kB\nThreads:\t5\n";
        assert_eq!(parse_status_rss_bytes(status), Some(12345 * 1024));
        assert_eq!(parse_status_rss_bytes("Name:\tx\n"), None);
        assert_eq!(parse_status_rss_bytes("VmRSS:\t12 MB\n"), None);
        assert_eq!(parse_status_rss_bytes("VmRSS:\tlots kB\n"), None);
        let status = "VmRSS:\t   12345 kB\nRssAnon:\t    9000 kB\nRssFile:\t    3345 kB\n";
        assert_eq!(parse_status_rss_anon_bytes(status), Some(9000 * 1024));
        assert_eq!(parse_status_rss_anon_bytes("VmRSS:\t1 kB\n"), None);
    }

    #[test]
    fn own_process_is_readable() {
        assert!(read_process_rss_bytes("self").is_some_and(|b| b > 0));
        assert!(read_process_cpu("self").is_some());
        assert!(read_process_fds("self").is_some_and(|n| n >= 3));
        let sample = ProcessSample::read("self");
        assert!(sample.cpu.is_some() && sample.rss_bytes.is_some_and(|b| b > 0));
        assert_eq!(ProcessSample::read_pid(None), ProcessSample::default());
    }

    #[test]
    fn schedstat_is_nanoseconds_on_cpu() {
        assert_eq!(
            parse_schedstat("558316771 149533608 1614\n"),
            Some(Duration::from_nanos(558_316_771))
        );
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
        // A thread of ours that has run: its CPU time read to the nanosecond (not in 10 ms
        // ticks), and part of the live threads' sum. (Other test threads of this process come
        // and go, so the sum is not compared with `stat`.)
        let (ran_tx, ran_rx) = std::sync::mpsc::channel::<()>();
        let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
        let burn = std::thread::Builder::new()
            .name("schedstat-burn".into())
            .spawn(move || {
                let t0 = std::time::Instant::now();
                let mut x = 0u64;
                while t0.elapsed() < Duration::from_millis(30) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                ran_tx.send(()).unwrap();
                let _ = end_rx.recv();
            })
            .unwrap();
        ran_rx.recv().unwrap();
        let threads = read_thread_cpu("self", "schedstat-burn");
        assert_eq!(threads.len(), 1, "{threads:?}");
        let cpu = threads[0].1;
        assert!(cpu > Duration::ZERO);
        assert_ne!(
            cpu.as_nanos() % 10_000_000,
            0,
            "{cpu:?} is a whole number of ticks"
        );
        let live = read_live_threads_cpu("self").expect("schedstat");
        assert!(live >= cpu, "{live:?} {cpu:?}");
        end_tx.send(()).unwrap();
        burn.join().unwrap();
    }

    #[test]
    fn cpu_between_samples() {
        let at = |ms: Option<u64>| ProcessSample {
            cpu: ms.map(Duration::from_millis),
            rss_bytes: None,
        };
        assert_eq!(at(Some(3500)).cpu_secs_since(&at(Some(1000))), Some(2.5));
        assert_eq!(at(Some(1000)).cpu_secs_since(&at(Some(3500))), Some(0.0));
        assert_eq!(at(None).cpu_secs_since(&at(Some(1000))), None);
        assert_eq!(at(Some(1000)).cpu_secs_since(&at(None)), None);
    }
}
