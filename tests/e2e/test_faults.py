#!/usr/bin/env python3
"""Randomized connection cuts through a real imapfs mount.

Run under the fixture:

    python3 tests/fixture/dovecot.py run -- python3 tests/e2e/test_faults.py IMAPFS

imapfs is mounted (`-f -o timeout=2,poll=0`) through a loopback proxy
(tests/fixture/proxy.py) in front of the fixture's Dovecot (implicit TLS).
Each iteration picks an operation - list a folder this mount has not listed
yet, read a message it has not read yet (or one whose read failed), `mv` a
message to another folder and list the destination (which sends the batched
UID MOVE at once), or create + write + close a new .eml of 2 KB to 400 KB
(APPEND; a fifth with bare LF line ends) - and arms one cut of every
connection just before it: after a random number of server->client bytes
(`cut_at`) or client->server bytes (`cut_client_at`), from 0 to a little
beyond what the operation needs (then nothing is cut).  Every 18-26 busy
iterations the server is compared with the model and the mount is replaced
by a fresh one with an empty cache_dir, so listings and reads keep going to
the server.  The run ends once IMAPFS_FAULT_CUTS (200) cuts have happened.

The model: every message the test made (a unique body; a token in its
Subject and Message-ID), the folders it may be in with how many copies each
may hold, and whether it must exist.  A comparison first sends the pending
moves (lists their destinations), waits until the mount is quiet and takes
two equal imaplib snapshots in a row; a difference is only reported if it
is still there 2.5 s later.  Then the model becomes what the server has.

Invariants (TAP checks; each failure names the seed and the iteration):
  - no lost message: a message that existed, or whose APPEND reported
    success, exists at least once (a cut move may leave it in the source, the
    destination, or both; never in neither);
  - every message on the server is one the model explains, byte-exact: an
    appended message is complete (CRLF) or absent, no truncated body, no
    copy the model cannot explain (two in one folder, a failed APPEND that
    shows up later);
  - another client's \\Deleted message in every folder survives;
  - every successful read returns the server's bytes exactly; every failure
    is EIO, ENETDOWN, ETIMEDOUT or ENOENT;
  - no operation takes longer than 15 s (each runs in a thread with a
    deadline; a hang ends the run, with the daemon's stacks when gdb exists);
  - the daemon stays alive, exits with status 0 on fusermount3 -u and logs no
    sanitizer report or GLib critical; the mount still answers at the end;
  - an idle mount stops sending commands;
  - a last clean mount (no proxy) lists every folder as the server has it
    and reads every message byte-exact.

IMAPFS_FAULT_SEED=N replays a run: the choices of iteration i depend on the
seed and i only; what the network does around them is timing and may vary.
IMAPFS_FAULT_TRACE=FILE writes every operation, cut and outcome to FILE.
IMAPFS_E2E_DEBUG=1 runs imapfs with -d.  Python standard library only.
"""

import base64
import collections
import errno
import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "fixture"))
from helpers import (  # noqa: E402
    CAFILE, HOST, PASSWORD_FILE, PORT_IMAPS, T, Mount, MountError, Server,
    errno_name, format_exc, parse_counters, parse_message_name, short, skip_reason,
)
from proxy import Proxy  # noqa: E402

EXE = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else None
DEFAULT_SEED = 20240611
SEED = int(os.environ.get("IMAPFS_FAULT_SEED") or DEFAULT_SEED)
CUTS_WANTED = int(os.environ.get("IMAPFS_FAULT_CUTS") or 200)
# An iteration is "busy" when bytes went through the proxy: right after a
# cut during a connection's setup imapfs fails every command at once for a
# while (reconnect backoff), and those iterations cost ~1 ms each.
MIN_ITERATIONS = 150          # busy iterations at least ...
MAX_ITERATIONS = 3000         # ... and stop here even if fewer cuts fired
TIME_BUDGET = 130.0           # seconds of iterations at most (a slow build)
OP_DEADLINE = 15.0            # every filesystem operation must end within this
HANDSHAKE = {"server": 2400, "client": 600}  # bytes of a reconnection (TLS, LOGIN)
REMOUNT_EVERY = (18, 26)      # busy iterations per mount; the server is checked
                              # against the model before each remount
MOUNT_OPTIONS = ["timeout=2", "poll=0"]
# IMAPFS_FAULT_TRACE=FILE: every operation, its cut and its outcome, one a line
TRACE = open(os.environ["IMAPFS_FAULT_TRACE"], "w", buffering=1) \
    if os.environ.get("IMAPFS_FAULT_TRACE") else None

FOLDERS = ["Fault-%s" % c for c in "ABCDEFGH"]
SEED_PER_FOLDER = 9
BIG_SIZE = 3 * 1024 * 1024    # one message over 2 MiB: fetched in ranges
OK_ERRNOS = {errno.EIO, errno.ENETDOWN, errno.ETIMEDOUT, errno.ENOENT}
SANITIZER_RE = re.compile(r"ERROR: (?:Address|Leak|Thread|Memory)Sanitizer|runtime error:|"
                          r"UndefinedBehaviorSanitizer|-CRITICAL \*\*|\*\* ERROR \*\*")
TOKEN_NAME_RE = re.compile(r"_Fault_([sa]\d{5})\.[1-9][0-9]*\.eml$")
MSGID_RE = re.compile(rb"^Message-ID: <([sa]\d{5})@faults\.imapfs\.test>", re.M | re.I)
FOREIGN_SUBJECT = b"Foreign deleted mail"
DELETED = "\\Deleted"


def sha(b):
    return hashlib.sha256(b).hexdigest()


def where_tag(it):
    return "seed %d, iteration %s" % (SEED, it)


