//! Reading Linux /proc: the UDP ports a process has bound, its UDP socket drops, and the
//! kernel's UDP counters (a process's CPU time, resident memory and open descriptors come from
//! `bench_support::procfs`). Parsers are pure; the `read_*` functions (and [`socket_inodes`])
//! do the file I/O.

use std::collections::HashSet;

/// Counts rows of /proc/net/udp (or udp6) whose inode is in `inodes` and whose local port lies in
/// `ports`: a process's bound UDP sockets in a port range (its relayed transport addresses).
pub fn parse_udp_ports_in_range(
    table: &str,
    inodes: &HashSet<u64>,
    ports: &std::ops::RangeInclusive<u16>,
) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|row| {
            let cols: Vec<&str> = row.split_ascii_whitespace().collect();
            let port = cols
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            let inode = cols.get(9).and_then(|i| i.parse::<u64>().ok());
            matches!((port, inode), (Some(p), Some(i)) if ports.contains(&p) && inodes.contains(&i))
        })
        .count()
}

/// UDP sockets of process `pid` bound to a port in `ports`, IPv4 and IPv6.
pub fn read_process_udp_ports(pid: &str, ports: &std::ops::RangeInclusive<u16>) -> Option<usize> {
    let inodes = socket_inodes(pid).ok()?;
    let mut total = 0;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            total += parse_udp_ports_in_range(&text, &inodes, ports);
        }
    }
    Some(total)
}

/// UDP counters of /proc/net/snmp that tell where datagrams were dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpCounters {
    /// Datagrams dropped because a socket's receive buffer was full (RcvbufErrors).
    pub rcvbuf_errors: u64,
    /// Datagrams that could not be sent for lack of send buffer (SndbufErrors).
    pub sndbuf_errors: u64,
    /// Datagrams to a port nobody listens on (NoPorts).
    pub no_ports: u64,
}

impl UdpCounters {
    /// Counter increase from `before` to `self`.
    pub fn since(&self, before: &Self) -> Self {
        Self {
            rcvbuf_errors: self.rcvbuf_errors.saturating_sub(before.rcvbuf_errors),
            sndbuf_errors: self.sndbuf_errors.saturating_sub(before.sndbuf_errors),
            no_ports: self.no_ports.saturating_sub(before.no_ports),
        }
    }
}

/// Parses the `Udp:` header and value lines of /proc/net/snmp.
pub fn parse_snmp_udp(snmp: &str) -> Option<UdpCounters> {
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = lines.next()?.split_ascii_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_ascii_whitespace().collect();
    let get = |name: &str| -> Option<u64> {
        let i = names.iter().position(|n| *n == name)?;
        values.get(i)?.parse().ok()
    };
    Some(UdpCounters {
        rcvbuf_errors: get("RcvbufErrors")?,
        sndbuf_errors: get("SndbufErrors")?,
        no_ports: get("NoPorts")?,
    })
}

/// This network namespace's UDP counters (IPv4).
pub fn read_udp_counters() -> Option<UdpCounters> {
    parse_snmp_udp(&std::fs::read_to_string("/proc/net/snmp").ok()?)
}

/// Inodes of the sockets process `pid` holds open (/proc/PID/fd links `socket:[N]`).
pub fn socket_inodes(pid: &str) -> std::io::Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue; // closed meanwhile
        };
        if let Some(inode) = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse().ok())
        {
            inodes.insert(inode);
        }
    }
    Ok(inodes)
}

/// Sums the `drops` column of /proc/net/udp (or udp6) rows whose inode is in `inodes`: datagrams
/// the kernel discarded because that socket's receive buffer was full.
pub fn parse_udp_socket_drops(table: &str, inodes: &HashSet<u64>) -> u64 {
    table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let cols: Vec<&str> = row.split_ascii_whitespace().collect();
            let inode: u64 = cols.get(9)?.parse().ok()?;
            let drops: u64 = cols.get(12)?.parse().ok()?;
            inodes.contains(&inode).then_some(drops)
        })
        .sum()
}

/// Receive-buffer drops so far on all UDP sockets of process `pid` ("self" for this one).
pub fn read_process_udp_drops(pid: &str) -> Option<u64> {
    let inodes = socket_inodes(pid).ok()?;
    let mut total = 0;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            total += parse_udp_socket_drops(&text, &inodes);
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_ports_in_range_by_inode() {
        // Ports 0xC350 = 50000 (ours, in range), 0x0D96 = 3478 (ours, listener), 0xC351 = 50001
        // (someone else's).
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
   1: 0100007F:C350 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 11 2 0000000000000000 0\n\
   2: 0100007F:0D96 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 12 2 0000000000000000 0\n\
   3: 0100007F:C351 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 13 2 0000000000000000 0\n";
        let inodes: HashSet<u64> = [11, 12].into_iter().collect();
        assert_eq!(
            parse_udp_ports_in_range(table, &inodes, &(49152..=65535)),
            1
        );
        assert_eq!(parse_udp_ports_in_range(table, &inodes, &(1..=65535)), 2);
        // IPv6 rows have a longer address before the port.
        let v6 = "header\n   0: 00000000000000000000000001000000:C350 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 11 2 0000000000000000 0\n";
        assert_eq!(parse_udp_ports_in_range(v6, &inodes, &(49152..=65535)), 1);
    }

    #[test]
    fn snmp_udp_lines() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
                    Udp: 100 3 7 90 5 1 0 0 0\n\
                    UdpLite: InDatagrams NoPorts\nUdpLite: 0 0\n";
        let c = parse_snmp_udp(snmp).unwrap();
        assert_eq!(
            c,
            UdpCounters {
                rcvbuf_errors: 5,
                sndbuf_errors: 1,
                no_ports: 3
            }
        );
        assert_eq!(c.since(&c), UdpCounters::default());
    }

    #[test]
    fn udp_table_drops_by_inode() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
   5: 0100007F:93AB 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 17\n\
   6: 0100007F:93AC 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4243 2 0000000000000000 5\n\
   7: 0100007F:93AD 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 9999 2 0000000000000000 100\n";
        let inodes: HashSet<u64> = [4242, 4243].into_iter().collect();
        assert_eq!(parse_udp_socket_drops(table, &inodes), 22);
        assert_eq!(parse_udp_socket_drops("header only", &inodes), 0);
    }
}
