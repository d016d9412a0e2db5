"""End-to-end tests of the imapfs persistent cache (index + body files).

Run under the fixture:

    python3 tests/fixture/dovecot.py run -- python3 tests/e2e/test_cache.py IMAPFS

Every check compares the mount with the server as Python's imaplib sees it
(EXAMINE, BODY.PEEK), with the files in cache_dir, and with the mount's
counters (root xattr user.imapfs.counters).  Most tests use the server of
`dovecot.py run`; the two that stop the server while a mount uses it (4 and
8) start a private Dovecot with the fixture module, because a child of `run`
has no way to stop and restart the server it runs under.

The tests (numbers as in the cache issue's "Must show"):
  1 warm remount, nothing changed     6 cache_size: LRU eviction, open bodies stay
  2 changes while unmounted           7 corrupt index, truncated/deleted body files
  3 UIDVALIDITY change                8 offline mount (automatic and -o offline)
  4 server stopped while mounted      9 folders deleted/renamed on the server
  5 kill -9 during a 20 MB fetch     10 cache=none, cache=headers
                                     11 prefetch stays bounded; unmount during it
                                     12 prefetched bodies in the kernel's page cache

Extra arguments after IMAPFS select tests by number (`... IMAPFS 4 8`).
TAP output; `1..0 # SKIP` when not runnable.  IMAPFS_E2E_DEBUG=1 mounts in
the foreground with -d (the log of each mount is in its temp dir; the
"one line on stderr" check of test 8 then fails by design).
Python standard library only.
"""

import contextlib
import errno
import hashlib
import os
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.join(os.path.dirname(HERE), "fixture"))
from helpers import (  # noqa: E402
    CAFILE, DEBUG, HOST, PASSWORD_FILE, PORT_IMAPS, USER, T, Mount, MountError,
    folder_path, fusermount, mounts_under, parse_message_name,
    run, run_one, short, skip_reason, wait_for,
)
import dovecot as fx  # noqa: E402  (the fixture: imaplib helpers, a private server)
from proxy import Proxy  # noqa: E402

EXE = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else None
MB = 1024 * 1024
BIG = "Big"  # the folder with the 20 MB message
FETCH_KEYS = ("cache.body_fetches", "cache.range_fetches", "cache.prefetches")
NET_ERRNOS = (errno.ENETDOWN, errno.EIO, errno.ETIMEDOUT)
BUDGET = 240.0  # seconds for the whole suite: report the rest as not run

WORK = None       # temp dir for every cache_dir of the suite
S0 = None         # the server of `dovecot.py run`
S1 = None         # the private server (tests 4, 8), started on demand
DC1 = None        # its fixture object


# ---- the server as imaplib sees it ------------------------------------------------------


class Msg:
    __slots__ = ("uid", "flags", "size", "date", "body")

    def __init__(self, uid, flags, size, date, body):
        self.uid, self.flags, self.size, self.date, self.body = (
            uid, frozenset(flags), size, date, body)


class FSnap:
    """One folder as imaplib saw it."""

    def __init__(self, attrs, delim, name, raw):
        self.attrs, self.delim, self.name, self.raw = attrs, delim, name, raw
        self.path = folder_path(raw, delim)
        self.selectable = not ({"\\noselect", "\\nonexistent"} & {a.lower() for a in attrs})
        self.uidvalidity = None
        self.msgs = {}

    def __repr__(self):
        return "FSnap(%r, %d messages)" % (self.path, len(self.msgs))


_BODIES = {}  # (raw, uidvalidity, uid) -> bytes: immutable, fetched once


class Srv:
    """An IMAP account for the independent client and for mounts."""

    def __init__(self, host, port, cafile, user, password_file, dc=None):
        self.host, self.port, self.cafile = host, port, cafile
        self.user, self.password_file, self.dc = user, password_file, dc

    def password(self):
        with open(self.password_file) as f:
            return f.readline().rstrip("\r\n")

    @contextlib.contextmanager
    def session(self):
        m = fx.connect(self.host, self.port, self.cafile, self.user, self.password())
        try:
            yield m
        finally:
            try:
                m.logout()
            except Exception:
                pass

    def snapshot(self, only=None, bodies=True):
        """{raw: FSnap}: every folder; messages (and bodies) of the
        selectable ones (of those in `only`, if given)."""
        out = {}
        with self.session() as m:
            for attrs, delim, name, raw in fx.list_folders(m):
                f = FSnap(attrs, delim, name, raw)
                out[raw] = f
                if not f.selectable or (only is not None and raw not in only):
                    continue
                f.uidvalidity = fx.status(m, name)["UIDVALIDITY"]
                for uid, v in fx.folder_metadata(m, name).items():
                    key = (raw, f.uidvalidity, uid)
                    body = _BODIES.get(key)
                    if body is None and bodies:
                        body = fx.fetch_body(m, name, uid)
                        if body is None:
                            raise RuntimeError("no body for %s UID %d" % (raw, uid))
                        _BODIES[key] = body
                    f.msgs[uid] = Msg(uid, v["flags"], v["size"], v["internaldate"], body)
        return out


def selectable(snap):
    return sorted((f for f in snap.values() if f.selectable), key=lambda f: f.path)


def make_message(tag, subject, text, date):
    lines = ["From: Cache Test <cache@example.org>", "To: Alice <alice@example.org>",
             "Subject: %s" % subject,
             "Date: %s" % time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(date)),
             "Message-ID: <%s.%d@imapfs.test>" % (tag, date),
             "MIME-Version: 1.0", "Content-Type: text/plain; charset=us-ascii", "", text, ""]
    return "\r\n".join(lines).encode()


# ---- mounts ------------------------------------------------------------------------------


class CMount(Mount):
    """helpers.Mount on a given server and a given (persistent) cache_dir.
    Defaults: poll=0 (no background traffic disturbs the counters),
    timeout=10.  `options` may override them (key=value, last wins)."""

    def __init__(self, srv, cache_dir, options=(), port=None, foreground=False, limit=150):
        Mount.__init__(self, EXE, base_options=False, foreground=foreground or DEBUG,
                       limit=limit)
        opts = {"port": "port=%d" % (port or srv.port), "cafile": "cafile=%s" % srv.cafile,
                "password_file": "password_file=%s" % srv.password_file,
                "cache_dir": "cache_dir=%s" % cache_dir, "poll": "poll=0",
                "timeout": "timeout=10"}
        for o in options:
            opts[o.split("=", 1)[0]] = o
        self.cache = cache_dir
        self.args = ([EXE] + (["-f"] if self.foreground else []) + (["-d"] if DEBUG else [])
                     + ["-o", ",".join(opts.values()), "%s@%s" % (srv.user, srv.host),
                        self.path])


def unmount(m, what):
    """Unmount and wait for the daemon to exit (its cache is closed then)."""
    ok, msg = m.unmount()
    gone = ok and m.wait_exit(10)
    T.check(ok and gone, "%s: fusermount3 -u works and the daemon exits" % what,
            expected="unmounted, daemon gone within 10 s",
            seen=msg if not ok else "daemon %s still running" % m.pids)
    return ok and gone


def new_cache(tag):
    d = tempfile.mkdtemp(prefix="cache-%s-" % tag, dir=WORK)
    return d


def fetches(c0, c1):
    return sum(c1[k] - c0[k] for k in FETCH_KEYS)


def dl(c0, c1, k):
    return c1.get(k, 0) - c0.get(k, 0)


def listing(m, f):
    """{uid: name bytes} of the message files in folder f of the mount, and
    the problems (names that are not message names, duplicate UIDs)."""
    d = os.fsencode(m.p(f.path))
    out, problems = {}, []
    for nb in os.listdir(d):
        st = os.lstat(os.path.join(d, nb))
        if stat.S_ISDIR(st.st_mode):
            continue
        parsed = parse_message_name(nb.decode("utf-8", "replace"))
        if parsed is None:
            problems.append("%s: %r is not a message name" % (f.path, nb))
        elif parsed[2] in out:
            problems.append("%s: UID %d twice (%r, %r)" % (f.path, parsed[2], out[parsed[2]], nb))
        else:
            out[parsed[2]] = nb
    return out, problems


def file_path(m, f, name):
    return os.path.join(os.fsencode(m.p(f.path)), name)


def read_file(path, chunk=MB, drop=False):
    """The whole file.  drop: first make the kernel forget its cached pages
    (posix_fadvise DONTNEED), so that the read reaches imapfs."""
    with open(path, "rb", buffering=0) as fh:
        if drop:
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        parts = []
        while True:
            b = fh.read(chunk)
            if not b:
                break
            parts.append(b)
    return b"".join(parts)


def mismatch(seen, want):
    if seen == want:
        return "equal"
    n = min(len(seen), len(want))
    first = next((i for i in range(n) if seen[i] != want[i]), n)
    return ("%d bytes (sha256 %s..), expected %d bytes (sha256 %s..), first difference at %d"
            % (len(seen), hashlib.sha256(seen).hexdigest()[:10], len(want),
               hashlib.sha256(want).hexdigest()[:10], first))


