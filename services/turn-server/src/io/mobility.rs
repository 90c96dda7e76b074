//! RFC 8016 mobility across workers.
//!
//! An allocation lives on the worker whose `SO_REUSEPORT` socket the kernel steered the
//! client's first 5-tuple to. After the client moves, the kernel may steer the new 5-tuple to
//! another worker, which knows nothing of the allocation. That worker does not take the
//! allocation over (its relay sockets, timers and accounting stay where they are, and the
//! data path keeps taking no lock): it hands the datagram to the owner over a bounded queue,
//! and the owner answers from its own socket bound to the same server address (all workers
//! share each listen address), so the client sees one server address throughout.
//!
//! Which worker owns the allocation is sealed into the MOBILITY-TICKET itself
//! ([`turn_proto::core::TurnCore::mobility_owner`]): the receiving worker opens the ticket
//! (a forged one names nobody), records "this 5-tuple -> that worker" in its [`Routes`] and
//! from then on hands over every datagram from that 5-tuple (ChannelData, Send, requests),
//! checking nothing else: whether the move is allowed (user, ticket freshness) is decided by
//! the owner's core. A route only decides which worker serves a 5-tuple, never who owns an
//! allocation, so a stale or spoofed route costs one queue hop and nothing else. The table
//! is bounded; routes idle for longer than any allocation can live without a Refresh are
//! evicted when room is needed.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use turn_proto::FiveTuple;

/// Client 5-tuples one worker routes to other workers; beyond (after evicting idle ones), a
/// new route is not recorded and counted (`mobility_route_table_full`).
pub const ROUTES_PER_WORKER: usize = 65_536;
/// Datagrams waiting in one worker's queue from the others; beyond, dropped and counted
/// (`mobility_forward_queue_full`).
pub const FORWARD_QUEUE: usize = 4096;

/// A client datagram handed to the worker that owns its allocation.
#[derive(Debug)]
pub struct Forwarded {
    /// The client's 5-tuple as the receiving worker saw it.
    pub tuple: FiveTuple,
    /// The datagram.
    pub data: Vec<u8>,
}

/// The table is full of live routes.
#[derive(Debug, PartialEq, Eq)]
pub struct RoutesFull;

/// "Client 5-tuple -> owning worker" for the 5-tuples of moved allocations that the kernel
/// steers to this worker.
#[derive(Debug)]
pub struct Routes {
    routes: HashMap<FiveTuple, (usize, Instant)>,
    cap: usize,
    idle: Duration,
}

impl Routes {
    /// A table of at most `cap` routes; a route unused for `idle` may be evicted.
    pub fn new(cap: usize, idle: Duration) -> Self {
        Self {
            routes: HashMap::new(),
            cap,
            idle,
        }
    }

    /// Routes held.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when no route is held (the per-datagram check is then free).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The worker `tuple` is routed to, marking the route used at `now`.
    pub fn lookup(&mut self, tuple: &FiveTuple, now: Instant) -> Option<usize> {
        if self.routes.is_empty() {
            return None;
        }
        let (owner, seen) = self.routes.get_mut(tuple)?;
        *seen = now;
        Some(*owner)
    }

    /// Routes `tuple` to `owner`. When full, evicts the routes idle for longer than `idle`
    /// first. Returns how many routes were evicted.
    pub fn insert(
        &mut self,
        tuple: FiveTuple,
        owner: usize,
        now: Instant,
    ) -> Result<usize, RoutesFull> {
        let mut evicted = 0;
        if self.routes.len() >= self.cap && !self.routes.contains_key(&tuple) {
            let before = self.routes.len();
            let idle = self.idle;
            self.routes
                .retain(|_, (_, seen)| now.saturating_duration_since(*seen) <= idle);
            evicted = before - self.routes.len();
            if self.routes.len() >= self.cap {
                return Err(RoutesFull);
            }
        }
        self.routes.insert(tuple, (owner, now));
        Ok(evicted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use turn_proto::Transport;

    fn t(port: u16) -> FiveTuple {
        FiveTuple {
            client: ([192, 0, 2, 1], port).into(),
            server: ([192, 0, 2, 2], 3478).into(),
            transport: Transport::Udp,
        }
    }

    #[test]
    fn routes_are_bounded_and_only_idle_ones_are_evicted() {
        let t0 = Instant::now();
        let mut r = Routes::new(2, Duration::from_secs(60));
        assert_eq!(r.lookup(&t(1), t0), None);
        assert_eq!(r.insert(t(1), 1, t0), Ok(0));
        assert_eq!(r.insert(t(2), 0, t0), Ok(0));
        assert_eq!(r.lookup(&t(1), t0 + Duration::from_secs(50)), Some(1));
        // Full of live routes: refused.
        assert_eq!(
            r.insert(t(3), 1, t0 + Duration::from_secs(30)),
            Err(RoutesFull)
        );
        // t(2) has been idle for 61 s, t(1) for 11 s: t(2) goes.
        assert_eq!(r.insert(t(3), 1, t0 + Duration::from_secs(61)), Ok(1));
        assert_eq!(r.len(), 2);
        assert_eq!(r.lookup(&t(2), t0), None);
        assert_eq!(r.lookup(&t(3), t0), Some(1));
        // Re-routing a known 5-tuple needs no room.
        assert_eq!(r.insert(t(1), 0, t0 + Duration::from_secs(62)), Ok(0));
        assert_eq!(r.lookup(&t(1), t0), Some(0));
    }
}
