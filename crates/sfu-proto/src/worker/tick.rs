//! The tick, every [`TICK`]: layer rates sampled, each subscriber's bandwidth estimate
//! updated ([`crate::bwe`]), simulcast layers chosen ([`crate::layers`]) and announced to
//! publishers, the active speaker of each room picked ([`crate::speaker`]).

use super::*;
use crate::layers::{self, Budget, LayerView};
use crate::speaker;
use rtc::rtcp::reception_report::ReceptionReport;

impl Worker {
    pub(super) fn tick(&mut self, now: Instant) {
        let elapsed = self
            .last_tick
            .map_or(TICK, |t| now.saturating_duration_since(t))
            .as_secs_f64()
            .max(0.05);
        self.last_tick = Some(now);
        for t in self.tracks.values_mut() {
            if t.layers.len() > 1 {
                tracing::debug!(track = %t.id, layers = ?t.layers.iter().map(|l| (l.rid.clone(), l.rate.bps() as u64, l.height)).collect::<Vec<_>>(), "layer rates");
            }
            for l in &mut t.layers {
                l.rate.sample(now, elapsed, TICK);
            }
        }
        for p in self.parts.iter().flatten() {
            if p.subscribe.is_some() {
                tracing::debug!(participant = %p.id, bwe_bps = p.bwe.get(), loss_bps = p.loss.loss_bps() as u64, loss = p.loss.loss(), targets = ?p.downtracks.iter().map(|d| (d.sel.current, d.sel.target)).collect::<Vec<_>>(), "subscriber estimate");
                if self.bwe_samples.len() >= MAX_BWE_SAMPLES {
                    self.bwe_samples.clear();
                }
                self.bwe_samples.push(p.bwe.get() as f64);
            }
        }
        let (min_bps, max_bps) = (self.cfg.pc.bwe_min_bps, self.cfg.pc.bwe_max_bps);
        for p in self.parts.iter_mut().flatten() {
            let gcc = p.bwe.get() as f64;
            p.loss.tick(now, elapsed, gcc, min_bps, max_bps);
        }
        self.select_layers(now);
        self.announce_layers();
        self.active_speakers(now);
        #[cfg(debug_assertions)]
        self.check_indexes();
    }

    /// RTCP receiver report blocks from subscriber `h`: the fraction lost on its downtracks
    /// feeds its loss-based estimate (RFC 3550 §6.4.2).
    pub(super) fn on_receiver_report(&mut self, h: Handle, reports: &[ReceptionReport]) {
        let Some(p) = self.parts[h].as_mut() else {
            return;
        };
        for r in reports {
            if p.downtracks.iter().any(|d| d.ssrc == r.ssrc) {
                p.loss.on_fraction_lost(r.fraction_lost);
            }
        }
    }

