//! Counters and latency histograms of a run (the histogram and the measurement window are
//! `bench_support`'s). No I/O, no clock.

use std::collections::BTreeMap;

use bench_support::histogram::LatencyHistogram;

/// Everything the clients count, merged into one place.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// WebSocket handshakes that succeeded.
    pub opened: u64,
    /// Connections that received `joined`.
    pub joined: u64,
    /// Clients that never got in, by reason (`http_401`, `ws_handshake`, `join_error_4009`...).
    pub failed: BTreeMap<String, u64>,
    /// Joined connections that ended before the run did.
    pub dropped: u64,
    /// Close codes of dropped connections (1006 = closed without a close frame).
    pub drop_close_codes: BTreeMap<u16, u64>,
    /// `error` frames received, by code.
    pub errors: BTreeMap<u16, u64>,
    /// `leave` answered by `left` or a close at the end of the run.
    pub left_cleanly: u64,

    /// Steady messages sent inside the window.
    pub steady_sent: u64,
    /// Steady messages sent in total (window or not).
    pub steady_sent_total: u64,
    /// Steady messages sent inside the window and received.
    pub steady_received: u64,
    /// Steady messages received that were sent outside the window.
    pub steady_received_outside: u64,
    /// Steady sends skipped because the client fell more than a second behind its schedule.
    pub steady_lagged: u64,
    /// Steady sends skipped because the client had no peer.
    pub steady_no_peer: u64,
    /// Relay latency of window steady messages (send → receive, µs).
    pub latency: LatencyHistogram,

    /// Negotiation messages sent (offers, answers, candidates, end-of-candidates).
    pub burst_sent: u64,
    /// Negotiation messages received.
    pub burst_received: u64,
    /// Relay latency of negotiation messages that carry a probe (all but end-of-candidates).
    pub burst_latency: LatencyHistogram,
    /// Clients whose negotiation with every peer finished (answer/offer and end-of-candidates).
    pub negotiated: u64,
    /// Time from "room full" (as this client saw it) to its negotiation finishing.
    pub negotiation_time: LatencyHistogram,

    /// HTTP `join` exchange (not counting the wait for a free pooled connection).
    pub http_join_time: LatencyHistogram,
    /// WebSocket connect + handshake + `join` → `joined`.
    pub ws_join_time: LatencyHistogram,
    /// `ping` → `pong` round trip.
    pub ping_rtt: LatencyHistogram,
    /// Pings sent.
    pub pings: u64,
    /// Pongs received.
    pub pongs: u64,

    /// Consistency checks and byte counts.
    pub checks: Checks,
}

/// What the clients check about every frame they receive, and the bytes they moved: counted
/// during the run and reported as they are.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Checks {
    /// Relayed messages whose probe names another sender than `from`, or from outside the room.
    pub misrouted: u64,
    /// Relayed offers/answers/candidates without a readable probe.
    pub no_probe: u64,
    /// Relayed messages from a participant this client did not know.
    pub unknown_sender: u64,
    /// Senders of such messages announced later by `participant-joined` (the relay overtook
    /// the announcement); the others were never announced.
    pub announced_late: u64,
    /// `participant-joined` for a participant already listed in this client's `joined`.
    pub announced_twice: u64,
    /// Offers received from a peer this client also offered to (both thought they came later).
    pub glare: u64,
    /// Frames that did not parse as a server frame.
    pub unparsable: u64,
    /// Frames of an unexpected type (`left` outside the end, unknown types, binary).
    pub unexpected: u64,
    /// `participant-left` received (the end of the run included, as clients leave in turn).
    pub participant_left: u64,
    /// `room-closed` received.
    pub room_closed: u64,
    /// Text bytes sent and received over the WebSockets.
    pub bytes_sent: u64,
    /// Text bytes received.
    pub bytes_received: u64,
}

impl Stats {
    /// Counts a client that did not get in.
    pub fn fail(&mut self, reason: impl Into<String>) {
        *self.failed.entry(reason.into()).or_default() += 1;
    }

    /// Number of clients that did not get in.
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_by_reason() {
        let mut s = Stats::default();
        s.fail("http_401");
        s.fail("http_401");
        s.fail("ws_handshake");
        assert_eq!(s.failed_total(), 3);
        assert_eq!(s.failed["http_401"], 2);
    }
}
