//! Keyframe requests (PLI, RFC 4585 §6.3.1) to publishers: for a subscriber's PLI or FIR
//! (RFC 5104 §4.3.1) on its downtrack, for a new subscriber and for a layer switch, at most one
//! per publisher layer per `keyframe_request_interval`.

use super::*;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;

/// Whether a keyframe request may go out at `now` when the last one to the same layer went at
/// `last`: at most one per `interval`.
fn request_due(last: Option<Instant>, now: Instant, interval: Duration) -> bool {
    last.is_none_or(|at| now.saturating_duration_since(at) >= interval)
}

impl Worker {
    /// A subscriber asked for a keyframe on its downtrack `ssrc`.
    pub(super) fn keyframe_for_downtrack(&mut self, now: Instant, h: Handle, ssrc: u32) {
        let Some(p) = self.parts[h].as_ref() else {
            return;
        };
        let Some(d) = p.downtracks.iter().find(|d| d.ssrc == ssrc) else {
            return;
        };
        let layer = d.sel.keyframe_layer();
        let track = d.track.clone();
        self.request_keyframe(now, &track, layer);
    }

    /// PLI to the publisher of `track` for `layer`, at most once per interval.
    pub(super) fn request_keyframe(&mut self, now: Instant, track: &str, layer: usize) {
        let interval = self.cfg.keyframe_request_interval;
        let Some(t) = self.tracks.get_mut(track) else {
            return;
        };
        if t.kind != RtpCodecKind::Video {
            return;
        }
        let Some(l) = t.layers.get_mut(layer) else {
            return;
        };
        if l.ssrc == 0 {
            // Offered but not flowing yet: asked for once its first packet names its SSRC.
            return;
        }
        if !request_due(l.last_keyframe_request, now, interval) {
            return;
        }
        l.last_keyframe_request = Some(now);
        let media_ssrc = l.ssrc;
        let (owner, receiver) = (t.owner, t.receiver);
        let Some(p) = self.parts[owner].as_mut() else {
            return;
        };
        let Some(pc) = p.publish.as_mut() else { return };
        if let Some(mut r) = pc.pc.rtp_receiver(receiver) {
            let pli = PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc,
            };
            if r.write_rtcp(now, vec![Box::new(pli)]).is_ok() {
                self.stats.pli_sent += 1;
            }
        }
        self.dirty.push(PcKey {
            participant: owner,
            leg: Leg::Publish,
        });
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;

    /// (ms since the last request, or never) -> due, with a 500 ms interval.
    #[test]
    pub(super) fn one_request_per_layer_and_interval() {
        let now = Instant::now() + Duration::from_secs(10);
        let rows: &[(Option<u64>, bool)] = &[
            (None, true),
            (Some(0), false),
            (Some(499), false),
            (Some(500), true),
            (Some(5_000), true),
        ];
        for &(ago, due) in rows {
            let last = ago.map(|ms| now - Duration::from_millis(ms));
            assert_eq!(
                request_due(last, now, Duration::from_millis(500)),
                due,
                "{ago:?}"
            );
        }
    }
}
