//! The event pump: drains every peer connection something happened to (datagrams out,
//! connection and track events, received media, RTCP from subscribers, data-channel messages)
//! until nothing is left, within a bound per wake-up.

use super::*;
use crate::demux::is_binding_success;
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};

impl Worker {
    /// Drains every dirty PC: datagrams out, events, received media (forwarded, which dirties
    /// subscriber PCs in turn).
    pub(super) fn flush(&mut self, now: Instant) {
        let mut rounds = 0;
        while let Some(key) = self.dirty.pop() {
            rounds += 1;
            if rounds > 100_000 {
                // Not drained this time, but their timers stay true.
                self.refresh_timer(key);
                for key in std::mem::take(&mut self.dirty) {
                    self.refresh_timer(key);
                }
                break;
            }
            self.drain_pc(now, key);
        }
    }

    pub(super) fn drain_pc(&mut self, now: Instant, key: PcKey) {
        let mut events = Vec::new();
        let mut reads = Vec::new();
        {
            let Some(pc) = self.pc_mut(key) else { return };
            let mut ice_connected = false;
            while let Some(e) = pc.pc.poll_event() {
                ice_connected |= matches!(
                    e,
                    RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(
                        RTCIceConnectionState::Connected
                    )
                );
                events.push(e);
            }
            if ice_connected {
                // rtc 0.21 starts a DTLS client's handshake when the selected pair event
                // passes its DTLS handler, but leaves the ClientHello in the DTLS endpoint until
                // that handler's next timeout (`DtlsHandler::handle_event` never drains
                // `poll_transmit`): about a second on a quiet ICE-lite PC. A timeout now sends it.
                let _ = pc.pc.handle_timeout(now);
            }
            while let Some(m) = pc.pc.poll_read() {
                reads.push(m);
            }
        }
        for e in events {
            self.on_event(now, key, e);
        }
        for TaggedRTCMessage { message, .. } in reads {
            match (key.leg, message) {
                (Leg::Publish, RTCMessage::RtpPacket(track_id, pkt)) => {
                    self.note_rtc_read(now, key, &track_id, &pkt);
                    self.forward(now, key.participant, &track_id, pkt);
                }
                (Leg::Publish, RTCMessage::DataChannelMessage(_, m)) => {
                    self.relay_data(now, key.participant, m.is_string, &m.data);
                }
                (Leg::Subscribe, RTCMessage::RtcpPacket(_, pkts)) => {
                    self.note_rtc_rtcp(key);
                    self.on_subscriber_rtcp(now, key.participant, &pkts);
                }
                _ => {}
            }
        }
        self.queue_retransmissions(key);
        self.take_pc(now, key, true, &mut Vec::new());
    }

    /// Queues the retransmissions NACKs asked of a subscribe PC the worker sends itself
    /// ([`crate::direct`]) on its leg.
    pub(super) fn queue_retransmissions(&mut self, key: PcKey) {
        let Some(pc) = self.pc_mut(key) else { return };
        let Direct::On { leg, parts, .. } = &mut pc.direct else {
            return;
        };
        let mut rtx = Vec::new();
        parts.send.with(|s| s.take_retransmissions(&mut rtx));
        let mut dropped = 0;
        for p in rtx {
            // Numbered by the send side already (the extension is in the header).
            if !leg.queue(p, None) {
                dropped += 1;
            }
        }
        self.stats.write_errors += dropped;
    }

    /// Queues `key`'s datagrams `out` (emptied); a Binding success binds its destination's
    /// 5-tuple to `key` (the check from there passed its integrity).
    pub(super) fn emit(&mut self, key: PcKey, out: &mut Vec<TaggedBytesMut>) {
        for d in out.drain(..) {
            let proto = transport_proto(d.transport.transport_protocol);
            if is_binding_success(&d.message) {
                self.demux.bind(proto, d.transport.peer_addr, key);
            }
            self.push_transmit(Transmit {
                proto,
                remote: d.transport.peer_addr,
                payload: d.message,
            });
        }
    }

