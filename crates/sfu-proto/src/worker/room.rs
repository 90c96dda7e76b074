//! The registry: rooms, their participants, published tracks and the downtracks subscribers
//! receive them on. Joining subscribes to everything published in the room; publishing adds a
//! downtrack to every other member; leaving or losing media removes them again.

use super::*;
use crate::layers::{rid_rank, MAX_LAYERS};
use crate::peer::AUDIO_LEVEL_URI;
use crate::sdp::offered_video_rids;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodingParameters, RTCRtpEncodingParameters};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};

impl Worker {
    /// A participant's link opened (`link` is a number the I/O layer chose, newest wins).
    /// Joining again with a new link (signaling resume on another node) keeps the session.
    pub fn join(
        &mut self,
        now: Instant,
        room: &str,
        participant: &str,
        link: u64,
    ) -> Result<(), JoinError> {
        if self.timers.deadline_of(&Timer::Tick).is_none() {
            self.timers.schedule(now + TICK, Timer::Tick);
        }
        let key = (room.to_string(), participant.to_string());
        if let Some(&h) = self.by_id.get(&key) {
            if let Some(p) = self.parts[h].as_mut() {
                p.link = link;
                // The client may have missed the last offer.
                if p.offer_outstanding {
                    p.offer_outstanding = false;
                    p.needs_offer = true;
                    self.maybe_offer(now, h);
                }
            }
            return Ok(());
        }
        let r = self.rooms.entry(room.to_string()).or_insert(Room {
            participants: Vec::new(),
            speaker: None,
        });
        if r.participants.len() >= self.cfg.max_participants {
            if r.participants.is_empty() {
                self.rooms.remove(room);
            }
            return Err(JoinError::RoomFull);
        }
        let h = match self.parts.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.parts.push(None);
                self.parts.len() - 1
            }
        };
        r.participants.push(h);
        self.parts[h] = Some(Box::new(Participant {
            room: room.to_string(),
            id: participant.to_string(),
            link,
            publish: None,
            subscribe: None,
            published: Vec::new(),
            sources: Sources::default(),
            downtracks: Vec::new(),
            offer_outstanding: false,
            needs_offer: false,
            data_channel: None,
            bwe: Arc::new(BweCell::default()),
            max_height: None,
            audio: AudioLevel::default(),
            loss: LossEstimate::new(self.cfg.pc.bwe_initial_bps),
            data_bucket: TokenBucket::new(
                self.cfg.data_messages_per_sec,
                self.cfg.data_message_burst,
                now,
            ),
        }));
        self.by_id.insert(key, h);
        // Subscribe to everything already published in the room.
        let existing: Vec<String> = self
            .tracks
            .values()
            .filter(|t| self.parts[t.owner].as_ref().is_some_and(|o| o.room == room))
            .map(|t| t.id.clone())
            .collect();
        for t in existing {
            self.add_downtrack(now, h, &t);
        }
        // A newcomer learns who is speaking now, not only at the next change.
        let speaker = self
            .rooms
            .get(room)
            .and_then(|r| r.speaker)
            .and_then(|s| self.parts[s].as_ref())
            .map(|s| (s.id.clone(), s.audio.level()));
        if let Some((id, level)) = speaker {
            self.push_signal(
                h,
                ServerMsg::ActiveSpeaker {
                    participant_id: id,
                    level: level.round() as u8,
                },
            );
        }
        self.maybe_offer(now, h);
        self.flush(now);
        Ok(())
    }

    /// A participant's link closed. Ignored unless it is the participant's current link.
    pub fn link_closed(&mut self, now: Instant, room: &str, participant: &str, link: u64) {
        let key = (room.to_string(), participant.to_string());
        let Some(&h) = self.by_id.get(&key) else {
            return;
        };
        if self.parts[h].as_ref().is_some_and(|p| p.link == link) {
            self.remove_participant(now, h);
            self.flush(now);
        }
    }

    /// Plans (and, once the subscribe PC exists, adds) a downtrack of `track` for `h`.
    pub(super) fn add_downtrack(&mut self, _now: Instant, h: Handle, track: &str) {
        let Some(t) = self.tracks.get(track) else {
            return;
        };
        if t.owner == h {
            return;
        }
        let owner_id = self.parts[t.owner]
            .as_ref()
            .map(|o| o.id.clone())
            .unwrap_or_default();
        let codec = t.codec.clone();
        let kind = t.kind;
        let Some(p) = self.parts[h].as_mut() else {
            return;
        };
        if p.downtracks.iter().any(|d| d.track == track) {
            return;
        }
        p.needs_offer = true;
        let Some(pc) = p.subscribe.as_mut() else {
            // Planned: attached when the subscribe PC is created.
            p.downtracks
                .push(Downtrack::planned(track.to_string(), codec.clock_rate));
            self.add_subscriber(track, h);
            return;
        };
        let ssrc = draw_ssrc(&mut self.rng);
        let local = MediaStreamTrack::new(
            owner_id.clone(),
            track.to_string(),
            track.to_string(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: codec.clone(),
                ..Default::default()
            }],
        );
        let added = pc.pc.add_transceiver_from_track(
            local,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Sendonly,
                streams: vec![owner_id],
                send_encodings: vec![],
            }),
        );
        let Ok(tid) = added else {
            return;
        };
        let Some(sender) = pc.pc.rtp_transceiver(tid).and_then(|t| t.sender()) else {
            return;
        };
        p.downtracks.push(Downtrack {
            transceiver: tid,
            sender,
            ssrc,
            ..Downtrack::planned(track.to_string(), codec.clock_rate)
        });
        self.add_subscriber(track, h);
    }

    /// `h` has a downtrack of `track` now: it joins the track's fan-out (last, as it is last
    /// in the room of those with one).
    fn add_subscriber(&mut self, track: &str, h: Handle) {
        if let Some(t) = self.tracks.get_mut(track) {
            if !t.subscribers.iter().any(|s| s.member == h) {
                t.subscribers.push(Subscriber::new(h));
            }
        }
    }

    pub(super) fn remove_downtracks_of(&mut self, h: Handle, track: &str) {
        let Some(p) = self.parts[h].as_mut() else {
            return;
        };
        let Some(i) = p.downtracks.iter().position(|d| d.track == track) else {
            return;
        };
        let d = p.downtracks.remove(i);
        if let Some(pc) = p.subscribe.as_mut() {
            let _ = pc.pc.remove_track(d.sender);
        }
        p.needs_offer = true;
    }

    pub(super) fn remove_track(&mut self, now: Instant, id: &str) {
        let Some(t) = self.tracks.remove(id) else {
            return;
        };
        for l in &t.layers {
            if l.ssrc != 0 {
                self.by_ssrc.remove(&(t.owner, l.ssrc));
            }
        }
        let room = self.parts[t.owner].as_ref().map(|p| p.room.clone());
        if let Some(p) = self.parts[t.owner].as_mut() {
            p.published.retain(|x| x != id);
        }
        let members = room
            .and_then(|r| self.rooms.get(&r))
            .map(|r| r.participants.clone())
            .unwrap_or_default();
        for m in members {
            self.remove_downtracks_of(m, id);
            self.maybe_offer(now, m);
            self.dirty.push(PcKey {
                participant: m,
                leg: Leg::Subscribe,
            });
        }
    }

    /// The publisher's new offer no longer sends some of its tracks (`removeTrack`, a screen
    /// share stopped: the m-section turned `recvonly`/`inactive` or was rejected,
    /// services/sfu/PROTOCOL.md "Stopping a track"): they are removed, and every subscriber gets
    /// an offer without them. `sending` holds the MIDs of the offer's sending audio and video
    /// m-sections; a track whose MID is not known is kept.
    pub(super) fn remove_stopped_tracks(&mut self, now: Instant, h: Handle, sending: &[String]) {
        let Some(p) = self.parts[h].as_ref() else {
            return;
        };
        let stopped: Vec<String> = p
            .published
            .iter()
            .filter(|id| {
                self.tracks
                    .get(*id)
                    .and_then(|t| t.mid.as_ref())
                    .is_some_and(|mid| !sending.contains(mid))
            })
            .cloned()
            .collect();
        for id in stopped {
            self.remove_track(now, &id);
        }
    }

    pub(super) fn close_pc(&mut self, key: PcKey) {
        let Some(p) = self.parts[key.participant].as_mut() else {
            return;
        };
        let slot = match key.leg {
            Leg::Publish => p.publish.take(),
            Leg::Subscribe => p.subscribe.take(),
        };
        if let Some(mut pc) = slot {
            let _ = pc.pc.close();
            while pc.pc.poll_write().is_some() {}
        }
        self.timers.cancel(&Timer::Pc(key));
        self.demux.remove(key);
    }

    pub(super) fn remove_participant(&mut self, now: Instant, h: Handle) {
        let Some(p) = self.parts[h].as_ref() else {
            return;
        };
        let published = p.published.clone();
        let room = p.room.clone();
        let key = (p.room.clone(), p.id.clone());
        for t in published {
            self.remove_track(now, &t);
        }
        self.close_pc(PcKey {
            participant: h,
            leg: Leg::Publish,
        });
        self.close_pc(PcKey {
            participant: h,
            leg: Leg::Subscribe,
        });
        if let Some(p) = self.parts[h].as_ref() {
            for d in &p.downtracks {
                if let Some(t) = self.tracks.get_mut(&d.track) {
                    t.subscribers.retain(|s| s.member != h);
                }
            }
        }
        self.parts[h] = None;
        self.by_id.remove(&key);
        if let Some(r) = self.rooms.get_mut(&room) {
            r.participants.retain(|&x| x != h);
            if r.speaker == Some(h) {
                r.speaker = None;
            }
            if r.participants.is_empty() {
                self.rooms.remove(&room);
            }
        }
        self.dirty.retain(|k| k.participant != h);
    }

    pub(super) fn on_track(
        &mut self,
        now: Instant,
        h: Handle,
        receiver: RTCRtpReceiverId,
        rtc_track_id: &str,
        ssrc: u32,
        rid: Option<&str>,
    ) {
        let rid = rid.unwrap_or("").to_string();
        // Existing track: a new simulcast layer.
        if let Some(t) = self
            .tracks
            .values_mut()
            .find(|t| t.owner == h && t.rtc_track_id == rtc_track_id)
        {
            if let Some(l) = t.layers.iter_mut().find(|l| l.rid == rid) {
                if l.ssrc != 0 && l.ssrc != ssrc {
                    self.by_ssrc.remove(&(h, l.ssrc));
                }
                l.ssrc = ssrc;
            } else if t.layers.len() < MAX_LAYERS {
                t.layers.push(new_layer(&rid, ssrc));
                t.layers.sort_by_key(|l| rid_rank(&l.rid));
            } else {
                return;
            }
            if ssrc != 0 {
                self.by_ssrc.insert((h, ssrc), t.id.clone());
            }
            return;
        }
        let Some(room) = self.parts[h].as_ref().map(|p| p.room.clone()) else {
            return;
        };
        let room_tracks = self
            .tracks
            .values()
            .filter(|t| self.parts[t.owner].as_ref().is_some_and(|o| o.room == room))
            .count();
        let Some(p) = self.parts[h].as_mut() else {
            return;
        };
        let Some(pc) = p.publish.as_mut() else { return };
        let Some(mut r) = pc.pc.rtp_receiver(receiver) else {
            return;
        };
        let kind = r.track().kind();
        let codec = r.track().codec(ssrc).cloned().unwrap_or_default();
        let audio_level_ext = r
            .get_parameters()
            .rtp_parameters
            .header_extensions
            .iter()
            .find(|e| e.uri == AUDIO_LEVEL_URI)
            .map(|e| e.id as u8);
        // The m-section carrying it, which says later whether it is still sent.
        let transceivers: Vec<_> = pc.pc.get_transceivers().collect();
        let mid = transceivers.into_iter().find_map(|tid| {
            let t = pc.pc.rtp_transceiver(tid)?;
            if t.receiver() == Some(receiver) {
                t.mid().clone()
            } else {
                None
            }
        });
        let own = p.published.len();
        if room_tracks >= self.cfg.max_tracks_per_room || own >= self.cfg.max_tracks_per_participant
        {
            self.error(h, ErrorCode::Limit, "too many tracks");
            return;
        }
        let source = p
            .sources
            .get(rtc_track_id)
            .unwrap_or_else(|| default_source(kind));
        self.next_track += 1;
        let id = format!("{}-{}", p.id, self.next_track);
        p.published.push(id.clone());
        let video = VideoCodec::from_mime(&codec.mime_type);
        // Every layer the offer announces (`a=rid:X send`, RFC 8853), not only those flowing
        // already: an encoder starts its top layer seconds later, and a layer the SFU did not
        // know would be left out of the `layers` message, which pauses it for good.
        let mut layers = vec![new_layer(&rid, ssrc)];
        if !rid.is_empty() && kind == RtpCodecKind::Video {
            let offered = pc
                .pc
                .remote_description()
                .map(|d| offered_video_rids(&d.sdp))
                .unwrap_or_default();
            for r in offered {
                if r != rid && layers.len() < MAX_LAYERS {
                    layers.push(new_layer(&r, 0));
                }
            }
            layers.sort_by_key(|l| rid_rank(&l.rid));
        }
        self.tracks.insert(
            id.clone(),
            Published {
                id: id.clone(),
                owner: h,
                kind,
                source,
                mid,
                rtc_track_id: rtc_track_id.to_string(),
                receiver,
                codec,
                video,
                layers,
                audio_level_ext,
                announced: None,
                subscribers: Vec::new(),
            },
        );
        if ssrc != 0 {
            self.by_ssrc.insert((h, ssrc), id.clone());
        }
        let members = self
            .rooms
            .get(&room)
            .map(|r| r.participants.clone())
            .unwrap_or_default();
        for m in members {
            if m != h {
                self.add_downtrack(now, m, &id);
                self.maybe_offer(now, m);
                self.dirty.push(PcKey {
                    participant: m,
                    leg: Leg::Subscribe,
                });
            }
        }
    }
}
