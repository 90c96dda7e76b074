//! RFC 6347 §4.2.4 retransmission of the last DTLS handshake flight, done beside webrtc-rs
//! `rtc` 0.21 because its handshake state machine does not do it while it waits for the peer's
//! next flight.
//!
//! The defect (rtc-dtls 0.21.1, `src/handshaker.rs`, `DTLSConn::wait`): when any handshake
//! record arrives in state `Waiting`, it sets `current_retransmit_timer = None` *before* parsing
//! the peer's flight. If the record is only the peer's retransmission of its previous flight
//! (its copy of our flight was lost), parsing yields "incomplete" and the state stays `Waiting`
//! with no timer and without re-sending our flight, as §4.2.4 asks. Both ends then wait for the
//! other until the retransmission budget runs out. Both DTLS roles hit it: a lost server
//! flight 4 (the client's flight-3 retransmission, sent on a timer armed a moment earlier,
//! arrives first and disarms the server's timer), and a lost client flight 5 (the server's
//! flight-4 retransmission disarms the client's). On a path with a little loss this left
//! about 1 in 10 peer connections of a loaded bench without DTLS.
//!
//! [`LastFlight`] watches the datagrams of one peer connection until DTLS is up: it keeps the
//! handshake datagrams we sent since the peer last made progress, and when the peer repeats a
//! handshake message it already sent (an epoch-0 `message_seq` not above the highest seen),
//! it says so, and the caller sends the kept flight again. Resends are spaced by
//! [`MIN_RESEND_INTERVAL`]; at most [`MAX_DATAGRAMS`] datagrams are kept. Pure: bytes and `now`
//! in, a decision out.
//!
//! The same defect also disarms the timer of the end that waits for the peer's next flight
//! whenever a stale handshake record arrives (a repeated earlier flight). If that end's flight
//! (or the peer's answer) is then lost, nothing is ever sent again. So [`LastFlight`] also keeps
//! its own retransmission timer while we wait for the peer (RFC 6347 §4.2.4.1: 1 s, doubling,
//! at most [`MAX_TIMER_RESENDS`] times): [`LastFlight::poll_timeout`] and
//! [`LastFlight::handle_timeout`].

use bytes::BytesMut;
use std::time::{Duration, Instant};

/// Most datagrams of one flight kept (a flight with a certificate is 1 to 3 datagrams).
pub const MAX_DATAGRAMS: usize = 8;
/// Least time between two resends of the flight (bounds what a repeating peer can make us send).
pub const MIN_RESEND_INTERVAL: Duration = Duration::from_millis(200);
/// How long the flight stays after DTLS is up on our side. The end that sends the last flight
/// (the server's ChangeCipherSpec and Finished) is up as soon as it has sent it; if that flight
/// is lost, the peer repeats its own flight 5 and must get the last flight again (RFC 6347
/// §4.2.4), which rtc does not do either.
pub const LINGER: Duration = Duration::from_secs(15);
/// First retransmission timeout of our own timer (RFC 6347 §4.2.4.1).
pub const INITIAL_RTO: Duration = Duration::from_secs(1);
/// Longest retransmission timeout.
const MAX_RTO: Duration = Duration::from_secs(8);
/// Timer resends of one flight at most.
pub const MAX_TIMER_RESENDS: u32 = 6;

/// DTLS record content type `handshake` (RFC 6347 §4.1).
const HANDSHAKE: u8 = 22;
/// DTLS record header: type, version, epoch, sequence number, length (RFC 6347 §4.1).
const RECORD_HEADER: usize = 13;

/// True if `b` is a DTLS record by its first byte (RFC 7983 §7: 20..=63).
pub fn is_dtls(b: &[u8]) -> bool {
    matches!(b.first(), Some(20..=63))
}

/// The `message_seq` of every epoch-0 handshake message in the datagram `b` (RFC 6347 §4.2.2),
/// in order. Records of other epochs are encrypted and skipped; a truncated record ends the walk.
pub fn handshake_seqs(b: &[u8]) -> impl Iterator<Item = u16> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || loop {
        let header = b.get(at..at + RECORD_HEADER)?;
        let len = usize::from(u16::from_be_bytes([header[11], header[12]]));
        let body = b.get(at + RECORD_HEADER..at + RECORD_HEADER + len)?;
        at += RECORD_HEADER + len;
        let epoch = u16::from_be_bytes([header[3], header[4]]);
        if header[0] == HANDSHAKE && epoch == 0 {
            if let Some(seq) = body.get(4..6) {
                return Some(u16::from_be_bytes([seq[0], seq[1]]));
            }
        }
    })
}

