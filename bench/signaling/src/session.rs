//! One simulated client as a state machine: it takes the server's frames and timer wake-ups
//! (with `now` passed in) and returns the frames to send. No I/O, no clock.
//!
//! Negotiation follows the usual mesh convention: whoever enters a room later sends the offer
//! to each participant already there. When the room is full, each client sends its offers,
//! each followed by `candidates` trickled candidates and end-of-candidates; on an offer it
//! answers the same way. After its negotiation (or once the measurement window opens) it sends
//! paced `candidate` messages (re-trickled candidates, renegotiation-sized) round-robin to its
//! peers, and pings.

use bench_support::stats::Window;

use crate::proto::{self, Incoming, ParticipantInfo, Probe, ProbeKind};
use crate::stats::Stats;

/// What one client does.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// This client's index; its identity is `c<index>`.
    pub index: u32,
    /// Participants per room (this client included).
    pub room_size: usize,
    /// Candidates trickled each way per pair, before end-of-candidates.
    pub candidates: usize,
    /// Approximate SDP size of offers and answers.
    pub sdp_bytes: usize,
    /// Approximate candidate string size of steady messages.
    pub message_bytes: usize,
    /// Steady send interval; None sends no steady traffic.
    pub send_interval_ns: Option<u64>,
    /// Ping interval.
    pub ping_interval_ns: u64,
}

#[derive(Debug)]
struct Peer {
    id: String,
    index: Option<u32>,
    /// This client entered later, so it offers.
    we_offer: bool,
    /// Offer or answer sent by us.
    sdp_sent: bool,
    /// Offer or answer received from them.
    sdp_received: bool,
    /// Their end-of-candidates received.
    eoc_received: bool,
}

impl Peer {
    fn new(info: ParticipantInfo, we_offer: bool) -> Self {
        Self {
            index: info.client_index(),
            id: info.id,
            we_offer,
            sdp_sent: false,
            sdp_received: false,
            eoc_received: false,
        }
    }

    fn negotiated(&self) -> bool {
        self.sdp_sent && self.sdp_received && self.eoc_received
    }
}

/// State of one client.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    ufrag: String,
    participant_id: Option<String>,
    peers: Vec<Peer>,
    full_at_ns: Option<u64>,
    negotiated: bool,
    seq: u64,
    next_send_ns: Option<u64>,
    next_ping_ns: Option<u64>,
    round_robin: usize,
    /// Senders of relayed messages that were never announced (so far).
    unannounced: Vec<String>,
}

impl Session {
    /// A client that has not joined yet.
    pub fn new(cfg: SessionConfig) -> Self {
        Self {
            ufrag: format!("u{:07x}", cfg.index),
            cfg,
            participant_id: None,
            peers: Vec::new(),
            full_at_ns: None,
            negotiated: false,
            seq: 0,
            next_send_ns: None,
            next_ping_ns: None,
            round_robin: 0,
            unannounced: Vec::new(),
        }
    }

    /// Whether `joined` has arrived.
    pub fn is_joined(&self) -> bool {
        self.participant_id.is_some()
    }

    /// Whether negotiation with every peer of a full room is done.
    #[cfg(test)]
    pub fn is_negotiated(&self) -> bool {
        self.negotiated
    }

    /// The next time [`Session::handle_timeout`] has work, if any.
    pub fn poll_timeout(&self, window: Option<Window>) -> Option<u64> {
        let steady_start = match (self.next_send_ns, window) {
            // Not negotiated yet: steady traffic starts with the window at the latest.
            (None, Some(w)) if self.cfg.send_interval_ns.is_some() && self.is_joined() => {
                Some(w.start_ns)
            }
            _ => None,
        };
        [self.next_send_ns, self.next_ping_ns, steady_start]
            .into_iter()
            .flatten()
            .min()
    }

