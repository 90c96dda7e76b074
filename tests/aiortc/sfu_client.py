#!/usr/bin/env python3
"""A second WebRTC stack (aiortc) against the turnkey SFU, through the signaling server.

Two aiortc participants, A and B, join a fresh `sfu` room (services/signaling/PROTOCOL.md, "SFU rooms").
Each has the two peer connections of services/sfu/PROTOCOL.md:

- publish: aiortc offers one synthetic VP8 video track (320x240, its colour changes every
  frame), one synthetic Opus audio track (a sine wave) and the data channel `room`; the SFU
  answers.
- subscribe: the SFU offers the other participant's tracks; aiortc answers every offer.

Each participant must decode at least --frames video frames and --frames audio frames of the
other's tracks (the participant of a subscribe track is found from the `tracks` list of the
SFU's offer, by mid), and a text sent by A on its `room` channel must reach B as
`{"from": <A's participant id>, "data": <text>}`.

Prints one line `RESULT {json}` and exits 0 on success, 1 on failure.

Usage: python sfu_client.py --base-url http://127.0.0.1:PORT --key KEY:SECRET
                            [--timeout 60] [--frames 20]
"""

import argparse
import asyncio
import base64
import fractions
import json
import logging
import math
import random
import struct
import sys
import time
import urllib.error
import urllib.request

try:
    import av
    from aiortc.mediastreams import MediaStreamError
    from aiortc import (
        MediaStreamTrack,
        RTCPeerConnection,
        RTCRtpSender,
        RTCSessionDescription,
        VideoStreamTrack,
    )
    from websockets.asyncio.client import connect as ws_connect
except ImportError as e:  # pragma: no cover - reported to the Rust test
    print(
        f"sfu_client: missing Python package ({e}); run `bash scripts/test.sh`, which installs "
        "aiortc and websockets in its venv",
        file=sys.stderr,
    )
    print("RESULT " + json.dumps({"ok": False, "error": f"import: {e}"}))
    sys.exit(1)

WIDTH, HEIGHT = 320, 240
AUDIO_RATE = 48000
AUDIO_PTIME = 0.020
AUDIO_SAMPLES = int(AUDIO_RATE * AUDIO_PTIME)
# Larger than the SFU's biggest frame (1 MiB, services/signaling/PROTOCOL.md).
WS_MAX_SIZE = 4 * 1024 * 1024
PING_INTERVAL = 20.0


def log(msg):
    print(f"sfu_client: {msg}", file=sys.stderr, flush=True)


class ColourVideoTrack(VideoStreamTrack):
    """320x240 yuv420p frames at 30 fps whose colour changes every frame."""

    def __init__(self):
        super().__init__()
        self.n = 0

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
        t = self.n
        self.n += 1
        # Y ramps, U and V rotate: a different colour every frame.
        values = (
            (t * 3) % 220 + 16,
            int(128 + 100 * math.sin(t / 10)),
            int(128 + 100 * math.cos(t / 10)),
        )
        for plane, value in zip(frame.planes, values):
            plane.update(bytes([value]) * (plane.line_size * plane.height))
        frame.pts = pts
        frame.time_base = time_base
        return frame


class SineAudioTrack(MediaStreamTrack):
    """48 kHz mono s16 sine wave (440 Hz) in 20 ms frames, paced in real time."""

    kind = "audio"

    def __init__(self):
        super().__init__()
        self.start = None
        self.pts = 0

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        if self.start is None:
            self.start = time.monotonic()
        else:
            wait = self.start + self.pts / AUDIO_RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        samples = [
            int(8000 * math.sin(2 * math.pi * 440 * (self.pts + i) / AUDIO_RATE))
            for i in range(AUDIO_SAMPLES)
        ]
        frame = av.AudioFrame(format="s16", layout="mono", samples=AUDIO_SAMPLES)
        frame.planes[0].update(struct.pack(f"<{AUDIO_SAMPLES}h", *samples))
        frame.sample_rate = AUDIO_RATE
        frame.pts = self.pts
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self.pts += AUDIO_SAMPLES
        return frame


class Failure(Exception):
    pass


