//! Bounds of the SFU core: the table of ICE-TCP connections that have not completed ICE yet,
//! capped per source IP and in total. (The per-participant data-channel message rate uses
//! [`turnkey_time::rate::TokenBucket`].)

use std::collections::HashMap;
use std::net::IpAddr;

/// Why a connection was refused a place in the [`PendingTable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PendingRefusal {
    /// Its source IP has `max_per_ip` pending connections already.
    PerIp,
    /// `max_total` connections are pending already.
    Total,
}

impl PendingRefusal {
    /// The `sfu_ice_tcp_closed_total` reason.
    pub fn reason(self) -> &'static str {
        match self {
            PendingRefusal::PerIp => "per_ip_limit",
            PendingRefusal::Total => "total_limit",
        }
    }
}

/// Connections that have not completed ICE, by source IP.
#[derive(Clone, Debug)]
pub struct PendingTable {
    max_per_ip: usize,
    max_total: usize,
    by_ip: HashMap<IpAddr, usize>,
    total: usize,
}

impl PendingTable {
    /// An empty table with these caps (each at least 1).
    pub fn new(max_per_ip: usize, max_total: usize) -> Self {
        PendingTable {
            max_per_ip: max_per_ip.max(1),
            max_total: max_total.max(1),
            by_ip: HashMap::new(),
            total: 0,
        }
    }

    /// Counts one more pending connection from `ip`, unless a cap is reached.
    pub fn try_add(&mut self, ip: IpAddr) -> Result<(), PendingRefusal> {
        if self.total >= self.max_total {
            return Err(PendingRefusal::Total);
        }
        let n = self.by_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(PendingRefusal::PerIp);
        }
        *n += 1;
        self.total += 1;
        Ok(())
    }

    /// One pending connection from `ip` completed ICE or closed.
    pub fn remove(&mut self, ip: IpAddr) {
        if let Some(n) = self.by_ip.get_mut(&ip) {
            *n -= 1;
            self.total -= 1;
            if *n == 0 {
                self.by_ip.remove(&ip);
            }
        }
    }

    /// Pending connections in total.
    pub fn total(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;

    #[test]
    fn pending_caps_per_ip_and_in_total() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        let mut t = PendingTable::new(2, 3);
        assert_eq!(t.try_add(a), Ok(()));
        assert_eq!(t.try_add(a), Ok(()));
        assert_eq!(t.try_add(a), Err(PendingRefusal::PerIp));
        assert_eq!(t.try_add(b), Ok(()));
        assert_eq!(t.try_add(c), Err(PendingRefusal::Total));
        t.remove(a);
        assert_eq!(t.total(), 2);
        assert_eq!(t.try_add(c), Ok(()));
        for ip in [a, b, c, c] {
            t.remove(ip);
        }
        assert_eq!(t.total(), 0);
        assert!(t.by_ip.is_empty());
    }
}
