"""Helpers for test_write.py: an imaplib client for any server (the fixture's
or one the test starts itself), the expected state of the folders a test
owns, what a session sent (parsed from a recording proxy or Dovecot's
rawlog), and a proxy that cuts the connection at a chosen command or byte.

Python standard library only.  Nothing here trusts imapfs: the server's
state always comes from imaplib with EXAMINE and BODY.PEEK.
"""

import glob
import hashlib
import imaplib
import os
import re
import ssl
import threading
import time

from helpers import Server, ServerError, short
from proxy import Proxy  # tests/fixture must be on sys.path (test_write.py puts it there)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def crlf(data):
    """The form IMAP stores: every bare LF becomes CRLF."""
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


class Srv(Server):
    """helpers.Server for an explicit server (host, port, CA, user, password),
    plus the few writes a test makes as "another client"."""

    def __init__(self, host, port, cafile, user, password, timeout=60):
        ctx = ssl.create_default_context(cafile=cafile)
        self.m = imaplib.IMAP4_SSL(host, port, ssl_context=ctx, timeout=timeout)
        typ, data = self.m.login(user, password)
        if typ != "OK":
            raise ServerError("LOGIN: %s %r" % (typ, data))

    def raws(self):
        """Set of raw folder names from LIST."""
        return {f.raw for f in self.list()}

    def contents(self, raw):
        """{uid: (sha256, frozenset(flags), internaldate, size)}."""
        meta = self.metadata(raw)
        if not meta:
            return {}
        bodies = self.bodies(raw)
        out = {}
        for uid, msg in meta.items():
            body = bodies.get(uid)
            out[uid] = (sha(body) if body is not None else None, msg.flags,
                        msg.internaldate, msg.size)
        return out

    def body(self, raw, uid):
        return self.bodies(raw, [uid]).get(uid)

    def add(self, raw, data, flags=(), date=None):
        uid = self.append(raw, data, flags, date)
        if uid is None:
            raise ServerError("APPEND to %s: no APPENDUID" % raw)
        return uid


def make_message(subject, body, date, extra=(), lf=False):
    """A small RFC 5322 message (CRLF unless lf)."""
    lines = [b"From: Writer Test <writer@example.org>", b"To: Bob <bob@example.org>",
             b"Subject: " + subject.encode(),
             b"Date: " + time.strftime("%a, %d %b %Y %H:%M:%S +0000",
                                       time.gmtime(date)).encode(),
             b"Message-ID: <%s@write.imapfs.test>" % sha(subject.encode() + body)[:16].encode(),
             b"MIME-Version: 1.0", b"Content-Type: text/plain; charset=us-ascii"]
    lines += list(extra)
    nl = b"\n" if lf else b"\r\n"
    text = nl.join(lines) + nl + nl + body.replace(b"\r\n", b"\n").replace(b"\n", nl)
    if not text.endswith(nl):
        text += nl
    return text


def slug_of(subject):
    """The slug of a plain ASCII subject (letters, digits, single spaces)."""
    return re.sub(r"[^A-Za-z0-9\-+=@,]", "_", subject)


def canonical_name(internaldate, subject, uid):
    return "%s_%s.%d.eml" % (time.strftime("%Y-%m-%d_%H%M", time.gmtime(internaldate)),
                             slug_of(subject), uid)


# ---- expected state of owned folders ------------------------------------------------


