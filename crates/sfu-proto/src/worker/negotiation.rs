//! Negotiation: the publisher's offer gets an answer (with the bitrate cap,
//! [`crate::sdp::limit_video_bitrate`]); the SFU offers each subscriber its downtracks and
//! applies the answer, one offer outstanding at a time (services/sfu/PROTOCOL.md).

use super::*;
use crate::msg::{self, ClientMsg, OfferedTrack};
use crate::peer;
use crate::sdp::sending_mids;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};

impl Worker {
    /// A message from participant's client (services/sfu/PROTOCOL.md "Client -> SFU").
    pub fn handle_message(&mut self, now: Instant, room: &str, participant: &str, text: &str) {
        let key = (room.to_string(), participant.to_string());
        let Some(&h) = self.by_id.get(&key) else {
            return;
        };
        let m = match msg::parse(text) {
            Ok(m) => m,
            Err(e) => {
                self.stats.bad_messages += 1;
                self.error(h, ErrorCode::BadRequest, &e);
                return;
            }
        };
        match m {
            ClientMsg::Offer { sdp, sources } => match Sources::parse(sources.as_ref()) {
                Ok(sources) => {
                    if let Some(p) = self.parts[h].as_mut() {
                        p.sources = sources;
                    }
                    self.on_publish_offer(now, h, sdp);
                }
                Err(e) => {
                    self.stats.bad_messages += 1;
                    self.error(h, ErrorCode::BadRequest, &e);
                }
            },
            ClientMsg::Answer { sdp } => self.on_subscribe_answer(now, h, sdp),
            ClientMsg::Candidate { .. } => {}
            ClientMsg::Video {
                track_id,
                max_height,
            } => {
                let Some(p) = self.parts[h].as_mut() else {
                    return;
                };
                match track_id {
                    None => {
                        p.max_height = Some(max_height);
                        for d in &mut p.downtracks {
                            d.max_height = None;
                        }
                    }
                    Some(t) => {
                        for d in p.downtracks.iter_mut().filter(|d| d.track == t) {
                            d.max_height = Some(max_height);
                        }
                    }
                }
                self.select_layers(now);
            }
            ClientMsg::Resync => {
                if let Some(p) = self.parts[h].as_mut() {
                    if p.offer_outstanding || p.subscribe.is_some() {
                        p.offer_outstanding = false;
                        p.needs_offer = true;
                    }
                }
                self.maybe_offer(now, h);
            }
        }
        self.flush(now);
    }

    pub(super) fn new_pc(&mut self, now: Instant, h: Handle, leg: Leg) -> Result<(), String> {
        let (ufrag, pwd) = self.draw_ice_credentials();
        let bwe = self.parts[h]
            .as_ref()
            .map(|p| p.bwe.clone())
            .unwrap_or_default();
        let ids = peer::PcIds {
            ufrag: &ufrag,
            pwd: &pwd,
            rtcp_ssrc: draw_ssrc(&mut self.rng),
        };
        let (mut pc, parts) =
            peer::build_pc(leg, &ids, &self.cfg.pc, self.counters.clone(), bwe, now)
                .map_err(|e| e.to_string())?;
        for (addr, tcp) in [(Some(self.cfg.udp_addr), false), (self.cfg.tcp_addr, true)] {
            let Some(addr) = addr else { continue };
            let c = CandidateHostConfig {
                base_config: CandidateConfig {
                    network: if tcp { "tcp" } else { "udp" }.into(),
                    address: addr.ip().to_string(),
                    port: addr.port(),
                    component: 1,
                    ..Default::default()
                },
                tcp_type: if tcp {
                    rtc::ice::tcp_type::TcpType::Passive
                } else {
                    rtc::ice::tcp_type::TcpType::Unspecified
                },
            }
            .new_candidate_host()
            .map_err(|e| e.to_string())?;
            let init = RTCIceCandidate::from(&c)
                .to_json()
                .map_err(|e| e.to_string())?;
            pc.add_local_candidate(init).map_err(|e| e.to_string())?;
        }
        let key = PcKey {
            participant: h,
            leg,
        };
        self.demux.add_ufrag(&ufrag, key);
        let (direct, recv) = match parts {
            peer::PcParts::Send(parts) => (
                Direct::Pending {
                    parts,
                    attempts: 0,
                    noted: Vec::new(),
                },
                receive::DirectRecv::Off,
            ),
            peer::PcParts::Receive(parts) => {
                (Direct::Off, receive::DirectRecv::new(Some(parts), now))
            }
            peer::PcParts::None => (Direct::Off, receive::DirectRecv::Off),
        };
        let slot = Pc {
            pc,
            connected: false,
            failed: false,
            flight: LastFlight::default(),
            flight_to: None,
            early_checks: Vec::new(),
            rtc_ssrcs: Vec::new(),
            direct,
            recv,
            rtc_written: false,
        };
        if let Some(p) = self.parts[h].as_mut() {
            match leg {
                Leg::Publish => p.publish = Some(Box::new(slot)),
                Leg::Subscribe => p.subscribe = Some(Box::new(slot)),
            }
        }
        Ok(())
    }

