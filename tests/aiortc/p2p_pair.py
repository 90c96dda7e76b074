#!/usr/bin/env python3
"""One peer of a peer-to-peer aiortc call through the turnkey signaling server (mesh room).

Run two of these (e.g. in two network namespaces behind different NATs) with the same --room,
one with --role offerer and one with --role answerer, in any order. Each joins the room over
HTTP (API key) and WebSocket (services/signaling/PROTOCOL.md). The offerer sends its offer once the
other is in the room (`joined.participants` or `participant-joined`); the answerer answers.
aiortc does not trickle: the offer and answer carry all candidates.

ICE servers come from the join answer, filtered by --mode:
  stun      only the stun: URI (no relay candidates)
  turn-udp  the stun: URI and the turn:...?transport=udp URI
  turn-tcp  the stun: URI and the turn:...?transport=tcp URI
  turns     the stun: URI and the turns:...?transport=tcp URI (TURN over TLS; the server's
            certificate must be trusted: pass --ca FILE, which sets SSL_CERT_FILE)

Success: ICE and DTLS connect (connectionState "connected") and a data channel message makes
the round trip (offerer "ping" -> answerer "pong" -> offerer "done"), within --timeout seconds
of the offer being created.

Leaving: the answerer leaves as soon as it has finished ("done" received, or it gave up); the
offerer, once it has "pong", sends "done" and then stays in the room with its connection open
until the answerer has left (at most --timeout seconds more). A peer that sees the other leave
before it has finished reports "the other peer left". The offerer must not leave first: its
"done" (data channel, through the NATs or the relay) and its leave (signaling) reach the
answerer by two paths in no set order, and closing the connection aborts the SCTP association,
so "done" could arrive after participant-left or never, and a pair that did connect would be
reported as failed.

The selected candidate pair is read from aioice (the nominated pair of component 1). aioice
pairs a server-reflexive candidate through its base, so a local candidate reached through a NAT
is reported as "host"; the peer sees it as "srflx" or "prflx".

stderr has what each peer did, with seconds since it started: signaling steps, connection
states, data channel messages, and aioice's candidate pair checks.

Prints one line `RESULT {json}`:
  {"ok": true, "connected": bool, "role": "offerer"|"answerer", "mode": ...,
   "local": {"type", "address", "protocol"} | null, "remote": {...} | null,
   "connect_ms": int | null, "error": str | null, "candidates": [local candidate types]}
and exits 0 when the script itself worked (connected or not), 1 when signaling failed.

Usage: python p2p_pair.py --base-url http://203.0.113.10:8080 --key KEY:SECRET --room R
                          --role offerer --mode turn-udp [--timeout 15] [--ca cert.pem]
"""

import argparse
import asyncio
import base64
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request

try:
    from aiortc import (
        RTCConfiguration,
        RTCIceServer,
        RTCPeerConnection,
        RTCSessionDescription,
    )
    from websockets.asyncio.client import connect as ws_connect
except ImportError as e:  # pragma: no cover - reported to the Rust test
    print(
        f"p2p_pair: missing Python package ({e}); run `bash scripts/test.sh`, which installs "
        "aiortc and websockets in its venv",
        file=sys.stderr,
    )
    print("RESULT " + json.dumps({"ok": False, "error": f"import: {e}"}))
    sys.exit(1)


# How long a peer waits for the other one to show up (join, offer).
JOIN_WAIT = 30.0


# Wall clock at start: log lines (ours and aioice's) show seconds since then.
STARTED = time.time()


def log(msg):
    print(f"p2p_pair +{time.time() - STARTED:.3f}s: {msg}", file=sys.stderr, flush=True)


class SinceStart(logging.Formatter):
    def format(self, record):
        return f"aioice +{record.created - STARTED:.3f}s: {record.getMessage()}"