def timed_read(path, limit, drop=True):
    """Read a whole file in a helper thread: (data or None, errno or None,
    seconds, finished within limit)."""
    box = {}

    def work():
        try:
            box["data"] = read_file(path, drop=drop)
        except OSError as e:
            box["errno"] = e.errno
        box["t"] = time.monotonic()

    t0 = time.monotonic()
    th = threading.Thread(target=work, daemon=True)
    th.start()
    th.join(limit)
    if th.is_alive():
        return None, None, time.monotonic() - t0, False
    return box.get("data"), box.get("errno"), box["t"] - t0, True


def read_check(m, f, names, uids, problems, drop=False):
    """Read the given UIDs of folder f; append mismatches to problems;
    returns the bytes read."""
    total = 0
    for uid in uids:
        if uid not in names:
            problems.append("%s UID %d: no file" % (f.path, uid))
            continue
        try:
            data = read_file(file_path(m, f, names[uid]), drop=drop)
        except OSError as e:
            problems.append("%s UID %d: read failed: %s" % (f.path, uid, errno.errorcode.get(
                e.errno, e.errno)))
            continue
        total += len(data)
        if data != f.msgs[uid].body:
            problems.append("%s UID %d: %s" % (f.path, uid, mismatch(data, f.msgs[uid].body)))
    return total


def ls_l(m, f):
    r = run(["ls", "-l", "--", m.p(f.path)], timeout=60)
    if r.returncode != 0:
        return "ls -l %s: status %s, %s" % (f.path, r.returncode,
                                             short(r.stderr.decode("utf-8", "replace")))
    return None


def list_all(m, snap, problems):
    """ls -l every selectable folder; {raw: {uid: name}}; the listing must
    have exactly the server's UIDs."""
    out = {}
    for f in selectable(snap):
        err = ls_l(m, f)
        if err:
            problems.append(err)
        names, probs = listing(m, f)
        problems += probs
        if set(names) != set(f.msgs):
            problems.append("%s: UIDs %s, server %s" % (f.path, sorted(names), sorted(f.msgs)))
        out[f.raw] = names
    return out


# ---- the cache directory ---------------------------------------------------------------


def body_files(cache):
    """{relative path under bodies/: size} of the regular files."""
    root = os.path.join(cache, "bodies")
    out = {}
    for top, _, files in os.walk(root):
        for fn in files:
            p = os.path.join(top, fn)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out[os.path.relpath(p, root)] = st.st_size
    return out


def tmp_files(cache):
    root = os.path.join(cache, "tmp")
    try:
        return sorted(os.listdir(root))
    except OSError:
        return []


@contextlib.contextmanager
def index_copy(cache):
    """A sqlite3 connection to a copy of index.sqlite (+ -wal): looking
    never changes the cache, and works while a mount or a crash left it."""
    d = tempfile.mkdtemp(prefix="idx-", dir=WORK)
    try:
        for suffix in ("", "-wal"):
            src = os.path.join(cache, "index.sqlite" + suffix)
            if os.path.exists(src):
                shutil.copyfile(src, os.path.join(d, "index.sqlite" + suffix))
        db = sqlite3.connect(os.path.join(d, "index.sqlite"))
        try:
            yield db
        finally:
            db.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def folder_ids(cache):
    """{raw server name: folder id} from the index."""
    with index_copy(cache) as db:
        rows = db.execute("SELECT raw, id FROM folders").fetchall()
    return {(r.decode() if isinstance(r, bytes) else r): i for r, i in rows}


def body_rel(fid, uidvalidity, uid):
    return os.path.join(str(fid), str(uidvalidity), str(uid))


# ---- private server (tests 4 and 8) ----------------------------------------------------


def private_server():
    global DC1, S1
    if S1 is None:
        DC1 = fx.Dovecot()
        DC1.start()
        DC1.populate("standard")
        S1 = Srv(DC1.host, DC1.port_imaps, DC1.cafile, DC1.user, DC1.password_file, dc=DC1)
    elif DC1.proc is None:
        DC1.start()
    return S1


def server_reachable(srv):
    try:
        socket.create_connection((srv.host, srv.port), timeout=1).close()
        return True
    except OSError:
        return False


# ---- the tests ---------------------------------------------------------------------------


def test_warm_remount():
    """1. Remount with nothing changed: 1 round trip per folder, no fetches."""
    snap = S0.snapshot()
    folders = selectable(snap)
    cache = new_cache("t1")
    big = snap[BIG]
    n_small = sum(len(f.msgs) for f in folders) - len(big.msgs)
    with CMount(S0, cache) as m:
        problems = []
        names1 = list_all(m, snap, problems)
        total = 0
        for f in folders:
            if f.raw != BIG:
                total += read_check(m, f, names1[f.raw], sorted(f.msgs), problems)
        T.none_of(problems, "cold mount: every folder lists the server's UIDs and all %d "
                  "messages but the 20 MB one read byte-exact (%d bytes)" % (n_small, total))
        problems = []
        total = read_check(m, big, names1[BIG], sorted(big.msgs), problems)
        T.none_of(problems, "cold mount: the 20 MB message reads byte-exact (%d bytes)" % total)
        unmount(m, "cold mount")
    files = body_files(cache)
    want = sum(len(f.msgs) for f in folders)
    T.check(len(files) == want, "after unmount, bodies/ holds one file per message read",
            expected=want, seen="%d files" % len(files))

    with CMount(S0, cache) as m:
        m.settle()
        per, bad, problems = [], [], []
        names2 = {}
        for f in folders:
            c0 = m.counters()
            err = ls_l(m, f)
            c1 = m.counters()
            if err:
                problems.append(err)
            rt = dl(c0, c1, "imap.round_trips")
            nbytes = dl(c0, c1, "imap.bytes_in") + dl(c0, c1, "imap.bytes_out")
            cmds = dl(c0, c1, "imap.commands")
            per.append((f.path, rt, nbytes, cmds))
            if rt > 1 or nbytes >= 1024 or fetches(c0, c1):
                bad.append("%s: %d round trips (max 1), %d bytes in+out (max 1023), %d commands, "
                           "%d body fetches (max 0)" % (f.path, rt, nbytes, cmds, fetches(c0, c1)))
            names, probs = listing(m, f)
            problems += probs
            names2[f.raw] = names
        T.diag("warm listing per folder (round trips, bytes in+out, commands): " + ", ".join(
            "%s %d/%d/%d" % p for p in per))
        worst_rt = max(per, key=lambda p: p[1])
        worst_b = max(per, key=lambda p: p[2])
        T.none_of(bad, "warm remount: ls -l of each of %d folders costs <= 1 round trip and "
                  "< 1 KB (max %d round trips in %s; max %d bytes in %s; %d commands in all)"
                  % (len(per), worst_rt[1], worst_rt[0], worst_b[2], worst_b[0],
                     sum(p[3] for p in per)))
        diffs = ["%s: names %s" % (f.path, sorted(set(names1[f.raw]) ^ set(names2[f.raw])))
                 for f in folders if names1[f.raw] != names2[f.raw]]
        T.none_of(problems + diffs, "warm remount: the same names as the first mount")
        c0 = m.counters()
        problems = []
        total = 0
        for f in folders:
            total += read_check(m, f, names2[f.raw], sorted(f.msgs), problems)
        c1 = m.counters()
        T.none_of(problems, "warm remount: all %d cached messages read byte-exact (%d bytes)"
                  % (want, total))
        T.check(fetches(c0, c1) == 0 and dl(c0, c1, "imap.commands") == 0,
                "warm remount: reading every cached message sends nothing "
                "(body/range/prefetch fetches and IMAP commands)",
                expected="0 fetches, 0 commands",
                seen="%d fetches, %d commands, %d bytes in, %d body hits" % (
                    fetches(c0, c1), dl(c0, c1, "imap.commands"), dl(c0, c1, "imap.bytes_in"),
                    dl(c0, c1, "cache.body_hits")))


