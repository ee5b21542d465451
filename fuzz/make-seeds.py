#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/.

Frames are encoded by hand in postcard's format (varints, length-prefixed
bytes, enum variant indexes), the way cfi-sync's FrameWriter writes them;
the other seeds are small files of each format. Run from anywhere:
`python3 fuzz/make-seeds.py`; it rewrites the corpus.
"""

import os
import shutil
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def zigzag(n):
    return varint((n << 1) ^ (n >> 63))


def blob(b):
    return varint(len(b)) + b


def text(s):
    return blob(s.encode())


def frame(body):
    return struct.pack(">I", len(body)) + body


MAGIC = b"cfi-sync"
DIGEST = bytes(range(32))


def entry(path, kind, mode=0o644, size=0):
    return (
        blob(path)
        + kind
        + varint(mode)
        + varint(0)
        + varint(0)
        + varint(size)
        + zigzag(1_700_000_000)
        + varint(123)
        + blob(bytes(32))
    )


DIR, FILE = varint(0), varint(1)


def symlink(target):
    return varint(2) + blob(target)


# ToAgent variants: Hello, Manifest, Removed, ManifestEnd, Data, Unreadable, Commit.
def to_hello(mode=1, dry=0, entries=3):
    return varint(0) + MAGIC + varint(1) + bytes([dry]) + DIGEST + varint(entries) + varint(mode)


to_manifest = varint(1) + varint(3) + entry(b"etc", DIR, 0o755) + entry(
    b"etc/motd", FILE, 0o644, 12
) + entry(b"etc/link", symlink(b"motd"), 0o777)
to_removed = varint(2) + varint(2) + blob(b"etc/old") + blob(b"usr/local/bin/x")
to_end = varint(3)
# Data { index, encoding (Whole, Raw, Delta), chunk, last }
to_data = varint(4) + varint(1) + varint(1) + blob(b"hello world\n") + b"\x01"
to_data_zstd = varint(4) + varint(1) + varint(0) + blob(bytes.fromhex("28b52ffd0058310000")) + b"\x00"
to_unreadable = varint(5) + varint(2) + text("permission denied")
to_commit = varint(6)

# FromAgent variants: Hello, Need, NeedEnd, Report, Failed.
from_hello_none = varint(0) + MAGIC + varint(1) + b"\x00"
from_hello_some = varint(0) + MAGIC + varint(1) + b"\x01" + DIGEST
from_need = varint(1) + varint(2) + varint(1) + b"\x00" + varint(2) + b"\x01" + blob(b"\x72\x73\x01\x36" + bytes(12))
from_need_end = varint(2)
report = (
    b"\x00"  # dry_run
    + varint(1) + varint(2) + varint(0) + varint(0) + varint(1) + varint(0)
    + varint(1) + text("etc/motd")  # drift
    + varint(2)  # files_hashed
    + varint(1)  # manifest: Full
    + varint(1) + text("etc/motd") + varint(1) + b"\x01" + text("-a\n+b\n")  # changes
    + varint(1) + text("etc/x") + text("permission denied")  # errors
    + varint(4096) + varint(512)
)
from_report = varint(3) + report
from_failed = varint(4) + text("cannot open /etc: permission denied")

TO, FROM = b"\x00", b"\x01"  # selector: even = ToAgent, odd = FromAgent
TO_TRICKLE, FROM_TRICKLE = b"\x06", b"\x07"  # 4-byte reads

frames = {
    "to-hello-full": TO + frame(to_hello()),
    "to-hello-unchanged": TO + frame(to_hello(mode=0, entries=0)),
    "to-pass-full": TO
    + b"".join(frame(m) for m in [to_hello(), to_manifest, to_end, to_data, to_data_zstd, to_unreadable, to_commit]),
    "to-pass-delta-trickle": TO_TRICKLE
    + b"".join(frame(m) for m in [to_hello(mode=2, dry=1), to_manifest, to_removed, to_end, to_commit]),
    "to-oversize": TO + struct.pack(">I", (8 << 20) + 1),
    "to-truncated": TO + frame(to_manifest)[:-5],
    "from-pass": FROM
    + b"".join(frame(m) for m in [from_hello_some, from_need, from_need_end, from_report]),
    "from-hello-trickle": FROM_TRICKLE + frame(from_hello_none) + frame(from_failed),
    "from-garbage": FROM + frame(b"\xff\xff\xff\xff"),
}

# TXT RDATA: a selector byte (even: client record, odd: server record),
# then length-prefixed strings.
KEY_LINE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIjTGyvgr5fjTwlZ+kdHXc6fwsv38sVGDrCUhvmAavZ9"
FP = "SHA256:qQ3wLLVSUKAKzdAkLa6Hrl9mQsxkuD9Kvs68RHbl5xU"
SIG = "A" * 86 + "=="
MACHINE = "4c4c4544003510508034b4c04f4d4e32"


def rdata(*strings):
    return b"".join(bytes([len(s)]) + s for s in (x.encode() if isinstance(x, str) else x for x in strings))


txt = {
    "client-full": b"\x00" + rdata("v=1", "id=" + MACHINE, "group=lab", "hostkey=" + FP),
    "client-bare": b"\x00" + rdata("v=1", "id=" + MACHINE),
    "client-bad-group": b"\x00" + rdata("v=1", "id=" + MACHINE, "group=Not A Group", "x=y"),
    "client-bool-group": b"\x00" + rdata("V=1", "ID=" + MACHINE, "group", "group=later"),
    "client-not-utf8": b"\x00" + rdata("v=1", b"id=\xff\xfe", b"gr\xffoup=x"),
    "client-wrong-version": b"\x00" + rdata("v=2", "id=" + MACHINE),
    "server-plain": b"\x01" + rdata("v=1", "key=" + KEY_LINE, "fp=" + FP),
    "server-rotation": b"\x01" + rdata("v=1", "key=" + KEY_LINE, "fp=" + FP, "prev=" + FP, "rot=" + SIG),
    "server-half-rotation": b"\x01" + rdata("v=1", "key=" + KEY_LINE, "fp=" + FP, "rot=" + SIG),
    "server-mismatch": b"\x01" + rdata("v=1", "key=" + KEY_LINE, "fp=SHA256:" + "A" * 43),
}

pkglist = {
    "three-lists": b"vim # editor\nopenssh-server\nlibc6:i386\nmeta:current-kernel\n\0"
    b"*\nlib*:amd64\n\0telnet\nrsh-*\nvim:arm*\n",
    "crlf-bom": b"\xef\xbb\xbfvim\r\n\tnano  \r\n# comment \xe9\r\nfoo:any\r\n",
    "globs": b"python3-[a-z]*\nlib?c\n[!x]y*\nfoo:[a-z]*86\n\0\0",
    "conflicts": b"telnet\nfoo:i386\n\0foo\n\0telnet\nfoo:amd64\nfoo:i386\n",
    "bad-lines": b"vim editor\nUPPER\nmeta:other\ndebtags:role::x\nfoo:native\na:b:c\nx\n\xff\xfe\n",
    "duplicates": b"vim\nvim\nvim:any\nvim:any\n",
}

SERVER_TOML = b"""data_dir = "/var/lib/cfi"
accept = "manual"
ssh_user = "root"
connect_timeout = 5
pkgs_timeout = 1800
pkgs_lock_timeout = 120
mdns_interfaces = ["eth0"]
mdns_name = "lab server"
"""
CLIENT_TOML = b"""group = "lab"
trust = "pinned"
server_fingerprint = "SHA256:qQ3wLLVSUKAKzdAkLa6Hrl9mQsxkuD9Kvs68RHbl5xU"
ssh_port = 2222
agent_command = "/usr/lib/cfi/cfi-agent --log info"
interfaces = ["eth0", "wlan0"]
"""
config = {
    # selector % 5: 0 server.toml, 1 client.toml, 2 clients, 3 dsh list, 4 example
    "server-toml": b"\x00" + SERVER_TOML,
    "server-toml-bad": b"\x00" + b"keepalive = 0\nunknown_key = 1\n",
    "server-toml-syntax": b"\x00" + b"[section\nssh_user = 'a b'\n",
    "client-toml": b"\x01" + CLIENT_TOML,
    "client-toml-bad": b"\x01" + b'trust = "any"\nserver_fingerprint = "x"\nagent_command = "/bin/sh"\n',
    "clients": b"\x02# host[:port] [group]\nlab-01 lab\n10.0.0.12:2222 render\n[fd00::7]:22 lab\nkiosk-3\n",
    "clients-bad": b"\x02lab-01 lab extra\n-bad-\nfd00::7\n[fd00::7\n10.0.0.1:0\nlab-01\nlab-01:22\n",
    "dsh": b"\x03root@lab-01\nlab-02:2222\n[fd00::1]\n# comment\n\nuser@10.0.0.3\n",
    "example": b"\x04# data_dir = \"/var/lib/cfi\"\n# A comment\n#no = space\nkey = 1\n",
}

AGENT = b"/usr/lib/cfi/cfi-agent"
COMMENT = b"cfi-server@lab"
KEYB = b"AAAAC3NzaC1lZDI1NTE5AAAAIMdK6cMVKXkmFKmhTmImeTmtnQA9P4jRxQ9ChbWzt0Dn"
CFI = b'restrict,command="/usr/lib/cfi/cfi-agent" ssh-ed25519 ' + KEYB + b" cfi-server@old"
ADMIN = b"ssh-ed25519 " + KEYB + b" admin@laptop"
keys = {
    "empty": AGENT + b"\0" + COMMENT + b"\0",
    "admin-only": AGENT + b"\0" + COMMENT + b"\0" + ADMIN + b"\n# comment\n\n",
    "no-final-newline": AGENT + b"\0" + COMMENT + b"\0" + ADMIN,
    "replace": AGENT + b"\0" + COMMENT + b"\0" + ADMIN + b"\r\n" + CFI + b"\r\n" + b"\xff\xfe latin\n",
    "two-cfi-lines": AGENT + b"\0" + COMMENT + b"\0" + CFI + b"\n" + ADMIN + b"\n" + CFI + b"\n",
    "lookalikes": b"/opt/cfi-agent --x\0cfi-server@host.example\0"
    + b"cfi-server@old " + ADMIN + b"\n"
    + b'command="/usr/bin/cfi-agent" ' + ADMIN + b"\n"
    + b'  COMMAND="/x/cfi-agent \\"q\\"",no-pty ssh-ed25519 ' + KEYB + b" cfi-server@x\n"
    + b"#" + CFI + b"\n",
    "bad-command": b'/bin/sh -c "x"\0cfi-server@lab\0' + CFI,
    # Finding 1: a Unicode space after the program (U+2003).
    "finding-unicode-space": "\u2003\u2003\u2003cfi-agent\u2003".encode() + b"\x80\x83\xe2\x80\x83\xe2",
}


def write(target, seeds):
    d = os.path.join(ROOT, target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


write("frame", frames)
write("txt_record", txt)
write("pkglist", pkglist)
write("config", config)
write("authorized_keys", keys)