def log_ice_checks():
    """Logs aioice's candidate pair checks (states, nomination, ICE completed/failed)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SinceStart())
    ice_logger = logging.getLogger("aioice.ice")
    ice_logger.addHandler(handler)
    ice_logger.setLevel(logging.INFO)


class Failure(Exception):
    pass


def http_join(base_url, key, room, identity):
    body = json.dumps(
        {"identity": identity, "name": identity, "mode": "mesh", "capacity": 2}
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


def pick_servers(ice_servers, mode):
    """RTCIceServer list for `mode` out of the join answer's iceServers."""
    want_turn = {
        "stun": None,
        "turn-udp": ("turn:", "transport=udp"),
        "turn-tcp": ("turn:", "transport=tcp"),
        "turns": ("turns:", "transport=tcp"),
    }[mode]
    out = []
    found_turn = False
    for server in ice_servers:
        urls = server["urls"] if isinstance(server["urls"], list) else [server["urls"]]
        stun = [u for u in urls if u.startswith("stun:")]
        if stun:
            out.append(RTCIceServer(urls=stun[:1]))
        if want_turn is None:
            continue
        scheme, transport = want_turn
        turn = [u for u in urls if u.startswith(scheme) and u.endswith(transport)]
        if turn:
            found_turn = True
            out.append(
                RTCIceServer(
                    urls=turn[:1],
                    username=server.get("username"),
                    credential=server.get("credential"),
                )
            )
    if want_turn is not None and not found_turn:
        raise Failure(f"no {want_turn[0]}...{want_turn[1]} URI in iceServers {ice_servers}")
    return out


def describe(candidate):
    return {
        "type": candidate.type,
        "address": f"{candidate.host}:{candidate.port}",
        "protocol": candidate.transport,
    }


def selected_pair(pc):
    """(local, remote) candidate dicts of aioice's nominated pair, or (None, None)."""
    try:
        connection = pc.sctp.transport.transport._connection
        pair = connection._nominated.get(1)
    except AttributeError:
        return None, None
    if pair is None:
        return None, None
    return describe(pair.local_candidate), describe(pair.remote_candidate)


