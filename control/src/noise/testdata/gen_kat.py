#!/usr/bin/env python3
"""Known-answer vectors for the TS2021 Noise layer, computed independently of snow.

This is a from-scratch reading of Tailscale's control/controlbase (handshake.go,
conn.go, messages.go) using only the `cryptography` package and hashlib, so the
Rust tests compare snow-based code against a second implementation rather than
against itself. Run it and paste the output into kat.rs:

    python3 control/src/noise/testdata/gen_kat.py
"""
import hashlib
import hmac
import struct

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives import serialization

PROTOCOL_NAME = b"Noise_IK_25519_ChaChaPoly_BLAKE2s"
PROLOGUE_PREFIX = b"Tailscale Control Protocol v"


def pub(priv: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(priv).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def dh(priv: bytes, peer: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(priv).exchange(X25519PublicKey.from_public_bytes(peer))


def hkdf2(salt: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    prk = hmac.new(salt, ikm, hashlib.blake2s).digest()
    t1 = hmac.new(prk, b"\x01", hashlib.blake2s).digest()
    t2 = hmac.new(prk, t1 + b"\x02", hashlib.blake2s).digest()
    return t1, t2


class Symmetric:
    def __init__(self):
        self.h = hashlib.blake2s(PROTOCOL_NAME).digest()
        self.ck = self.h

    def mix_hash(self, data: bytes):
        self.h = hashlib.blake2s(self.h + data).digest()

    def mix_dh(self, priv: bytes, peer: bytes) -> bytes:
        self.ck, k = hkdf2(self.ck, dh(priv, peer))
        return k

    def encrypt_and_hash(self, k: bytes, plaintext: bytes) -> bytes:
        ct = ChaCha20Poly1305(k).encrypt(b"\x00" * 12, plaintext, self.h)
        self.mix_hash(ct)
        return ct

    def split(self) -> tuple[bytes, bytes]:
        return hkdf2(self.ck, b"")


def be_nonce(counter: int) -> bytes:
    # controlbase: 4 zero bytes, then the 64-bit counter big-endian.
    return b"\x00" * 4 + struct.pack(">Q", counter)


def record(key: bytes, counter: int, plaintext: bytes) -> bytes:
    ct = ChaCha20Poly1305(key).encrypt(be_nonce(counter), plaintext, b"")
    return bytes([4]) + struct.pack(">H", len(ct)) + ct


def main():
    server_priv = bytes(range(1, 33))
    client_priv = bytes(range(101, 133))
    client_eph = bytes(range(201, 233))
    server_eph = bytes((7 * i + 3) % 256 for i in range(32))
    version = 130

    server_pub = pub(server_priv)
    client_pub = pub(client_priv)

    # Client side, as ClientDeferred.
    s = Symmetric()
    s.mix_hash(PROLOGUE_PREFIX + str(version).encode())
    s.mix_hash(server_pub)
    init = bytearray(struct.pack(">HBH", version, 1, 96))
    e_pub = pub(client_eph)
    init += e_pub
    s.mix_hash(e_pub)
    k = s.mix_dh(client_eph, server_pub)
    init += s.encrypt_and_hash(k, client_pub)
    k = s.mix_dh(client_priv, server_pub)
    init += s.encrypt_and_hash(k, b"")
    assert len(init) == 101

    # Server side response, as Server (same state continues: it is symmetric).
    resp = bytearray(struct.pack(">BH", 2, 48))
    se_pub = pub(server_eph)
    resp += se_pub
    s.mix_hash(se_pub)
    s.mix_dh(server_eph, e_pub)  # ee (the returned key is unused in Go)
    k = s.mix_dh(server_eph, client_pub)  # se
    resp += s.encrypt_and_hash(k, b"")
    assert len(resp) == 51
    c1, c2 = s.split()  # client tx = c1, server tx = c2

    print(f"SERVER_PRIV = {server_priv.hex()}")
    print(f"SERVER_PUB = {server_pub.hex()}")
    print(f"CLIENT_PUB = {client_pub.hex()}")
    print(f"SERVER_EPHEMERAL = {server_eph.hex()}")
    print(f"VERSION = {version}")
    print(f"INITIATION = {init.hex()}")
    print(f"RESPONSE = {resp.hex()}")
    print(f"HANDSHAKE_HASH = {s.h.hex()}")
    for i, msg in enumerate([b"hello", b"", b"world"]):
        print(f"SERVER_RECORD_{i} ({msg!r}) = {record(c2, i, msg).hex()}")
    for i, msg in enumerate([b"PRI * HTTP/2.0", b"x" * 40]):
        print(f"CLIENT_RECORD_{i} ({msg!r}) = {record(c1, i, msg).hex()}")


if __name__ == "__main__":
    main()
