#!/usr/bin/python3
"""An independent reader of blockferry repositories, written from docs/FORMAT.md.

    reader.py [--key-file FILE] REPOSITORY                  list the backups
    reader.py [--key-file FILE] REPOSITORY BACKUP OUTPUT    restore BACKUP to the raw file OUTPUT

REPOSITORY is the directory of a file:// repository (copy an S3 one down first).
An encrypted repository needs the key, read as blockferry reads it: --key-file FILE
(every trailing CR and LF removed), else BLOCKFERRY_KEY as it is.

It uses only Debian bookworm packages: python3-zstandard, python3-cryptography, and
b3sum for BLAKE3 (bookworm has no Python BLAKE3 module). jobs/format_reader_test.go
runs it against repositories blockferry writes.
"""

import argparse
import base64
import errno
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import tempfile

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAX_CHUNK = 64 << 20  # largest chunk plaintext
MAX_METADATA = 8 << 30  # largest manifest plaintext
# Largest stored objects, checked before reading ("Size limits").
STORED_MAX = {"chunk": MAX_CHUNK + 64, "manifest": 1 << 30, "config": 64 << 10}
BACKUP_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,127}")
CHUNK_ID = re.compile(r"[0-9a-f]{64}")
NONCE = 12
PATCH_CACHE = 4  # patch chunks kept: a restore goes through positions in order


class Corrupt(Exception):
    """An object that does not decode, or a chunk that does not match its id."""


def read_key(key_file):
    if key_file:
        with open(key_file, "rb") as f:
            key = f.read().rstrip(b"\r\n")
        if not key:
            sys.exit(f"key file {key_file} is empty")
        return key
    return os.environb.get(b"BLOCKFERRY_KEY") or None


def unwrap(enc, key):
    """The data keys of an encrypted repository: an AES-GCM for objects, the id key."""
    if enc["cipher"] != "aes-256-gcm" or enc["kdf"] != "pbkdf2-sha256":
        sys.exit(f"unsupported encryption {enc['cipher']}/{enc['kdf']}")
    salt = base64.b64decode(enc["salt"], validate=True)
    wrapped = base64.b64decode(enc["wrapped_key"], validate=True)
    kek = hashlib.pbkdf2_hmac("sha256", key, salt, enc["iterations"], 32)
    try:
        # nonce || ciphertext || 16-byte tag, the layout AESGCM.decrypt takes after the nonce
        plain = AESGCM(kek).decrypt(wrapped[:NONCE], wrapped[NONCE:], b"blockferry keys")
    except InvalidTag:
        sys.exit("wrong encryption key")
    keys = json.loads(plain)
    return AESGCM(bytes(keys["encryption"])), bytes(keys["id"])


def unzstd(data, limit):
    """The concatenated output of every frame in data, skippable frames skipped."""
    out = bytearray()
    while data:
        magic = int.from_bytes(data[:4], "little")
        if 0x184D2A50 <= magic <= 0x184D2A5F:
            size = int.from_bytes(data[4:8], "little")
            if len(data) < 8 + size:
                raise Corrupt("truncated skippable frame")
            data = data[8 + size:]
            continue
        try:
            if zstandard.get_frame_parameters(data).dict_id != 0:
                raise Corrupt("zstd frame needs a dictionary")
            d = zstandard.ZstdDecompressor().decompressobj()
            out += d.decompress(data)
        except zstandard.ZstdError as e:
            raise Corrupt(f"zstd: {e}") from e
        if not d.eof:
            raise Corrupt("truncated zstd frame")
        if len(out) > limit:
            raise Corrupt(f"more than {limit} bytes")
        data = d.unused_data  # decompressobj stops after one frame
    return bytes(out)


def blake3_hex(data, key):
    """BLAKE3-256 of data, keyed when key is set, by b3sum (it reads a key on stdin)."""
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        args = ["b3sum", "--no-names", f.name]
        if key:
            args.insert(1, "--keyed")
        res = subprocess.run(args, input=key or b"", capture_output=True, check=True)
    return res.stdout.decode().split()[0]


