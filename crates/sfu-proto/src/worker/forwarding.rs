//! Per-packet forwarding: one RTP packet of a publisher's layer to every subscriber of the
//! track whose selection forwards that layer, rewritten to the subscriber's SSRC, payload type
//! and continuous numbering ([`crate::forward::Rewriter`]); audio levels feed the active
//! speaker.

use super::*;
use crate::layers::Gate;
use crate::media;
use crate::sdp::fmtp_compatible;

impl Worker {
    /// An RTP packet of `h`'s published track `rtc_track_id` arrived.
    pub(super) fn forward(
        &mut self,
        now: Instant,
        h: Handle,
        rtc_track_id: &str,
        mut pkt: rtc::rtp::Packet,
    ) {
        let ssrc = pkt.header.ssrc;
        let Some(t) = self
            .by_ssrc
            .get(&(h, ssrc))
            .and_then(|id| self.tracks.get_mut(id))
            .filter(|t| t.rtc_track_id == rtc_track_id)
        else {
            return;
        };
        let Some(li) = t.layers.iter().position(|l| l.ssrc == ssrc) else {
            return;
        };
        let size = pkt.payload.len() + 12;
        let layer = &mut t.layers[li];
        layer.rate.on_packet(now, size as u64);
        let keyframe =
            t.kind == RtpCodecKind::Video && media::is_keyframe_start(t.video, &pkt.payload);
        if keyframe && t.video == VideoCodec::Vp8 {
            if let Some((_, height)) = media::vp8_keyframe_size(&pkt.payload) {
                layer.height = Some(height);
            }
        }
        // Audio level -> active speaker input.
        if let Some(ext) = t.audio_level_ext {
            if let Some(level) = pkt
                .header
                .extensions
                .iter()
                .find(|e| e.id == ext)
                .and_then(|e| media::audio_level(&e.payload))
            {
                if let Some(p) = self.parts[h].as_mut() {
                    p.audio.on_sample(now, level);
                }
            }
        }
        let video = t.video;
        let single_layer = t.layers.len() == 1;
        pkt.header.extensions.clear();
        pkt.header.extension = false;
        pkt.header.extension_profile = 0;
        pkt.header.extensions_padding = 0;
        let picture_id = if video == VideoCodec::Vp8 {
            media::vp8_picture_id(&pkt.payload).map(|(v, _)| v)
        } else {
            None
        };
        let mut switched = 0;
        let written_before = self.written.len();
        // Borrowed, not cloned: the fan-out, the track id and the codec stay in `t` while the
        // subscribers' state is written.
        let t = &*t;
        for sub in &t.subscribers {
            let m = sub.member;
            if m == h {
                continue;
            }
            let Some(p) = self.parts[m].as_mut() else {
                continue;
            };
            let Some(pc) = p.subscribe.as_mut().filter(|pc| pc.connected) else {
                continue;
            };
            let Some(d) = downtrack_mut(&mut p.downtracks, &t.id, &sub.downtrack) else {
                continue;
            };
            if d.ssrc == 0 {
                continue;
            }
            // Layer choice: forward the current layer; switch to the target at its keyframe.
            match d.sel.on_packet(li, keyframe, single_layer) {
                Gate::Skip => continue,
                Gate::Forward { switched: true } => switched += 1,
                Gate::Forward { switched: false } => {}
            }
            let pt = match d.payload_type {
                Some(pt) => pt,
                None => {
                    let Some(mut s) = pc.pc.rtp_sender(d.sender) else {
                        continue;
                    };
                    let params = s.get_parameters();
                    let found = params
                        .rtp_parameters
                        .codecs
                        .iter()
                        .find(|c| {
                            c.rtp_codec
                                .mime_type
                                .eq_ignore_ascii_case(&t.codec.mime_type)
                                && fmtp_compatible(
                                    &c.rtp_codec.sdp_fmtp_line,
                                    &t.codec.sdp_fmtp_line,
                                )
                        })
                        .or_else(|| {
                            params.rtp_parameters.codecs.iter().find(|c| {
                                c.rtp_codec
                                    .mime_type
                                    .eq_ignore_ascii_case(&t.codec.mime_type)
                            })
                        })
                        .map(|c| c.payload_type);
                    let Some(pt) = found else {
                        tracing::debug!(mime = %t.codec.mime_type, "no payload type for forwarded codec");
                        continue;
                    };
                    d.payload_type = Some(pt);
                    pt
                }
            };
            let Some(rw) = d.rewriter.rewrite(
                now,
                ssrc,
                pkt.header.sequence_number,
                pkt.header.timestamp,
                picture_id,
            ) else {
                continue;
            };
            let mut out = pkt.clone();
            out.header.ssrc = d.ssrc;
            out.header.payload_type = pt;
            out.header.sequence_number = rw.seq;
            out.header.timestamp = rw.timestamp;
            // The payload is shared with the publisher's packet (and every other
            // subscriber's) unless its picture id must change: only then is it copied.
            if let (Some(pid), true) = (rw.picture_id, rw.picture_id != picture_id) {
                let mut b = BytesMut::from(&out.payload[..]);
                if media::set_vp8_picture_id(&mut b, pid) {
                    out.payload = b.freeze();
                }
            }
            let key = PcKey {
                participant: m,
                leg: Leg::Subscribe,
            };
            let sent = if let Direct::On { leg, parts, .. } = &mut pc.direct {
                // Numbered and recorded now, marshalled (the number written in) and protected
                // when the send path takes the PC (crate::direct).
                let numbered = parts.send.with(|s| s.on_direct_send(now, &out));
                if numbered.armed {
                    // The sender report timer started: the PC's deadline moved.
                    pc.rtc_written = true;
                }
                if !leg.queue(out, numbered.twcc) {
                    // The leg's oldest packet was dropped.
                    self.stats.write_errors += 1;
                }
                true
            } else {
                let Some(mut s) = pc.pc.rtp_sender(d.sender) else {
                    continue;
                };
                pc.rtc_written = true;
                s.write_rtp(now, out)
                    .map_err(|e| tracing::debug!(error = %e, "write_rtp refused"))
                    .is_ok()
            };
            if sent {
                p.loss.on_sent(size as u64);
                self.stats.forwarded_packets += 1;
                self.stats.forwarded_bytes += size as u64;
            } else {
                self.stats.write_errors += 1;
            }
            // Drained with the rest of the batch's copies (`drain_written`), once per PC.
            self.written.push(key);
        }
        if self.written.len() > written_before {
            self.written_at = Some(now);
            self.written_sorted = false;
        }
        self.stats.layer_switches += switched;
    }
}
