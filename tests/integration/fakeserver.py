"""A scripted fake IMAP server for hostile-server tests (Python stdlib only).

It speaks plain TCP on a free loopback port (use the client's tls=none),
logs in any LOGIN or AUTHENTICATE PLAIN (with or without SASL-IR), answers
CAPABILITY, ENABLE, NOOP, IDLE and LOGOUT sanely, and hands every other
command to the behaviour table of a Script.  A behaviour is a list of
actions:

    b"..."            bytes written as they are; every b"@TAG@" becomes the
                      tag of the command being answered
    Pause(seconds)    sleep
    CLOSE             close the connection (the session ends)
    HANG              never answer again; keep reading until the client goes
    DEFAULT           the built-in answer (untagged data and tagged OK)
    DEFAULT_DATA      the built-in untagged data only
    callable(ctx)     returns a list of actions (ctx: Ctx below)

The built-in answers come from a small model (Folder, Msg): LIST, SELECT /
EXAMINE, STATUS, UID FETCH (metadata, flags, BODY.PEEK[] and ranges), UID
SEARCH, APPEND, UID COPY / MOVE / STORE / EXPUNGE.  UID FETCH is split into
three behaviour keys by what it asks for: FETCH_BODY (BODY[] or
BODY.PEEK[], whole or a range), FETCH_META (RFC822.SIZE) and FETCH_FLAGS
(anything else).

Everything the server received is in server.log as (connection, command
line) pairs; every whole body it served from the model is in
server.served[uid].
"""

import re
import socket
import threading
import time
import zlib

DEFAULT_CAPS = "IMAP4rev1 AUTH=PLAIN SASL-IR UIDPLUS MOVE"


class Pause:
    def __init__(self, seconds):
        self.seconds = seconds

    def __repr__(self):
        return "Pause(%r)" % self.seconds


class _Marker:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


CLOSE = _Marker("CLOSE")
HANG = _Marker("HANG")
DEFAULT = _Marker("DEFAULT")
DEFAULT_DATA = _Marker("DEFAULT_DATA")
# From here on the session speaks raw deflate both ways (RFC 4978).
DEFLATE = _Marker("DEFLATE")


def ok(*data, code=b""):
    """Untagged data lines, then a tagged OK."""
    return list(data) + [b"@TAG@ OK " + (b"[" + code + b"] " if code else b"") + b"done\r\n"]


# ---- the model ---------------------------------------------------------------------


class Msg:
    """One message.  size defaults to len(body); subject_block (what
    BODY[HEADER.FIELDS (SUBJECT)] returns) defaults to the Subject field of
    body, with the empty line."""

    def __init__(self, uid, body, flags=b"\\Seen", date=b"20-Nov-2023 09:51:50 +0000",
                 size=None, subject_block=None):
        self.uid, self.body, self.flags, self.date = uid, body, flags, date
        self.size = len(body) if size is None else size
        self.subject_block = (subject_field(body) if subject_block is None
                              else subject_block)


def subject_field(body):
    head = body.split(b"\r\n\r\n", 1)[0]
    out, taking = [], False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and taking:
            out.append(line)
            continue
        taking = line.lower().startswith(b"subject:")
        if taking:
            out.append(line)
    return (b"\r\n".join(out) + b"\r\n" if out else b"") + b"\r\n"


class Folder:
    def __init__(self, raw, msgs=(), delim=b'"/"', attrs=b"\\HasNoChildren", uidvalidity=7):
        self.raw = raw          # the name as it goes in LIST (bytes, already quoted if needed)
        self.msgs = list(msgs)
        self.delim = delim
        self.attrs = attrs
        self.uidvalidity = uidvalidity

    def name(self):
        """The mailbox name the client will send back (unquoted)."""
        r = self.raw
        if r.startswith(b'"') and r.endswith(b'"'):
            return re.sub(rb"\\(.)", rb"\1", r[1:-1])
        return r


def default_folders():
    return [Folder(b"INBOX", [
        Msg(1, b"From: alice@example.org\r\nSubject: Hello there\r\n\r\nHello, world.\r\n"),
        Msg(2, b"From: bob@example.org\r\nSubject: Second one\r\n\r\nAnother body\r\n",
            flags=b""),
    ])]


class Script:
    """One behaviour of the server.  on: {key: actions}; keys are command
    verbs (LIST, SELECT, STATUS, SEARCH, APPEND, COPY, MOVE, STORE, EXPUNGE,
    LOGIN, AUTHENTICATE, NOOP, ...) and FETCH_BODY / FETCH_META /
    FETCH_FLAGS.  greeting: bytes or a list of actions."""

    def __init__(self, greeting=None, caps=DEFAULT_CAPS, folders=None, on=None):
        self.caps = caps
        self.greeting = (greeting if greeting is not None else
                         b"* OK [CAPABILITY " + caps.encode() + b"] fake IMAP ready\r\n")
        self.folders = default_folders() if folders is None else folders
        self.on = dict(on or {})