    /// Per subscriber and simulcast track: the highest layer the subscriber's bandwidth
    /// estimate and requested height allow ([`layers::choose`]), then keyframe requests for
    /// every target not reached yet.
    pub(super) fn select_layers(&mut self, now: Instant) {
        let mut keyframes = Vec::new();
        for p in self.parts.iter_mut().flatten() {
            let bwe = p.loss.estimate_bps(p.bwe.get() as f64);
            // A congestion signal this tick ends every probe of this subscriber.
            let clean = p.loss.clean();
            // Without loss for a probe interval, one downtrack may step above the estimate: the
            // estimate only learns what the path carries from what is sent.
            let may_probe = p.loss.may_probe(now);
            let mut probed = false;
            let videos = p
                .downtracks
                .iter()
                .filter(|d| {
                    self.tracks
                        .get(&d.track)
                        .is_some_and(|t| t.kind == RtpCodecKind::Video)
                })
                .count()
                .max(1);
            let audios = p.downtracks.len().saturating_sub(videos);
            let budget = layers::video_budget(bwe, videos, audios);
            let pref = p.max_height;
            for d in &mut p.downtracks {
                let Some(t) = self.tracks.get(&d.track) else {
                    continue;
                };
                if t.kind != RtpCodecKind::Video || t.layers.len() < 2 {
                    continue;
                }
                let views: Vec<LayerView> = t
                    .layers
                    .iter()
                    .map(|l| LayerView {
                        measured_bps: l.rate.measured_bps(),
                        height: l.height,
                    })
                    .collect();
                let step = layers::choose(
                    &mut d.sel,
                    &views,
                    d.max_height.or(pref),
                    Budget {
                        bps: budget,
                        clean,
                        may_probe: may_probe && !probed,
                    },
                    now,
                );
                probed |= step.probed;
                if let Some(target) = step.new_target {
                    keyframes.push((d.track.clone(), target));
                }
            }
            if probed {
                p.loss.probe_started(now);
            }
        }
        // A switch waits for a keyframe of the target layer. When the first request or the
        // keyframe itself was lost (or the request was suppressed by the per-layer interval
        // because another subscriber had just asked), ask again, at most once per interval:
        // otherwise the subscriber could stay on the old layer until the publisher's next
        // spontaneous keyframe, which simulcast encoders rarely send.
        for p in self.parts.iter().flatten() {
            for d in &p.downtracks {
                if let Some(target) = d.sel.pending_switch() {
                    keyframes.push((d.track.clone(), target));
                }
            }
        }
        for (t, l) in keyframes {
            self.request_keyframe(now, &t, l);
        }
    }

    /// Tells publishers which simulcast layers someone watches (the lowest always stays on).
    pub(super) fn announce_layers(&mut self) {
        let mut msgs = Vec::new();
        let ids: Vec<String> = self.tracks.keys().cloned().collect();
        for id in ids {
            let Some(t) = self.tracks.get(&id) else {
                continue;
            };
            if t.kind != RtpCodecKind::Video || t.layers.len() < 2 {
                continue;
            }
            let selections = self
                .parts
                .iter()
                .flatten()
                .flat_map(|p| p.downtracks.iter().filter(|d| d.track == id))
                .map(|d| &d.sel);
            let watched = layers::watched(t.layers.len(), selections);
            let active: Vec<String> = t
                .layers
                .iter()
                .zip(&watched)
                .filter(|(_, w)| **w)
                .map(|(l, _)| l.rid.clone())
                .collect();
            if t.announced.as_ref() != Some(&active) {
                msgs.push((t.owner, id.clone(), active));
            }
        }
        for (owner, id, active) in msgs {
            if let Some(t) = self.tracks.get_mut(&id) {
                t.announced = Some(active.clone());
            }
            self.push_signal(
                owner,
                ServerMsg::Layers {
                    track_id: id,
                    active,
                },
            );
        }
    }

    /// Each room's active speaker ([`speaker::next_speaker`]); a change is announced to every
    /// member.
    pub(super) fn active_speakers(&mut self, now: Instant) {
        let mut changes = Vec::new();
        for (name, r) in &mut self.rooms {
            let levels = r
                .participants
                .iter()
                .filter_map(|&h| self.parts[h].as_ref().map(|p| (h, p.audio)));
            if let Some((h, level)) = speaker::next_speaker(r.speaker, levels, now) {
                r.speaker = Some(h);
                changes.push((name.clone(), h, level));
            }
        }
        for (room, h, level) in changes {
            self.stats.speaker_changes += 1;
            let Some(id) = self.parts[h].as_ref().map(|p| p.id.clone()) else {
                continue;
            };
            let members = self
                .rooms
                .get(&room)
                .map(|r| r.participants.clone())
                .unwrap_or_default();
            for m in members {
                self.push_signal(
                    m,
                    ServerMsg::ActiveSpeaker {
                        participant_id: id.clone(),
                        level: level.round() as u8,
                    },
                );
            }
        }
    }
}