    /// Handles one server frame received at `now_ns`; frames to send are appended to `out`.
    pub fn handle_frame(
        &mut self,
        frame: Incoming,
        now_ns: u64,
        window: Option<Window>,
        stats: &mut Stats,
        out: &mut Vec<String>,
    ) {
        match frame {
            Incoming::Joined {
                participant_id,
                participants,
            } => {
                if self.participant_id.is_some() {
                    stats.checks.unexpected += 1;
                    return;
                }
                self.participant_id = Some(participant_id);
                self.peers = participants
                    .into_iter()
                    .map(|p| Peer::new(p, true))
                    .collect();
                self.next_ping_ns = Some(now_ns + self.cfg.ping_interval_ns);
                self.check_full(now_ns, stats, out);
            }
            Incoming::ParticipantJoined { participant } => {
                if self.peers.iter().any(|p| p.id == participant.id) {
                    // Listed in our `joined` too: two joins raced.
                    stats.checks.announced_twice += 1;
                    return;
                }
                if let Some(at) = self.unannounced.iter().position(|id| *id == participant.id) {
                    self.unannounced.swap_remove(at);
                    stats.checks.announced_late += 1;
                }
                self.peers.push(Peer::new(participant, false));
                self.check_full(now_ns, stats, out);
            }
            Incoming::ParticipantLeft { participant_id } => {
                stats.checks.participant_left += 1;
                self.peers.retain(|p| p.id != participant_id);
            }
            Incoming::Offer { from, sdp } => {
                self.handle_sdp(true, &from, &sdp, now_ns, window, stats, out);
            }
            Incoming::Answer { from, sdp } => {
                self.handle_sdp(false, &from, &sdp, now_ns, window, stats, out);
            }
            Incoming::Candidate { from, candidate } => {
                let Some(at) = self.peer_position(&from, stats) else {
                    return;
                };
                match candidate {
                    Some(c) => {
                        self.record_probe(at, Probe::find_in(&c.candidate), now_ns, window, stats)
                    }
                    None => {
                        stats.burst_received += 1;
                        self.peers[at].eoc_received = true;
                        self.check_negotiated(now_ns, stats);
                    }
                }
            }
            Incoming::Pong { ts } => {
                stats.pongs += 1;
                if let Some(ts) = ts.and_then(|t| t.as_u64()) {
                    stats.ping_rtt.record(now_ns.saturating_sub(ts) / 1000);
                }
            }
            Incoming::Error { code } => *stats.errors.entry(code).or_default() += 1,
            Incoming::RoomClosed {} => stats.checks.room_closed += 1,
            Incoming::Left {} | Incoming::Other => stats.checks.unexpected += 1,
        }
    }

    /// Sends what is due at `now_ns`: a steady message, a ping.
    pub fn handle_timeout(
        &mut self,
        now_ns: u64,
        window: Option<Window>,
        stats: &mut Stats,
        out: &mut Vec<String>,
    ) {
        if let Some(interval) = self.cfg.send_interval_ns {
            if self.next_send_ns.is_none()
                && self.is_joined()
                && window.is_some_and(|w| now_ns >= w.start_ns)
            {
                self.next_send_ns = Some(now_ns);
            }
            if window.is_some_and(|w| now_ns >= w.end_ns) {
                self.next_send_ns = None;
            }
            if let Some(due) = self.next_send_ns.filter(|&due| due <= now_ns) {
                self.send_steady(now_ns, window, stats, out);
                let mut next = due + interval;
                // More than a second behind: skip ahead rather than burst.
                while next + 1_000_000_000 < now_ns {
                    next += interval;
                    stats.steady_lagged += 1;
                }
                self.next_send_ns = Some(next);
            }
        }
        if let Some(due) = self.next_ping_ns.filter(|&due| due <= now_ns) {
            out.push(proto::ping_frame(now_ns));
            stats.pings += 1;
            self.next_ping_ns = Some(due.max(now_ns) + self.cfg.ping_interval_ns);
        }
    }