    pub(super) fn on_publish_offer(&mut self, now: Instant, h: Handle, sdp: String) {
        if self.parts[h].as_ref().is_some_and(|p| p.publish.is_none()) {
            if let Err(e) = self.new_pc(now, h, Leg::Publish) {
                self.error(h, ErrorCode::Internal, &e);
                return;
            }
        }
        let key = PcKey {
            participant: h,
            leg: Leg::Publish,
        };
        let max_bps = self.cfg.max_publish_bitrate_bps;
        let sending = sending_mids(&sdp);
        let Some(pc) = self.pc_mut(key) else { return };
        let result = (|| -> Result<String, String> {
            let offer = RTCSessionDescription::offer(sdp).map_err(|e| e.to_string())?;
            pc.pc
                .set_remote_description(now, offer)
                .map_err(|e| e.to_string())?;
            let answer = pc.pc.create_answer(None).map_err(|e| e.to_string())?;
            let text = answer.sdp.clone();
            pc.pc
                .set_local_description(now, answer)
                .map_err(|e| e.to_string())?;
            Ok(text)
        })();
        match result {
            Ok(answer) => {
                let answer = limit_video_bitrate(&answer, max_bps);
                self.push_signal(h, ServerMsg::Answer { sdp: answer });
                self.remove_stopped_tracks(now, h, &sending);
            }
            Err(e) => {
                self.stats.bad_sdp += 1;
                self.error(h, ErrorCode::BadSdp, &e);
            }
        }
        self.dirty.push(key);
    }

    pub(super) fn on_subscribe_answer(&mut self, now: Instant, h: Handle, sdp: String) {
        let outstanding = self.parts[h].as_ref().is_some_and(|p| p.offer_outstanding);
        if !outstanding {
            self.stats.bad_messages += 1;
            self.error(h, ErrorCode::WrongState, "no subscribe offer outstanding");
            return;
        }
        let key = PcKey {
            participant: h,
            leg: Leg::Subscribe,
        };
        let Some(pc) = self.pc_mut(key) else { return };
        let r = RTCSessionDescription::answer(sdp)
            .map_err(|e| e.to_string())
            .and_then(|a| {
                pc.pc
                    .set_remote_description(now, a)
                    .map_err(|e| e.to_string())
            });
        if let Some(p) = self.parts[h].as_mut() {
            p.offer_outstanding = false;
            for d in &mut p.downtracks {
                d.payload_type = None;
            }
        }
        match r {
            Ok(()) => self.replay_early_checks(now, key),
            Err(e) => {
                self.stats.bad_sdp += 1;
                self.error(h, ErrorCode::BadSdp, &e);
            }
        }
        self.dirty.push(key);
        self.maybe_offer(now, h);
    }

    /// Sends a subscribe offer if one is needed and none is outstanding.
    pub(super) fn maybe_offer(&mut self, now: Instant, h: Handle) {
        let Some(p) = self.parts[h].as_ref() else {
            return;
        };
        if p.offer_outstanding || !p.needs_offer {
            return;
        }
        if p.subscribe.is_none() {
            if p.downtracks.is_empty() {
                return;
            }
            if let Err(e) = self.new_pc(now, h, Leg::Subscribe) {
                self.error(h, ErrorCode::Internal, &e);
                return;
            }
            // Attach the downtracks planned before the PC existed.
            let planned: Vec<String> = self.parts[h]
                .as_mut()
                .map(|p| p.downtracks.drain(..).map(|d| d.track).collect())
                .unwrap_or_default();
            for t in planned {
                self.add_downtrack(now, h, &t);
            }
        }
        let key = PcKey {
            participant: h,
            leg: Leg::Subscribe,
        };
        let owners: HashMap<String, (String, String, Source)> = self
            .tracks
            .values()
            .filter_map(|t| {
                self.parts[t.owner]
                    .as_ref()
                    .map(|o| (t.id.clone(), (o.id.clone(), kind_name(t.kind), t.source)))
            })
            .collect();
        let Some(p) = self.parts[h].as_mut() else {
            return;
        };
        let Some(pc) = p.subscribe.as_mut() else {
            return;
        };
        let r = pc.pc.create_offer(None).and_then(|o| {
            let text = o.sdp.clone();
            pc.pc.set_local_description(now, o).map(|()| text)
        });
        match r {
            Ok(sdp) => {
                let mut tracks = Vec::new();
                for d in &p.downtracks {
                    let mid = pc
                        .pc
                        .rtp_transceiver(d.transceiver)
                        .and_then(|t| t.mid().clone());
                    let (participant, kind, source) = owners.get(&d.track).cloned().unwrap_or((
                        String::new(),
                        String::new(),
                        Source::Camera,
                    ));
                    tracks.push(OfferedTrack {
                        track_id: d.track.clone(),
                        participant_id: participant,
                        kind,
                        source,
                        mid,
                    });
                }
                p.offer_outstanding = true;
                p.needs_offer = false;
                self.push_signal(h, ServerMsg::Offer { sdp, tracks });
            }
            Err(e) => self.error(h, ErrorCode::Internal, &e.to_string()),
        }
        self.dirty.push(key);
    }
}