# ---- parsing what the client sends -------------------------------------------------


class Command:
    def __init__(self, parts):
        self.parts = parts          # [line, literal, line, literal, ...] without CRLF
        self.line = parts[0]
        words = self.line.split(b" ")
        self.tag = words[0]
        self.verb = words[1].upper() if len(words) > 1 else b""
        self.args = words[2:]
        if self.verb == b"UID" and self.args:
            self.verb = b"UID " + self.args[0].upper()
            self.args = self.args[1:]
        self.rest = b" ".join(self.args)

    def text(self):
        return b"".join(p if i % 2 == 0 else b"{%d}" % len(p) for i, p in enumerate(self.parts))

    def mailbox(self):
        """The first argument as a mailbox name (atom, quoted or literal)."""
        if len(self.parts) > 1 and re.search(rb"\{\d+\+?\}$", self.line):
            return self.parts[1]
        r = self.rest
        if r.startswith(b'"'):
            m = re.match(rb'"((?:[^"\\]|\\.)*)"', r)
            return re.sub(rb"\\(.)", rb"\1", m.group(1)) if m else r
        return r.split(b" ")[0]


def parse_set(text, max_uid):
    """A UID set -> list of (lo, hi) with '*' as max_uid (RFC 3501: a:b is
    the same as b:a; n:* with n above every UID still means the highest)."""
    out = []
    for piece in text.split(b","):
        ends = piece.split(b":")
        try:
            vals = [max_uid if e == b"*" else int(e) for e in ends]
        except ValueError:
            continue
        lo, hi = min(vals), max(vals)
        out.append((lo, hi))
    return out


def in_set(uid, ranges):
    return any(lo <= uid <= hi for lo, hi in ranges)


def fetch_items(cmd):
    """(set text, items text) of a UID FETCH."""
    rest = cmd.rest
    sp = rest.find(b" ")
    uidset, items = (rest, b"") if sp < 0 else (rest[:sp], rest[sp + 1:])
    if items.startswith(b"("):
        depth = 0
        for i, c in enumerate(items):
            if c == 40:
                depth += 1
            elif c == 41:
                depth -= 1
                if depth == 0:
                    items = items[1:i]
                    break
    return uidset, items


def fetch_kind(items):
    up = items.upper()
    if re.search(rb"BODY(\.PEEK)?\[\]", up):
        return "FETCH_BODY"
    if b"RFC822.SIZE" in up:
        return "FETCH_META"
    return "FETCH_FLAGS"


class Ctx:
    """What a callable action sees."""

    def __init__(self, session, cmd):
        # cmd is None for the greeting
        self.session, self.cmd = session, cmd
        self.tag = cmd.tag if cmd else b"*"
        self.server = session.server
        self.script = session.server.script
        self.conn = session.number


# ---- the server --------------------------------------------------------------------


class FakeServer:
    """Start with start(); stop() closes everything.  Use as a context
    manager.  One thread per connection."""

    MAX_LITERAL = 16 << 20
    STORM = 1000        # connections after which accepting slows down
    MAX_LOG = 20000     # commands kept in the log

    def __init__(self, script, host="127.0.0.1"):
        self.script = script
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.log = []          # (connection number, command text)
        self.served = {}       # uid -> [whole bodies sent from the model]
        self.connections = 0
        self.errors = []       # exceptions in sessions other than the client going away
        self.clients = []
        self.stopping = threading.Event()
        self.thread = None

    def start(self):
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self.stopping.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        with self.lock:
            clients = list(self.clients)
        for c in clients:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                c.close()
            except OSError:
                pass

    def commands(self, verb=None):
        """Command lines received (optionally only those with this verb)."""
        with self.lock:
            out = [t for _, t in self.log]
        if verb is None:
            return out
        v = verb.encode() if isinstance(verb, str) else verb
        return [t for t in out if Command([t]).verb == v]

    def _accept(self):
        while not self.stopping.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                n = self.connections
                self.clients = [x for x in self.clients if x.fileno() >= 0]
                self.clients.append(c)
            if n > self.STORM:
                # A client reconnecting in a loop: keep serving, slowly.
                time.sleep(0.01)
            try:
                session = Session(self, c, n)
            except OSError:  # stop() closed it already
                continue
            threading.Thread(target=session.run, daemon=True).start()


class _Closed(Exception):
    pass