def test_changes_unmounted():
    """2. 3 new, 2 flagged, 1 expunged while unmounted: only that is fetched."""
    raw = "INBOX"
    snap = S0.snapshot(only={raw})
    f = snap[raw]
    cache = new_cache("t2")
    with CMount(S0, cache) as m:
        m.settle()
        c0 = m.counters()
        err = ls_l(m, f)
        c1 = m.counters()
        cold_in = dl(c0, c1, "imap.bytes_in")
        names1, probs = listing(m, f)
        T.none_of(([err] if err else []) + probs, "cold listing of INBOX (%d messages: %d bytes "
                  "in, %d commands)" % (len(f.msgs), cold_in, dl(c0, c1, "imap.commands")))
        problems = []
        read_check(m, f, names1, sorted(f.msgs), problems)
        T.none_of(problems, "cold mount: every INBOX message reads byte-exact")
        unmount(m, "first mount")

    # The changes, with imaplib.
    old = sorted(f.msgs)
    unflagged = [u for u in old if "\\Flagged" not in f.msgs[u].flags
                 and "\\Deleted" not in f.msgs[u].flags]
    to_flag = unflagged[1:3]
    gone = unflagged[-1]
    base = max(m_.date for m_ in f.msgs.values()) + 86400
    new_data = [make_message("t2-%d" % i, "Cache resync new message %d" % i,
                             "New message %d after the first mount.\r\n" % i + "x" * (100 * i),
                             base + 3600 * i) for i in range(3)]
    with S0.session() as im:
        fx.examine(im, raw)
        typ, data = im.uid("SEARCH", "DELETED")
        already = b" ".join(d for d in data if d).split()
        if already:
            raise RuntimeError("INBOX has \\Deleted messages %r; refusing to EXPUNGE" % already)
        new_uids = [fx.append(im, raw, d, (), base + 3600 * i)[1]
                    for i, d in enumerate(new_data)]
        fx._ok(im.select(fx.mailbox_arg(raw)), "SELECT INBOX")
        fx._ok(im.uid("STORE", ",".join(map(str, to_flag)), "+FLAGS", "(\\Flagged)"), "STORE")
        fx._ok(im.uid("STORE", str(gone), "+FLAGS", "(\\Deleted)"), "STORE \\Deleted")
        fx._ok(im.uid("EXPUNGE", str(gone)), "UID EXPUNGE")
        im.close()
    snap2 = S0.snapshot(only={raw})
    f2 = snap2[raw]
    want_uids = (set(old) - {gone}) | set(new_uids)
    T.check(set(f2.msgs) == want_uids and all("\\Flagged" in f2.msgs[u].flags for u in to_flag),
            "imaplib: the server has 3 new (UIDs %s), 2 newly flagged (%s), UID %d expunged"
            % (new_uids, to_flag, gone), expected=sorted(want_uids), seen=sorted(f2.msgs))

    with CMount(S0, cache) as m:
        m.settle()
        c0 = m.counters()
        err = ls_l(m, f2)
        c1 = m.counters()
        names2, probs = listing(m, f2)
        T.none_of(([err] if err else []) + probs, "remount: ls -l INBOX works")
        T.check(set(names2) == want_uids,
                "remount: INBOX lists exactly the server's UIDs (3 new, %d gone)" % gone,
                expected=sorted(want_uids), seen=sorted(names2),
                details=["missing %s" % sorted(want_uids - set(names2)),
                         "extra %s" % sorted(set(names2) - want_uids)])
        changed = ["UID %d: %r -> %r" % (u, names1[u], names2.get(u)) for u in old
                   if u != gone and names1.get(u) != names2.get(u)]
        T.none_of(changed, "remount: the %d other messages keep their names" % (len(old) - 1))
        flag_bad = []
        for u in sorted(names2):
            try:
                v = os.getxattr(file_path(m, f2, names2[u]), "user.imap.flags").decode()
            except OSError as e:
                flag_bad.append("UID %d: getxattr: %s" % (u, e))
                continue
            if frozenset(v.split()) != f2.msgs[u].flags:
                flag_bad.append("UID %d: user.imap.flags %r, server %s" % (
                    u, v, sorted(f2.msgs[u].flags)))
        T.none_of(flag_bad, "remount: user.imap.flags equals the server's flags for every "
                  "message, incl. \\Flagged on UIDs %s" % to_flag)
        res_in = dl(c0, c1, "imap.bytes_in")
        T.check(res_in * 2 < cold_in and fetches(c0, c1) == 0 and dl(c0, c1, "imap.commands") <= 2,
                "remount: the resync fetched only the changes (%d bytes in vs %d for the cold "
                "listing, %d commands, %d round trips, %d body fetches)" % (
                    res_in, cold_in, dl(c0, c1, "imap.commands"), dl(c0, c1, "imap.round_trips"),
                    fetches(c0, c1)),
                expected="bytes in < half the cold listing, <= 2 commands, no body fetch",
                seen=(res_in, dl(c0, c1, "imap.commands"), fetches(c0, c1)))
        c0 = m.counters()
        problems = []
        nbytes = read_check(m, f2, names2, new_uids, problems)
        c1 = m.counters()
        T.none_of(problems, "remount: the 3 new messages read byte-exact")
        want_b = sum(len(f2.msgs[u].body) for u in new_uids)
        T.check(fetches(c0, c1) == 3 and dl(c0, c1, "cache.body_bytes_fetched") == want_b,
                "remount: reading them fetched exactly their 3 bodies",
                expected="3 fetches, %d body bytes" % want_b,
                seen="%d fetches, %d body bytes" % (fetches(c0, c1),
                                                    dl(c0, c1, "cache.body_bytes_fetched")))
        c0 = m.counters()
        problems = []
        rest = sorted(set(old) - {gone})
        read_check(m, f2, names2, rest, problems)
        c1 = m.counters()
        T.none_of(problems, "remount: the %d old messages (flag changes incl.) read byte-exact"
                  % len(rest))
        T.check(fetches(c0, c1) == 0 and dl(c0, c1, "imap.commands") == 0,
                "remount: ... from the cache (no fetch, no command)", expected=(0, 0),
                seen=(fetches(c0, c1), dl(c0, c1, "imap.commands")))


def test_uidvalidity():
    """3. A folder deleted and created again: a new generation, no old bodies."""
    raw = "Folder with spaces"
    snap = S0.snapshot(only={raw})
    f = snap[raw]
    cache = new_cache("t3")
    with CMount(S0, cache) as m:
        problems = []
        names1, probs = listing(m, f)
        problems += probs
        read_check(m, f, names1, sorted(f.msgs), problems)
        T.none_of(problems, "first mount: %s lists and reads byte-exact (%d messages)"
                  % (f.path, len(f.msgs)))
        unmount(m, "first mount")
    fid = folder_ids(cache).get(raw)
    old_dir = os.path.join(cache, "bodies", str(fid), str(f.uidvalidity))
    old_files = os.listdir(old_dir) if os.path.isdir(old_dir) else []
    T.check(fid is not None and len(old_files) == len(f.msgs),
            "the cache holds the old bodies in bodies/<id>/<old uidvalidity>",
            expected="%d files in bodies/%s/%s" % (len(f.msgs), fid, f.uidvalidity),
            seen=old_files)

    base = max(x.date for x in f.msgs.values()) + 5 * 86400
    n_new = len(f.msgs) + 1
    with S0.session() as im:
        fx._ok(im.delete(fx.mailbox_arg(raw)), "DELETE")
        fx.create(im, raw)
        for i in range(n_new):
            fx.append(im, raw, make_message("t3-%d" % i, "Second generation %d" % i,
                                            "Generation two, message %d.\r\n" % i + "y" * (50 * i),
                                            base + 600 * i), (), base + 600 * i)
    snap2 = S0.snapshot(only={raw})
    f2 = snap2[raw]
    T.check(f2.uidvalidity != f.uidvalidity and set(f.msgs) <= set(f2.msgs),
            "imaplib STATUS: new UIDVALIDITY and the old UIDs are reused",
            expected="UIDVALIDITY != %d, UIDs covering %s" % (f.uidvalidity, sorted(f.msgs)),
            seen="UIDVALIDITY %s, UIDs %s" % (f2.uidvalidity, sorted(f2.msgs)))

    with CMount(S0, cache) as m:
        names2, probs = listing(m, f2)
        T.check(set(names2) == set(f2.msgs) and not probs,
                "remount: the folder lists exactly the new messages",
                expected=sorted(f2.msgs), seen=sorted(names2), details=probs)
        stale = sorted(set(names1.values()) & set(names2.values()))
        T.check(not stale, "remount: none of the %d old names appears" % len(names1),
                expected="no old name", seen=stale)
        problems = []
        read_check(m, f2, names2, sorted(f2.msgs), problems)
        for u, nb in names2.items():
            try:
                uv = os.getxattr(file_path(m, f2, nb), "user.imap.uidvalidity").decode()
                if uv.strip() != str(f2.uidvalidity):
                    problems.append("UID %d: user.imap.uidvalidity %s, server %d"
                                    % (u, uv, f2.uidvalidity))
            except OSError as e:
                problems.append("UID %d: getxattr: %s" % (u, e))
        T.none_of(problems, "remount: each message reads the new bytes (UIDs %s coincide with "
                  "old ones) and shows the new UIDVALIDITY" % sorted(set(f.msgs) & set(f2.msgs)))
        left = os.listdir(old_dir) if os.path.isdir(old_dir) else []
        T.check(not left, "remount: bodies/%s/%d (old generation) is gone" % (fid, f.uidvalidity),
                expected="no files", seen=left)
        unmount(m, "second mount")
    with index_copy(cache) as db:
        rows = db.execute("SELECT uid FROM messages WHERE folder_id = ? AND uidvalidity = ?",
                          (fid, f.uidvalidity)).fetchall()
        nrows = db.execute("SELECT count(*) FROM messages WHERE folder_id = ?",
                           (fid,)).fetchone()[0]
    T.check(not rows and nrows == len(f2.msgs),
            "the index has no rows of the old generation, only the %d new ones" % len(f2.msgs),
            expected="0 old rows, %d rows" % len(f2.msgs),
            seen="%d old rows, %d rows" % (len(rows), nrows))


def spread(names, n):
    """n UIDs of which no two are neighbours in name order (reading them is
    no sequential scan, so no prefetch starts), and the other UIDs."""
    order = sorted(names, key=lambda u: names[u])
    chosen = order[0::2][:n]
    return chosen, [u for u in order if u not in chosen]