class Expect:
    """The expected server state of the folders a test owns:
    known[raw] = {uid: (sha, flags, label)}; pending[raw] = [(sha, flags,
    label)] for messages that must appear with a new UID (above every UID
    the folder had); `either` entries: a message that must be in at least
    one of several places (fault tests)."""

    def __init__(self):
        self.known = {}
        self.pending = {}
        self.maxuid = {}
        self.labels = {}

    def folder(self, raw):
        self.known.setdefault(raw, {})
        self.pending.setdefault(raw, [])
        self.maxuid.setdefault(raw, 0)

    def drop_folder(self, raw):
        for d in (self.known, self.pending, self.maxuid):
            d.pop(raw, None)

    def rename_folder(self, old, new):
        for d in (self.known, self.pending, self.maxuid):
            if old in d:
                d[new] = d.pop(old)

    def have(self, raw, uid, digest, flags, label):
        self.folder(raw)
        self.known[raw][uid] = (digest, frozenset(flags), label)
        self.maxuid[raw] = max(self.maxuid[raw], uid)

    def gone(self, raw, uid):
        return self.known[raw].pop(uid)

    def arrive(self, raw, digest, flags, label):
        self.folder(raw)
        self.pending[raw].append((digest, None if flags is None else frozenset(flags), label))

    def set_flags(self, raw, uid, flags):
        d, _, label = self.known[raw][uid]
        self.known[raw][uid] = (d, frozenset(flags), label)

    def find(self, raw, label):
        for uid, (_, _, lab) in self.known.get(raw, {}).items():
            if lab == label:
                return uid
        return None

    def compare(self, srv, raws=None):
        """Problems (strings) between the server and the expectation, and
        {label: (raw, uid)} of the pending messages found.  Changes nothing:
        commit() makes the found messages known."""
        problems, found = [], {}
        for raw in sorted(raws if raws is not None else self.known):
            try:
                got = srv.contents(raw)
            except Exception as e:
                problems.append("%s: cannot read the folder: %s" % (raw, short(str(e), 200)))
                continue
            known, pending = self.known.get(raw, {}), self.pending.get(raw, [])
            rest = dict(got)
            for uid, (digest, flags, label) in sorted(known.items()):
                if uid not in got:
                    problems.append("%s: UID %d (%s) is missing on the server" % (raw, uid, label))
                    continue
                gd, gf = got[uid][0], got[uid][1]
                if gd != digest:
                    problems.append("%s: UID %d (%s) has other bytes (sha256 %s, expected %s)"
                                    % (raw, uid, label, (gd or "?")[:12], digest[:12]))
                if gf != flags:
                    problems.append("%s: UID %d (%s) flags %s, expected %s"
                                    % (raw, uid, label, sorted(gf), sorted(flags)))
                rest.pop(uid, None)
            for digest, flags, label in pending:
                cand = [u for u, v in sorted(rest.items()) if v[0] == digest]
                if not cand:
                    problems.append("%s: the message %s (sha256 %s) is not there"
                                    % (raw, label, digest[:12]))
                    continue
                uid = cand[0]
                gf = rest.pop(uid)[1]
                if uid <= self.maxuid.get(raw, 0):
                    problems.append("%s: %s is there with UID %d, not above the highest "
                                    "earlier UID %d" % (raw, label, uid, self.maxuid[raw]))
                if flags is not None and gf != flags:
                    problems.append("%s: new UID %d (%s) flags %s, expected %s"
                                    % (raw, uid, label, sorted(gf), sorted(flags)))
                found[label] = (raw, uid, digest, gf)
            for uid, v in sorted(rest.items()):
                problems.append("%s: unexpected UID %d on the server (sha256 %s, %d bytes, "
                                "flags %s)" % (raw, uid, (v[0] or "?")[:12], v[3], sorted(v[1])))
        return problems, found

    def commit(self, found):
        """The pending messages found on the server become known."""
        out = {}
        for label, (raw, uid, digest, flags) in found.items():
            self.pending[raw] = [p for p in self.pending[raw] if p[2] != label]
            self.have(raw, uid, digest, flags, label)
            out[label] = (raw, uid)
        return out


# ---- what a session sent ---------------------------------------------------------


_LITERAL_RE = re.compile(rb"\{(\d+)\+?\}$")


def commands_of_stream(stream):
    """A client->server byte stream -> [command text] with literal data
    replaced by <literal N>.  An unfinished last line is kept as is."""
    return [c for c, _ in _commands_with_end(stream)]