    /// A relayed offer (`is_offer`) or answer from `from`: answered if it is an offer from a
    /// peer that entered after us.
    #[allow(clippy::too_many_arguments)]
    fn handle_sdp(
        &mut self,
        is_offer: bool,
        from: &str,
        sdp: &str,
        now_ns: u64,
        window: Option<Window>,
        stats: &mut Stats,
        out: &mut Vec<String>,
    ) {
        let Some(at) = self.peer_position(from, stats) else {
            return;
        };
        self.record_probe(at, Probe::find_in(sdp), now_ns, window, stats);
        let peer = &mut self.peers[at];
        if is_offer && peer.we_offer {
            // Both sides believe they entered later (see `announced_twice`).
            stats.checks.glare += 1;
        }
        peer.sdp_received = true;
        if !peer.we_offer && !peer.sdp_sent {
            self.send_sdp(at, false, now_ns, stats, out);
        }
        self.check_negotiated(now_ns, stats);
    }

    fn peer_position(&mut self, from: &str, stats: &mut Stats) -> Option<usize> {
        let at = self.peers.iter().position(|p| p.id == from);
        if at.is_none() {
            stats.checks.unknown_sender += 1;
            if !self.unannounced.iter().any(|id| id == from) {
                self.unannounced.push(from.to_owned());
            }
        }
        at
    }

    fn record_probe(
        &mut self,
        at: usize,
        probe: Option<Probe>,
        now_ns: u64,
        window: Option<Window>,
        stats: &mut Stats,
    ) {
        let Some(probe) = probe else {
            stats.checks.no_probe += 1;
            return;
        };
        if self.peers[at].index.is_some_and(|i| i != probe.sender) || probe.sender == self.cfg.index
        {
            stats.checks.misrouted += 1;
        }
        let latency_us = now_ns.saturating_sub(probe.sent_ns) / 1000;
        match probe.kind {
            ProbeKind::Burst => {
                stats.burst_received += 1;
                stats.burst_latency.record(latency_us);
            }
            ProbeKind::Steady if window.is_some_and(|w| w.contains(probe.sent_ns)) => {
                stats.steady_received += 1;
                stats.latency.record(latency_us);
            }
            ProbeKind::Steady => stats.steady_received_outside += 1,
        }
    }

    fn next_probe(&mut self, kind: ProbeKind, now_ns: u64) -> Probe {
        self.seq += 1;
        Probe {
            kind,
            sender: self.cfg.index,
            seq: self.seq,
            sent_ns: now_ns,
        }
    }

    fn check_full(&mut self, now_ns: u64, stats: &mut Stats, out: &mut Vec<String>) {
        if self.full_at_ns.is_some() || self.peers.len() + 1 < self.cfg.room_size {
            return;
        }
        self.full_at_ns = Some(now_ns);
        for at in 0..self.peers.len() {
            if self.peers[at].we_offer && !self.peers[at].sdp_sent {
                self.send_sdp(at, true, now_ns, stats, out);
            }
        }
    }

    /// An offer or answer to peer `at`, its candidates and end-of-candidates.
    fn send_sdp(
        &mut self,
        at: usize,
        offer: bool,
        now_ns: u64,
        stats: &mut Stats,
        out: &mut Vec<String>,
    ) {
        let probe = self.next_probe(ProbeKind::Burst, now_ns);
        let sdp = proto::session_description(offer, &probe, &self.ufrag, self.cfg.sdp_bytes);
        let to = self.peers[at].id.clone();
        out.push(proto::sdp_frame(offer, &to, &sdp));
        for n in 0..self.cfg.candidates {
            let probe = self.next_probe(ProbeKind::Burst, now_ns);
            let line = proto::candidate_line(n, &probe, &self.ufrag, 0);
            out.push(proto::candidate_frame(&to, Some(&line), (n % 3) as u32));
        }
        out.push(proto::candidate_frame(&to, None, 0));
        stats.burst_sent += self.cfg.candidates as u64 + 2;
        self.peers[at].sdp_sent = true;
    }

