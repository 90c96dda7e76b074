//! RFC 8016 mobility: a client that asked for it in its Allocate (an empty MOBILITY-TICKET)
//! gets a ticket in every Allocate and Refresh success; after its address changed it sends a
//! Refresh with the ticket from the new 5-tuple, and the allocation (relayed addresses,
//! permissions, channels) moves there.
//!
//! The ticket is sealed by the server (SIV-style: an HMAC-SHA256 tag over the plaintext, the
//! plaintext XORed with a keystream derived from the tag), so a client can neither read nor
//! forge nor modify one. It names the allocation, the worker that owns it (the I/O layer routes
//! a Refresh that lands on another worker by it, without any shared table) and a serial: each
//! ticket issued is new, and a move accepts only tickets issued since the allocation's last
//! move, so a ticket captured before a move cannot move the allocation again. A ticket alone
//! moves nothing: the Refresh must also pass the long-term credential check as the
//! allocation's user (441 otherwise), with a nonce bound to the new 5-tuple, so a captured
//! Refresh replayed from a third address is stale (438).
//!
//! Local policy: mobility is for UDP allocations only. A TCP/TLS allocation ends with its
//! connection (RFC 8656 §5) and a DTLS one with its association, so a ticket could never find
//! it after a move; such Allocates asking for a ticket get 405 Mobility Forbidden, as does any
//! ticket when mobility is off (RFC 8016 §3.1, §3.2).
//!
//! Make before break (RFC 8016 §3.2): after a move the old 5-tuple keeps working, and data
//! from peers keeps going there, until the client is heard on the new one (a Send indication,
//! ChannelData or another request); then the old 5-tuple is forgotten (437 from then on).

use super::{MessageBuilder, TurnCore};
use crate::auth::AuthOk;
use crate::stats::MobilityRefusal;
use crate::FiveTuple;
use base64::Engine;
use ring::hmac;
use rtc_stun::attributes::AttrType;
use rtc_stun::message::Message;
use subtle::ConstantTimeEq;

/// MOBILITY-TICKET (RFC 8016 §3.4); comprehension-optional.
pub const ATTR_MOBILITY_TICKET: AttrType = AttrType(0x8030);

/// Bytes of a sealed ticket before base64: a 12-byte tag and 12 bytes of sealed plaintext.
const SEALED_BYTES: usize = 24;
/// Characters of a ticket on the wire (base64url without padding of [`SEALED_BYTES`]). A
/// printable ticket of at most 32 characters is what coturn's `turnutils_uclient -M` can carry.
pub const TICKET_CHARS: usize = 32;
/// Allocation ids are sealed in 48 bits (ids count up from 1; 2^48 is never reached).
const ID_MASK: u64 = (1 << 48) - 1;

/// What a ticket says, once opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The allocation id (its low 48 bits).
    pub allocation: u64,
    /// The worker whose core owns the allocation.
    pub worker: u16,
    /// The allocation's ticket count when this one was issued.
    pub serial: u32,
}

/// Why a ticket does not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    /// Not [`TICKET_CHARS`] base64url characters.
    #[error("malformed mobility ticket")]
    Malformed,
    /// The tag does not match: forged, modified, or sealed under another key (a restart).
    #[error("mobility ticket not sealed by this server")]
    Forged,
}

/// The key that seals and opens mobility tickets: one per server process, shared by every
/// worker (a ticket issued by one worker is routed by another).
pub struct TicketKey {
    tag: hmac::Key,
    stream: hmac::Key,
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKey(<redacted>)")
    }
}