# ---- the proxy, counting the cuts that really happen ------------------------------


class CutProxy(Proxy):
    """Proxy whose cuts are counted, and happen once per arming.

    proxy.py claims an armed cut under its lock, so one arming fires once;
    this keeps that promise even if it broke (a second cut() ~20 ms later
    would kill the connection imapfs has just opened again) and counts any
    repeat, so every cut is one the test chose."""

    def __init__(self, *a, **kw):
        self.count_lock = threading.Lock()
        self.arm_id = 0
        self.fired_arm = -1
        self.fired = 0
        self.repeats = 0      # cut() calls of an arming that had fired already
        self.armed_attr = None
        self.closing = False
        super().__init__(*a, **kw)

    def cut(self):
        with self.count_lock:
            if not self.closing:
                if self.fired_arm == self.arm_id:
                    self.repeats += 1
                    return
                self.fired_arm = self.arm_id
                self.fired += 1
        super().cut()

    def arm(self, direction, offset):
        self.disarm()
        with self.count_lock:
            self.arm_id += 1
        with self.lock:
            if direction == "server":
                self.armed_attr = "cut_at"
                self.cut_at = self.server_bytes + offset
            else:
                self.armed_attr = "cut_client_at"
                self.cut_client_at = self.client_sent + offset

    def finish(self):
        """After an operation: a cut that was triggered (the proxy sleeps
        50 ms before it closes) happens now, not during the next one."""
        with self.lock:
            attr, self.armed_attr = self.armed_attr, None
            triggered = attr is not None and getattr(self, attr) is None
            self.cut_at = None
            self.cut_client_at = None
        if triggered:
            deadline = time.monotonic() + 1.0
            while self.fired_arm != self.arm_id and time.monotonic() < deadline:
                time.sleep(0.005)

    def disarm(self):
        with self.lock:
            self.armed_attr = None
            self.cut_at = None
            self.cut_client_at = None

    def close(self):
        self.closing = True
        self.disarm()
        super().close()


# ---- the model ------------------------------------------------------------------------


class Message:
    """One message the test made: its bytes, where it may be and how many
    copies each folder may hold, whether it must exist (must = it existed or
    its APPEND reported success), and what happened to it."""

    def __init__(self, token, body, folder, must):
        self.token, self.body, self.digest = token, body, sha(body)
        self.may = {folder: 1}
        self.must = must
        self.history = []

    def note(self, it, text):
        self.history.append("it %s: %s" % (it, text))

    def story(self):
        return "; ".join(self.history[-6:]) or "no operation touched it"


MODEL = {}        # token -> Message
BY_DIGEST = {}    # sha256 -> token
FOREIGN = {}      # folder -> (uid, sha256) of another client's \Deleted message
SHA_SEEN = {}     # (folder, uidvalidity, uid) -> sha256 of the server's body
REPORTED = set()  # (folder, uidvalidity, uid) of unexplained messages already reported