    fn check_negotiated(&mut self, now_ns: u64, stats: &mut Stats) {
        if self.negotiated || self.peers.len() + 1 < self.cfg.room_size {
            return;
        }
        if self.peers.iter().all(Peer::negotiated) {
            self.negotiated = true;
            stats.negotiated += 1;
            if let Some(full) = self.full_at_ns {
                stats
                    .negotiation_time
                    .record(now_ns.saturating_sub(full) / 1000);
            }
            if let (Some(interval), None) = (self.cfg.send_interval_ns, self.next_send_ns) {
                // Spread the clients' phases over the interval (golden-ratio sequence).
                let phase = (f64::from(self.cfg.index) * 0.618_033_988_75).fract();
                self.next_send_ns = Some(now_ns + (interval as f64 * phase) as u64);
            }
        }
    }

    fn send_steady(
        &mut self,
        now_ns: u64,
        window: Option<Window>,
        stats: &mut Stats,
        out: &mut Vec<String>,
    ) {
        if self.peers.is_empty() {
            stats.steady_no_peer += 1;
            return;
        }
        self.round_robin = (self.round_robin + 1) % self.peers.len();
        let probe = self.next_probe(ProbeKind::Steady, now_ns);
        // The frame's JSON around the candidate string is ~90 bytes.
        let line = proto::candidate_line(
            self.seq as usize,
            &probe,
            &self.ufrag,
            self.cfg.message_bytes.saturating_sub(90),
        );
        let to = &self.peers[self.round_robin].id;
        out.push(proto::candidate_frame(to, Some(&line), 0));
        stats.steady_sent_total += 1;
        if window.is_some_and(|w| w.contains(now_ns)) {
            stats.steady_sent += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn cfg(index: u32) -> SessionConfig {
        SessionConfig {
            index,
            room_size: 4,
            candidates: 8,
            sdp_bytes: 3000,
            message_bytes: 300,
            send_interval_ns: Some(100 * MS),
            ping_interval_ns: 1000 * MS,
        }
    }

    /// An in-memory signaling server for one room: assigns ids, announces, relays with a fixed
    /// delay of 0 (the clock is advanced by the test).
    struct Room {
        sessions: Vec<Session>,
        ids: Vec<String>,
        stats: Stats,
        /// (recipient, frame) queued for delivery.
        queue: Vec<(usize, String)>,
    }

    impl Room {
        fn new() -> Self {
            Self {
                sessions: Vec::new(),
                ids: Vec::new(),
                stats: Stats::default(),
                queue: Vec::new(),
            }
        }

        fn server_frame(&mut self, to: usize, frame: serde_json::Value) {
            self.queue.push((to, frame.to_string()));
        }

        fn join(&mut self, now: u64) {
            let i = self.sessions.len();
            self.sessions.push(Session::new(cfg(i as u32 + 100)));
            self.ids.push(format!("p{i}"));
            let others: Vec<_> = (0..i)
                .map(
                    |j| serde_json::json!({"id": self.ids[j], "identity": format!("c{}", j + 100)}),
                )
                .collect();
            self.server_frame(
                i,
                serde_json::json!({"type": "joined", "participantId": self.ids[i], "participants": others}),
            );
            for j in 0..i {
                self.server_frame(
                    j,
                    serde_json::json!({"type": "participant-joined",
                        "participant": {"id": self.ids[i], "identity": format!("c{}", i + 100)}}),
                );
            }
            self.deliver(now, None);
        }

        /// Delivers queued frames until none are left, relaying what clients send.
        fn deliver(&mut self, now: u64, window: Option<Window>) -> usize {
            let mut relayed = 0;
            while !self.queue.is_empty() {
                for (to, text) in std::mem::take(&mut self.queue) {
                    let mut out = Vec::new();
                    let frame = Incoming::parse(&text).unwrap();
                    self.sessions[to].handle_frame(frame, now, window, &mut self.stats, &mut out);
                    self.route(to, out, &mut relayed);
                }
            }
            relayed
        }

        fn route(&mut self, from: usize, out: Vec<String>, relayed: &mut usize) {
            for text in out {
                let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
                if v["type"] == "ping" {
                    self.queue.push((
                        from,
                        serde_json::json!({"type": "pong", "ts": v["ts"]}).to_string(),
                    ));
                    continue;
                }
                let to = v["to"].as_str().unwrap().to_owned();
                let to = self.ids.iter().position(|id| *id == to).unwrap();
                let obj = v.as_object_mut().unwrap();
                obj.remove("to");
                obj.insert("from".into(), self.ids[from].clone().into());
                self.queue.push((to, v.to_string()));
                *relayed += 1;
            }
        }

        fn tick(&mut self, now: u64, window: Option<Window>) -> usize {
            let mut relayed = 0;
            for i in 0..self.sessions.len() {
                let mut out = Vec::new();
                if self.sessions[i]
                    .poll_timeout(window)
                    .is_some_and(|t| t <= now)
                {
                    self.sessions[i].handle_timeout(now, window, &mut self.stats, &mut out);
                }
                self.route(i, out, &mut relayed);
            }
            relayed + self.deliver(now, window)
        }
    }

    #[test]
    fn full_room_negotiates_every_pair() {
        let mut room = Room::new();
        for k in 0..3 {
            room.join(k * MS);
            assert_eq!(room.stats.burst_sent, 0, "nothing before the room is full");
        }
        room.join(3 * MS);
        // 6 pairs × 2 directions × (sdp + 8 candidates + end-of-candidates).
        assert_eq!(room.stats.burst_sent, 6 * 2 * 10);
        assert_eq!(room.stats.burst_received, 6 * 2 * 10);
        assert_eq!(room.stats.burst_latency.count(), 6 * 2 * 9);
        assert_eq!(room.stats.negotiated, 4);
        assert!(room.sessions.iter().all(Session::is_negotiated));
        assert_eq!(
            (
                room.stats.checks.misrouted,
                room.stats.checks.no_probe,
                room.stats.checks.unknown_sender
            ),
            (0, 0, 0)
        );
        // The last to join saw the room full at 3 ms and finished at once; the latency of
        // every message is 0 because the test relays instantly.
        assert_eq!(room.stats.negotiation_time.max_us(), Some(0));
    }

    #[test]
    fn steady_traffic_is_paced_and_counted_in_the_window() {
        let mut room = Room::new();
        for k in 0..4 {
            room.join(k * MS);
        }
        let window = Window {
            start_ns: 1000 * MS,
            end_ns: 2000 * MS,
        };
        // 0.5 s warm-up, 1 s window, 0.5 s after it, in 1 ms steps with a 2 ms relay delay
        // simulated by ticking before delivering.
        let mut now = 500 * MS;
        while now < 2500 * MS {
            room.tick(now, Some(window));
            now += MS;
        }
        let s = &room.stats;
        // 4 clients × 10 msgs/s × 1 s.
        assert_eq!(s.steady_sent, 40);
        assert_eq!(s.steady_received, 40);
        assert!(s.steady_sent_total > 40 && s.steady_received_outside > 0);
        assert_eq!(s.latency.count(), 40);
        assert_eq!(s.steady_lagged, 0);
        // Pings every second from joining on: at 1000, 1001, 1002, 1003 ms and 2000..2003.
        assert_eq!((s.pings, s.pongs), (8, 8));
        assert_eq!(s.ping_rtt.max_us(), Some(0));
        assert_eq!(s.checks.misrouted, 0);
    }

    #[test]
    fn window_starts_steady_traffic_without_negotiation() {
        let mut s = Session::new(cfg(7));
        let mut stats = Stats::default();
        let mut out = Vec::new();
        let window = Window {
            start_ns: 50 * MS,
            end_ns: 150 * MS,
        };
        assert_eq!(s.poll_timeout(Some(window)), None, "not joined");
        let joined = Incoming::parse(
            r#"{"type":"joined","participantId":"me","participants":[{"id":"a","identity":"c8"}]}"#,
        )
        .unwrap();
        s.handle_frame(joined, 0, Some(window), &mut stats, &mut out);
        assert!(out.is_empty() && !s.is_negotiated());
        assert_eq!(s.poll_timeout(Some(window)), Some(50 * MS));
        s.handle_timeout(50 * MS, Some(window), &mut stats, &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].contains(r#""to":"a""#) && out[0].contains("x-tkb s7."));
        assert!((250..=350).contains(&out[0].len()), "{}", out[0].len());
        assert_eq!(s.poll_timeout(Some(window)), Some(150 * MS));
        // Window over: no more steady sends.
        s.handle_timeout(150 * MS, Some(window), &mut stats, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(stats.steady_sent, 1);
    }

    #[test]
    fn misrouted_and_unknown_senders_are_counted() {
        let mut s = Session::new(cfg(1));
        let mut stats = Stats::default();
        let mut out = Vec::new();
        let frames = [
            r#"{"type":"joined","participantId":"me","participants":[{"id":"a","identity":"c2"}]}"#
                .to_owned(),
            // Probe says sender 3 but `from` is a (client 2).
            proto::candidate_frame("me", Some("candidate:1 x-tkb s3.1.0"), 0)
                .replace(r#""to":"me""#, r#""from":"a""#),
            r#"{"type":"offer","from":"zz","sdp":"v=0"}"#.to_owned(),
            r#"{"type":"answer","from":"a","sdp":"v=0"}"#.to_owned(),
            r#"{"type":"error","code":4004,"message":"no"}"#.to_owned(),
        ];
        for f in frames {
            s.handle_frame(Incoming::parse(&f).unwrap(), 0, None, &mut stats, &mut out);
        }
        assert_eq!(stats.checks.misrouted, 1);
        assert_eq!(stats.steady_received_outside, 1);
        assert_eq!(stats.checks.unknown_sender, 1);
        assert_eq!(stats.checks.no_probe, 1);
        assert_eq!(stats.errors.get(&4004), Some(&1));
    }

    #[test]
    fn join_races_are_counted() {
        let mut s = Session::new(cfg(1));
        let mut stats = Stats::default();
        let mut out = Vec::new();
        let frames = [
            // b is listed in our joined and announced again: a join race.
            r#"{"type":"joined","participantId":"me","participants":[{"id":"a","identity":"c0"},{"id":"b","identity":"c2"}]}"#,
            r#"{"type":"participant-joined","participant":{"id":"b","identity":"c2"}}"#,
            // x's offer overtakes its announcement.
            r#"{"type":"offer","from":"x","sdp":"v=0\r\na=x-tkb:b3.1.0\r\n"}"#,
            r#"{"type":"participant-joined","participant":{"id":"x","identity":"c3"}}"#,
            // b offers although we offered to b (we listed it in joined): glare.
            r#"{"type":"offer","from":"b","sdp":"v=0\r\na=x-tkb:b2.1.0\r\n"}"#,
        ];
        for f in frames {
            s.handle_frame(Incoming::parse(f).unwrap(), 0, None, &mut stats, &mut out);
        }
        assert_eq!(
            (
                stats.checks.announced_twice,
                stats.checks.unknown_sender,
                stats.checks.announced_late,
                stats.checks.glare
            ),
            (1, 1, 1, 1)
        );
        // The room filled with x: offers to a and b (listed in joined), none to x.
        let offers: Vec<_> = out
            .iter()
            .filter(|f| f.contains(r#""type":"offer""#))
            .collect();
        assert_eq!(offers.len(), 2);
        assert!(!out.iter().any(|f| f.contains(r#""type":"answer""#)));
    }
}
