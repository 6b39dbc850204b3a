#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ from the protocols'
known shapes (the noise KAT vectors, Tailscale's STUN request, DERP frames,
the register/map JSON of wire/tests/). Re-run after changing a seed; the
output is checked in. Needs `zstd` on PATH for the compressed map seeds."""
import json, os, struct, subprocess, zlib

HERE = os.path.dirname(os.path.abspath(__file__))

def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

# --- Noise: control/src/noise/kat.rs INITIATION (version 130, type 1, len 96).
kat = bytes.fromhex("00820100604c29f4996985e80d247e80b70303824592ff9fbad74904ea7c3d2bda24e51c121394b94c7bf3032b1ee20037160d8bec09433c19d32d4764bb6923dbd8d2a6dcb3098065333f4ba5d4f135ef81a00d25fc67fafff20351b3e478b6c5932963bd")
put("noise_initiation", "kat_v130", kat)
put("noise_initiation", "wrong_type", kat[:2] + b"\x02" + kat[3:])
put("noise_initiation", "old_version", b"\x00\x01" + kat[2:])
put("noise_initiation", "truncated", kat[:50])

# --- DERP: 1-byte type, 4-byte big-endian length.
def frame(t, payload):
    return struct.pack(">BI", t, len(payload)) + payload
key = bytes(range(1, 33))
put("derp_frames", "server_key", frame(0x01, b"DERP\xf0\x9f\x94\x91" + key))
put("derp_frames", "client_info", frame(0x02, key + bytes(24) + b'{"version":2}'))
put("derp_frames", "client_session",
    frame(0x07, b"\x01") + frame(0x04, key + b"\x00" * 64)
    + frame(0x12, b"pingpong") + frame(0x13, b"pongping") + frame(0x06, b""))
put("derp_frames", "disco_send", frame(0x04, key + b"TS\xf0\x9f\x92\xac" + key + bytes(24) + b"x" * 16))
put("derp_frames", "server_frames",
    frame(0x05, key + b"\x00" * 32) + frame(0x08, key + b"\x01") + frame(0x09, key)
    + frame(0x14, b"ok") + frame(0x15, struct.pack(">II", 1000, 5000)))
put("derp_frames", "oversized_header", struct.pack(">BI", 0x04, 1 << 30))

# --- STUN: Tailscale's binding request (SOFTWARE "tailnode", FINGERPRINT).
COOKIE = bytes.fromhex("2112a442")
tx = bytes(range(0xa0, 0xac))
def stun(msg_type, attrs, fingerprint=True):
    body = b"".join(struct.pack(">HH", t, len(v)) + v + b"\x00" * (-len(v) % 4) for t, v in attrs)
    if not fingerprint:
        return struct.pack(">HH", msg_type, len(body)) + COOKIE + tx + body
    hdr = struct.pack(">HH", msg_type, len(body) + 8) + COOKIE + tx
    fp = (zlib.crc32(hdr + body) ^ 0x5354554E) & 0xFFFFFFFF
    return hdr + body + struct.pack(">HHI", 0x8028, 4, fp)
put("stun_binding", "tailscale_request", stun(0x0001, [(0x8022, b"tailnode")]))
put("stun_binding", "request_no_fingerprint", stun(0x0001, [(0x8022, b"tailnode")], False))
port, ip = 41641 ^ 0x2112, bytes(a ^ b for a, b in zip(bytes([192, 0, 2, 10]), COOKIE))
put("stun_binding", "response_v4", stun(0x0101, [(0x0020, b"\x00\x01" + struct.pack(">H", port) + ip)], False))
ip6 = bytes(a ^ b for a, b in zip(bytes.fromhex("20010db8000000000000000000000010"), COOKIE + tx))
put("stun_binding", "response_v6", stun(0x0101, [(0x0020, b"\x00\x02" + struct.pack(">H", port) + ip6)], False))

# --- Config YAML (+ NUL + env lines).
cfg = """server_url: https://mesh.example.com
listen_addr: 0.0.0.0:8080
metrics_listen_addr: 127.0.0.1:9090
grpc_listen_addr: 127.0.0.1:50443
grpc_allow_insecure: false
noise:
  private_key_path: /var/lib/meshscale/noise_private.key
prefixes:
  v4: 100.64.0.0/10
  v6: fd7a:115c:a1e0::/48
  allocation: sequential