def cached_state(cache, raw, f, cached, uncached):
    """Problems if the body files of `cached` are not all there or any of
    `uncached` is."""
    fid = folder_ids(cache).get(raw)
    files = body_files(cache)
    out = ["UID %d: no body file" % u for u in cached
           if body_rel(fid, f.uidvalidity, u) not in files]
    out += ["UID %d: has a body file (fetched without being read)" % u for u in uncached
            if body_rel(fid, f.uidvalidity, u) in files]
    return out


def test_server_stopped():
    """4. The server stops while mounted, then comes back."""
    srv = private_server()
    dc = srv.dc
    snap = srv.snapshot(only={"INBOX", "Work"})
    inbox, work = snap["INBOX"], snap["Work"]
    cache = new_cache("t4")
    with CMount(srv, cache) as m:
        problems = []
        names = {}
        for f in (inbox, work):
            err = ls_l(m, f)
            if err:
                problems.append(err)
            names[f.raw], probs = listing(m, f)
            problems += probs
        cached, uncached = spread(names["INBOX"], 5)
        read_check(m, inbox, names["INBOX"], cached, problems)
        T.none_of(problems, "server up: INBOX and Work list, %d INBOX bodies (UIDs %s) read "
                  "byte-exact" % (len(cached), cached))
        T.none_of(cached_state(cache, "INBOX", inbox, cached, uncached),
                  "server up: exactly those %d bodies are in the cache (reading every other "
                  "message starts no prefetch)" % len(cached))

        dc.kill_server()
        T.check(not server_reachable(srv), "the server is down (connection refused)")
        problems = []
        for f in (inbox, work):
            err = ls_l(m, f)
            if err:
                problems.append(err)
            try:
                now, probs = listing(m, f)
            except OSError as e:
                problems.append("%s: listdir: %s" % (f.path, e))
                continue
            problems += probs
            if now != names[f.raw]:
                problems.append("%s: %d names, before %d" % (f.path, len(now), len(names[f.raw])))
        T.none_of(problems, "server down: ls of INBOX and Work (listed before) works, same names")
        problems = []
        c0 = m.counters()
        read_check(m, inbox, names["INBOX"], cached, problems, drop=True)
        c1 = m.counters()
        T.none_of(problems, "server down: the %d cached bodies read byte-exact (kernel page "
                  "cache dropped first; %d body hits)" % (len(cached),
                                                         dl(c0, c1, "cache.body_hits")))
        target = uncached[0]
        data, err, secs, done = timed_read(file_path(m, inbox, names["INBOX"][target]), 20)
        T.check(done and data is None and err in NET_ERRNOS and secs <= 5.0,
                "server down: an uncached file (UID %d) fails with ENETDOWN/EIO/ETIMEDOUT "
                "within 5 s (took %.2f s, %s)" % (target, secs, errno.errorcode.get(err, err)),
                expected="an error within 5 s",
                seen="finished=%s, %s, %.2f s" % (
                    done, "%d bytes read" % len(data) if data is not None
                    else errno.errorcode.get(err, err), secs))

        dc.start()
        t0 = time.monotonic()
        attempts, last = 0, None
        ok_at = None
        errs = {}
        while time.monotonic() - t0 < 15.0:
            attempts += 1
            data, err, secs, done = timed_read(
                file_path(m, inbox, names["INBOX"][target]), 15.0)
            if done and data is not None:
                ok_at = time.monotonic() - t0
                last = data
                break
            name = errno.errorcode.get(err, str(err)) if done else "hang"
            errs[name] = errs.get(name, 0) + 1
            last = "finished=%s errno=%s" % (done, name)
            time.sleep(0.25)
        good = ok_at is not None and last == inbox.msgs[target].body
        T.check(good, "server back (same port): the uncached file reads byte-exact without "
                "remounting after %s s (%d attempts; failures before: %s)" % (
                    "%.1f" % ok_at if ok_at is not None else "> 15", attempts, errs or "none"),
                expected="its bytes within 15 s",
                seen=mismatch(last, inbox.msgs[target].body) if isinstance(last, bytes) else last)
        problems = []
        read_check(m, inbox, names["INBOX"], uncached[1:], problems)
        T.none_of(problems, "server back: the other %d uncached INBOX messages read byte-exact"
                  % len(uncached[1:]))


def test_kill9():
    """5. SIGKILL during a 20 MB fetch: no partial body file, a sound index."""
    snap = S0.snapshot(only={BIG, "INBOX"})
    big, inbox = snap[BIG], snap["INBOX"]
    (uid,) = big.msgs
    body = big.msgs[uid].body
    cache = new_cache("t5")
    with Proxy(HOST, S0.port) as px:
        with CMount(S0, cache, port=px.port, foreground=True) as m:
            inames, _ = listing(m, inbox)
            small, _ = spread(inames, 3)
            problems = []
            read_check(m, inbox, inames, small, problems)
            T.none_of(problems, "through the proxy: 3 INBOX messages read byte-exact (cached)")
            names, _ = listing(m, big)
            path = file_path(m, big, names[uid])
            reached, go = threading.Event(), threading.Event()
            state = {"n": 0, "errno": None, "done": False}

            def reader():
                try:
                    with open(path, "rb", buffering=0) as fh:
                        while True:
                            b = fh.read(MB)
                            if not b:
                                break
                            state["n"] += len(b)
                            if state["n"] >= 3 * MB and not reached.is_set():
                                reached.set()
                                go.wait(30)
                except OSError as e:
                    state["errno"] = e.errno
                finally:
                    state["done"] = True
                    reached.set()

            th = threading.Thread(target=reader, daemon=True)
            th.start()
            reached.wait(60)
            px.stall = True
            go.set()
            time.sleep(1.5)
            c = m.counters()
            T.check(not state["done"] and state["n"] < len(body),
                    "the read of the 20 MB file is in progress and stalled (%d of %d bytes "
                    "read, %d ranges fetched)" % (state["n"], len(body), c["cache.range_fetches"]),
                    expected="not finished", seen=state)
            pid = m.proc.pid
            os.kill(pid, signal.SIGKILL)
            try:
                m.proc.wait(10)
            except Exception:
                pass
            fusermount(m.path, lazy=True)
            th.join(15)
            T.check(not th.is_alive() and state["errno"] is not None,
                    "after SIGKILL and fusermount3 -uz the reader gets an error",
                    expected="an errno", seen=state)
            px.stall = False
    files = body_files(cache)
    ids = folder_ids(cache)
    big_rel = body_rel(ids.get(BIG), big.uidvalidity, uid)
    T.check(ids.get(BIG) is not None and big_rel not in files,
            "after the kill: no body file for the 20 MB message (bodies/%s)" % big_rel,
            expected="absent", seen=sorted(files.items()))
    T.diag("after the kill: bodies/ %d files, tmp/ %s" % (len(files), tmp_files(cache)))
    by_rel = {body_rel(ids.get(f.raw), f.uidvalidity, u): f.msgs[u].body
              for f in (big, inbox) for u in f.msgs}
    bad = []
    for rel, size in sorted(files.items()):
        want = by_rel.get(rel)
        with open(os.path.join(cache, "bodies", rel), "rb") as fh:
            got = fh.read()
        if want is None or got != want:
            bad.append("bodies/%s: %s" % (rel, "not a message read" if want is None
                                          else mismatch(got, want)))
    missing = [u for u in small if body_rel(ids.get("INBOX"), inbox.uidvalidity, u) not in files]
    T.none_of(bad + ["INBOX UID %d: its body file is gone" % u for u in missing],
              "after the kill: the %d body files are the 3 messages read before, complete and "
              "byte-exact" % len(files))
    with index_copy(cache) as db:
        res = [r[0] for r in db.execute("PRAGMA integrity_check").fetchall()]
    T.check(res == ["ok"], "after the kill: PRAGMA integrity_check of the index is ok",
            expected=["ok"], seen=res)
    # Bodies are synced together, not one by one: the marker of the last
    # sync says which ones a run that did not end cleanly may have left
    # torn. Make one of the three look written after that sync, one before.
    marker = os.path.join(cache, "bodies.unsynced")
    try:
        with open(marker) as fh:
            synced = int(fh.read().strip()) / 1e9
    except (OSError, ValueError) as e:
        synced = None
        T.fail("after the kill: %s holds the time of the last sync (seen: %s)" % (marker, e))
    kept, torn = (body_rel(ids.get("INBOX"), inbox.uidvalidity, u) for u in small[:2])
    if synced is not None:
        os.utime(os.path.join(cache, "bodies", kept), (synced - 60, synced - 60))
        os.utime(os.path.join(cache, "bodies", torn), (synced + 5, synced + 5))
    with CMount(S0, cache) as m:
        after = body_files(cache)
        T.check(synced is not None and kept in after and torn not in after,
                "remount after the kill: the body modified after the last sync is dropped "
                "(%s), the one before it stays (%s)" % (torn, kept),
                expected="only %s" % kept, seen=sorted(after))
        names, _ = listing(m, big)
        try:
            data = read_file(file_path(m, big, names[uid]))
        except (OSError, KeyError) as e:
            data = repr(e).encode()
        T.check(data == body, "remount: the 20 MB message reads byte-exact",
                expected="%d bytes" % len(body), seen=mismatch(data, body))
        T.diag("remount: tmp/ now %s" % tmp_files(cache))
        unmount(m, "remount")
    T.check(not os.path.exists(marker), "a clean unmount syncs and removes bodies.unsynced",
            expected="absent", seen="present")