impl TicketKey {
    /// A key from 32 secret bytes (the caller draws them; a protocol crate has no RNG). Two
    /// sub-keys are derived, one for the tag and one for the keystream.
    pub fn new(secret: [u8; 32]) -> Self {
        let root = hmac::Key::new(hmac::HMAC_SHA256, &secret);
        let derive =
            |label: &[u8]| hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&root, label).as_ref());
        Self {
            tag: derive(b"turnkey mobility ticket tag"),
            stream: derive(b"turnkey mobility ticket stream"),
        }
    }

    fn tag_of(&self, plain: &[u8; 12]) -> [u8; 12] {
        let mut t = [0u8; 12];
        t.copy_from_slice(&hmac::sign(&self.tag, plain).as_ref()[..12]);
        t
    }

    fn xor_stream(&self, tag: &[u8; 12], data: &mut [u8; 12]) {
        let ks = hmac::sign(&self.stream, tag);
        for (d, k) in data.iter_mut().zip(ks.as_ref()) {
            *d ^= k;
        }
    }

    /// Seals `t` into [`TICKET_CHARS`] printable bytes.
    pub fn seal(&self, t: &Ticket) -> Vec<u8> {
        let mut plain = [0u8; 12];
        plain[..6].copy_from_slice(&(t.allocation & ID_MASK).to_be_bytes()[2..]);
        plain[6..8].copy_from_slice(&t.worker.to_be_bytes());
        plain[8..].copy_from_slice(&t.serial.to_be_bytes());
        let tag = self.tag_of(&plain);
        self.xor_stream(&tag, &mut plain);
        let mut sealed = [0u8; SEALED_BYTES];
        sealed[..12].copy_from_slice(&tag);
        sealed[12..].copy_from_slice(&plain);
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sealed)
            .into_bytes()
    }

    /// Opens a ticket sealed by [`seal`](Self::seal) under this key (tag compared in
    /// constant time).
    pub fn open(&self, v: &[u8]) -> Result<Ticket, TicketError> {
        if v.len() != TICKET_CHARS {
            return Err(TicketError::Malformed);
        }
        let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(v)
            .map_err(|_| TicketError::Malformed)?;
        let sealed: [u8; SEALED_BYTES] = sealed.try_into().map_err(|_| TicketError::Malformed)?;
        let mut tag = [0u8; 12];
        tag.copy_from_slice(&sealed[..12]);
        let mut plain = [0u8; 12];
        plain.copy_from_slice(&sealed[12..]);
        self.xor_stream(&tag, &mut plain);
        if !bool::from(self.tag_of(&plain).ct_eq(&tag)) {
            return Err(TicketError::Forged);
        }
        let mut id = [0u8; 8];
        id[2..].copy_from_slice(&plain[..6]);
        Ok(Ticket {
            allocation: u64::from_be_bytes(id),
            worker: u16::from_be_bytes([plain[6], plain[7]]),
            serial: u32::from_be_bytes([plain[8], plain[9], plain[10], plain[11]]),
        })
    }
}

/// Mobility state of an allocation whose client asked for it.
#[derive(Debug, Default)]
pub(super) struct Mobility {
    /// Tickets issued so far (the next one gets this serial).
    pub(super) next_serial: u32,
    /// The serial of the first ticket issued since the last move (or the Allocate): older
    /// tickets cannot move the allocation.
    pub(super) move_floor: u32,
    /// The 5-tuple before the last move, while the client has not been heard on the new one
    /// (make before break): still accepted, and where peer data still goes.
    pub(super) old_tuple: Option<FiveTuple>,
    /// Moves so far.
    pub(super) moves: u32,
}

impl TurnCore {
    /// The worker whose core owns the allocation named by the MOBILITY-TICKET of `data`, when
    /// `data` is a Refresh request carrying a ticket this server sealed. The I/O layer asks
    /// this for a Refresh from a 5-tuple its own core does not know, and hands the datagram to
    /// that worker. Cheap for everything else (two header bytes).
    pub fn mobility_owner(&self, data: &[u8]) -> Option<u16> {
        let key = self.cfg.mobility.as_ref()?;
        // A Refresh request: method 0x004, class request.
        if data.len() < 20 || data[0] != 0x00 || data[1] != 0x04 {
            return None;
        }
        let m = stun_proto::msg::decode(data).ok()?;
        let v = stun_proto::msg::attr(&m, ATTR_MOBILITY_TICKET)?;
        key.open(v).ok().map(|t| t.worker)
    }

    /// The user of the allocation on this core named by the MOBILITY-TICKET of `m` (a REST
    /// credential that expired mid-call may still move its own allocation, as it may refresh
    /// it).
    pub(super) fn ticket_user(&self, m: &Message) -> Option<&str> {
        let key = self.cfg.mobility.as_ref()?;
        let t = key
            .open(stun_proto::msg::attr(m, ATTR_MOBILITY_TICKET)?)
            .ok()?;
        self.allocs.get(&t.allocation).map(|a| a.username.as_str())
    }

    /// A new ticket for allocation `id` (mobile), counted in its serials.
    pub(super) fn issue_ticket(&mut self, id: u64) -> Option<Vec<u8>> {
        let key = self.cfg.mobility.as_ref()?;
        let a = self.allocs.get_mut(&id)?;
        let mob = a.mobility.as_mut()?;
        let serial = mob.next_serial;
        mob.next_serial = mob.next_serial.wrapping_add(1);
        Some(key.seal(&Ticket {
            allocation: id,
            worker: self.worker,
            serial,
        }))
    }