database:
  type: sqlite
  sqlite:
    path: /var/lib/meshscale/db.sqlite
    write_ahead_log: true
derp:
  server:
    enabled: true
    region_id: 999
    region_code: headscale
    region_name: Headscale Embedded DERP
    stun_listen_addr: 0.0.0.0:3478
  urls: []
  paths: []
ephemeral_node_inactivity_timeout: 30m
dns:
  magic_dns: true
  base_domain: tailnet.example.com
  nameservers:
    global: [1.1.1.1, 2606:4700:4700::1111]
log:
  level: info
  format: text
unix_socket: /var/run/meshscale/meshscale.sock
unix_socket_permission: "0770"
"""
put("config_yaml", "full", cfg)
put("config_yaml", "postgres_env", "server_url: http://127.0.0.1:8080\n\0"
    "MESHSCALE_DATABASE_TYPE=postgres\nMESHSCALE_DATABASE_POSTGRES_HOST=db\n"
    "MESHSCALE_DATABASE_POSTGRES_PORT=5432\nMESHSCALE_PREFIXES_V4=100.64.0.0/24\n")
put("config_yaml", "empty", "")

# --- Register / map request JSON (from wire/tests/register.rs, map.rs).
NODE_KEY = "nodekey:" + "5b" * 32
hostinfo = {
    "IPNVersion": "1.96.2-t1a2b3c4d5-g6e7f8a9b0", "OS": "linux", "OSVersion": "6.8.0-60-generic",
    "Hostname": "Alice's Laptop", "GoArch": "amd64", "RoutableIPs": ["10.10.0.0/24", "0.0.0.0/0", "::/0"],
    "RequestTags": ["tag:laptop"], "WoLMACs": ["aa:bb:cc:dd:ee:ff"],
    "Services": [{"Proto": "peerapi4", "Port": 45123}, {"Proto": "tcp", "Port": 22, "Description": "sshd"}],
    "NetInfo": {"MappingVariesByDestIP": False, "WorkingUDP": True, "PreferredDERP": 999,
                "DERPLatency": {"999-v4": 0.01}},
}
reg = {
    "Version": 133, "NodeKey": NODE_KEY, "OldNodeKey": "nodekey:" + "00" * 32,
    "NLKey": "nlpub:" + "a1" * 32,
    "Auth": {"AuthKey": "hskey-auth-0123456789ab-" + "0" * 64},
    "Expiry": "0001-01-01T00:00:00Z", "Followup": "", "Hostinfo": hostinfo,
    "NodeKeySignature": None, "Timestamp": "2026-05-01T10:20:30.123456789Z",
    "FieldFromTheFuture": {"x": [1, 2, 3]},
}
put("register_request", "preauth", json.dumps(reg))
put("register_request", "logout", json.dumps({"Version": 133, "NodeKey": NODE_KEY,
    "Expiry": "1970-01-01T01:02:03+01:00", "Hostinfo": {"Hostname": "x"}}))
put("register_request", "followup", json.dumps({"Version": 133, "NodeKey": NODE_KEY,
    "Followup": "https://mesh.example.com/register/abcdef", "Hostinfo": None}))
mapreq = {
    "Version": 133, "Compress": "zstd", "KeepAlive": True, "NodeKey": NODE_KEY,
    "DiscoKey": "discokey:" + "7c" * 32, "Stream": True, "Hostinfo": hostinfo,
    "Endpoints": ["192.0.2.10:41641", "[2001:db8::10]:41641", "[fe80::1%eth0]:41641"],
    "EndpointTypes": [2, 2, 1], "TKAHead": "", "DebugFlags": ["warn-ip-forwarding-off"],
    "MapRequestFieldFromTheFuture": 1,
}
put("map_request", "stream", json.dumps(mapreq))
put("map_request", "endpoint_update", json.dumps({"Version": 133, "Compress": "zstd", "KeepAlive": True,
    "NodeKey": NODE_KEY, "DiscoKey": "discokey:" + "00" * 32, "Hostinfo": None, "OmitPeers": True,
    "Endpoints": None, "EndpointTypes": None, "DebugFlags": None}))

# --- Map-stream framing: chunk-size byte, then 4-byte LE length frames.
def lframe(b):
    return struct.pack("<I", len(b)) + b
keepalive = b'{"KeepAlive":true}'
mapresp = json.dumps({
    "Node": {"ID": 1, "StableID": "1", "Name": "peer1.tailnet.example.com.", "User": 1,
             "Key": "nodekey:" + "01" * 32, "Machine": "mkey:" + "01" * 32,
             "DiscoKey": "discokey:" + "01" * 32,
             "Addresses": ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"],
             "AllowedIPs": ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"],
             "Endpoints": ["192.0.2.1:41641"], "HomeDERP": 999, "Cap": 133, "MachineAuthorized": True},
    "DERPMap": {"Regions": {"999": {"RegionID": 999, "RegionCode": "headscale", "RegionName": "Headscale Embedded DERP",
        "Nodes": [{"Name": "999", "RegionID": 999, "HostName": "hs.example.com", "STUNPort": 3478, "DERPPort": 443}]}}},
    "Peers": [], "Domain": "hs.example.com",
    "PacketFilter": [{"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]}],
    "PeersChangedPatch": [{"NodeID": 2, "Endpoints": ["192.0.2.2:41641"]}],
}).encode()
put("wire_framing", "two_frames", b"\x07" + lframe(keepalive) + lframe(mapresp))
put("wire_framing", "partial", b"\x01" + lframe(keepalive) + struct.pack("<I", 100) + b"abc")
put("map_stream", "plain", b"\x00" + lframe(mapresp) + lframe(keepalive))
def zst(b):
    return subprocess.run(["zstd", "-q", "-c", "-3"], input=b, capture_output=True, check=True).stdout
put("map_stream", "zstd", b"\x01" + lframe(zst(mapresp)) + lframe(zst(keepalive)))

# --- AdmissionReview (operator webhook), as the API server sends it.
review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
    "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
    "kind": {"group": "", "version": "v1", "kind": "Pod"},
    "resource": {"group": "", "version": "v1", "resource": "pods"},
    "namespace": "apps", "operation": "CREATE", "userInfo": {"username": "test"},
    "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web",
        "annotations": {"meshscale.dev/inject": "true", "meshscale.dev/user": "alice",
                        "meshscale.dev/tags": "tag:web"}},
        "spec": {"containers": [{"name": "app", "image": "nginx"}]}},
    "dryRun": False}}
put("admission_review", "create_pod", b"\x01" + json.dumps(review).encode())
review["request"]["operation"] = "UPDATE"
put("admission_review", "update_pod", b"\x00" + json.dumps(review).encode())

# --- Disco (sidecar/src/disco.rs): plaintexts `type || version || payload`
# as a box opens to, and the packet envelope (magic, sender key, box).
txid = bytes(range(1, 13))
def ep(ip16, port):
    return ip16 + struct.pack(">H", port)
v4 = bytes(10) + b"\xff\xff" + bytes([10, 1, 0, 11])
v6 = bytes.fromhex("fd7a115ca1e000000000000000000002")
put("disco", "ping", b"\x01\x00" + txid + key)
put("disco", "ping_padded", b"\x01\x00" + txid + key + bytes(40))
put("disco", "ping_no_key", b"\x01\x00" + txid)
put("disco", "pong_v4", b"\x02\x00" + txid + ep(v4, 41641))
put("disco", "pong_v6", b"\x02\x00" + txid + ep(v6, 41641))
put("disco", "call_me_maybe", b"\x03\x00" + ep(v4, 41641) + ep(v6, 41641))
put("disco", "envelope", b"TS\xf0\x9f\x92\xac" + key + bytes(24) + b"x" * 40)

# --- Sidecar local API (sidecar/src/localapi.rs): one JSON line each way.
put("sidecar_localapi", "status", '{"cmd":"status"}\n')
put("sidecar_localapi", "ping", '{"cmd":"ping","target":"nodo1"}\n')
put("sidecar_localapi", "down", '{"cmd":"down"}\n')
put("sidecar_localapi", "response_error", '{"error":"peer not found"}\n')
put("sidecar_localapi", "response_ok", '"ok"\n')

# --- Noise transport + HTTP/2 (fuzz_targets/noise_h2.rs): size byte, raw
# tail length, client cleartext. The recorded sessions (capture-*) carry
# real requests; this one is the preface and an empty SETTINGS frame.
preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + struct.pack(">I", 0)[1:] + b"\x04\x00" + struct.pack(">I", 0)
put("noise_h2", "preface", b"\xff\x00" + preface)
put("noise_h2", "preface_small_records_bad_tail", b"\x00\x05" + preface + b"\x04\x00\x10abc")
