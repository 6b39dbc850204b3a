#!/usr/bin/env python3
"""Turns a debug capture of the server (MESHSCALE_DEBUG_CAPTURE_DIR, see
control/src/capture.rs) into fuzz seeds: fuzz/corpus/<target>/capture-*.

  capture_seeds.py CAPTURE_DIR CORPUS_DIR

Reads <dir>/noise_initiation, stun_binding (one message per file),
derp_frames and noise_h2 (one client stream per file). Writes a few
distinct seeds per target, each at most MAX_SEED bytes:
  noise_initiation  initiations as sent by tailscaled
  stun_binding      binding requests
  derp_frames       a client's DERP stream (ClientInfo, SendPacket, ...)
  disco             disco packets found in SendPacket frames
  noise_h2          the HTTP/2 cleartext of a Noise session, framed for the
                    target (record size 0xff, no raw tail)
  register_request  /machine/register bodies (HTTP/2 DATA of the session)
  map_request       /machine/map bodies
Refuses to write anything that still holds an unredacted key."""
import os, re, struct, sys

MAX_SEED = 16 * 1024
PER_TARGET = 4
DISCO_MAGIC = b"TS\xf0\x9f\x92\xac"
KEY_RE = re.compile(rb"mskey-(auth|api)-[0-9a-f]{12}-[0-9a-f]{64}")

def files(d):
    if not os.path.isdir(d):
        return []
    return [os.path.join(d, n) for n in sorted(os.listdir(d)) if not n.startswith(".")]

def read(p):
    with open(p, "rb") as f:
        return f.read()

def derp_frames(stream):
    """(type, payload) of each whole frame: 1-byte type, 4-byte BE length."""
    i = 0
    while i + 5 <= len(stream):
        t, n = struct.unpack(">BI", stream[i:i + 5])
        if i + 5 + n > len(stream):
            return
        yield t, stream[i + 5:i + 5 + n]
        i += 5 + n

def h2_bodies(stream):
    """DATA payloads per stream id, from a client's HTTP/2 cleartext."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    if not stream.startswith(preface):
        return {}
    i, bodies = len(preface), {}
    while i + 9 <= len(stream):
        n = int.from_bytes(stream[i:i + 3], "big")
        t, flags = stream[i + 3], stream[i + 4]
        sid = int.from_bytes(stream[i + 5:i + 9], "big") & 0x7FFFFFFF
        payload = stream[i + 9:i + 9 + n]
        if len(payload) < n:
            break
        if t == 0:  # DATA
            if flags & 0x8:  # PADDED
                pad = payload[0]
                payload = payload[1:len(payload) - pad]
            bodies[sid] = bodies.get(sid, b"") + payload
        i += 9 + n
    return bodies

def main():
    src, corpus = sys.argv[1], sys.argv[2]
    out = {}
    def add(target, data):
        seeds = out.setdefault(target, [])
        data = data[:MAX_SEED]
        if data and data not in seeds and len(seeds) < PER_TARGET:
            seeds.append(data)

    for p in files(os.path.join(src, "noise_initiation")):
        add("noise_initiation", read(p))
    for p in files(os.path.join(src, "stun_binding")):
        add("stun_binding", read(p))
    disco_by_len = {}
    for p in files(os.path.join(src, "derp_frames")):
        stream = read(p)
        add("derp_frames", stream)
        for t, payload in derp_frames(stream):
            pkt = payload[32:]
            if t == 0x04 and pkt.startswith(DISCO_MAGIC):
                # Ping, pong and call-me-maybe differ in length.
                disco_by_len.setdefault(len(pkt), pkt)
    for pkt in disco_by_len.values():
        add("disco", pkt)
    for p in files(os.path.join(src, "noise_h2")):
        stream = read(p)
        add("noise_h2", b"\xff\x00" + stream)
        for body in h2_bodies(stream).values():
            if b'"DiscoKey"' in body or b'"Stream"' in body:
                add("map_request", body)
            elif b'"NodeKey"' in body:
                add("register_request", body)

    total = 0
    for target, seeds in sorted(out.items()):
        for i, data in enumerate(seeds):
            if KEY_RE.search(data):
                sys.exit(f"capture_seeds.py: an unredacted key in a {target} seed; not writing it")
        d = os.path.join(corpus, target)
        os.makedirs(d, exist_ok=True)
        for old in files(d):
            if os.path.basename(old).startswith("capture-"):
                os.remove(old)
        for i, data in enumerate(seeds):
            with open(os.path.join(d, f"capture-{i + 1}"), "wb") as f:
                f.write(data)
        print(f"{target:18} {len(seeds)} seeds ({', '.join(str(len(s)) for s in seeds)} bytes)")
        total += len(seeds)
    if total == 0:
        sys.exit("capture_seeds.py: nothing captured")

main()