class Repository:
    def __init__(self, root, key):
        self.root = root
        cfg = json.loads(self.read_stored("config", STORED_MAX["config"]))
        if cfg["version"] != 1 or cfg["chunk_hash"] != "blake3-256":
            sys.exit(f"unsupported repository: version {cfg['version']}, hash {cfg['chunk_hash']}")
        self.aead = self.id_key = None
        if cfg.get("encryption"):
            if not key:
                sys.exit("repository is encrypted: a key is required")
            self.aead, self.id_key = unwrap(cfg["encryption"], key)
        self.patch_chunks = {}  # id -> plaintext, oldest first

    def read_stored(self, name, stored_max):
        """The stored bytes of object name: a regular file of at most stored_max bytes."""
        try:
            fd = os.open(os.path.join(self.root, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            raise Corrupt(f"{name}: a symbolic link") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > stored_max:
                raise Corrupt(f"{name}: not a regular file of at most {stored_max} bytes")
            return f.read()

    def open_object(self, name, aad, limit, stored_max):
        obj = self.read_stored(name, stored_max)
        if len(obj) < 2:
            raise Corrupt(f"{name}: {len(obj)} bytes")
        if obj[0] == 1 and self.aead is None:
            inner = obj[1:]
        elif obj[0] == 2 and self.aead is not None:
            try:
                inner = self.aead.decrypt(obj[1:1 + NONCE], obj[1 + NONCE:], aad.encode())
            except InvalidTag:
                raise Corrupt(f"{name}: authentication failed") from None
        else:
            raise Corrupt(f"{name}: envelope {obj[0]} in this repository")
        try:
            if inner[:1] == b"\x01":
                return unzstd(inner[1:], limit)
            if inner[:1] != b"\x00":
                raise Corrupt(f"compression {inner[:1].hex()}")
            if len(inner) - 1 > limit:
                raise Corrupt(f"more than {limit} bytes")
            return inner[1:]
        except Corrupt as e:
            raise Corrupt(f"{name}: {e}") from None

    def chunk(self, cid):
        if not CHUNK_ID.fullmatch(cid):
            raise Corrupt(f"chunk id {cid!r}")
        data = self.open_object(f"chunks/{cid[:2]}/{cid}", "chunk:" + cid, MAX_CHUNK, STORED_MAX["chunk"])
        if blake3_hex(data, self.id_key) != cid:
            raise Corrupt(f"chunk {cid}: content does not match its id")
        return data

    def patch_chunk(self, cid):
        if cid not in self.patch_chunks:
            if len(self.patch_chunks) == PATCH_CACHE:
                del self.patch_chunks[next(iter(self.patch_chunks))]
            self.patch_chunks[cid] = self.chunk(cid)
        return self.patch_chunks[cid]

    def backups(self):
        """The valid backup ids directly under backups/; other names are not ours."""
        d = os.path.join(self.root, "backups")
        names = os.listdir(d) if os.path.isdir(d) else []
        return sorted(n for n in names if BACKUP_ID.fullmatch(n) and os.path.isfile(os.path.join(d, n)))

    def manifest(self, bid):
        if not BACKUP_ID.fullmatch(bid):
            sys.exit(f"backup id {bid!r} is not valid")
        m = json.loads(self.open_object("backups/" + bid, "manifest:" + bid, MAX_METADATA, STORED_MAX["manifest"]))
        size, cs, chunks = m["size"], m["chunk_size"], m["chunks"]
        if m["version"] != 1 or m["id"] != bid or cs <= 0 or size < 0 or len(chunks) != -(-size // cs):
            raise Corrupt(f"manifest {bid}: version, id or chunk count wrong")
        m["patches"] = {int(k): v for k, v in (m.get("patches") or {}).items()}
        if any(not 0 <= i < len(chunks) or not ps for i, ps in m["patches"].items()):
            raise Corrupt(f"manifest {bid}: patches of a position the disk does not have")
        return m

    def position(self, m, i):
        """The content of chunk position i: its base chunk or zeroes, patches laid over."""
        n = min(m["chunk_size"], m["size"] - i * m["chunk_size"])
        base = m["chunks"][i]
        data = bytearray(self.chunk(base)) if base else bytearray(n)
        if len(data) != n:
            raise Corrupt(f"chunk {base}: {len(data)} bytes, position {i} is {n}")
        end = 0
        for p in m["patches"].get(i, []):
            off, length = p["offset"], p["length"]
            src_id, src_off = p.get("chunk") or "", p.get("chunk_offset") or 0
            if length <= 0 or off < end or off + length > n or src_off < 0 or (not src_id and src_off):
                raise Corrupt(f"position {i}: patch {p} out of order or out of range")
            end = off + length
            if not src_id:
                data[off:end] = bytes(length)
                continue
            src = self.patch_chunk(src_id)
            if src_off + length > len(src):
                raise Corrupt(f"chunk {src_id}: {len(src)} bytes, a patch takes {length} at {src_off}")
            data[off:end] = src[src_off:src_off + length]
        return data

    def restore(self, bid, out):
        m = self.manifest(bid)
        with open(out, "wb") as f:
            f.truncate(m["size"])  # positions that read as zeroes stay holes
            for i, base in enumerate(m["chunks"]):
                if base or i in m["patches"]:
                    f.seek(i * m["chunk_size"])
                    f.write(self.position(m, i))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--key-file")
    ap.add_argument("repository")
    ap.add_argument("backup", nargs="?")
    ap.add_argument("output", nargs="?")
    a = ap.parse_args()
    if (a.backup is None) != (a.output is None):
        ap.error("give both BACKUP and OUTPUT, or neither")
    repo = Repository(a.repository, read_key(a.key_file))
    try:
        if a.backup is None:
            for bid in repo.backups():
                m = repo.manifest(bid)
                print(bid, m["disk"], m["kind"], m["size"], m.get("parent") or "-")
        else:
            repo.restore(a.backup, a.output)
    except Corrupt as e:
        sys.exit(f"corrupt repository: {e}")


if __name__ == "__main__":
    main()