async def run(args):
    joined_http = http_join(args.base_url, args.key, args.room, args.role)
    servers = pick_servers(joined_http["iceServers"], args.mode)
    log(f"{args.role}: ICE servers {[s.urls for s in servers]}")
    result = {
        "ok": True,
        "connected": False,
        "role": None,
        "mode": args.mode,
        "local": None,
        "remote": None,
        "connect_ms": None,
        "error": None,
        "candidates": [],
    }
    async with ws_connect(joined_http["url"], max_size=1 << 20) as ws:
        await ws.send(
            json.dumps(
                {"type": "join", "v": 1, "room": args.room, "token": joined_http["token"]}
            )
        )
        joined = json.loads(await ws.recv())
        if joined.get("type") != "joined":
            raise Failure(f"join refused: {joined}")
        others = [p["id"] for p in joined["participants"]]
        log(f"{args.role}: joined, others {others}")
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        done = asyncio.get_running_loop().create_future()
        other_left = asyncio.Event()
        state = {"start": None}

        def finish(connected, error=None):
            if done.done():
                return
            log(f"{args.role}: finished, connected={connected}, error={error}")
            result["connected"] = connected
            result["error"] = error
            if state["start"] is not None and connected:
                result["connect_ms"] = int((time.monotonic() - state["start"]) * 1000)
            done.set_result(None)

        @pc.on("connectionstatechange")
        def on_state():
            log(f"{args.role}: connectionState {pc.connectionState}")
            if pc.connectionState == "failed":
                finish(False, "connectionState failed")

        async def send(msg):
            await ws.send(json.dumps(msg))

        result["role"] = args.role
        if args.role == "offerer":
            if others:
                peer = others[0]
            else:
                peer = None
                async for raw in ws:
                    msg = json.loads(raw)
                    if msg.get("type") == "participant-joined":
                        peer = msg["participant"]["id"]
                        break
                if peer is None:
                    raise Failure("signaling closed before the answerer joined")
            channel = pc.createDataChannel("lab")

            @channel.on("open")
            def on_open():
                channel.send("ping")

            @channel.on("message")
            def on_message(msg):
                log(f"{args.role}: received {msg!r}")
                if msg == "pong":
                    channel.send("done")
                    finish(True)

            state["start"] = time.monotonic()
            await pc.setLocalDescription(await pc.createOffer())
            await send({"type": "offer", "to": peer, "sdp": pc.localDescription.sdp})
            log(f"{args.role}: offer sent")
        else:
            peer = None

            @pc.on("datachannel")
            def on_datachannel(channel):
                @channel.on("message")
                def on_message(msg):
                    log(f"{args.role}: received {msg!r}")
                    if msg == "ping":
                        channel.send("pong")
                    elif msg == "done":
                        finish(True)

        async def pump():
            nonlocal peer
            async for raw in ws:
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind == "offer" and result["role"] == "answerer":
                    log(f"{args.role}: offer received")
                    peer = msg["from"]
                    state["start"] = time.monotonic()
                    await pc.setRemoteDescription(RTCSessionDescription(msg["sdp"], "offer"))
                    await pc.setLocalDescription(await pc.createAnswer())
                    await send({"type": "answer", "to": peer, "sdp": pc.localDescription.sdp})
                    log(f"{args.role}: answer sent")
                elif kind == "answer" and result["role"] == "offerer":
                    log(f"{args.role}: answer received")
                    await pc.setRemoteDescription(RTCSessionDescription(msg["sdp"], "answer"))
                elif kind == "error":
                    log(f"{args.role}: signaling error {msg}")
                elif kind == "participant-left":
                    log(f"{args.role}: participant-left {msg}")
                    other_left.set()
                    finish(False, "the other peer left")

        pump_task = asyncio.create_task(pump())
        # The clock starts at the offer (created or received); until then, wait for the other
        # peer for at most JOIN_WAIT seconds.
        join_deadline = time.monotonic() + JOIN_WAIT
        while not done.done():
            now = time.monotonic()
            start = state["start"]
            limit = start + args.timeout if start is not None else join_deadline
            if now >= limit:
                break
            await asyncio.wait({done}, timeout=min(0.1, limit - now))
        if not done.done():
            finish(False, "timeout")
        if state["start"] is not None and result["connect_ms"] is not None:
            if result["connect_ms"] > args.timeout * 1000:
                result["connected"] = False
                result["error"] = f"connected only after {result['connect_ms']} ms"
        result["local"], result["remote"] = selected_pair(pc)
        try:
            gatherer = pc.sctp.transport.transport.iceGatherer
            result["candidates"] = sorted(
                {c.type for c in gatherer.getLocalCandidates()}
            )
        except AttributeError:
            pass
        if args.role == "offerer" and result["connected"]:
            # Stay until the answerer has its "done" and leaves (see the module docstring).
            # Its own deadline (offer received + --timeout) ends before this wait does.
            log(f"{args.role}: waiting for the answerer to leave")
            try:
                await asyncio.wait_for(other_left.wait(), args.timeout)
            except asyncio.TimeoutError:
                log(f"{args.role}: the answerer did not leave within {args.timeout} s")
        pump_task.cancel()
        await pc.close()
        log(f"{args.role}: leaving")
        try:
            await send({"type": "leave"})
        except Exception:  # noqa: BLE001 - best effort
            pass
    return result


async def run_with_deadline(args):
    # The clocks run from the offer; a peer whose partner never comes gives up eventually. The
    # offerer may wait up to --timeout twice: to connect, then for the answerer to leave.
    try:
        return await asyncio.wait_for(run(args), 2 * args.timeout + JOIN_WAIT + 30)
    except asyncio.TimeoutError:
        return {"ok": True, "connected": False, "mode": args.mode, "error": "hard timeout"}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--room", required=True)
    p.add_argument("--role", choices=["offerer", "answerer"], required=True)
    p.add_argument("--mode", choices=["stun", "turn-udp", "turn-tcp", "turns"], required=True)
    p.add_argument("--timeout", type=float, default=15.0)
    p.add_argument("--ca", help="PEM file of the TURN server's certificate (for --mode turns)")
    args = p.parse_args()
    log_ice_checks()
    if args.ca:
        os.environ["SSL_CERT_FILE"] = args.ca
    try:
        result = asyncio.run(run_with_deadline(args))
    except Failure as e:
        log(str(e))
        print("RESULT " + json.dumps({"ok": False, "error": str(e)}), flush=True)
        sys.exit(1)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