class Session:
    def __init__(self, server, sock, number):
        self.server, self.sock, self.number = server, sock, number
        self.buf = b""
        self.selected = None
        self.z_out = self.z_in = None
        sock.settimeout(60)

    # -- I/O
    def send(self, data):
        if self.z_out:
            data = self.z_out.compress(data) + self.z_out.flush(zlib.Z_SYNC_FLUSH)
        try:
            self.sock.sendall(data)
        except OSError:
            raise _Closed()

    def raw_garbage(self):
        """Bytes that are no deflate stream, past the compressor."""
        try:
            self.sock.sendall(bytes(range(256)) * 4)
        except OSError:
            raise _Closed()
        return []

    def end_deflate(self):
        """Finish the compressed stream (a final block) and go on writing."""
        try:
            self.sock.sendall(self.z_out.flush(zlib.Z_FINISH))
        except OSError:
            raise _Closed()
        self.z_out = zlib.compressobj(wbits=-15)
        return []

    def recv_more(self):
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise _Closed()
        except OSError:
            raise _Closed()
        if not data:
            raise _Closed()
        if self.z_in:
            try:
                data = self.z_in.decompress(data)
            except zlib.error:
                raise _Closed()
        self.buf += data

    def read_line(self):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[:i + 1], self.buf[i + 1:]
                return line.rstrip(b"\r\n")
            if len(self.buf) > (1 << 20):
                raise _Closed()
            self.recv_more()

    def read_bytes(self, n):
        while len(self.buf) < n:
            self.recv_more()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_command(self):
        parts = []
        while True:
            line = self.read_line()
            parts.append(line)
            m = re.search(rb"\{(\d+)(\+?)\}$", line)
            if not m or int(m.group(1)) > FakeServer.MAX_LITERAL:
                return Command(parts)
            if not m.group(2):
                self.send(b"+ go ahead\r\n")
            parts.append(self.read_bytes(int(m.group(1))))

    def hang(self):
        while not self.server.stopping.is_set():
            self.recv_more()
            self.buf = b""

    # -- actions
    def play(self, actions, cmd):
        for a in actions:
            if isinstance(a, (bytes, bytearray)):
                self.send(bytes(a).replace(b"@TAG@", cmd.tag if cmd else b"*"))
            elif isinstance(a, Pause):
                time.sleep(a.seconds)
            elif a is CLOSE:
                raise _Closed()
            elif a is DEFLATE:
                self.z_out = zlib.compressobj(wbits=-15)
                self.z_in = zlib.decompressobj(wbits=-15)
            elif a is HANG:
                self.hang()
                raise _Closed()
            elif a is DEFAULT or a is DEFAULT_DATA:
                out = self.default(cmd)
                self.play(out if a is DEFAULT else out[:-1], cmd)
            elif callable(a):
                self.play(a(Ctx(self, cmd)), cmd)
            else:
                raise TypeError("bad action %r" % (a,))

    def run(self):
        try:
            g = self.server.script.greeting
            self.play(g if isinstance(g, list) else [g], None)
            while not self.server.stopping.is_set():
                cmd = self.read_command()
                with self.server.lock:
                    if len(self.server.log) < self.server.MAX_LOG:
                        self.server.log.append((self.number, cmd.text()))
                self.dispatch(cmd)
        except _Closed:
            pass
        except Exception as e:  # a bug in a script: keep it for the test
            with self.server.lock:
                self.server.errors.append("%s: %r" % (type(e).__name__, e))
        finally:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()

    def dispatch(self, cmd):
        script = self.server.script
        v = cmd.verb
        key = v.decode("latin-1")
        if v == b"UID FETCH":
            key = fetch_kind(fetch_items(cmd)[1])
        elif v.startswith(b"UID "):
            key = v[4:].decode("latin-1")
        if v == b"AUTHENTICATE" and len(cmd.args) < 2 and key not in script.on:
            # PLAIN without SASL-IR: ask for the initial response
            self.send(b"+ \r\n")
            self.read_line()
        if v in (b"SELECT", b"EXAMINE"):
            self.selected = cmd.mailbox()
        actions = script.on.get(key)
        if actions is None:
            actions = [DEFAULT]
        elif callable(actions):
            actions = [actions]
        if v == b"LOGOUT" and key not in script.on:
            self.send(b"* BYE logging out\r\n" + cmd.tag + b" OK bye\r\n")
            raise _Closed()
        if v == b"IDLE" and key not in script.on:
            self.send(b"+ idling\r\n")
            while self.read_line().upper() != b"DONE":
                pass
            actions = [b"@TAG@ OK idle done\r\n"]
        self.play(actions, cmd)

    # -- the built-in answers (a list of byte chunks; the last is the tagged line)
    def folder(self, name=None):
        name = self.selected if name is None else name
        for f in self.server.script.folders:
            if f.name() == name or (name and f.name().upper() == b"INBOX" == name.upper()):
                return f
        return None

    def default(self, cmd):
        v = cmd.verb
        tagged_ok = b"@TAG@ OK %s completed\r\n" % v
        caps = self.server.script.caps.encode()
        if v == b"CAPABILITY":
            return [b"* CAPABILITY " + caps + b"\r\n", tagged_ok]
        if v in (b"LOGIN", b"AUTHENTICATE"):
            return [b"@TAG@ OK [CAPABILITY " + caps + b"] logged in\r\n"]
        if v == b"ENABLE":
            want = [a for a in cmd.args if a.upper() in caps.upper().split()]
            return [b"* ENABLED " + b" ".join(want) + b"\r\n", tagged_ok]
        if v == b"LIST" or v == b"LSUB":
            return [b"* %s (%s) %s %s\r\n" % (v, f.attrs, f.delim, f.raw)
                    for f in self.server.script.folders] + [tagged_ok]
        if v in (b"SELECT", b"EXAMINE"):
            f = self.folder()
            msgs = f.msgs if f else []
            uv = f.uidvalidity if f else 1
            nxt = max([m.uid for m in msgs] + [0]) + 1
            return [b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n",
                    b"* %d EXISTS\r\n" % len(msgs), b"* 0 RECENT\r\n",
                    b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % uv,
                    b"* OK [UIDNEXT %d] predicted\r\n" % nxt,
                    b"@TAG@ OK [READ-WRITE] %s completed\r\n" % v]
        if v == b"STATUS":
            name = cmd.mailbox()
            f = self.folder(name)
            msgs = f.msgs if f else []
            nxt = max([m.uid for m in msgs] + [0]) + 1
            quoted = b'"' + name.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
            return [b"* STATUS %s (MESSAGES %d UIDNEXT %d UIDVALIDITY %d)\r\n"
                    % (quoted, len(msgs), nxt, f.uidvalidity if f else 1), tagged_ok]
        if v == b"UID FETCH":
            return self.default_fetch(cmd) + [tagged_ok]
        if v == b"UID SEARCH":
            f = self.folder()
            uids = b" ".join(b"%d" % m.uid for m in (f.msgs if f else []))
            return [b"* SEARCH" + (b" " + uids if uids else b"") + b"\r\n", tagged_ok]
        if v == b"APPEND":
            return [b"@TAG@ OK [APPENDUID 7 100] APPEND completed\r\n"]
        if v == b"UID COPY":
            return [b"@TAG@ OK [COPYUID 7 1 100] COPY completed\r\n"]
        if v == b"UID MOVE":
            return [b"* OK [COPYUID 7 1 100] moved\r\n", b"* 1 EXPUNGE\r\n", tagged_ok]
        if v == b"NOOP" or v == b"CHECK" or v.startswith(b"UID ") or v in (
                b"CREATE", b"DELETE", b"RENAME", b"SUBSCRIBE", b"UNSUBSCRIBE"):
            return [tagged_ok]
        return [b"@TAG@ BAD unknown command\r\n"]

    def default_fetch(self, cmd):
        f = self.folder()
        if not f:
            return []
        uidset, items = fetch_items(cmd)
        max_uid = max([m.uid for m in f.msgs] + [0])
        ranges = parse_set(uidset, max_uid)
        kind = fetch_kind(items)
        up = items.upper()
        out = []
        for seq, m in enumerate(f.msgs, 1):
            if not in_set(m.uid, ranges):
                continue
            its = [b"UID %d" % m.uid]
            if kind == "FETCH_BODY":
                rng = re.search(rb"BODY(?:\.PEEK)?\[\]<(\d+)\.(\d+)>", up)
                if rng:
                    off, n = int(rng.group(1)), int(rng.group(2))
                    part = m.body[off:off + n]
                    its.append(b"BODY[]<%d> {%d}\r\n" % (off, len(part)) + part)
                else:
                    its.append(b"BODY[] {%d}\r\n" % len(m.body) + m.body)
                    with self.server.lock:
                        self.server.served.setdefault(m.uid, []).append(m.body)
            else:
                its.append(b"FLAGS (%s)" % m.flags)
                if b"MODSEQ" in up:
                    its.append(b"MODSEQ (1)")
                if kind == "FETCH_META":
                    its.append(b"RFC822.SIZE %d" % m.size)
                    its.append(b'INTERNALDATE "%s"' % m.date)
                    if b"HEADER.FIELDS" in up:
                        sb = m.subject_block
                        its.append(b"BODY[HEADER.FIELDS (SUBJECT)] {%d}\r\n" % len(sb) + sb)
            out.append(b"* %d FETCH (" % seq + b" ".join(its) + b")\r\n")
        return out


if __name__ == "__main__":
    # A quick manual look: python3 fakeserver.py, then talk to it.
    s = FakeServer(Script()).start()
    print("listening on 127.0.0.1:%d" % s.port)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        s.stop()