    /// The allocation a Refresh with MOBILITY-TICKET `v` from `tuple` is about, after moving it
    /// to `tuple` when the ticket allows (RFC 8016 §3.2); or the error response, counted.
    pub(super) fn mobility_refresh(
        &mut self,
        tuple: FiveTuple,
        m: &Message,
        v: &[u8],
        auth: &AuthOk,
    ) -> Result<u64, MessageBuilder> {
        let refuse = |core: &mut Self, r: MobilityRefusal| {
            core.stats.mobility_refusal(r);
            Err(MessageBuilder::error(m, r.error_code(), r.reason_phrase()))
        };
        let Some(key) = self.cfg.mobility.as_ref() else {
            return refuse(self, MobilityRefusal::Disabled);
        };
        if tuple.transport != crate::Transport::Udp {
            return refuse(self, MobilityRefusal::Transport);
        }
        let ticket = match key.open(v) {
            Ok(t) => t,
            Err(_) => return refuse(self, MobilityRefusal::BadTicket),
        };
        let id = ticket.allocation;
        let Some((current, floor, next, same_user)) = self.allocs.get(&id).and_then(|a| {
            let mob = a.mobility.as_ref()?;
            Some((
                a.tuple,
                mob.move_floor,
                mob.next_serial,
                a.username == auth.username,
            ))
        }) else {
            return refuse(self, MobilityRefusal::UnknownAllocation);
        };
        if !same_user {
            return refuse(self, MobilityRefusal::WrongUser);
        }
        match self.by_tuple.get(&tuple) {
            // The current 5-tuple: a plain Refresh (a retransmission, or a client that was not
            // sure it moved). Any ticket of this allocation will do; the sender owns it.
            Some(&owner) if owner == id && tuple == current => return Ok(id),
            // The old 5-tuple while the move is not confirmed: the client is back there.
            Some(&owner) if owner == id => {
                self.by_tuple.remove(&current);
                if let Some(a) = self.allocs.get_mut(&id) {
                    a.tuple = tuple;
                    if let Some(mob) = a.mobility.as_mut() {
                        mob.old_tuple = None;
                        mob.moves += 1;
                        mob.move_floor = mob.next_serial;
                    }
                }
                self.stats.mobility_move();
                self.fast_path.touch(id);
                tracing::info!(id, from = %current.client, to = %tuple.client, "allocation moved back");
                return Ok(id);
            }
            Some(_) => return refuse(self, MobilityRefusal::TupleInUse),
            None => {}
        }
        if ticket.serial < floor || ticket.serial >= next {
            return refuse(self, MobilityRefusal::StaleTicket);
        }
        let Some(a) = self.allocs.get_mut(&id) else {
            return refuse(self, MobilityRefusal::UnknownAllocation);
        };
        let from = a.tuple;
        let Some(mob) = a.mobility.as_mut() else {
            return refuse(self, MobilityRefusal::UnknownAllocation);
        };
        // A move before the last one was confirmed: the unconfirmed 5-tuple is dropped, the
        // one last heard from stays the fallback.
        if mob.old_tuple.is_some() {
            self.by_tuple.remove(&from);
        } else {
            mob.old_tuple = Some(from);
        }
        mob.moves += 1;
        mob.move_floor = mob.next_serial;
        a.tuple = tuple;
        self.by_tuple.insert(tuple, id);
        self.stats.mobility_move();
        self.fast_path.touch(id);
        tracing::info!(
            id,
            user = %a.username,
            from = %from.client,
            to = %tuple.client,
            "allocation moved (RFC 8016)"
        );
        Ok(id)
    }

    /// The client was heard on the allocation's current 5-tuple after a move: the old one is
    /// forgotten (RFC 8016 §3.2, make before break).
    pub(super) fn confirm_move(&mut self, id: u64, tuple: FiveTuple) {
        let Some(a) = self.allocs.get_mut(&id) else {
            return;
        };
        if a.tuple != tuple {
            return;
        }
        if let Some(old) = a.mobility.as_mut().and_then(|m| m.old_tuple.take()) {
            self.by_tuple.remove(&old);
            self.fast_path.touch(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_round_trip_are_printable_and_32_chars() {
        let k = TicketKey::new([7; 32]);
        let t = Ticket {
            allocation: 0x0000_1234_5678_9abc,
            worker: 3,
            serial: 42,
        };
        let s = k.seal(&t);
        assert_eq!(s.len(), TICKET_CHARS);
        assert!(s.iter().all(|b| b.is_ascii_graphic()));
        assert_eq!(k.open(&s), Ok(t));
        // Each serial gives another ticket.
        assert_ne!(k.seal(&Ticket { serial: 43, ..t }), s);
    }

    #[test]
    fn forged_modified_or_foreign_tickets_do_not_open() {
        let k = TicketKey::new([7; 32]);
        let t = Ticket {
            allocation: 9,
            worker: 0,
            serial: 0,
        };
        let s = k.seal(&t);
        for i in 0..s.len() {
            let mut m = s.clone();
            m[i] = if m[i] == b'A' { b'B' } else { b'A' };
            assert!(k.open(&m).is_err(), "byte {i} modified");
        }
        assert_eq!(TicketKey::new([8; 32]).open(&s), Err(TicketError::Forged));
        assert_eq!(k.open(b""), Err(TicketError::Malformed));
        assert_eq!(k.open(&[b'!'; TICKET_CHARS]), Err(TicketError::Malformed));
        assert_eq!(k.open(&s[..31]), Err(TicketError::Malformed));
    }
}