/// The last flight of one peer connection's DTLS handshake, kept until the handshake is done.
#[derive(Debug, Default)]
pub struct LastFlight {
    datagrams: Vec<BytesMut>,
    /// `message_seq` of the first epoch-0 handshake message of the kept flight.
    first_seq: Option<u16>,
    /// Highest `message_seq` the peer sent so far.
    peer_seq: Option<u16>,
    /// The peer sent a new message since we last sent: our next datagram starts a new flight.
    peer_progressed: bool,
    last_resend: Option<Instant>,
    /// When DTLS came up on our side: nothing more is kept from then on, and the kept flight is
    /// dropped [`LINGER`] later.
    done: Option<Instant>,
    /// Our timer: when the kept flight goes again unless the peer moves on, the current
    /// timeout, and the resends it made of this flight.
    next_resend: Option<Instant>,
    rto: Duration,
    timer_resends: u32,
}

impl LastFlight {
    /// A datagram we send at `now`. Handshake datagrams are kept as the current flight.
    pub fn on_sent(&mut self, now: Instant, datagram: &[u8]) {
        if !is_dtls(datagram) {
            return;
        }
        // Once up, only what still belongs to the handshake (rtc may report the connection up
        // before it hands over its last flight: ChangeCipherSpec, then the encrypted
        // Finished); application data and alerts are not kept.
        if self.done.is_some() && !matches!(datagram.first().copied(), Some(20 | HANDSHAKE)) {
            return;
        }
        let seq = handshake_seqs(datagram).next();
        // A new flight once the peer moved on; our own timer's retransmission of the flight
        // starts it again.
        if self.peer_progressed || (seq.is_some() && seq == self.first_seq) {
            self.datagrams.clear();
            self.first_seq = None;
            self.peer_progressed = false;
        }
        if self.datagrams.is_empty() && self.done.is_none() {
            // A new flight (or rtc's own retransmission of it): our timer starts over.
            self.rto = INITIAL_RTO;
            self.timer_resends = 0;
            self.next_resend = Some(now + INITIAL_RTO);
        }
        if self.first_seq.is_none() {
            self.first_seq = seq;
        }
        if self.datagrams.len() < MAX_DATAGRAMS {
            self.datagrams.push(BytesMut::from(datagram));
        }
    }

    /// A datagram from the peer. True if it repeats a handshake message the peer already sent
    /// (it lost our flight) and the kept flight is to be sent again now.
    #[must_use]
    pub fn on_received(&mut self, now: Instant, datagram: &[u8]) -> bool {
        if !is_dtls(datagram) {
            return false;
        }
        if let Some(done) = self.done {
            if now.saturating_duration_since(done) >= LINGER {
                self.datagrams = Vec::new();
                return false;
            }
        }
        let mut repeated = false;
        for seq in handshake_seqs(datagram) {
            match self.peer_seq {
                // Sequence 0 (the first ClientHello and the HelloVerifyRequest) is the stateless
                // cookie exchange, which rtc repeats on its own.
                Some(max) if seq <= max => repeated |= seq > 0,
                _ => {
                    self.peer_seq = Some(seq);
                    self.peer_progressed = true;
                    // The peer has our flight: nothing to resend until we send the next.
                    self.next_resend = None;
                }
            }
        }
        if !repeated || self.datagrams.is_empty() {
            return false;
        }
        if self
            .last_resend
            .is_some_and(|t| now.saturating_duration_since(t) < MIN_RESEND_INTERVAL)
        {
            return false;
        }
        self.last_resend = Some(now);
        true
    }

    /// The kept flight, to be sent again as it was.
    pub fn flight(&self) -> impl Iterator<Item = &BytesMut> {
        self.datagrams.iter()
    }

    /// DTLS is up on our side at `now`: nothing more is kept, and the kept flight is still
    /// resent for [`LINGER`] when the peer repeats its own (it may not have our last flight).
    pub fn finish(&mut self, now: Instant) {
        if self.done.is_none() {
            self.done = Some(now);
        }
        self.next_resend = None;
    }