def make_body(token, size, rnd, lf=False, date=None):
    """A message of about `size` bytes whose lines are random base64; CRLF
    unless lf (then bare LF: imapfs must store CRLF)."""
    date = date if date is not None else 1700000000 + rnd.randrange(10 ** 7)
    head = ["From: Fault Test <faults@example.org>", "To: Bob <bob@example.org>",
            "Date: " + time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(date)),
            "Subject: Fault %s" % token,
            "Message-ID: <%s@faults.imapfs.test>" % token,
            "MIME-Version: 1.0", "Content-Type: text/plain; charset=us-ascii"]
    nl = b"\n" if lf else b"\r\n"
    out = [nl.join(h.encode() for h in head) + nl + nl]
    have = len(out[0])
    raw = rnd.randbytes(max(0, (size - have) * 3 // 4))
    text = base64.b64encode(raw)
    lines = [text[i:i + 76] for i in range(0, len(text), 76)]
    out.append(nl.join(lines) + nl + b"-- " + token.encode() + nl)
    return b"".join(out)


# ---- filesystem operations under a deadline -------------------------------------


class Hang(Exception):
    pass


def timed(fn, what, deadline=OP_DEADLINE):
    """Run fn() in a thread; ("ok", value, seconds) or ("err", errno, seconds).
    Raises Hang if it does not return within the deadline."""
    box = {}

    def go():
        try:
            box["v"] = fn()
        except OSError as e:
            box["e"] = e
        except BaseException as e:  # a bug of the test itself: re-raised below
            box["x"] = e
    th = threading.Thread(target=go, daemon=True, name="op: " + what)
    t0 = time.monotonic()
    th.start()
    th.join(deadline)
    dt = time.monotonic() - t0
    if th.is_alive():
        raise Hang("%s did not return within %.0f s" % (what, deadline))
    if "x" in box:
        raise box["x"]
    if "e" in box:
        return "err", box["e"].errno, dt
    return "ok", box.get("v"), dt


def read_file(path):
    with open(path, "rb", buffering=0) as f:
        parts = []
        while True:
            b = f.read(256 * 1024)
            if not b:
                break
            parts.append(b)
    return b"".join(parts)


def create_file(path, data, phase):
    """create + write + close (the APPEND happens at close); phase[0] says
    which step an error came from."""
    phase[0] = "create"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        phase[0] = "write"
        view = memoryview(data)
        while view:
            n = os.write(fd, view[:128 * 1024])
            view = view[n:]
    except OSError:
        try:
            os.close(fd)
        except OSError:
            pass
        raise
    phase[0] = "close"
    os.close(fd)


# ---- the run ---------------------------------------------------------------------


class Run:
    def __init__(self, exe):
        self.exe = exe
        self.px = None
        self.m = None
        self.mount_no = 0
        self.it = "setup"
        self.t0 = time.monotonic()
        self.stats = collections.Counter()      # (kind, outcome) -> n
        self.notes = collections.Counter()
        self.spent = collections.Counter()     # what the time went to
        self.loop_time = 0.0
        self.iterations = 0
        self.busy = 0
        self.exits = []       # threads waiting for unmounted daemons to exit
        self.retry = []       # (folder, name) of reads that failed in this mount
        self.reconnecting = False  # the last cut fired, connections must be opened again
        self.failfast = False      # an operation failed at once, without traffic
        self.armed = collections.Counter()      # direction -> n
        self.fired_by_kind = collections.Counter()
        self.zero_cuts = 0
        self.problems = collections.defaultdict(list)  # invariant -> [text]
        self.durations = collections.defaultdict(float)  # kind -> max seconds
        self.next_token = 0
        self.pending_dst = set()   # folders that received moves since the last check
        self.hung = False
        self.rounds = 0
        self.warnings = 0
        # per mount
        self.listed = {}
        self.read_done = set()
        self.locals = set()   # (folder, name) of local files left by failed appends

    # -- helpers
    def problem(self, inv, text):
        self.problems[inv].append("[%s] %s" % (where_tag(self.it), text))

    def outcome(self, kind, res):
        st, val, dt = res
        self.durations[kind] = max(self.durations[kind], dt)
        out = "ok" if st == "ok" else errno_name(val)
        self.stats[(kind, out)] += 1
        if st == "err" and val not in OK_ERRNOS:
            self.problem("errno", "%s failed with %s after %.2f s (acceptable: EIO, ENETDOWN, "
                         "ETIMEDOUT, ENOENT)" % (kind, errno_name(val), dt))
        return out

    def op(self, kind, fn, what):
        b0, c0 = self.px.server_bytes, self.px.client_sent
        res = timed(fn, what)
        self.spent["operations"] += res[2]
        if (res[0] == "err" and res[2] < 0.05 and self.px.server_bytes == b0
                and self.px.client_sent == c0):
            self.failfast = True
        out = self.outcome(kind, res)
        if TRACE:
            TRACE.write("%.3f it %s: %s -> %s in %.3f s (server bytes %d, client bytes %d, "
                        "cuts fired %d)\n" % (time.monotonic() - self.t0, self.it, what, out,
                                              res[2], self.px.server_bytes - b0,
                                              self.px.client_sent - c0, self.px.fired))
        return res, out

    def path(self, *parts):
        return os.path.join(self.m.path, *parts)

    def new_token(self, prefix):
        self.next_token += 1
        return "%s%05d" % (prefix, self.next_token)

    # -- setup on the server (imaplib)
    def setup(self):
        rnd = random.Random("%d:setup" % SEED)
        with Server() as s:
            existing = {f.raw for f in s.list()}
            for i, folder in enumerate(FOLDERS):
                if folder not in existing:
                    s.create(folder)
                for k in range(SEED_PER_FOLDER):
                    r = rnd.random()
                    size = (rnd.randint(800, 8000) if r < 0.5 else
                            rnd.randint(8000, 60000) if r < 0.85 else
                            rnd.randint(60000, 300000))
                    if i == 0 and k == 0:
                        size = BIG_SIZE
                    tok = self.new_token("s")
                    body = make_body(tok, size, rnd)
                    msg = Message(tok, body, folder, True)
                    MODEL[tok] = msg
                    BY_DIGEST[msg.digest] = tok
                    flags = rnd.choice([(), ("\\Seen",), ("\\Flagged", "$Label1")])
                    s.append(folder, body, flags, 1700000000 + rnd.randrange(10 ** 7))
                foreign = (b"From: Other Client <other@example.org>\r\nSubject: "
                           + FOREIGN_SUBJECT + b" in " + folder.encode() +
                           b"\r\nMessage-ID: <foreign-%d@other.example>\r\n\r\n"
                           b"Flagged \\Deleted by another client; nobody may expunge it.\r\n" % i)
                uid = s.append(folder, foreign, ("\\Deleted",), 1700000000)
                if uid is None:
                    raise RuntimeError("APPEND to %s returned no APPENDUID" % folder)
                FOREIGN[folder] = (uid, sha(foreign))
        T.diag("setup: %d folders, %d messages (%d bytes), a \\Deleted message of another "
               "client in each" % (len(FOLDERS), len(MODEL),
                                   sum(len(m.body) for m in MODEL.values())))
        view, problems = self.server_view()
        T.none_of(problems, "setup: imaplib sees the messages the test appended")
        self.compare(view, "setup")

    # -- the server as imaplib sees it
    def server_view(self):
        """{folder: {uid: (sha256, flags, size)}}, problems."""
        view, problems = {}, []
        with Server() as s:
            for folder in FOLDERS:
                uv = s.uidvalidity(folder)
                meta = s.metadata(folder)
                need = [u for u in sorted(meta) if (folder, uv, u) not in SHA_SEEN]
                for i in range(0, len(need), 40):
                    got = s.bodies(folder, need[i:i + 40])
                    for u in need[i:i + 40]:
                        if u not in got:
                            problems.append("%s UID %d: no body from UID FETCH" % (folder, u))
                            continue
                        b = got[u]
                        d = sha(b)
                        SHA_SEEN[(folder, uv, u)] = d
                        if d not in BY_DIGEST and (folder, uv, u) not in REPORTED:
                            # keep what is needed to explain it
                            mo = MSGID_RE.search(b)
                            SHA_SEEN[(folder, uv, u, "head")] = (
                                len(b), b[:300], mo.group(1).decode() if mo else None)
                view[folder] = {u: (SHA_SEEN.get((folder, uv, u)), meta[u].flags, meta[u].size,
                                    uv) for u in meta}
        return view, problems

    def evaluate(self, view):
        """Server state vs model, without side effects:
        (lost, extra, foreign, {token: {folder: [uid]}}, unknown keys)."""
        lost, extra, foreign, unknown = [], [], [], []
        where = collections.defaultdict(lambda: collections.defaultdict(list))
        for folder, msgs in view.items():
            fu, fd = FOREIGN[folder]
            for uid, (d, flags, size, uv) in sorted(msgs.items()):
                if uid == fu:
                    continue
                if d == fd:
                    extra.append("%s UID %d: a copy of the foreign \\Deleted message"
                                 % (folder, uid))
                    continue
                tok = BY_DIGEST.get(d)
                if tok is not None:
                    where[tok][folder].append(uid)
                    continue
                key = (folder, uv, uid)
                if key in REPORTED:
                    continue
                unknown.append(key)
                n, head, t = SHA_SEEN.get((folder, uv, uid, "head"), (size, b"", None))
                if t:
                    want = MODEL.get(t)
                    extra.append(
                        "%s UID %d holds %d bytes that are not message %s as written "
                        "(expected %s bytes, sha256 %s; seen sha256 %s): truncated or "
                        "garbled; %s" % (folder, uid, n, t, len(want.body) if want else "?",
                                         want.digest[:16] if want else "?", (d or "?")[:16],
                                         want.story() if want else "unknown token"))
                else:
                    extra.append("%s UID %d: %d bytes the test never wrote: %r"
                                 % (folder, uid, n, head[:120]))
        for folder, (fu, fd) in sorted(FOREIGN.items()):
            got = view.get(folder, {}).get(fu)
            if got is None:
                foreign.append("%s: the other client's \\Deleted message (UID %d) is gone: "
                               "expunged" % (folder, fu))
            elif got[0] != fd or DELETED not in got[1]:
                foreign.append("%s UID %d: expected the foreign message with \\Deleted, "
                               "seen sha256 %s flags %s" % (folder, fu, (got[0] or "?")[:16],
                                                            sorted(got[1])))
        for tok, msg in sorted(MODEL.items()):
            seen = where.get(tok, {})
            total = sum(len(u) for u in seen.values())
            if msg.must and total == 0:
                lost.append("message %s (%d bytes) is on the server nowhere: expected in %s; "
                            "history: %s" % (tok, len(msg.body), sorted(msg.may), msg.story()))
            for folder, uids in sorted(seen.items()):
                if len(uids) > msg.may.get(folder, 0):
                    extra.append("message %s: %d copies in %s (UIDs %s), the model allows %d "
                                 "(may be in %s); history: %s"
                                 % (tok, len(uids), folder, uids, msg.may.get(folder, 0),
                                    msg.may, msg.story()))
        return lost, extra, foreign, where, unknown

    def compare(self, view, label, recheck=None):
        """Report the differences between the server and the model; then
        the model becomes the server state.  recheck() (when given) is
        called once if something is wrong, and returns a new view: a
        difference is only reported if it is still there (a batched move
        can be on its way for a moment)."""
        lost, extra, foreign, where, unknown = self.evaluate(view)
        if (lost or extra or foreign) and recheck is not None:
            T.diag("%s: %d lost, %d unexplained, %d foreign problems; looking again in "
                   "2.5 s (> timeout=2)" % (label, len(lost), len(extra), len(foreign)))
            time.sleep(2.5)
            view = recheck()
            lost, extra, foreign, where, unknown = self.evaluate(view)
        REPORTED.update(unknown)
        for tok, msg in MODEL.items():
            # the server is the truth from now on
            seen = where.get(tok, {})
            msg.may = {f: len(u) for f, u in seen.items()}
            msg.must = bool(seen)
        T.none_of(lost, "%s: no lost message (every message that existed, or whose APPEND "
                  "succeeded, is on the server)" % label)
        T.none_of(extra, "%s: every message on the server is one the model explains, "
                  "byte-exact (no truncated APPEND, no unexplained copy)" % label)
        T.none_of(foreign, "%s: the other client's \\Deleted message survives in all %d "
                  "folders" % (label, len(FOLDERS)))

    # -- mounts
    def mount(self):
        self.mount_no += 1
        self.px.disarm()
        opts = ["port=%d" % self.px.port, "cafile=%s" % CAFILE,
                "password_file=%s" % PASSWORD_FILE] + MOUNT_OPTIONS
        self.m = Mount(self.exe, opts, base_options=False, foreground=True, limit=600)
        self.m.start()
        self.listed, self.read_done, self.locals = {}, set(), set()
        self.retry = []

    def log_problems(self, m):
        text = m.log()
        self.warnings += len(re.findall(r"WARNING \*\*", text))
        bad = [ln for ln in text.splitlines() if SANITIZER_RE.search(ln)]
        return bad, text

    def unmount(self, wait=False):
        """Unmount the current mount: the daemon must be alive until then,
        fusermount3 -u must succeed, and the daemon must exit with status 0
        within 10 s and leave no sanitizer report.  The exit is waited for in
        the background (imapfs sleeps out the 2 s alias of the last mv before
        it exits) unless wait; finish_exits() collects the results."""
        m, self.m = self.m, None
        if m is None:
            return
        self.px.disarm()
        no, tag = self.mount_no, where_tag(self.it)
        if not m.alive():
            self.problems["daemon"].append(
                "[%s] mount #%d: the daemon died (status %s); log: %s"
                % (tag, no, m.proc.poll(), short(m.log()[-3000:], 3000)))
            self.collect_log(m, no, tag)
            m.cleanup()
            return
        t0 = time.monotonic()
        ok, msg = m.unmount()

        def finish():
            exited = m.wait_exit(10)
            rc = m.proc.poll()
            if TRACE:
                TRACE.write("%.3f it %s: unmount #%d: fusermount3 %s, exit after %.3f s\n" % (
                    time.monotonic() - self.t0, tag, no, msg or "ok", time.monotonic() - t0))
            if not (ok and exited and rc == 0):
                self.problems["unmount"].append(
                    "[%s] mount #%d: expected fusermount3 -u to succeed and imapfs -f to exit "
                    "with status 0 within 10 s; seen %s, %s, status %s"
                    % (tag, no, msg or "unmounted", "exited" if exited else "still running",
                       rc))
            self.collect_log(m, no, tag)
            m.cleanup()
        if wait:
            finish()
        else:
            th = threading.Thread(target=finish, daemon=True, name="exit of mount %d" % no)
            th.start()
            self.exits.append(th)

    def finish_exits(self):
        for th in self.exits:
            th.join(30)
            if th.is_alive():
                self.problems["unmount"].append("a daemon's exit was not seen within 30 s")
        self.exits = []

    def collect_log(self, m, no, tag):
        bad, text = self.log_problems(m)
        if bad:
            self.problems["sanitizer"].append(
                "[%s] mount #%d: %d sanitizer/critical lines, first: %s"
                % (tag, no, len(bad), " | ".join(bad[:5])))
            T.diag("log of mount #%d (tail):" % no)
            T.diag(text[-4000:])

    def remount(self):
        t0 = time.monotonic()
        self.unmount()
        self.mount()
        self.spent["remounts"] += time.monotonic() - t0

    def abort_mount(self, why):
        """After a hang: report, kill the daemon, unmount lazily."""
        m, self.m = self.m, None
        T.diag("aborting mount #%d: %s" % (self.mount_no, why))
        if m is not None:
            if shutil.which("gdb") and m.alive():
                r = subprocess.run(["gdb", "-p", str(m.proc.pid), "-batch", "-ex",
                                    "thread apply all bt"], capture_output=True, timeout=60)
                T.diag("threads of the hung daemon:\n" +
                       r.stdout.decode(errors="replace")[-12000:])
            m.cleanup()

    def daemon_check(self, kind):
        if self.m is not None and not self.m.alive():
            self.problem("daemon", "the daemon died during %s (status %s); log tail: %s"
                         % (kind, self.m.proc.poll(), short(self.m.log()[-3000:], 3000)))
            m, self.m = self.m, None
            self.collect_log(m, self.mount_no, where_tag(self.it))
            m.cleanup()
            self.mount()

    # -- listing
    def list_folder(self, folder, kind):
        res, out = self.op(kind, lambda: os.listdir(self.path(folder)),
                           "%s %s" % (kind, folder))
        if res[0] == "ok":
            names = res[1]
            bad = [n for n in names if parse_message_name(n) is None
                   and (folder, n) not in self.locals]
            if bad:
                self.problem("listing", "listing of %s: entries that are neither message "
                             "names nor our local files: %r" % (folder, bad[:5]))
            self.listed[folder] = names
        return res, out

    def candidates(self, folder):
        """Listed names of the test's messages in folder: [(name, token)]."""
        out = []
        for n in self.listed.get(folder, []):
            mo = TOKEN_NAME_RE.search(n)
            if mo and mo.group(1) in MODEL:
                out.append((n, mo.group(1)))
        return sorted(out)

    def ensure_listed(self, folder):
        if folder in self.listed:
            return True
        res, _ = self.list_folder(folder, "prep-list")
        return res[0] == "ok"

    # -- cuts
    def arm(self, r, est_server, est_client, p_client):
        """Arm one cut from this iteration's random numbers; returns a text."""
        if r.random() < 0.08:
            return "none"
        direction = "client" if r.random() < p_client else "server"
        est = est_client if direction == "client" else est_server
        x = r.random()
        offset = 0 if x < 0.1 else r.randint(1, max(1, int(est * 1.25)))
        # After a cut, the next operation opens connections again; cut in
        # their TLS handshake only now and then: imapfs then fails every
        # command at once for 0.5 s, 1 s, 2 s... (reconnect backoff).
        if r.random() < 0.75 and self.reconnecting:
            offset += HANDSHAKE[direction]
        if offset == 0:
            self.zero_cuts += 1
        self.armed[direction] += 1
        self.px.arm(direction, offset)
        if TRACE:
            TRACE.write("%.3f it %s: arm %s+%d (estimate %d)\n" % (
                time.monotonic() - self.t0, self.it, direction, offset, est))
        return "%s+%d" % (direction, offset)

    # -- one iteration
    def iteration(self, i):
        self.it = i
        r = random.Random("%d:%d" % (SEED, i))
        x = r.random()
        kind = ("list" if x < 0.25 else "read" if x < 0.55 else
                "mv" if x < 0.80 else "append")
        fired0 = self.px.fired
        getattr(self, "do_" + kind)(r)
        self.px.finish()
        if self.px.fired != fired0:
            self.fired_by_kind[kind] += 1
            self.reconnecting = True
        self.daemon_check(kind)

    def do_list(self, r):
        fresh = [f for f in FOLDERS if f not in self.listed]
        pool = fresh or FOLDERS
        folder = pool[int(r.random() * len(pool))]
        n = sum(m.may.get(folder, 0) for m in MODEL.values())
        cut = self.arm(r, 800 + 250 * n, 250, 0.2)
        res, out = self.list_folder(folder, "list")
        self.notes["list of a folder not listed yet" if fresh else "list again"] += 1
        if out != "ok":
            self.listed.pop(folder, None)

    def do_read(self, r):
        """Read a message this mount has not read yet (so it comes from the
        server), or, half the time when there is one, one whose read failed
        earlier in this mount (a failed read must not leave a bad body)."""
        folder = FOLDERS[int(r.random() * len(FOLDERS))]
        pick, cutr, again = r.random(), random.Random(r.random()), r.random() < 0.5
        if again and self.retry:
            folder, name = self.retry.pop(int(pick * len(self.retry)))
            mo = TOKEN_NAME_RE.search(name)
            tok = mo.group(1)
            kind = "read-again"
        else:
            if not self.ensure_listed(folder):
                return
            cands = self.candidates(folder)
            fresh = [c for c in cands if (folder, c[0]) not in self.read_done]
            pool = fresh or cands
            if not pool:
                self.notes["read: nothing to read"] += 1
                return
            name, tok = pool[int(pick * len(pool))]
            kind = "read"
        msg = MODEL[tok]
        cut = self.arm(cutr, len(msg.body) + 1500, 300, 0.15)
        self.read_done.add((folder, name))
        p = self.path(folder, name)
        res, out = self.op(kind, lambda: read_file(p), "%s %s/%s" % (kind, folder, name))
        if res[0] == "ok":
            data = res[1]
            if data != msg.body:
                k = next((j for j in range(min(len(data), len(msg.body)))
                          if data[j] != msg.body[j]), min(len(data), len(msg.body)))
                self.problem("read", "%s of %s/%s (message %s; cut %s) returned %d bytes "
                             "with success, expected the server's %d bytes; first "
                             "difference at byte %d" % (kind, folder, name, tok, cut,
                                                        len(data), len(msg.body), k))
        elif out != "ENOENT":
            self.retry.append((folder, name))
        msg.note(self.it, "%s %s/%s: %s (cut %s)" % (kind, folder, name, out, cut))

    def do_mv(self, r):
        src = FOLDERS[int(r.random() * len(FOLDERS))]
        others = [f for f in FOLDERS if f != src]
        dst = others[int(r.random() * len(others))]
        pick, cutr = r.random(), random.Random(r.random())
        if not self.ensure_listed(src):
            return
        cands = self.candidates(src)
        if not cands:
            self.notes["mv: nothing to move"] += 1
            return
        name, tok = cands[int(pick * len(cands))]
        msg = MODEL[tok]
        n = sum(m.may.get(dst, 0) for m in MODEL.values())
        est_server = 500 + (250 * n if dst not in self.listed else 0)
        cut = self.arm(cutr, est_server, 260, 0.5)
        # the model first: from now on it may be in either
        msg.may[dst] = msg.may.get(dst, 0) + msg.may.get(src, 0)
        self.pending_dst.add(dst)
        res, out = self.op("mv", lambda: os.rename(self.path(src, name), self.path(dst, name)),
                           "mv %s/%s %s/" % (src, name, dst))
        self.listed[src] = [x for x in self.listed.get(src, []) if x != name]
        lres, lout = self.list_folder(dst, "mv-list-dst")
        if lout != "ok":
            self.listed.pop(dst, None)
        msg.note(self.it, "mv %s -> %s: rename %s, list destination %s (cut %s)"
                 % (src, dst, out, lout, cut))

    def do_append(self, r):
        folder = FOLDERS[int(r.random() * len(FOLDERS))]
        x = r.random()
        size = (r.randint(2000, 20000) if x < 0.55 else r.randint(20000, 100000)
                if x < 0.85 else r.randint(100000, 400000))
        lf = r.random() < 0.2
        bodyr, cutr = random.Random(r.random()), random.Random(r.random())
        tok = self.new_token("a")
        data = make_body(tok, size, bodyr, lf=lf)
        want = data.replace(b"\n", b"\r\n") if lf else data
        msg = Message(tok, want, folder, False)
        MODEL[tok] = msg
        BY_DIGEST[msg.digest] = tok
        cut = self.arm(cutr, 900, len(want) + 700, 0.75)
        name = "new-%s.eml" % tok
        p = self.path(folder, name)
        phase = [None]
        res, out = self.op("append", lambda: create_file(p, data, phase),
                           "append %s/%s (%d bytes)" % (folder, name, len(data)))
        msg.must = out == "ok"
        if out != "ok":
            self.notes["append failed at %s" % phase[0]] += 1
            if phase[0] == "create":
                msg.may = {}  # never created: it must never show up
        msg.note(self.it, "append to %s, %d bytes%s: %s%s (cut %s)"
                 % (folder, len(data), " with bare LF" if lf else "", out,
                    "" if out == "ok" else " at " + phase[0], cut))
        if out != "ok" and phase[0] != "create":
            # the local file stays in the mount; remove it (never uploaded later)
            self.px.finish()
            self.locals.add((folder, name))
            ures, uout = self.op("rm-local", lambda: os.unlink(p), "rm %s/%s" % (folder, name))
            if uout in ("ok", "ENOENT"):
                self.locals.discard((folder, name))

    # -- the server check
    def counters(self):
        if self.m is None:
            return None
        st, val, _ = timed(lambda: os.getxattr(self.m.path, "user.imapfs.counters"),
                           "getxattr counters")
        return parse_counters(val.decode())[0] if st == "ok" else None

    def quiesce(self):
        """Send the batched moves (list their destinations), wait until no
        move is pending, then until the mount is quiet: no command for 0.25 s.  A mount that is not
        quiet 1 s after the last operation is measured for one more second:
        an idle mount must not keep talking to the server."""
        self.px.disarm()
        for f in sorted(self.pending_dst):
            if self.m is not None:
                self.list_folder(f, "check-list")
        self.pending_dst.clear()
        # A move cut off is retried after a moment: wait until none is left
        # (cache.moves_pending), or it would land after the snapshot.
        give_up = time.monotonic() + 15
        while time.monotonic() < give_up:
            c = self.counters()
            if c is None or not c.get("cache.moves_pending", 0):
                break
            time.sleep(0.05)
        else:
            self.problem("moves", "mount #%d still has moves pending 15 s after the last "
                         "operation" % self.mount_no)
        t0 = time.monotonic()
        last, since = None, t0
        while True:
            c = self.counters()
            if c is None:
                time.sleep(0.5)
                return
            now = c.get("imap.commands")
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= 0.25:
                return
            if time.monotonic() - t0 >= 1.0:
                break
            time.sleep(0.05)
        time.sleep(1.0)
        c = self.counters()
        if c is None:
            return
        n = c.get("imap.commands") - last
        self.notes["checks with a busy idle mount"] += 1
        if n >= 5:
            self.problem("idle", "mount #%d sent %d IMAP commands in the second that began "
                         "1 s after the last operation (poll=0, nothing to do): it keeps "
                         "resyncing by itself" % (self.mount_no, n))

    def stable_view(self):
        """Two equal views of the server in a row (a move in flight shows as
        a difference)."""
        a, problems = self.server_view()
        for _ in range(10):
            time.sleep(0.1)
            b, more = self.server_view()
            problems += more
            if a == b:
                break
            a = b
        for p in problems:
            self.problem("imaplib", p)
        return a

    def check_round(self, label):
        t0 = time.monotonic()
        self.rounds += 1
        self.quiesce()
        t1 = time.monotonic()
        self.compare(self.stable_view(), label, recheck=self.stable_view)
        self.spent["quiesce"] += t1 - t0
        self.spent["server checks"] += time.monotonic() - t1

    # -- the end
    def final(self):
        # the mount still answers: a stat, a listing, a read of a message it
        # has not read (from the server), exact; within 12 s (a cut during
        # the last reconnections may have left imapfs in its backoff, <= 10 s)
        self.px.disarm()
        self.it = "end"
        answers = []
        give_up = time.monotonic() + 12
        for attempt in range(100):
            st, _, _ = timed(lambda: os.stat(self.m.path), "stat root")
            folder = FOLDERS[attempt % len(FOLDERS)]
            self.listed.pop(folder, None)
            res, out = self.list_folder(folder, "final-list")
            cands = [c for c in self.candidates(folder)
                     if (folder, c[0]) not in self.read_done] if out == "ok" else []
            got = None
            if cands:
                name, tok = cands[0]
                rr = timed(lambda: read_file(self.path(folder, name)), "final read")
                got = rr[0] == "ok" and rr[1] == MODEL[tok].body
                answers.append("stat %s, list %s %s, read %s/%s: %s" % (
                    st, folder, out, folder, name,
                    "exact" if got else rr[0] == "ok" and "WRONG BYTES" or errno_name(rr[1])))
            else:
                answers.append("stat %s, list %s %s, nothing to read" % (st, folder, out))
                got = out == "ok"
            if (st == "ok" and out == "ok" and got) or time.monotonic() > give_up:
                break
            time.sleep(1.0)
        T.check(st == "ok" and out == "ok" and got,
                "end: the mount still answers (stat, a listing, an exact read from the server)",
                expected="all succeed within 12 s", seen=answers)
        alive = self.m.alive()
        T.check(alive, "end: the daemon is alive after %d iterations" % self.iterations,
                expected="imapfs -f running", seen="exited with status %s" % self.m.proc.poll())

    def clean_view(self):
        """A fresh mount without the proxy: every folder shows exactly the
        server's messages, and every body reads byte-exact."""
        view, _ = self.server_view()
        problems = []
        with Mount(self.exe, ["poll=0"], foreground=True, limit=300) as m:
            for folder in FOLDERS:
                want = collections.Counter()
                for uid, (d, flags, size, uv) in view[folder].items():
                    if uid != FOREIGN[folder][0]:
                        want[BY_DIGEST.get(d, "unknown-" + (d or "?")[:12])] += 1
                st, names, _ = timed(lambda: os.listdir(m.p(folder)), "clean list")
                if st != "ok":
                    problems.append("%s: listing failed with %s" % (folder, errno_name(names)))
                    continue
                seen = collections.Counter()
                for n in names:
                    mo = TOKEN_NAME_RE.search(n)
                    if mo:
                        seen[mo.group(1)] += 1
                        tok = mo.group(1)
                        rr = timed(lambda: read_file(m.p(folder, n)), "clean read")
                        if rr[0] != "ok":
                            problems.append("%s/%s: read failed with %s"
                                            % (folder, n, errno_name(rr[1])))
                        elif rr[1] != MODEL[tok].body:
                            problems.append("%s/%s: %d bytes read, expected %d exact"
                                            % (folder, n, len(rr[1]), len(MODEL[tok].body)))
                    elif parse_message_name(n) is None or FOREIGN_SUBJECT.decode().replace(
                            " ", "_") not in n:
                        problems.append("%s: unexpected entry %r" % (folder, n))
                if seen != want:
                    problems.append("%s: the mount lists %s, the server has %s" % (
                        folder, dict(seen - want) or "", dict(want - seen) or ""))
            ok, msg = m.unmount()
            exited = m.wait_exit(10)
            bad, _ = self.log_problems(m)
            if not (ok and exited and m.proc.poll() == 0) or bad:
                problems.append("clean mount: unmount %s, exit %s, sanitizer lines %s"
                                % (msg or "ok", m.proc.poll(), bad[:3]))
        T.none_of(problems, "end: a clean mount shows every folder as the server has it and "
                  "reads every message byte-exact")

    # -- main loop
    def run(self):
        self.setup()
        self.px = CutProxy(HOST, PORT_IMAPS)
        self.iterations = 0
        try:
            self.mount()
            next_remount = REMOUNT_EVERY[0]
            i = busy = 0
            t_start = time.monotonic()
            while True:
                i += 1
                enough = self.px.fired >= CUTS_WANTED and busy >= MIN_ITERATIONS
                if enough or i > MAX_ITERATIONS:
                    break
                if time.monotonic() - t_start > TIME_BUDGET:
                    T.diag("time budget of %.0f s spent after %d iterations" % (TIME_BUDGET,
                                                                                 i - 1))
                    break
                self.iterations = i
                traffic = (self.px.server_bytes, self.px.client_sent)
                fired = self.px.fired
                self.failfast = False
                try:
                    self.iteration(i)
                except Hang as e:
                    self.hung = True
                    self.problem("hang", "%s (mount #%d)" % (e, self.mount_no))
                    self.abort_mount(str(e))
                    break
                if (self.px.server_bytes, self.px.client_sent) != traffic:
                    busy += 1
                    self.busy = busy
                    if self.px.fired == fired:
                        self.reconnecting = False
                elif self.failfast:
                    # imapfs waits before it connects again: so do we
                    self.notes["iterations failing at once (reconnect backoff)"] += 1
                    time.sleep(0.1)
                if busy >= next_remount:
                    self.it = "%d (remount)" % i
                    self.check_round("round %d (after iteration %d, before mount #%d)"
                                     % (self.rounds + 1, i, self.mount_no + 1))
                    self.remount()
                    next_remount = busy + random.Random("%d:%d:remount" % (SEED, i)).randint(
                        *REMOUNT_EVERY)
            self.loop_time = time.monotonic() - t_start
            self.it = "end"
            if self.m is not None:
                self.check_round("last round (after %d iterations)" % self.iterations)
                self.final()
                self.unmount(wait=True)
            else:
                self.check_round("last round (after the hang)")
        finally:
            fired = self.px.fired
            T.diag("second cut() calls of one arming, not passed on (proxy.py race): %d"
                   % self.px.repeats)
            self.px.close()
            if self.m is not None:
                self.m.cleanup()
            self.finish_exits()
        self.report(fired)
        self.clean_view()

    def report(self, fired):
        T.diag("seed %d (IMAPFS_FAULT_SEED=%d to replay); %d iterations in %.1f s, %d mounts, "
               "%d server checks" % (SEED, SEED, self.iterations, self.loop_time,
                                     self.mount_no, self.rounds))
        T.diag("cuts armed: %d (server->client %d, client->server %d, %d at offset 0); "
               "fired: %d; iterations whose cut fired, by kind: %s"
               % (sum(self.armed.values()), self.armed["server"], self.armed["client"],
                  self.zero_cuts, fired, dict(self.fired_by_kind)))
        kinds = sorted({k for k, _ in self.stats})
        for k in kinds:
            outs = {o: n for (kk, o), n in self.stats.items() if kk == k}
            T.diag("  %-12s %s  (slowest %.2f s)" % (
                k, ", ".join("%s %d" % kv for kv in sorted(outs.items())),
                self.durations.get(k, 0.0)))
        T.diag("notes: %s" % dict(self.notes))
        T.diag("time: %s" % ", ".join("%s %.1f s" % kv for kv in sorted(self.spent.items())))
        T.diag("GLib warnings logged by the daemon: %d" % self.warnings)
        invariants = [
            ("hang", "no filesystem operation hung (each returned within %.0f s)" % OP_DEADLINE),
            ("read", "every successful read returned the server's bytes exactly"),
            ("errno", "every failed operation failed with EIO, ENETDOWN, ETIMEDOUT or ENOENT"),
            ("listing", "listings hold only message names and the test's own local files"),
            ("daemon", "the daemon stayed alive through every mount"),
            ("unmount", "every mount unmounted cleanly (fusermount3 -u, exit status 0)"),
            ("sanitizer", "no sanitizer report or GLib critical in any mount's log"),
            ("imaplib", "imaplib could fetch every message it listed"),
            ("idle", "an idle mount stops sending commands (poll=0)"),
            ("moves", "every move cut off was settled within 15 s (cache.moves_pending 0)"),
        ]
        for key, what in invariants:
            T.none_of(self.problems.get(key, []), what)
        T.check(fired >= CUTS_WANTED, "at least %d connection cuts fired" % CUTS_WANTED,
                expected=">= %d" % CUTS_WANTED, seen=fired)
        if any(self.problems.values()) or T.failures:
            T.diag("to reproduce: IMAPFS_FAULT_SEED=%d python3 tests/fixture/dovecot.py run -- "
                   "python3 tests/e2e/test_faults.py %s" % (SEED, self.exe))


def main():
    reason = skip_reason("test_faults.py", EXE)
    if reason:
        print("1..0 # SKIP " + reason)
        return 0
    t0 = time.monotonic()
    T.diag("seed %d (set IMAPFS_FAULT_SEED to change it)" % SEED)
    T.current = "faults"
    run = Run(EXE)
    try:
        run.run()
    except MountError as e:
        T.fail("mounting imapfs through the proxy (%s): %s" % (where_tag(run.it), e))
    except Exception:
        T.fail("the test itself failed at %s" % where_tag(run.it))
        for line in format_exc().splitlines():
            T.diag(line)
    T.diag("total: %.1f s" % (time.monotonic() - t0))
    if T.failures:
        T.diag("%d failed (seed %d):" % (len(T.failures), SEED))
        for f in T.failures:
            T.diag("  " + short(f, 300))
    return T.finish()


if __name__ == "__main__":
    sys.exit(main())