    pub(super) fn on_event(&mut self, now: Instant, key: PcKey, e: RTCPeerConnectionEvent) {
        if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) = &e {
            let who = self.parts[key.participant].as_ref().map(|p| p.id.as_str());
            tracing::debug!(participant = ?who, leg = ?key.leg, state = ?s, "peer connection state");
        }
        match e {
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init))
                if key.leg == Leg::Publish =>
            {
                self.on_track(
                    now,
                    key.participant,
                    init.receiver_id,
                    &init.track_id,
                    init.ssrc,
                    init.rid.as_deref(),
                );
            }
            RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(id))
                if key.leg == Leg::Publish =>
            {
                let Some(p) = self.parts[key.participant].as_mut() else {
                    return;
                };
                let is_room = p
                    .publish
                    .as_mut()
                    .and_then(|pc| pc.pc.data_channel(id).map(|dc| dc.label() == "room"))
                    .unwrap_or(false);
                if is_room {
                    p.data_channel = Some(id);
                }
            }
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                RTCPeerConnectionState::Connected,
            ) => {
                if let Some(pc) = self.pc_mut(key) {
                    pc.connected = true;
                    pc.flight.finish(now);
                }
                if key.leg == Leg::Subscribe {
                    // A new subscriber starts with a keyframe of everything it receives.
                    let wanted: Vec<(String, usize)> = self.parts[key.participant]
                        .as_ref()
                        .map(|p| {
                            p.downtracks
                                .iter()
                                .map(|d| (d.track.clone(), d.sel.target.unwrap_or(0)))
                                .collect()
                        })
                        .unwrap_or_default();
                    for (t, l) in wanted {
                        self.request_keyframe(now, &t, l);
                    }
                }
            }
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                RTCPeerConnectionState::Failed,
            ) => {
                let already = self
                    .pc_mut(key)
                    .map(|pc| std::mem::replace(&mut pc.failed, true));
                if already == Some(false) {
                    self.stats.ice_timeouts += 1;
                    self.media_lost(now, key);
                }
            }
            _ => {}
        }
    }

    /// A PC's ICE/DTLS failed (the client vanished): its media is removed; the others get a new
    /// subscribe offer without it.
    pub(super) fn media_lost(&mut self, now: Instant, key: PcKey) {
        let h = key.participant;
        match key.leg {
            Leg::Publish => {
                let published = self.parts[h]
                    .as_ref()
                    .map(|p| p.published.clone())
                    .unwrap_or_default();
                for t in published {
                    self.remove_track(now, &t);
                }
                if let Some(p) = self.parts[h].as_mut() {
                    p.data_channel = None;
                }
            }
            Leg::Subscribe => {
                if let Some(p) = self.parts[h].as_mut() {
                    p.offer_outstanding = false;
                    // A new subscribe PC is offered with the same tracks.
                    p.downtracks = std::mem::take(&mut p.downtracks)
                        .into_iter()
                        .map(Downtrack::replanned)
                        .collect();
                    p.needs_offer = false;
                }
            }
        }
        self.close_pc(key);
        self.error(
            h,
            ErrorCode::IceTimeout,
            "ICE consent expired; media was removed",
        );
    }

    /// Relays one data-channel message of participant `h` to the others of its room, unless it
    /// is over `data_message_max_bytes` or `h`'s bucket is empty (dropped and counted).
    pub(super) fn relay_data(&mut self, now: Instant, h: Handle, is_string: bool, data: &[u8]) {
        let Some(p) = self.parts[h].as_mut() else {
            return;
        };
        if data.len() > self.cfg.data_message_max_bytes {
            self.stats.data_dropped_too_large += 1;
            return;
        }
        if !p.data_bucket.try_take(now) {
            self.stats.data_dropped_rate_limited += 1;
            return;
        }
        let from = p.id.clone();
        let room = p.room.clone();
        let members = self
            .rooms
            .get(&room)
            .map(|r| r.participants.clone())
            .unwrap_or_default();
        let payload: BytesMut = if is_string {
            let text = String::from_utf8_lossy(data);
            BytesMut::from(json!({"from": from, "data": text}).to_string().as_bytes())
        } else {
            let mut b = BytesMut::with_capacity(1 + from.len() + data.len());
            let id = &from.as_bytes()[..from.len().min(255)];
            b.extend_from_slice(&[id.len() as u8]);
            b.extend_from_slice(id);
            b.extend_from_slice(data);
            b
        };
        for m in members {
            if m == h {
                continue;
            }
            let Some(q) = self.parts[m].as_mut() else {
                continue;
            };
            let (Some(dc), Some(pc)) = (q.data_channel, q.publish.as_mut()) else {
                continue;
            };
            let Some(mut ch) = pc.pc.data_channel(dc) else {
                continue;
            };
            let sent = if is_string {
                ch.send_text(now, String::from_utf8_lossy(&payload).into_owned())
            } else {
                ch.send(now, payload.clone())
            };
            if sent.is_ok() {
                self.stats.data_messages += 1;
            }
            self.dirty.push(PcKey {
                participant: m,
                leg: Leg::Publish,
            });
        }
    }
}

/// Our [`Proto`] of a datagram rtc hands over.
pub(super) fn transport_proto(t: TransportProtocol) -> Proto {
    if t == TransportProtocol::TCP {
        Proto::Tcp
    } else {
        Proto::Udp
    }
}