def commands_of_proxy(px, start=None):
    """[(connection index, command)] of everything the proxy's clients sent;
    with start (proxy_offsets() taken earlier) only the commands that end
    after those offsets."""
    out = []
    with px.lock:
        streams = [b"".join(rec) for rec in px.sent]
    for k, s in enumerate(streams):
        off = start[k] if start is not None and k < len(start) else 0
        out += [(k, c) for c, end in _commands_with_end(s) if end > off]
    return out


def _commands_with_end(stream):
    """(command, offset just after it) for each command of the stream."""
    i, cur = 0, b""
    while i < len(stream):
        j = stream.find(b"\r\n", i)
        if j < 0:
            yield cur + stream[i:], len(stream)
            return
        line = stream[i:j]
        i = j + 2
        cur += line
        m = _LITERAL_RE.search(line)
        if m:
            cur += b"<literal %d>" % int(m.group(1))
            i += int(m.group(1))
            continue
        yield cur, i
        cur = b""


def proxy_offsets(px):
    with px.lock:
        return [sum(len(c) for c in rec) for rec in px.sent]


_RAWLOG_TS = re.compile(rb"^\d+\.\d+ ")


def commands_of_rawlog(d):
    """[(file, line)] of the client lines Dovecot's rawlog recorded (*.in),
    timestamps stripped.  Literal data lines are included: callers match
    command shapes that no test message contains."""
    out = []
    for path in sorted(glob.glob(os.path.join(d, "*.in"))):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        for line in data.split(b"\n"):
            out.append((os.path.basename(path), _RAWLOG_TS.sub(b"", line).rstrip(b"\r")))
    return out


def verb(cmd):
    """'a1 UID STORE 3 ...' -> 'UID STORE'; 'a2 APPEND ...' -> 'APPEND'."""
    parts = cmd.split(b" ", 3)
    if len(parts) < 2:
        return ""
    v = parts[1].upper()
    if v == b"UID" and len(parts) > 2:
        v += b" " + parts[2].upper()
    return v.decode("ascii", "replace")


def dangerous(cmd):
    """A bare EXPUNGE or a CLOSE (both remove every \\Deleted message of the
    mailbox, other clients' too)."""
    return re.match(rb"^\S+ (EXPUNGE|CLOSE)\s*$", cmd, re.I) is not None


# ---- a proxy that cuts at a command, deterministically -----------------------------------


class FaultProxy(Proxy):
    """tests/fixture/proxy.py's Proxy, plus arm(): when a client chunk
    containing `pattern` arrives, before it is forwarded,
      - "drop": every connection is cut and the chunk never reaches the
        server (the command is not executed);
      - "answer": cut_at is set to the server bytes so far + k, then the
        chunk is forwarded: the server executes the command and the
        connection dies k bytes into what it sends next (its answer).
    The decision is made in the pump thread itself, so there is no race
    with the server's answer.  fired is set when the cut happened."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.armed = None
        self.byte_limit = None
        self.fired = threading.Event()
        self.tails = {}  # client socket -> its last 64 bytes (patterns across chunks)

    def arm(self, pattern, action, k=1):
        self.fired.clear()
        self.armed = (pattern, action, k)

    def arm_bytes(self, n):
        """Cut (without forwarding the chunk that crosses it) once clients
        have sent n more bytes."""
        self.fired.clear()
        with self.lock:
            self.byte_limit = self.client_sent + n

    def disarm(self):
        self.armed = None
        self.byte_limit = None
        with self.lock:
            self.cut_at = None

    def cut(self):
        # set before the sockets close: the client sees the cut at once and
        # the test may look at fired as soon as its operation returns
        self.fired.set()
        super().cut()

    def client_chunk(self, src, data):
        with self.lock:
            if (self.byte_limit is not None and
                    self.client_sent + len(data) >= self.byte_limit):
                self.byte_limit = None
                return "cut"
        tail = self.tails.get(src, b"")
        self.tails[src] = (tail + data)[-64:]
        armed = self.armed
        if armed is None or armed[0] not in tail + data:
            return "forward"
        self.armed = None
        if armed[1] == "drop":
            return "drop"
        with self.lock:
            self.cut_at = self.server_bytes + armed[2]
        return "forward"
