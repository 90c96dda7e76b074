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

use bytes::BytesMut;
use std::time::{Duration, Instant};

/// Most datagrams of one flight kept (a flight with a certificate is 1 to 3 datagrams).
pub const MAX_DATAGRAMS: usize = 8;
/// Least time between two resends of the flight (bounds what a repeating peer can make us send).
pub const MIN_RESEND_INTERVAL: Duration = Duration::from_millis(200);

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
    done: bool,
}

impl LastFlight {
    /// A datagram we send. Handshake datagrams are kept as the current flight.
    pub fn on_sent(&mut self, datagram: &[u8]) {
        if self.done || !is_dtls(datagram) {
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
        if self.done || !is_dtls(datagram) {
            return false;
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

    /// DTLS is up: nothing more is kept or resent (rtc repeats its final flight itself).
    pub fn finish(&mut self) {
        self.done = true;
        self.datagrams = Vec::new();
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
        f.on_sent(&hs(&[0])); // HelloVerifyRequest
        assert!(!f.on_received(t, &hs(&[1]))); // ClientHello with cookie
        f.on_sent(&hs(&[1, 2])); // flight 4, two datagrams
        f.on_sent(&hs(&[3, 4, 5]));
        assert_eq!(f.flight().count(), 2);
        // rtc's own timer sends flight 4 again: still one flight of two datagrams.
        f.on_sent(&hs(&[1, 2]));
        f.on_sent(&hs(&[3, 4, 5]));
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
        f.on_sent(&six);
        assert_eq!(f.flight().count(), 1);
        f.finish();
        assert!(!f.on_received(t + Duration::from_secs(9), &five));
        assert_eq!(f.flight().count(), 0);
    }

    /// The cookie exchange (sequence 0) is left to rtc; media and STUN are ignored.
    #[test]
    fn the_cookie_exchange_and_other_traffic_resend_nothing() {
        let t = Instant::now();
        let mut f = LastFlight::default();
        assert!(!f.on_received(t, &hs(&[0])));
        f.on_sent(&hs(&[0]));
        assert!(!f.on_received(t + Duration::from_secs(1), &hs(&[0])));
        assert!(!f.on_received(t, &[0x80, 96, 0, 1]));
        assert!(!f.on_received(t, &[0, 1, 0, 0]));
        f.on_sent(&[0x80, 96, 0, 1]);
        assert_eq!(f.flight().count(), 1);
    }

    #[test]
    fn at_most_max_datagrams_are_kept_and_no_input_panics() {
        let mut f = LastFlight::default();
        for _ in 0..3 * MAX_DATAGRAMS {
            f.on_sent(&record(20, 1, None, 5));
        }
        assert_eq!(f.flight().count(), MAX_DATAGRAMS);
        let t = Instant::now();
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
                f.on_sent(&v);
            }
        }
    }
}