def http_join(base_url, key, room, identity, name):
    """POST /v1/rooms/{room}/join with the API key (HTTP Basic); creates the sfu room."""
    body = json.dumps(
        {"identity": identity, "name": name, "mode": "sfu", "capacity": 4}
    ).encode()
    req = urllib.request.Request(
        f"{base_url}/v1/rooms/{room}/join",
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(key.encode()).decode(),
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise Failure(f"POST /v1/rooms/{room}/join: HTTP {e.code}: {e.read()!r}") from e


class Participant:
    def __init__(self, label, frames_wanted, dump_sdp=False):
        self.label = label
        self.dump_sdp = dump_sdp
        self.video_sizes = set()  # (width, height) of decoded video frames
        self.lumas = set()  # luma at the centre of decoded video frames
        self.audio_peak = 0  # largest |sample| of decoded audio
        self.frames_wanted = frames_wanted
        self.id = None
        self.ws = None
        self.pub = RTCPeerConnection()
        self.sub = RTCPeerConnection()
        self.channel = None
        self.channel_open = asyncio.Event()
        self.published = asyncio.Event()
        self.data = []  # texts received on the `room` channel
        self.data_event = asyncio.Event()
        self.mid_owner = {}  # subscribe mid -> publishing participant id
        self.frames = {}  # (participant id, kind) -> decoded frames
        self.codecs = {}  # (participant id, kind) -> mimeType
        self.sfu_errors = []
        self.offers = 0
        self.tasks = []
        self.left = asyncio.Event()
        self.progress = asyncio.Event()
        self.failure = None

    # -- signaling ------------------------------------------------------------------------

    async def send(self, obj):
        await self.ws.send(json.dumps(obj))

    async def send_sfu(self, msg):
        if self.dump_sdp and "sdp" in msg:
            log(f"{self.label} -> SFU {msg['type']}:\n{msg['sdp']}")
        await self.send({"type": "sfu", "msg": msg})

    async def join(self, base_url, key, room):
        j = await asyncio.to_thread(
            http_join, base_url, key, room, f"aiortc-{self.label}", self.label
        )
        if j.get("room", {}).get("mode") != "sfu":
            raise Failure(f"{self.label}: /join answered a room that is not sfu: {j}")
        self.ws = await ws_connect(j["url"], max_size=WS_MAX_SIZE, open_timeout=10)
        await self.send(
            {"type": "join", "v": 1, "room": room, "token": j["token"], "name": self.label}
        )
        while True:
            m = json.loads(await self.ws.recv())
            if m["type"] == "joined":
                break
            if m["type"] == "error":
                raise Failure(f"{self.label}: join refused: {m}")
        self.id = m["participantId"]
        log(f"{self.label} joined as {self.id}")
        self.tasks.append(asyncio.create_task(self.read_loop()))
        self.tasks.append(asyncio.create_task(self.ping_loop()))

    async def ping_loop(self):
        while True:
            await asyncio.sleep(PING_INTERVAL)
            await self.send({"type": "ping", "ts": int(time.time() * 1000)})

    async def read_loop(self):
        try:
            async for raw in self.ws:
                m = json.loads(raw)
                t = m.get("type")
                if t == "sfu":
                    await self.on_sfu(m["msg"])
                elif t == "left":
                    self.left.set()
                elif t == "error":
                    self.fail(f"signaling error: {m}")
                # pong, participant-joined/left: nothing to do
        except Exception as e:  # noqa: BLE001
            if not self.left.is_set():
                self.fail(f"signaling connection: {e!r}")

    def fail(self, why):
        log(f"{self.label}: {why}")
        if self.failure is None:
            self.failure = f"{self.label}: {why}"
        self.progress.set()

    async def on_sfu(self, msg):
        t = msg.get("type")
        if self.dump_sdp and "sdp" in msg:
            log(f"{self.label} <- SFU {t} (tracks {msg.get('tracks')}):\n{msg['sdp']}")
        if t == "answer":
            await self.pub.setRemoteDescription(RTCSessionDescription(msg["sdp"], "answer"))
            self.published.set()
        elif t == "offer":
            self.offers += 1
            for tr in msg.get("tracks", []):
                self.mid_owner[str(tr["mid"])] = tr["participantId"]
            await self.sub.setRemoteDescription(RTCSessionDescription(msg["sdp"], "offer"))
            answer = await self.sub.createAnswer()
            await self.sub.setLocalDescription(answer)
            await self.send_sfu({"type": "answer", "sdp": self.sub.localDescription.sdp})
        elif t == "error":
            self.sfu_errors.append(msg)
            self.fail(f"SFU error: {msg}")
        # layers, active-speaker: not needed here

    # -- media ----------------------------------------------------------------------------

    async def publish(self):
        video = self.pub.addTransceiver(ColourVideoTrack(), direction="sendonly")
        vp8 = [
            c
            for c in RTCRtpSender.getCapabilities("video").codecs
            if c.mimeType in ("video/VP8", "video/rtx")
        ]
        video.setCodecPreferences(vp8)
        self.pub.addTransceiver(SineAudioTrack(), direction="sendonly")
        self.channel = self.pub.createDataChannel("room")

        @self.channel.on("open")
        def _open():
            self.channel_open.set()

        @self.channel.on("message")
        def _message(message):
            self.data.append(message)
            self.data_event.set()

        @self.sub.on("track")
        def _track(track):
            self.tasks.append(asyncio.create_task(self.consume(track)))

        @self.pub.on("connectionstatechange")
        def _pub_state():
            log(f"{self.label} publish PC {self.pub.connectionState}")

        @self.sub.on("connectionstatechange")
        def _sub_state():
            log(f"{self.label} subscribe PC {self.sub.connectionState}")

        offer = await self.pub.createOffer()
        await self.pub.setLocalDescription(offer)
        await self.send_sfu({"type": "offer", "sdp": self.pub.localDescription.sdp})

    def owner_of(self, track):
        for t in self.sub.getTransceivers():
            if t.receiver.track is track:
                # The negotiated codecs of the transceiver, the first one is sent.
                codecs = getattr(t, "_codecs", None) or []
                codec = codecs[0].mimeType if codecs else None
                return self.mid_owner.get(str(t.mid), f"mid:{t.mid}"), codec
        return "unknown", None

    async def consume(self, track):
        owner, codec = self.owner_of(track)
        key = (owner, track.kind)
        self.frames.setdefault(key, 0)
        if codec:
            self.codecs[key] = codec
        log(f"{self.label} receives {track.kind} of {owner}")
        try:
            while True:
                frame = await track.recv()
                self.frames[key] += 1
                self.inspect(frame)
                if self.frames[key] == self.frames_wanted:
                    log(f"{self.label}: {self.frames_wanted} {track.kind} frames of {owner}")
                self.progress.set()
        except Exception:  # noqa: BLE001 - MediaStreamError when the track ends
            pass

    def inspect(self, frame):
        """Records what the synthetic tracks make visible: size and colour, sine samples."""
        if isinstance(frame, av.VideoFrame):
            self.video_sizes.add((frame.width, frame.height))
            y = frame.planes[0]
            self.lumas.add(bytes(y)[(frame.height // 2) * y.line_size + frame.width // 2])
        elif isinstance(frame, av.AudioFrame) and frame.format.name == "s16":
            data = bytes(frame.planes[0])
            n = len(data) // 2
            if n:
                peak = max(abs(v) for v in struct.unpack(f"<{n}h", data))
                self.audio_peak = max(self.audio_peak, peak)

    def got(self, other_id, kind):
        return self.frames.get((other_id, kind), 0)

    # -- shutdown -------------------------------------------------------------------------

    async def close(self):
        # The peer connections first (DTLS close_notify reaches an SFU that still knows them),
        # then leave the room.
        for pc in (self.pub, self.sub):
            try:
                await asyncio.wait_for(pc.close(), 5)
            except Exception:  # noqa: BLE001
                pass
        try:
            if self.ws is not None:
                await self.send({"type": "leave"})
                await asyncio.wait_for(self.left.wait(), 5)
        except Exception:  # noqa: BLE001
            pass
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.ws is not None:
            try:
                await asyncio.wait_for(self.ws.close(), 5)
            except Exception:  # noqa: BLE001
                pass


async def wait_for(what, participants, cond, deadline):
    """Waits until cond() holds, a participant failed, or the deadline passed."""
    while True:
        for p in participants:
            if p.failure:
                raise Failure(p.failure)
        if cond():
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise Failure(f"timed out waiting for {what}")
        for p in participants:
            p.progress.clear()
        waits = [asyncio.create_task(p.progress.wait()) for p in participants]
        await asyncio.wait(waits, timeout=min(left, 0.5), return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()


async def run(args, result):
    start = time.monotonic()
    deadline = start + args.timeout
    room = f"aiortc-{int(time.time() * 1000):x}-{random.randrange(1 << 24):06x}"
    result["room"] = room
    a = Participant("A", args.frames, args.dump_sdp)
    b = Participant("B", args.frames, args.dump_sdp)
    ps = [a, b]
    try:
        for p in ps:
            await p.join(args.base_url, args.key, room)
        result["participants"] = {"A": a.id, "B": b.id}
        for p in ps:
            await p.publish()
        await wait_for(
            "the SFU's answers", ps, lambda: all(p.published.is_set() for p in ps), deadline
        )
        await wait_for(
            "the `room` data channels to open",
            ps,
            lambda: all(p.channel_open.is_set() for p in ps),
            deadline,
        )
        text = f"hello from aiortc {a.id}"
        a.channel.send(text)
        result["sent"] = text

        def received():
            for m in b.data:
                try:
                    j = json.loads(m) if isinstance(m, str) else None
                except ValueError:
                    j = None
                if j == {"from": a.id, "data": text}:
                    return True
            return False

        def frames_done():
            return all(
                x.got(y.id, kind) >= args.frames
                for x, y in ((a, b), (b, a))
                for kind in ("video", "audio")
            )

        try:
            await wait_for(
                "the data message and the frames",
                ps,
                lambda: received() and frames_done(),
                deadline,
            )
        finally:
            result["dataReceived"] = [m if isinstance(m, str) else repr(m) for m in b.data]
            result["dataOk"] = received()
        for p in ps:
            if p.video_sizes != {(WIDTH, HEIGHT)}:
                raise Failure(
                    f"{p.label} decoded video of sizes {p.video_sizes}, want {WIDTH}x{HEIGHT}"
                )
            if len(p.lumas) < 2:
                raise Failure(f"{p.label} decoded video that does not change: lumas {p.lumas}")
            if p.audio_peak < 1000:
                raise Failure(f"{p.label} decoded audio without the sine: peak {p.audio_peak}")
        result["ok"] = True
    except Failure as e:
        result["error"] = str(e)
    except Exception as e:  # noqa: BLE001
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        result["frames"] = {
            f"{y.label}->{x.label}": {
                "video": x.got(y.id, "video"),
                "audio": x.got(y.id, "audio"),
            }
            for x, y in ((b, a), (a, b))
        }
        result["codecs"] = {
            p.label: {f"{k[0]}/{k[1]}": v for k, v in p.codecs.items()} for p in ps
        }
        result["decoded"] = {
            p.label: {
                "videoSizes": sorted(f"{w}x{h}" for w, h in p.video_sizes),
                "distinctLumas": len(p.lumas),
                "audioPeak": p.audio_peak,
            }
            for p in ps
        }
        result["subscribeOffers"] = {p.label: p.offers for p in ps}
        result["sfuErrors"] = [e for p in ps for e in p.sfu_errors]
        result["elapsedMs"] = int((time.monotonic() - start) * 1000)
        await asyncio.gather(*(p.close() for p in ps), return_exceptions=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--key", required=True, help="API key KEY:SECRET")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds")
    parser.add_argument("--frames", type=int, default=20, help="frames per kind and direction")
    parser.add_argument("--verbose", action="store_true", help="aiortc debug logs")
    parser.add_argument("--dump-sdp", action="store_true", help="log every SDP to stderr")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)

    result = {"ok": False}
    try:
        # The run stops itself at its deadline; this outer bound also covers a hung close.
        asyncio.run(asyncio.wait_for(run(args, result), args.timeout + 20))
    except Exception as e:  # noqa: BLE001
        result["ok"] = False
        result.setdefault("error", f"{type(e).__name__}: {e}")
    print("RESULT " + json.dumps(result), flush=True)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