    /// When [`Self::handle_timeout`] must next be called (none while nothing waits).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_resend
    }

    /// Our timer: true if the kept flight is to be sent again now (the peer has not moved on
    /// within the timeout); the timeout doubles each time.
    #[must_use]
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        let Some(due) = self.next_resend else {
            return false;
        };
        if now < due {
            return false;
        }
        if self.done.is_some()
            || self.peer_progressed
            || self.datagrams.is_empty()
            || self.timer_resends >= MAX_TIMER_RESENDS
        {
            self.next_resend = None;
            return false;
        }
        self.timer_resends += 1;
        self.rto = (self.rto * 2).min(MAX_RTO);
        self.next_resend = Some(now + self.rto);
        self.last_resend = Some(now);
        true
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;

    /// One DTLS record: `epoch`, content type, and a handshake body with `seq` if given.
    fn record(content: u8, epoch: u16, seq: Option<u16>, pad: usize) -> Vec<u8> {
        let mut body = Vec::new();
        if let Some(s) = seq {
            body.extend_from_slice(&[1, 0, 0, 0]);
            body.extend_from_slice(&s.to_be_bytes());
            body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        }
        body.resize(body.len() + pad, 0xab);
        let mut r = vec![content, 0xfe, 0xfd];
        r.extend_from_slice(&epoch.to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0, 0, 7]);
        r.extend_from_slice(&(body.len() as u16).to_be_bytes());
        r.extend_from_slice(&body);
        r
    }

    fn hs(seqs: &[u16]) -> Vec<u8> {
        seqs.iter()
            .flat_map(|&s| record(HANDSHAKE, 0, Some(s), 10))
            .collect()
    }

    #[test]
    fn sequence_numbers_of_epoch_0_handshake_records_are_read() {
        let mut d = hs(&[1, 2]);
        d.extend(record(20, 0, None, 1));
        d.extend(record(HANDSHAKE, 1, None, 40));
        d.extend(hs(&[3]));
        assert_eq!(handshake_seqs(&d).collect::<Vec<_>>(), [1, 2, 3]);
        // Truncated: the walk stops at the broken record.
        assert_eq!(
            handshake_seqs(&d[..d.len() - 3]).collect::<Vec<_>>(),
            [1, 2]
        );
        assert!(is_dtls(&d) && !is_dtls(&[0, 1]) && !is_dtls(&[0x80]) && !is_dtls(&[]));
    }

    /// The server's flight 4 is lost; the client's retransmitted flight 3 makes it go again.
    #[test]
    fn a_repeated_peer_flight_resends_ours() {
        let t = Instant::now();
        let mut f = LastFlight::default();
        assert!(!f.on_received(t, &hs(&[0]))); // ClientHello
        f.on_sent(t, &hs(&[0])); // HelloVerifyRequest
        assert!(!f.on_received(t, &hs(&[1]))); // ClientHello with cookie
        f.on_sent(t, &hs(&[1, 2])); // flight 4, two datagrams
        f.on_sent(t, &hs(&[3, 4, 5]));
        assert_eq!(f.flight().count(), 2);
        // rtc's own timer sends flight 4 again: still one flight of two datagrams.
        f.on_sent(t, &hs(&[1, 2]));
        f.on_sent(t, &hs(&[3, 4, 5]));
        assert_eq!(f.flight().count(), 2);
        // The client repeats its flight 3.
        assert!(f.on_received(t, &hs(&[1])));
        let sent: Vec<u8> = f.flight().flat_map(|d| d.to_vec()).collect();
        assert_eq!(handshake_seqs(&sent).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        // Spaced: not again at once, again after the interval.
        assert!(!f.on_received(t + Duration::from_millis(10), &hs(&[1])));
        assert!(f.on_received(t + MIN_RESEND_INTERVAL, &hs(&[1])));
        // The client's flight 5 is new: the next datagram we send starts a new flight.
        let mut five = hs(&[2, 3, 4]);
        five.extend(record(20, 0, None, 1));
        five.extend(record(HANDSHAKE, 1, None, 40));
        assert!(!f.on_received(t + Duration::from_secs(1), &five));
        let mut six = record(20, 0, None, 1);
        six.extend(record(HANDSHAKE, 1, None, 40));
        f.on_sent(t, &six);
        assert_eq!(f.flight().count(), 1);
        // Up on our side once flight 6 is sent; the client did not get it and repeats flight 5:
        // flight 6 goes again. Later datagrams (application data) are not kept.
        let up = t + Duration::from_secs(2);
        f.finish(up);
        f.on_sent(t, &record(23, 1, None, 40));
        f.on_sent(t, &record(21, 1, None, 2));
        assert!(f.on_received(up + Duration::from_secs(1), &five));
        let again: Vec<u8> = f.flight().flat_map(|d| d.to_vec()).collect();
        assert_eq!(again, six);
        // Past the linger time the flight is gone.
        assert!(!f.on_received(up + LINGER, &five));
        assert_eq!(f.flight().count(), 0);
    }

    /// rtc may say the connection is up before it hands over its last flight: that flight is
    /// still kept and resent when the peer repeats flight 5.
    #[test]
    fn a_last_flight_sent_after_the_connection_is_up_is_kept() {
        let t = Instant::now();
        let mut f = LastFlight::default();
        f.on_sent(t, &hs(&[1, 2, 3]));
        let five = hs(&[2, 3, 4]);
        assert!(!f.on_received(t, &five));
        f.finish(t);
        let mut six = record(20, 0, None, 1);
        six.extend(record(HANDSHAKE, 1, None, 40));
        f.on_sent(t, &six);
        assert!(f.on_received(t + Duration::from_secs(1), &five));
        let again: Vec<u8> = f.flight().flat_map(|d| d.to_vec()).collect();
        assert_eq!(again, six);
    }

    /// Waiting for the peer's next flight, our own timer resends ours (1 s, 2 s, 4 s...) until
    /// the peer moves on, and never after DTLS is up.
    #[test]
    fn our_timer_resends_the_flight_until_the_peer_moves_on() {
        let t = Instant::now();
        let mut f = LastFlight::default();
        assert_eq!(f.poll_timeout(), None);
        f.on_sent(t, &hs(&[2, 3, 4]));
        assert_eq!(f.poll_timeout(), Some(t + INITIAL_RTO));
        assert!(!f.handle_timeout(t + Duration::from_millis(999)));
        assert!(f.handle_timeout(t + INITIAL_RTO));
        assert_eq!(f.poll_timeout(), Some(t + INITIAL_RTO * 3));
        assert!(f.handle_timeout(t + INITIAL_RTO * 3));
        // The peer answers with something new: the timer stops.
        assert!(!f.on_received(t + INITIAL_RTO * 4, &hs(&[5])));
        assert_eq!(f.poll_timeout(), None);
        assert!(!f.handle_timeout(t + Duration::from_secs(60)));
        // A new flight arms it again; DTLS up disarms it.
        f.on_sent(t + INITIAL_RTO * 4, &hs(&[6]));
        assert!(f.poll_timeout().is_some());
        f.finish(t + INITIAL_RTO * 5);
        assert_eq!(f.poll_timeout(), None);
        // At most MAX_TIMER_RESENDS resends of one flight.
        let mut g = LastFlight::default();
        g.on_sent(t, &hs(&[2]));
        let mut n = 0;
        while let Some(at) = g.poll_timeout() {
            n += u32::from(g.handle_timeout(at));
        }
        assert_eq!(n, MAX_TIMER_RESENDS);
    }

    /// The cookie exchange (sequence 0) is left to rtc; media and STUN are ignored.
    #[test]
    fn the_cookie_exchange_and_other_traffic_resend_nothing() {
        let t = Instant::now();
        let mut f = LastFlight::default();
        assert!(!f.on_received(t, &hs(&[0])));
        f.on_sent(t, &hs(&[0]));
        assert!(!f.on_received(t + Duration::from_secs(1), &hs(&[0])));
        assert!(!f.on_received(t, &[0x80, 96, 0, 1]));
        assert!(!f.on_received(t, &[0, 1, 0, 0]));
        f.on_sent(t, &[0x80, 96, 0, 1]);
        assert_eq!(f.flight().count(), 1);
    }

    #[test]
    fn at_most_max_datagrams_are_kept_and_no_input_panics() {
        let t = Instant::now();
        let mut f = LastFlight::default();
        for _ in 0..3 * MAX_DATAGRAMS {
            f.on_sent(t, &record(20, 1, None, 5));
        }
        assert_eq!(f.flight().count(), MAX_DATAGRAMS);
        let mut seed = 7u32;
        for len in 0..64 {
            for _ in 0..200 {
                let mut v = vec![HANDSHAKE, 0xfe, 0xfd, 0, 0];
                while v.len() < len {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    v.push((seed >> 16) as u8);
                }
                v.truncate(len);
                let _ = handshake_seqs(&v).count();
                let _ = f.on_received(t, &v);
                f.on_sent(t, &v);
            }
        }
    }
}