def test_size_limit():
    """6. cache_size=1M: LRU eviction at open/close, open bodies stay."""
    snap = S0.snapshot(only={"INBOX", BIG})
    inbox, big = snap["INBOX"], snap[BIG]
    (buid,) = big.msgs
    bsize = len(big.msgs[buid].body)
    limit = MB
    cache = new_cache("t6")

    def disk():
        return sum(body_files(cache).values())

    with CMount(S0, cache, options=["cache_size=1M"]) as m:
        names, _ = listing(m, inbox)
        bnames, _ = listing(m, big)
        small = min(inbox.msgs, key=lambda u: inbox.msgs[u].size)
        spath = file_path(m, inbox, names[small])
        bpath = file_path(m, big, bnames[buid])

        def open_close_until(cond, seconds=3.0):
            """Open/close (and read) one small file until cond() holds."""
            def step():
                read_file(spath, drop=True)
                return cond()
            return wait_for(step, seconds, step=0.1)

        # A: well over the limit, then one more open/close; nothing open.
        problems = []
        total = read_check(m, inbox, names, sorted(inbox.msgs), problems)
        total += read_check(m, big, bnames, [buid], problems)
        T.none_of(problems, "A: all INBOX and the 20 MB message read byte-exact (%d bytes)"
                  % total)
        open_close_until(lambda: disk() <= limit)
        files = body_files(cache)
        c = m.counters()
        T.check(sum(files.values()) <= limit,
                "A: after one more open/close, bytes under bodies/ <= 1 MiB (no file open)",
                expected="<= %d" % limit, seen="%d bytes in %d files" % (
                    sum(files.values()), len(files)))
        T.check(c["cache.evictions"] > 0, "A: cache.evictions > 0 (%d)" % c["cache.evictions"],
                expected="> 0", seen=c["cache.evictions"])
        T.check(c.get("cache.bytes_on_disk") == sum(files.values()),
                "A: cache.bytes_on_disk equals the bytes under bodies/",
                expected=sum(files.values()), seen=c.get("cache.bytes_on_disk"))

        # B: a file kept open has its body on disk.
        fid = folder_ids(cache).get("INBOX")
        keep = max(inbox.msgs, key=lambda u: inbox.msgs[u].size)
        krel = body_rel(fid, inbox.uidvalidity, keep)
        ksize = len(inbox.msgs[keep].body)
        kbody = inbox.msgs[keep].body
        fk = open(file_path(m, inbox, names[keep]), "rb", buffering=0)
        fb = None
        try:
            os.posix_fadvise(fk.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            kdata = fk.read(ksize + 1)
            T.check(kdata == kbody and body_files(cache).get(krel) == ksize,
                    "B: INBOX UID %d (%d bytes), kept open, reads byte-exact and has its body "
                    "file bodies/%s" % (keep, ksize, krel), expected="its bytes and the file",
                    seen=(mismatch(kdata, kbody), body_files(cache).get(krel)))

            # C: the 20 MB message again, also kept open; then an open/close evicts.
            fb = open(bpath, "rb", buffering=0)
            os.posix_fadvise(fb.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            parts = []
            while True:
                b = fb.read(MB)
                if not b:
                    break
                parts.append(b)
            bdata = b"".join(parts)
            T.check(bdata == big.msgs[buid].body, "C: the 20 MB message, read again and kept "
                    "open, reads byte-exact", expected="its bytes",
                    seen=mismatch(bdata, big.msgs[buid].body))
            ev0 = m.counters()["cache.evictions"]
            open_close_until(lambda: disk() <= limit + ksize + bsize
                             and m.counters()["cache.evictions"] > ev0)
            files = body_files(cache)
            c = m.counters()
            T.check(sum(files.values()) <= limit + ksize + bsize
                    and c["cache.evictions"] > ev0,
                    "C: an open/close evicts; bytes under bodies/ <= 1 MiB + the 2 open files "
                    "(%d <= %d + %d + %d)" % (sum(files.values()), limit, ksize, bsize),
                    expected="an eviction and <= %d" % (limit + ksize + bsize),
                    seen="evictions %d -> %d, %d bytes in %s" % (
                        ev0, c["cache.evictions"], sum(files.values()), sorted(files)))
            T.check(files.get(krel) == ksize,
                    "C: the body of the open INBOX file survived the eviction",
                    expected="bodies/%s with %d bytes" % (krel, ksize), seen=files.get(krel))

            # D: close the 20 MB file; the cache is over the limit: the next
            # open/close must bring it down (only the INBOX file is open).
            fb.close()
            fb = None
            ok = open_close_until(lambda: disk() <= limit + ksize)
            files = body_files(cache)
            c = m.counters()
            T.check(ok, "D: after the 20 MB file is closed, the next open/close brings "
                    "bodies/ to <= 1 MiB + the open file (%d <= %d + %d)"
                    % (sum(files.values()), limit, ksize),
                    expected="<= %d within 3 s of open/close" % (limit + ksize),
                    seen="%d bytes in %s (evictions %d, cache.bytes_on_disk %s)" % (
                        sum(files.values()), sorted(files.items()), c["cache.evictions"],
                        c.get("cache.bytes_on_disk")))
            T.check(files.get(krel) == ksize,
                    "D: the body of the open INBOX file is still there",
                    expected="bodies/%s with %d bytes" % (krel, ksize), seen=files.get(krel))
            fk.seek(0)
            os.posix_fadvise(fk.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            again = fk.read(ksize + 1)
            T.check(again == kbody, "D: the open file still reads byte-exact",
                    expected="its bytes", seen=mismatch(again, kbody))
        finally:
            fk.close()
            if fb is not None:
                fb.close()
        problems = []
        read_check(m, inbox, names, sorted(inbox.msgs), problems, drop=True)
        read_check(m, big, bnames, [buid], problems, drop=True)
        T.none_of(problems, "after the evictions: every INBOX message and the 20 MB one read "
                  "byte-exact")

    # E: a cache over the limit at mount time (cache_size lowered between
    # mounts): the first open/close brings it down.
    cache = new_cache("t6e")
    with CMount(S0, cache) as m:
        names, _ = listing(m, inbox)
        bnames, _ = listing(m, big)
        problems = []
        read_check(m, inbox, names, sorted(inbox.msgs), problems)
        read_check(m, big, bnames, [buid], problems)
        T.none_of(problems, "E: without a limit, INBOX and the 20 MB message read byte-exact")
        unmount(m, "E: mount without a limit")
    before = disk()
    with CMount(S0, cache, options=["cache_size=1M"]) as m:
        names, _ = listing(m, inbox)
        small = min(inbox.msgs, key=lambda u: inbox.msgs[u].size)
        spath = file_path(m, inbox, names[small])
        problems = []

        def step():
            data = read_file(spath, drop=True)
            if data != inbox.msgs[small].body:
                problems.append(mismatch(data, inbox.msgs[small].body))
            return disk() <= limit
        ok = wait_for(step, 3.0, step=0.1)
        files = body_files(cache)
        c = m.counters()
        T.check(ok and not problems, "E: remount with cache_size=1M over a %d-byte cache: the "
                "first open/close brings bodies/ to <= 1 MiB" % before,
                expected="<= %d within 3 s of open/close" % limit,
                seen="%d bytes in %d files (evictions %d, cache.bytes_on_disk %s) %s" % (
                    sum(files.values()), len(files), c["cache.evictions"],
                    c.get("cache.bytes_on_disk"), problems[:1]))


def test_corrupt():
    """7. Garbage index, truncated body file, deleted body file."""
    snap = S0.snapshot()
    folders = [f for f in selectable(snap) if f.raw != BIG]
    inbox = snap["INBOX"]

    def warm(cache, what):
        with CMount(S0, cache) as m:
            problems = []
            names = list_all(m, snap, problems)
            for f in folders:
                read_check(m, f, names[f.raw], sorted(f.msgs), problems)
            T.none_of(problems, "%s: warm-up mount lists and reads byte-exact" % what)
            unmount(m, "%s: warm-up mount" % what)
        return names

    # (a) garbage over index.sqlite
    cache = new_cache("t7a")
    warm(cache, "(a)")
    idx = os.path.join(cache, "index.sqlite")
    size = max(os.path.getsize(idx), 8192)
    with open(idx, "wb") as fh:
        fh.write((b"this is not an sqlite database \x00\xff" * (size // 33 + 1))[:size])
    for sfx in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(idx + sfx)
    try:
        with CMount(S0, cache) as m:
            T.check(True, "(a) garbage index.sqlite: the mount works (exit %s)" % m.returncode)
            problems = []
            names = list_all(m, snap, problems)
            root = sorted(os.listdir(m.path))
            want_top = sorted({f.path.split("/")[0] for f in snap.values()})
            if root != want_top:
                problems.append("root: %s, server %s" % (root, want_top))
            T.none_of(problems, "(a) garbage index.sqlite: every listing equals the server")
            problems = []
            for f in folders:
                read_check(m, f, names[f.raw], sorted(f.msgs), problems)
            T.none_of(problems, "(a) garbage index.sqlite: every message reads byte-exact")
    except MountError as e:
        T.fail("(a) garbage index.sqlite: the mount works (seen: %s)" % e)

    # (b) truncated and (c) deleted body files
    cache = new_cache("t7bc")
    names = warm(cache, "(b,c)")
    fid = folder_ids(cache).get("INBOX")
    by_size = sorted(inbox.msgs, key=lambda u: inbox.msgs[u].size)
    trunc, deleted = by_size[-1], by_size[-2]
    tp = os.path.join(cache, "bodies", body_rel(fid, inbox.uidvalidity, trunc))
    dp = os.path.join(cache, "bodies", body_rel(fid, inbox.uidvalidity, deleted))
    ok = os.path.exists(tp) and os.path.exists(dp)
    if ok:
        os.truncate(tp, os.path.getsize(tp) // 2)
        os.unlink(dp)
    T.check(ok, "(b,c) the body files exist to damage", expected=(tp, dp), seen=ok)
    with CMount(S0, cache) as m:
        for what, uid in (("(b) truncated", trunc), ("(c) deleted", deleted)):
            c0 = m.counters()
            problems = []
            read_check(m, inbox, names["INBOX"], [uid], problems)
            c1 = m.counters()
            T.none_of(problems, "%s body file of INBOX UID %d (%d bytes): the file reads "
                      "byte-exact" % (what, uid, inbox.msgs[uid].size))
            T.check(fetches(c0, c1) >= 1, "%s body file: it was fetched again" % what,
                    expected=">= 1 fetch", seen="%d fetches" % fetches(c0, c1))
        unmount(m, "(b,c)")
    files = body_files(cache)
    bad = ["bodies/%s: %d bytes, expected %d" % (body_rel(fid, inbox.uidvalidity, u),
                                                files.get(body_rel(fid, inbox.uidvalidity, u), -1),
                                                inbox.msgs[u].size)
           for u in (trunc, deleted)
           if files.get(body_rel(fid, inbox.uidvalidity, u)) != inbox.msgs[u].size]
    T.none_of(bad, "(b,c) the re-fetched body files are complete again")


def test_offline_mount():
    """8. Mount a warm cache with the server down; -o offline."""
    srv = private_server()
    dc = srv.dc
    snap = srv.snapshot()
    folders = selectable(snap)
    inbox = snap["INBOX"]
    cache = new_cache("t8")
    with CMount(srv, cache) as m:
        problems = []
        names = list_all(m, snap, problems)
        cached, uncached = spread(names["INBOX"], 6)
        read_check(m, inbox, names["INBOX"], cached, problems)
        T.none_of(problems, "warm-up: every folder listed, %d INBOX bodies read" % len(cached))
        unmount(m, "warm-up")
    T.none_of(cached_state(cache, "INBOX", inbox, cached, uncached),
              "warm-up: exactly those %d bodies are in the cache" % len(cached))
    top = sorted({f.path.split("/")[0] for f in snap.values()})

    dc.kill_server()

    def offline_checks(m, what):
        problems = []
        root = sorted(os.listdir(m.path))
        if root != top:
            problems.append("root: %s, expected %s" % (root, top))
        for f in folders:
            err = ls_l(m, f)
            if err:
                problems.append(err)
            try:
                now, probs = listing(m, f)
            except OSError as e:
                problems.append("%s: %s" % (f.path, e))
                continue
            problems += probs
            if now != names[f.raw]:
                problems.append("%s: %d names, warm cache had %d" % (
                    f.path, len(now), len(names[f.raw])))
        T.none_of(problems, "%s: every folder lists as in the warm cache" % what)
        problems = []
        c0 = m.counters()
        read_check(m, inbox, names["INBOX"], cached, problems, drop=True)
        c1 = m.counters()
        if dl(c0, c1, "cache.body_hits") < len(cached):
            problems.append("%d body hits for %d files" % (dl(c0, c1, "cache.body_hits"),
                                                            len(cached)))
        T.none_of(problems, "%s: the %d cached bodies read byte-exact from the body files"
                  % (what, len(cached)))

    try:
        with CMount(srv, cache) as m:
            lines = [x for x in m.log().splitlines() if x.strip()]
            T.check(m.returncode == 0 and len(lines) == 1 and "offline" in lines[0].lower(),
                    "server down, no -o offline: exit 0 in %.1f s, one stderr line about offline"
                    % m.elapsed, expected="status 0, 1 line mentioning offline",
                    seen=(m.returncode, lines))
            offline_checks(m, "server down")
            data, err, secs, done = timed_read(
                file_path(m, inbox, names["INBOX"][uncached[0]]), 20)
            T.check(done and data is None and err in NET_ERRNOS and secs <= 5.0,
                    "server down: an uncached file fails with ENETDOWN/EIO/ETIMEDOUT within 5 s",
                    expected="an error within 5 s", seen="finished=%s, %s, %.2f s" % (
                        done, "%d bytes" % len(data) if data is not None
                        else errno.errorcode.get(err, err), secs))
    except MountError as e:
        T.fail("server down, no -o offline: the warm cache mounts (seen: %s)" % e)

    # -o offline with the server down: no connection attempt at all.
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    lport = lsock.getsockname()[1]
    attempts = []

    def accept_loop():
        while True:
            try:
                c, _ = lsock.accept()
            except OSError:
                return
            attempts.append(time.monotonic())
            c.close()

    threading.Thread(target=accept_loop, daemon=True).start()
    try:
        with CMount(srv, cache, options=["offline"], port=lport) as m:
            root = sorted(os.listdir(m.path))
            c = m.counters()
            T.check(not attempts and c["imap.connects"] == 0 and root == top,
                    "-o offline (server down): mounts (%.1f s) and lists the root with no "
                    "connection attempt" % m.elapsed,
                    expected="0 TCP connects, imap.connects 0, root %s" % top,
                    seen="%d TCP connects, imap.connects %d, root %s" % (
                        len(attempts), c["imap.connects"], root))
            # Stop listening for real (a close() alone leaves the socket
            # of a thread blocked in accept() listening): refused from now.
            lsock.shutdown(socket.SHUT_RDWR)
            lsock.close()
            offline_checks(m, "-o offline (server down)")
    except MountError as e:
        T.fail("-o offline (server down): the warm cache mounts (seen: %s)" % e)
    finally:
        lsock.close()

    # -o offline with the server up: nothing until something uncached is read.
    dc.start()
    with Proxy(srv.host, srv.port) as px:
        try:
            with CMount(srv, cache, options=["offline"], port=px.port) as m:
                root = sorted(os.listdir(m.path))
                c = m.counters()
                T.check(px.accepted == 0 and c["imap.connects"] == 0 and c["imap.commands"] == 0,
                        "-o offline (server up): no connection after mount and root listing",
                        expected="0 proxied connections, imap.connects 0, 0 commands",
                        seen="%d proxied, imap.connects %d, %d commands" % (
                            px.accepted, c["imap.connects"], c["imap.commands"]))
                target = uncached[-1]
                data, err, secs, done = timed_read(
                    file_path(m, inbox, names["INBOX"][target]), 20)
                c = m.counters()
                T.check(data == inbox.msgs[target].body and c["imap.connects"] >= 1,
                        "-o offline (server up): reading an uncached message connects "
                        "(imap.connects %d) and reads byte-exact" % c["imap.connects"],
                        expected="its bytes", seen=mismatch(data, inbox.msgs[target].body)
                        if data is not None else "errno %s after %.1f s" % (
                            errno.errorcode.get(err, err), secs))
        except MountError as e:
            T.fail("-o offline (server up): mounts (seen: %s)" % e)


def test_folders_gone():
    """9. A folder deleted and one renamed on the server between mounts."""
    dname, rname, nname = "CacheDel", "CacheRen", "CacheRenamed"
    base = 1700000000
    with S0.session() as im:
        for name in (dname, rname):
            fx.create(im, name)
            for i in range(2):
                fx.append(im, name, make_message("t9-%s-%d" % (name, i), "%s message %d" % (
                    name, i), "Body %d of %s.\r\n" % (i, name), base + 60 * i), (), base + 60 * i)
    snap = S0.snapshot(only={dname, rname})
    cache = new_cache("t9")
    with CMount(S0, cache) as m:
        problems = []
        for raw in (dname, rname):
            names, probs = listing(m, snap[raw])
            problems += probs
            read_check(m, snap[raw], names, sorted(snap[raw].msgs), problems)
        T.none_of(problems, "first mount: %s and %s list and read byte-exact" % (dname, rname))
        unmount(m, "first mount")
    ids = folder_ids(cache)
    ddir = os.path.join(cache, "bodies", str(ids.get(dname)))
    T.check(ids.get(dname) and len(body_files(cache)) == 4 and os.path.isdir(ddir),
            "the cache holds their bodies (bodies/%s for %s)" % (ids.get(dname), dname),
            expected="4 body files", seen=sorted(body_files(cache)))
    with S0.session() as im:
        fx._ok(im.delete(fx.mailbox_arg(dname)), "DELETE")
        fx._ok(im.rename(fx.mailbox_arg(rname), fx.mailbox_arg(nname)), "RENAME")
    snap2 = S0.snapshot(only={nname})
    top = sorted({f.path.split("/")[0] for f in snap2.values()})
    with CMount(S0, cache) as m:
        root = sorted(os.listdir(m.path))
        T.check(root == top and dname not in root and rname not in root and nname in root,
                "remount: the root lists the server's folders: %s gone, %s only as %s"
                % (dname, rname, nname), expected=top, seen=root)
        T.check(not os.path.exists(m.p(dname)) and not os.path.exists(m.p(rname)),
                "remount: the old names do not resolve (stat)",
                expected="ENOENT for both", seen=(os.path.exists(m.p(dname)),
                                                  os.path.exists(m.p(rname))))
        f = snap2[nname]
        names, probs = listing(m, f)
        problems = list(probs)
        if set(names) != set(f.msgs):
            problems.append("UIDs %s, server %s" % (sorted(names), sorted(f.msgs)))
        read_check(m, f, names, sorted(f.msgs), problems)
        T.none_of(problems, "remount: %s lists the server's messages, byte-exact" % nname)
        T.check(not os.path.exists(ddir), "remount: bodies/%s of the deleted folder is removed"
                % ids.get(dname), expected="absent", seen=os.listdir(ddir)
                if os.path.isdir(ddir) else "a file")


def test_cache_modes():
    """10. cache=none keeps no bodies; cache=headers keeps only the index."""
    snap = S0.snapshot()
    folders = [f for f in selectable(snap) if f.raw != BIG]
    cache = new_cache("t10n")
    with CMount(S0, cache, options=["cache=none"]) as m:
        problems = []
        names = list_all(m, snap, problems)
        for f in folders:
            read_check(m, f, names[f.raw], sorted(f.msgs), problems)
        T.none_of(problems, "cache=none: lists and reads byte-exact")
        # Removed bodies leave the count too (else it grows past cache_size
        # and every close walks bodies/ to evict).
        wait_for(lambda: m.counters()["cache.bytes_on_disk"] == 0, 5)
        T.eq(m.counters()["cache.bytes_on_disk"], 0,
             "cache=none: every file read and closed, no body bytes counted on disk")
        unmount(m, "cache=none")
    files = body_files(cache)
    T.check(not files, "cache=none: after unmount bodies/ is empty",
            expected="no files", seen=sorted(files))

    cache = new_cache("t10h")
    with CMount(S0, cache, options=["cache=headers"]) as m:
        problems = []
        names = list_all(m, snap, problems)
        for f in folders:
            read_check(m, f, names[f.raw], sorted(f.msgs), problems)
        T.none_of(problems, "cache=headers: lists and reads byte-exact")
        # Its bodies outlive a clean stop, and a cache=full mount may keep
        # them: they are synced like any others.
        marker = os.path.join(cache, "bodies.unsynced")
        T.check(os.path.exists(marker), "cache=headers: bodies.unsynced is there while mounted",
                expected="present", seen="absent")
        unmount(m, "cache=headers")
        T.check(not os.path.exists(marker), "cache=headers: the clean unmount removes it",
                expected="absent", seen="present")
    with CMount(S0, cache, options=["cache=headers"]) as m:
        files = body_files(cache)
        T.check(not files, "cache=headers: at the next mount bodies/ is empty",
                expected="no files", seen=sorted(files))
        # The header blocks stay in the index, kept as the bodies streamed
        # by: each up to its first blank line, none where there is no blank
        # line within 64 KiB.
        with index_copy(cache) as db:
            rows = db.execute("SELECT f.raw, m.uid, m.header FROM messages m "
                              "JOIN folders f ON f.id = m.folder_id").fetchall()
        got = {((r.decode() if isinstance(r, bytes) else r), uid): h for r, uid, h in rows}
        bad, n = [], 0
        for f in folders:
            for uid, msg in f.msgs.items():
                end = msg.body.find(b"\r\n\r\n")
                want = msg.body[:end + 4] if 0 <= end <= 64 * 1024 - 4 else None
                have = got.get((f.raw, uid), "no row")
                n += 1
                if have != want:
                    bad.append("%s UID %d: header %s, expected %s" % (
                        f.path, uid, short(repr(have)[:80]), short(repr(want)[:80])))
        T.none_of(bad, "cache=headers: the index holds each message's header block "
                  "(%d messages)" % n)
        m.settle()
        bad, per = [], []
        for f in selectable(snap):
            c0 = m.counters()
            err = ls_l(m, f)
            c1 = m.counters()
            rt = dl(c0, c1, "imap.round_trips")
            per.append("%s %d" % (f.path, rt))
            if err or rt > 1 or fetches(c0, c1):
                bad.append("%s: %d round trips (max 1), %d fetches %s" % (
                    f.path, rt, fetches(c0, c1), err or ""))
            now, probs = listing(m, f)
            bad += probs
            if now != names[f.raw]:
                bad.append("%s: names differ from the first mount" % f.path)
        T.none_of(bad, "cache=headers: next mount lists every folder with <= 1 round trip "
                  "(the resync) and the same names (%s)" % ", ".join(per))

    # No marker can be written (its name is taken by a directory): the
    # mount says so and syncs each body on its own.
    cache = new_cache("t10m")
    os.makedirs(os.path.join(cache, "bodies.unsynced"))
    f = next(g for g in folders if g.msgs)
    with CMount(S0, cache) as m:
        names, problems = listing(m, f)
        read_check(m, f, names, sorted(f.msgs)[:2], problems)
        said = [x for x in m.log().splitlines() if "bodies.unsynced" in x]
        T.check(not problems and said and len(body_files(cache)) >= 2
                and not os.path.isfile(os.path.join(cache, "bodies.unsynced")),
                "no marker can be written: a warning, no marker, and the bodies read and kept",
                expected="a warning line, 2 or more body files", seen=(problems[:2], said[:1],
                                                              sorted(body_files(cache))))


def test_prefetch_window():
    """11. A sequential scan of big messages keeps about two batches (of up
    to 32 MiB) in flight, not the rest of the folder; each body comes once."""
    name, n, size, k = "CachePrefetch", 80, 3 * MB // 2, 6
    base = 1700000000
    filler = ("x" * 76 + "\r\n") * (size // 78)
    with S0.session() as im:
        fx.create(im, name)
        for i in range(n):
            fx.append(im, name, make_message("t11-%d" % i, "Prefetch %02d" % i,
                                             "Message %d.\r\n%s" % (i, filler), base + 60 * i),
                      (), base + 60 * i)
    try:
        snap = S0.snapshot(only={name})
        f = snap[name]
        total = sum(msg.size for msg in f.msgs.values())
        with CMount(S0, new_cache("t11")) as m:
            names, problems = listing(m, f)
            order = sorted(names, key=lambda u: names[u])
            c0 = m.settle()
            read_check(m, f, names, order[:k], problems)
            c1 = m.settle(quiet=1.0, timeout=30.0)
            got = dl(c0, c1, "imap.bytes_in")
            # Two batches of at most 32 MiB (each may end one message
            # past it) beside the bodies read.
            bound = 2 * (32 * MB + size) + k * size + MB
            T.check(not problems and k * size <= got <= bound,
                    "reading the first %d of %d messages of %.1f MiB in name order: "
                    "%.1f MiB come in (%d prefetched), of %.1f MiB in the folder"
                    % (k, n, size / MB, got / MB, dl(c0, c1, "cache.prefetches"), total / MB),
                    expected="%d bodies and <= %.1f MiB" % (k, bound / MB),
                    seen=problems[:3] or "%.1f MiB" % (got / MB))
            read_check(m, f, names, order[k:], problems)
            c2 = m.settle()
            fetched = (dl(c0, c2, "cache.body_fetches") + dl(c0, c2, "cache.prefetches"))
            T.check(not problems and fetched == n,
                    "reading on to the end: every body byte-exact, each fetched once "
                    "(%d body fetches + prefetches)" % fetched,
                    expected="%d fetches, no mismatch" % n, seen=problems[:3] or fetched)
        # Unmounted while a batch is in flight (stalled): the daemon ends
        # the fetch with the connection, then frees the cache, and exits.
        with Proxy(HOST, S0.port) as px:
            with CMount(S0, new_cache("t11u"), port=px.port, foreground=True) as m:
                names, problems = listing(m, f)
                order = sorted(names, key=lambda u: names[u])
                read_check(m, f, names, order[:3], problems)
                px.stall = True
                time.sleep(0.5)
                c = m.counters()
                fusermount(m.path, lazy=True)
                try:
                    rc = m.proc.wait(20)
                except subprocess.TimeoutExpired:
                    rc = "still running after 20 s"
                px.stall = False
                log = [x for x in m.log().splitlines() if "Sanitizer" in x or "ERROR" in x]
                T.check(not problems and c["cache.prefetch_batches"] >= 1 and rc == 0
                        and not log,
                        "fusermount3 -uz while a prefetch batch is in flight: the daemon "
                        "exits with status 0", expected="status 0, %d batch(es) in flight"
                        % c["cache.prefetch_batches"], seen=problems[:3] or (rc, log[:3]))
    finally:
        with S0.session() as im:
            fx._ok(im.delete(fx.mailbox_arg(name)), "DELETE")

    # Names start with the date: odd UIDs dated a day after the even ones
    # list after them, so a batch in name order is one UID range per
    # message, and the UID set of a command is capped at 256 ranges.
    name, n = "CacheScattered", 600
    with S0.session() as im:
        fx.create(im, name)
        for i in range(n):
            date = base + 60 * i + (86400 * 30 if i % 2 else 0)
            fx.append(im, name, make_message("t11s-%d" % i, "Scattered %03d" % i,
                                             "Message %d.\r\n" % i, date), (), date)
    try:
        snap = S0.snapshot(only={name})
        f = snap[name]
        with CMount(S0, new_cache("t11s")) as m:
            names, problems = listing(m, f)
            order = sorted(names, key=lambda u: names[u])
            c0 = m.settle()
            read_check(m, f, names, order, problems)
            c1 = m.settle()
            batches = dl(c0, c1, "cache.prefetch_batches")
            pre = dl(c0, c1, "cache.prefetches")
            fetched = dl(c0, c1, "cache.body_fetches") + pre
            # The first two reads make the streak; the rest in batches.
            want = -(-pre // 256)
            T.check(not problems and fetched == n and pre >= n - 3 and
                    want <= batches <= want + 1,
                    "reading %d messages in name order, UIDs alternating: byte-exact, each "
                    "fetched once, %d prefetched in %d batches of at most 256 UID ranges"
                    % (n, pre, batches),
                    expected="%d fetches, %d or %d batches" % (n, want, want + 1),
                    seen=problems[:3] or "%d fetches, %d batches" % (fetched, batches))
        # Scans again in the same mount, the bodies gone (cache=none): with
        # the kernel's pages dropped too, prefetched again rather than
        # fetched one by one; with the pages still there, nothing fetched.
        with CMount(S0, new_cache("t11n"), options=["cache=none"]) as m:
            names, problems = listing(m, f)
            order = sorted(names, key=lambda u: names[u])
            seen = []
            for drop in (False, True, False):
                c0 = m.settle()
                read_check(m, f, names, order, problems, drop=drop)
                c1 = m.settle()
                seen.append((dl(c0, c1, "cache.body_fetches"), dl(c0, c1, "cache.prefetches")))
            T.check(not problems and all(bf + pre == n and pre >= n - 3 for bf, pre in seen[:2])
                    and seen[2] == (0, 0),
                    "cache=none, three scans of %d messages in one mount: byte-exact; the "
                    "first, and the second after dropping the kernel's pages, fetch each "
                    "body once, all but the first few prefetched; the third, pages kept, "
                    "fetches nothing (body fetches, prefetches: %s)" % (n, seen),
                    expected="(%d fetches, >= %d prefetched) twice, then (0, 0)" % (n, n - 3),
                    seen=problems[:3] or seen)
    finally:
        with S0.session() as im:
            fx._ok(im.delete(fx.mailbox_arg(name)), "DELETE")


def test_pages_handed_on():
    """12. Bodies a prefetch brings go to the kernel's page cache (not on
    -o ro mounts, whose opens the daemon does not see): a scan reads them
    without a READ each, byte-exact, flags untouched; pages dropped, they
    are read from the cache; SIGTERM during a scan ends the daemon."""
    name, n = "CachePages", 300
    base = 1710000000
    with S0.session() as im:
        fx.create(im, name)
        for i in range(n):
            # 1 to 100 KB, one of 1.5 MiB (too big to hand on: read as usual).
            size = 3 * MB // 2 if i == n // 2 else 1000 + (i * 7919) % (100 * 1000)
            text = ("%03d " % i + "y" * 74 + "\r\n") * (size // 80)
            fx.append(im, name, make_message("t12-%d" % i, "Pages %03d" % i, text, base + 60 * i),
                      (), base + 60 * i)
    try:
        snap = S0.snapshot(only={name})
        f = snap[name]
        flags0 = {u: msg.flags for u, msg in f.msgs.items()}
        for ro in (False, True):
            mode = "-o ro" if ro else "read-write"
            with CMount(S0, new_cache("t12"), options=["ro"] if ro else []) as m:
                names, problems = listing(m, f)
                order = sorted(names, key=lambda u: names[u])
                # Two reads make a scan; its prefetch then brings the rest.
                cs = m.settle()
                read_check(m, f, names, order[:2], problems)
                c0 = m.settle(quiet=1.0, timeout=30.0)
                read_check(m, f, names, order[2:], problems)
                c1 = m.settle()
                stored, reads = dl(cs, c1, "fuse.pages_stored"), dl(c0, c1, "fuse.read")
                if ro:
                    T.check(not problems and stored == 0 and reads >= n - 2,
                            "%s: reading %d messages in name order after their prefetch: "
                            "byte-exact, each read by imapfs (%d READs), none stored ahead"
                            % (mode, n - 2, reads), expected="0 stored, >= %d READs" % (n - 2),
                            seen=problems[:3] or "%d stored, %d READs" % (stored, reads))
                else:
                    # The big one (not handed on) takes ~12 READs of 128 KiB.
                    T.check(not problems and stored >= n - 4 and reads <= 16,
                            "%s: reading %d messages in name order after their prefetch: "
                            "byte-exact; %d bodies were in the kernel's cache already, %d READs "
                            "reached imapfs" % (mode, n - 2, stored, reads),
                            expected=">= %d stored, <= 16 READs" % (n - 4),
                            seen=problems[:3] or "%d stored, %d READs" % (stored, reads))
                read_check(m, f, names, order, problems, drop=True)
                c2 = m.settle()
                T.check(not problems and dl(c1, c2, "fuse.read") >= n and fetches(c1, c2) == 0,
                        "%s: the pages dropped, all %d read again from the cache: byte-exact, "
                        "nothing fetched" % (mode, n),
                        expected=">= %d READs, 0 fetches" % n,
                        seen=problems[:3] or (dl(c1, c2, "fuse.read"), fetches(c1, c2)))
        after = S0.snapshot(only={name}, bodies=False)[name]
        T.check({u: msg.flags for u, msg in after.msgs.items()} == flags0,
                "the flags of the %d messages are as before (BODY.PEEK only)" % n)

        # SIGTERM while a scan runs and bodies are being handed on: the
        # daemon answers what the kernel asked and ends.
        with CMount(S0, new_cache("t12t"), foreground=True) as m:
            names, problems = listing(m, f)
            order = sorted(names, key=lambda u: names[u])
            stop = threading.Event()

            def scan():
                for uid in order:
                    if stop.is_set():
                        return
                    try:
                        read_file(file_path(m, f, names[uid]))
                    except OSError:
                        return

            th = threading.Thread(target=scan, daemon=True)
            th.start()
            wait_for(lambda: m.counters().get("fuse.pages_stored", 0) > 0 or not th.is_alive(), 10)
            stored = m.counters().get("fuse.pages_stored", 0)
            m.proc.send_signal(signal.SIGTERM)
            try:
                rc = m.proc.wait(10)
            except subprocess.TimeoutExpired:
                rc = "still running after 10 s"
            stop.set()
            th.join(10)
            T.check(stored > 0 and isinstance(rc, int) and rc >= 0 and not th.is_alive(),
                    "SIGTERM during a scan, %d bodies handed on: the daemon exits (status %s) "
                    "and the reader is not left hanging" % (stored, rc),
                    expected="exit within 10 s", seen=(stored, rc, th.is_alive()))
    finally:
        with S0.session() as im:
            fx._ok(im.delete(fx.mailbox_arg(name)), "DELETE")


TESTS = [
    ("1-warm-remount", test_warm_remount),
    ("2-changes-while-unmounted", test_changes_unmounted),
    ("3-uidvalidity", test_uidvalidity),
    ("4-server-stopped", test_server_stopped),
    ("5-kill-9", test_kill9),
    ("6-size-limit", test_size_limit),
    ("7-corrupt-cache", test_corrupt),
    ("8-offline-mount", test_offline_mount),
    ("9-folders-gone", test_folders_gone),
    ("10-cache-modes", test_cache_modes),
    ("11-prefetch-window", test_prefetch_window),
    ("12-pages-handed-on", test_pages_handed_on),
]


def main():
    global WORK, S0
    reason = skip_reason("test_cache.py", EXE)
    if reason:
        print("1..0 # SKIP " + reason)
        return 0
    only = [a for a in sys.argv[2:]]  # optional: test numbers to run
    WORK = tempfile.mkdtemp(prefix="imapfs-cache-e2e-")
    S0 = Srv(HOST, PORT_IMAPS, CAFILE, USER, PASSWORD_FILE)
    t0 = time.monotonic()
    try:
        for label, fn in TESTS:
            if only and label.split("-")[0] not in only:
                continue
            run_one(fn, t0, BUDGET, label,
                    logs=lambda: [DC1.log_path] if DC1 is not None and DC1.dir else [])
    finally:
        if DC1 is not None:
            try:
                DC1.stop()
            except Exception as e:
                T.diag("stopping the private Dovecot: %s" % e)
        left = mounts_under(WORK)
        if left:
            for p in left:
                fusermount(p, lazy=True)
        if mounts_under(WORK):
            T.diag("still mounted under %s: %r; leaving it" % (WORK, mounts_under(WORK)))
        else:
            shutil.rmtree(WORK, ignore_errors=True)
    T.diag("total: %.1f s" % (time.monotonic() - t0))
    return T.finish()


if __name__ == "__main__":
    sys.exit(main())
