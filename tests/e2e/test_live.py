#!/usr/bin/env python3
"""Other clients' changes seen through a live imapfs mount.

Run under the fixture:

    python3 tests/fixture/dovecot.py run -- python3 tests/e2e/test_live.py IMAPFS

While a mount is up, "another client" (imaplib, the test's own connection)
changes the server, and the test watches the mount:

  watched   the folder in use (listed last) sees a new message, a flag
            change, an expunge and a move away within 2 s (IDLE), the
            expunged name stops resolving (stat: ENOENT) and the new
            message reads byte-exact;
  polled    a folder in use but not the one watched sees a new message
            and an expunge within the poll interval (-o poll=3) + 2 s;
  folders   folders created, deleted and renamed by the other client appear
            and disappear in the tree within poll + 2 s while a thread lists
            the root without pause, the old names stop resolving and the
            root's mtime moves (the watched folder's too, with a new message);
  open      a message expunged while a file is open: every read of the
            open file returns the message's bytes or fails with an errno,
            never an empty or a different message; a fresh open fails
            (with cache=full, a read before the expunge; with cache=none,
            none);
  reused    a message expunged while open, then one of the same size and
            date arrives: each file reads its own bytes (or the open one
            an errno), never the other's;
  quiet     an idle mount that watches a folder sends nothing on its
            command connections;
  notify    with NOTIFY (Dovecot has it) and no poll (-o poll=0): a new
            message in a folder in use but not watched, and a folder
            created elsewhere, show within 2 s all the same;
  generation  another client deletes a folder the mount has read and
            creates it again (a new UIDVALIDITY, the same UIDs): the mount
            lists and reads the new messages byte-exact, the old names stop
            resolving and no byte of the old generation stays in the cache;
  asleep    every connection goes silent for good (the proxy drops all
            bytes and sends no FIN: a laptop that slept while the server
            forgot it): a read of an uncached message returns its bytes or
            an errno within twice the timeout, `ls` answers from the cache at
            once, and the watch notices its dead IDLE (-o keepalive) and
            reconnects, so a new message shows again;
  switch    the watch moves to another folder after its IDLE was silent
            for longer than the timeout: the DONE is not taken for a dead
            server, and the new folder's changes show within 2 s;
  busy      this mount sets flags in the watched folder every 0.3 s (its
            own changes put the watch's resync off) while another client
            adds a message: it shows within 8 s all the same;
  crowded   other clients hold all but two of the connections the server
            allows the user (Dovecot's mail_max_userip_connections): reads in
            three folders at once, which make the pool open more connections
            that the server refuses, all return their messages.

TAP output; `1..0 # SKIP` when not runnable.  IMAPFS_E2E_ONLY=open,folders
runs only those.  Python standard library only.
"""

import errno
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.join(os.path.dirname(HERE), "fixture"))
from helpers import (  # noqa: E402
    HOST, PORT_IMAPS, T, Mount, Server, errno_name, imap_quote, parse_message_name, run_suite,
)
from proxy import Proxy  # noqa: E402

EXE = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else None
WATCH_LIMIT = 2.0  # seconds: the folder in use
POLL = 3           # -o poll=N for these mounts
POLL_LIMIT = POLL + 2.0
BUDGET = 240.0
BASE_DATE = 1710000000
TOKEN = "live%d" % os.getpid()
COUNT = [0]


def make_message(subject, text=None):
    COUNT[0] += 1
    n = COUNT[0]
    text = text or "Body of message %d of the live test.\r\n" % n
    lines = ["From: Other Client <other@example.org>", "To: Alice <alice@example.org>",
             "Subject: %s" % subject,
             "Date: Sat, 09 Mar 2024 16:%02d:00 +0000" % (n % 60),
             "Message-ID: <%s.%d@imapfs.test>" % (TOKEN, n), "", text]
    return "\r\n".join(lines).encode()


class Other:
    """The other client: an imaplib session that changes the server."""

    def __init__(self):
        self.s = Server()
        self.m = self.s.m

    def close(self):
        self.s.close()

    def _ok(self, res, what):
        if res[0] != "OK":
            raise RuntimeError("%s: %s %r" % (what, res[0], res[1]))
        return res[1]

    def create(self, raw):
        self._ok(self.m.create(imap_quote(raw)), "CREATE %s" % raw)

    def delete(self, raw):
        self._ok(self.m.delete(imap_quote(raw)), "DELETE %s" % raw)

    def rename(self, old, new):
        self._ok(self.m.rename(imap_quote(old), imap_quote(new)), "RENAME %s" % old)

    def append(self, raw, data):
        return self.s.append(raw, data, date=BASE_DATE + 60 * COUNT[0])

    def select(self, raw):
        self._ok(self.m.select(imap_quote(raw)), "SELECT %s" % raw)

    def store(self, raw, uid, flags):
        self.select(raw)
        self._ok(self.m.uid("STORE", str(uid), "+FLAGS.SILENT", "(%s)" % flags), "STORE")
        self.m.unselect()

    def expunge(self, raw, uid):
        """Only this UID (UID EXPUNGE): nobody else's \\Deleted mail goes."""
        self.select(raw)
        self._ok(self.m.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Deleted)"), "STORE")
        self._ok(self.m.uid("EXPUNGE", str(uid)), "UID EXPUNGE")
        self.m.unselect()

    def move(self, raw, uid, dest):
        self.select(raw)
        self._ok(self.m.uid("MOVE", str(uid), imap_quote(dest)), "UID MOVE")
        self.m.unselect()


def listing(path):
    """{uid: name} of the message files in a directory of the mount."""
    out = {}
    for name in os.listdir(path):
        parsed = parse_message_name(name)
        if parsed:
            out[parsed[2]] = name
    return out


def wait_until(pred, limit):
    """Seconds until pred() held (polled every 50 ms), or None after limit
    (checked once more a little later, to tell slow from never)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


def late(pred, extra=3.0):
    """After a miss: does it come at all (then it was only slow)?"""
    t = wait_until(pred, extra)
    return "never (waited %.1f s more)" % extra if t is None else "only after %.1f s more" % t


def timely(pred, limit, what):
    t = wait_until(pred, limit)
    T.check(t is not None, "%s within %.1f s%s" % (what, limit, " (%.2f s)" % t if t else ""),
            expected="within %.1f s" % limit, seen=None if t is not None else late(pred))
    return t is not None


def stat_errno(path):
    try:
        os.stat(path)
        return None
    except OSError as e:
        return e.errno


def mounted(options=(), limit=150):
    return Mount(EXE, ["poll=%d" % POLL, "timeout=10"] + list(options), limit=limit)


def seed(other, raw, n):
    other.create(raw)
    return {other.append(raw, make_message("%s seed %d" % (raw, i))): i for i in range(n)}


# ---- the tests -------------------------------------------------------------------------


def test_watched():
    other = Other()
    a, b = "LiveA", "LiveB"
    uids = sorted(seed(other, a, 4))
    seed(other, b, 1)
    with mounted() as m:
        pa, pb = m.p(a), m.p(b)
        listing(pb)  # LiveB in use too (for the move)
        first = listing(pa)  # LiveA last: the watched folder
        T.eq(sorted(first), uids, "the mount lists LiveA as the server has it")
        before = os.stat(pa).st_mtime_ns

        data = make_message("Arrived while watching")
        new = other.append(a, data)
        if timely(lambda: new in listing(pa), WATCH_LIMIT,
                  "a message appended by another client is listed"):
            after = os.stat(pa).st_mtime_ns
            T.check(after > before, "the folder's mtime moved with its listing",
                    expected="> %d" % before, seen=after)
            path = os.path.join(pa, listing(pa)[new])
            with open(path, "rb") as fh:
                got = fh.read()
            T.check(got == data, "the new message reads byte-exact",
                    expected="%d bytes" % len(data), seen="%d bytes" % len(got))

        name = os.path.join(pa, first[uids[0]])
        other.store(a, uids[0], "\\Flagged")
        timely(lambda: "\\Flagged" in os.getxattr(name, "user.imap.flags").decode(),
               WATCH_LIMIT, "a flag set by another client shows in user.imap.flags")

        gone = os.path.join(pa, first[uids[1]])
        os.stat(gone)  # in the kernel's cache
        other.expunge(a, uids[1])
        timely(lambda: uids[1] not in listing(pa), WATCH_LIMIT,
               "a message expunged by another client leaves the listing")
        T.eq(errno_name(stat_errno(gone)), "ENOENT",
             "the expunged message's name no longer resolves (stat)")

        moved = os.path.join(pa, first[uids[2]])
        os.stat(moved)
        other.move(a, uids[2], b)
        timely(lambda: uids[2] not in listing(pa), WATCH_LIMIT,
               "a message moved away by another client leaves the listing")
        T.eq(errno_name(stat_errno(moved)), "ENOENT",
             "the moved message's old name no longer resolves (stat)")
        timely(lambda: len(listing(pb)) == 2, POLL_LIMIT,
               "the moved message appears in the destination folder (in use)")

        c = m.counters()
        T.check(c.get("imap.watch.commands", 0) > 0,
                "the changes came through the watch connection (imap.watch.commands)",
                expected="> 0", seen=c.get("imap.watch.commands"))
    other.close()


def arrive_and_leave(other, raw, path, gone_uid, limit, how):
    """Another client appends to a folder in use that is not the watched one,
    then expunges gone_uid: both show in the listing within limit."""
    new = other.append(raw, make_message("Arrived in a folder not watched"))
    timely(lambda: new in listing(path), limit,
           "%sa new message in a folder in use (not watched) is listed" % how)
    other.expunge(raw, gone_uid)
    timely(lambda: gone_uid not in listing(path), limit,
           "%san expunged message in a folder in use (not watched) leaves the listing" % how)


def test_polled():
    other = Other()
    p, w = "LivePolled", "LiveWatched"
    uids = sorted(seed(other, p, 2))
    seed(other, w, 1)
    with mounted() as m:
        pp = m.p(p)
        listing(pp)
        listing(m.p(w))  # now the watched one; LivePolled is left to the poll
        arrive_and_leave(other, p, pp, uids[0], POLL_LIMIT, "")
    other.close()


class Lister:
    """Lists a directory over and over from a thread of its own: a listing
    read while a change comes in must not stay in the kernel's cache."""

    def __init__(self, path):
        self.path = path
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            try:
                os.listdir(self.path)
            except OSError:
                time.sleep(0.01)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def test_folders():
    other = Other()
    gone, old, new, made = "LiveGone", "LiveOld", "LiveRenamed", "LiveMade"
    seed(other, gone, 1)
    old_uids = sorted(seed(other, old, 2))
    with mounted() as m, Lister(m.path):
        root = m.path
        T.check({gone, old} <= set(os.listdir(root)), "the root lists %s and %s" % (gone, old))
        listing(m.p(old))
        os.stat(m.p(gone))
        before = os.stat(root).st_mtime_ns
        other.delete(gone)
        other.rename(old, new)
        try:
            other.create(made)
        except RuntimeError as e:
            # Seen once in CI, unexplained: the folder "already existed".
            # What is checked next (the mount shows it) still holds.
            T.diag("folders: %s; the server lists %s" % (
                e, sorted(f.raw for f in other.s.list())))
        timely(lambda: gone not in os.listdir(root), POLL_LIMIT,
               "a folder deleted by another client leaves the root")
        timely(lambda: old not in os.listdir(root) and new in os.listdir(root), POLL_LIMIT,
               "a folder renamed by another client shows under its new name only")
        timely(lambda: made in os.listdir(root), POLL_LIMIT,
               "a folder created by another client appears")
        after = os.stat(root).st_mtime_ns
        T.check(after > before, "the root's mtime moved with its listing",
                expected="> %d" % before, seen=after)
        T.eq((errno_name(stat_errno(m.p(gone))), errno_name(stat_errno(m.p(old)))),
             ("ENOENT", "ENOENT"), "the deleted and the old name no longer resolve (stat)")
        if os.path.isdir(m.p(new)):
            T.eq(sorted(listing(m.p(new))), old_uids,
                 "the renamed folder lists its messages")
    other.close()


def read_open(fh, size):
    """Read the whole open file from offset 0, past the kernel's page cache."""
    os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    out = []
    off = 0
    while True:
        b = os.pread(fh.fileno(), 65536, off)
        if not b:
            break
        out.append(b)
        off += len(b)
    return b"".join(out)


def expunged_while_open(options, read_first, what):
    other = Other()
    raw = "LiveOpen" + ("Cached" if read_first else "None")
    bodies = {}
    other.create(raw)
    for i in range(3):
        data = make_message("%s %d" % (raw, i), "Line %d of an open message.\r\n" % i * 400)
        bodies[other.append(raw, data)] = data
    with mounted(options) as m:
        d = m.p(raw)
        names = listing(d)
        problems = []
        for uid, data in sorted(bodies.items()):
            path = os.path.join(d, names[uid])
            fh = open(path, "rb", buffering=0)
            try:
                if read_first:
                    got = read_open(fh, len(data))
                    if got != data:
                        problems.append("UID %d: first read %d bytes, expected %d"
                                        % (uid, len(got), len(data)))
                other.expunge(raw, uid)
                for attempt in range(2):  # at once, then after the mount noticed
                    try:
                        got = read_open(fh, len(data))
                        if got != data:
                            problems.append("UID %d: read %d of the open file after the "
                                            "expunge: %d bytes, expected the message's %d "
                                            "or an errno" % (uid, attempt, len(got), len(data)))
                    except OSError as e:
                        T.diag("%s: UID %d read %d after the expunge: %s"
                               % (what, uid, attempt, errno_name(e.errno)))
                    if attempt == 0:
                        wait_until(lambda: uid not in listing(d), WATCH_LIMIT)
            finally:
                fh.close()
            try:
                with open(path, "rb") as fh2:
                    got = fh2.read()
                problems.append("UID %d: a fresh open after the expunge read %d bytes"
                                % (uid, len(got)))
            except OSError as e:
                if e.errno != errno.ENOENT:
                    problems.append("UID %d: a fresh open after the expunge failed with %s, "
                                    "expected ENOENT" % (uid, errno_name(e.errno)))
        T.none_of(problems, "%s: reads of an open file whose message another client "
                  "expunged return its bytes or an errno, never an empty or other message; "
                  "a fresh open fails with ENOENT" % what)
    other.close()


def test_reused():
    """A message expunged while a file holds it open, then one of the same
    size and date arrives: the new file reads its own bytes, the open one
    its own or an errno (a message id, the inode number, is never handed
    out twice in a mount)."""
    other = Other()
    raw = "LiveReused"
    other.create(raw)
    other.append(raw, make_message("Reused first", "First message.\r\n"))
    old = make_message("Reused old", "Old bytes, " + "o" * 300 + "\r\n")
    date = BASE_DATE + 86400
    old_uid = other.s.append(raw, old, date=date)
    with mounted() as m:
        d = m.p(raw)
        names = listing(d)
        fh = open(os.path.join(d, names[old_uid]), "rb", buffering=0)
        try:
            got_old = fh.read()
            other.expunge(raw, old_uid)
            timely(lambda: old_uid not in listing(d), WATCH_LIMIT,
                   "the expunged message leaves the listing")
            new = old.replace(b"Old bytes, o", b"New bytes, n").replace(b"Reused old",
                                                                         b"Reused new")
            new_uid = other.s.append(raw, new, date=date)
            if timely(lambda: new_uid in listing(d), WATCH_LIMIT,
                      "a message of the same size and date arrives"):
                with open(os.path.join(d, listing(d)[new_uid]), "rb") as fh2:
                    got_new = fh2.read()
                try:
                    again = read_open(fh, len(old))
                except OSError as e:
                    again = errno_name(e.errno)
                T.check(got_old == old and got_new == new and again in (old, "EIO", "ENOENT"),
                        "the new file reads its own bytes; the open file of the expunged "
                        "message reads its own or fails",
                        expected="new: %d new bytes; open: the old bytes or an errno" % len(new),
                        seen="new: %s; open: %s" % (
                            "the new bytes" if got_new == new else "the OLD bytes"
                            if got_new == old else "%d other bytes" % len(got_new),
                            again if isinstance(again, str) else "the old bytes"
                            if again == old else "the NEW bytes" if again == new
                            else "%d other bytes" % len(again)))
        finally:
            fh.close()
    other.close()


def test_open():
    expunged_while_open(["cache=full"], True, "cache=full, read before")
    expunged_while_open(["cache=none"], False, "cache=none, not read before")


def test_quiet():
    other = Other()
    raw = "LiveQuiet"
    seed(other, raw, 2)
    with mounted(["poll=0"]) as m:
        listing(m.p(raw))
        time.sleep(1.0)
        c0 = m.counters()
        time.sleep(3.0)
        c1 = m.counters()
        keys = ("imap.commands", "imap.bytes_out")
        T.check(all(c1[k] == c0[k] for k in keys),
                "an idle mount (poll=0) sends no commands in 3 s (IDLE waits on its own "
                "connection)", expected="no change", seen={k: c1[k] - c0[k] for k in keys})
    other.close()


def test_notify():
    other = Other()
    if b"NOTIFY" not in b" ".join(other.m.capability()[1]).split():
        T.skip("NOTIFY: changes of folders not watched", "the server has no NOTIFY")
        other.close()
        return
    n, w, made = "LiveNotified", "LiveNotifyWatch", "LiveNotifyMade"
    uids = sorted(seed(other, n, 2))
    seed(other, w, 1)
    with mounted(["poll=0"]) as m:
        pn = m.p(n)
        T.eq(sorted(listing(pn)), uids, "poll=0: the mount lists %s" % n)
        listing(m.p(w))  # the watched folder from now on
        time.sleep(0.5)  # the watch's IDLE (and NOTIFY SET) is running
        arrive_and_leave(other, n, pn, uids[0], WATCH_LIMIT, "poll=0, NOTIFY: ")
        other.create(made)
        timely(lambda: made in os.listdir(m.path), WATCH_LIMIT,
               "poll=0, NOTIFY: a folder created by another client appears")
    other.close()


def read_all(path):
    with open(path, "rb") as fh:
        return fh.read()


def cache_holds(cache, needles):
    """Files under the cache dir whose bytes contain one of needles."""
    hits = []
    for top, _, files in os.walk(cache):
        for f in files:
            path = os.path.join(top, f)
            try:
                data = read_all(path)
            except OSError:
                continue
            if any(x in data for x in needles):
                hits.append(os.path.relpath(path, cache))
    return hits


def test_generation():
    other = Other()
    raw = "LiveGeneration"
    other.create(raw)
    old = {}
    for i in range(2):
        data = make_message("Generation one %d" % i, "The first generation, #%d.\r\n" % i)
        old[other.append(raw, data)] = data
    before = other.s.uidvalidity(raw)
    with mounted(["cache=full"]) as m:
        d = m.p(raw)
        names = listing(d)
        T.check(all(read_all(os.path.join(d, names[u])) == old[u] for u in old),
                "the first generation reads byte-exact (now cached)")
        for attempt in range(3):
            # Dovecot may give a folder made again within the same second
            # the same UIDVALIDITY: then once more, a second later
            other.delete(raw)
            time.sleep(1.1 * attempt)
            try:
                other.create(raw)
            except RuntimeError as e:
                # Dovecot (Maildir): a SELECT that races the DELETE may
                # make the folder's directories again; it exists then.
                if "ALREADYEXISTS" not in str(e):
                    raise
                T.diag("generation: %s" % e)
            after = other.s.uidvalidity(raw)
            if after != before:
                break
        new = {}
        for i in range(2):
            data = make_message("Generation two %d" % i, "The second generation, #%d.\r\n" % i)
            new[other.append(raw, data)] = data
        T.diag("generation: UIDVALIDITY %d -> %d, UIDs %s -> %s"
               % (before, after, sorted(old), sorted(new)))
        if after == before:
            T.skip("a new UIDVALIDITY while mounted", "the server kept the UIDVALIDITY")
            other.close()
            return

        def shows_new():
            try:  # the folder may be gone from the tree for a moment
                now = listing(d)
            except FileNotFoundError:
                return False
            return (sorted(now) == sorted(new)
                    and all("two" in parse_message_name(x)[1] for x in now.values()))
        if not timely(shows_new, POLL_LIMIT + 2,
                      "a folder deleted and created again elsewhere (new UIDVALIDITY) lists "
                      "its new messages under new names"):
            other.close()
            return
        now = listing(d)
        bad = []
        for u, data in sorted(new.items()):
            try:
                got = read_all(os.path.join(d, now[u]))
                if got != data:
                    bad.append("UID %d: %d bytes%s" % (u, len(got), ", the OLD message"
                                                        if got in old.values() else ""))
            except OSError as e:
                bad.append("UID %d: %s" % (u, errno_name(e.errno)))
        T.none_of(bad, "the new generation reads byte-exact: nothing old is served under "
                  "a reused UID")
        T.eq([errno_name(stat_errno(os.path.join(d, names[u]))) for u in sorted(old)],
             ["ENOENT"] * len(old), "the old generation's names no longer resolve")
        T.none_of(cache_holds(m.cache, [b"The first generation"]),
                  "no byte of the old generation is left in the cache dir")
    other.close()


SLEEP_TIMEOUT = 3  # -o timeout= of the mount whose connections go silent
KEEPALIVE = 2      # -o keepalive=


def test_asleep():
    other = Other()
    raw = "LiveAsleep"
    bodies = {}
    other.create(raw)
    for i in range(3):
        data = make_message("Asleep %d" % i)
        bodies[other.append(raw, data)] = data
    uids = sorted(bodies)
    with Proxy(HOST, PORT_IMAPS) as px:
        with mounted(["port=%d" % px.port, "poll=0", "timeout=%d" % SLEEP_TIMEOUT,
                      "keepalive=%d" % KEEPALIVE]) as m:
            d = m.p(raw)
            names = listing(d)
            T.eq(read_all(os.path.join(d, names[uids[0]])), bodies[uids[0]],
                 "asleep: a message reads through the proxy")
            time.sleep(0.5)  # the watch's IDLE runs
            c0 = m.counters()
            px.freeze()
            accepted = px.accepted

            t0 = time.monotonic()
            try:
                got = read_all(os.path.join(d, names[uids[1]]))
                seen = "%d bytes" % len(got) if got != bodies[uids[1]] else "its bytes"
            except OSError as e:
                seen = errno_name(e.errno)
            took = time.monotonic() - t0
            T.check(seen in ("its bytes", "EIO", "ENETDOWN", "ETIMEDOUT"),
                    "asleep: a read of an uncached message returns its bytes or an errno",
                    expected="its bytes, EIO, ENETDOWN or ETIMEDOUT", seen=seen)
            T.check(took <= 2 * SLEEP_TIMEOUT + 2,
                    "asleep: ... within twice the timeout (%.1f s, %s)" % (took, seen),
                    expected="<= %d s" % (2 * SLEEP_TIMEOUT + 2), seen="%.1f s" % took)

            t0 = time.monotonic()
            r = sorted(listing(d))
            took = time.monotonic() - t0
            T.check(r == uids and took < 1.0,
                    "asleep: ls answers from the cache at once (%.2f s)" % took,
                    expected="%s within 1 s" % uids, seen="%s after %.2f s" % (r, took))

            new = other.append(raw, make_message("Arrived after the sleep"))
            # the keepalive, the DONE's timeout, the watch's retry, the resync
            limit = KEEPALIVE + SLEEP_TIMEOUT + 5 + WATCH_LIMIT + 1
            timely(lambda: new in listing(d), limit,
                   "asleep: the watch notices its dead IDLE and reconnects: a new message "
                   "is listed")
            c1 = m.counters()
            T.check(c1["imap.watch.keepalives"] > c0["imap.watch.keepalives"]
                    and c1["imap.watch.timeouts"] > c0["imap.watch.timeouts"],
                    "asleep: the dead IDLE was found by a keepalive that timed out "
                    "(imap.watch.keepalives, imap.watch.timeouts)",
                    expected="both grew",
                    seen={k: (c0[k], c1[k]) for k in ("imap.watch.keepalives",
                                                      "imap.watch.timeouts")})
            T.check(px.accepted > accepted, "asleep: new connections were made",
                    expected="> %d" % accepted, seen=px.accepted)
            path = os.path.join(d, listing(d)[uids[2]])
            T.eq(read_all(path), bodies[uids[2]], "asleep: afterwards a message reads byte-exact")
    other.close()


def test_switch():
    other = Other()
    a, b = "LiveSwitchA", "LiveSwitchB"
    seed(other, a, 1)
    seed(other, b, 1)
    with mounted(["poll=0", "timeout=2"]) as m:
        listing(m.p(a))
        time.sleep(3.0)  # the IDLE on LiveSwitchA is silent for longer than the timeout
        listing(m.p(b))  # the watch moves: DONE, then SELECT LiveSwitchB
        time.sleep(0.5)
        new = other.append(b, make_message("Arrived after the watch moved"))
        timely(lambda: new in listing(m.p(b)), WATCH_LIMIT,
               "after an IDLE silent for longer than the timeout, the watch moves to another "
               "folder and sees a new message there")
        T.eq(m.counters()["imap.watch.timeouts"], 0,
             "the DONE that ended a long silent IDLE did not time out (imap.watch.timeouts)")
    other.close()


def test_busy():
    """While this mount keeps changing the watched folder (flags set every
    0.3 s), the watch puts off resyncing it for our own changes, but not
    for good: another client's new message shows within the cap (5 s)
    plus the settle, while our changes still go on."""
    other = Other()
    raw = "LiveBusy"
    uids = sorted(seed(other, raw, 2))
    stop = threading.Event()
    errors = []

    with mounted(["poll=0"]) as m:
        p = m.p(raw)
        names = listing(p)  # the watched folder from now on
        T.eq(sorted(names), uids, "the mount lists %s" % raw)
        target = os.path.join(p, names[uids[0]])
        time.sleep(0.5)  # the watch's IDLE is running

        def flagger():
            on = False
            while not stop.is_set():
                on = not on
                try:
                    os.setxattr(target, "user.imap.flags", b"\\Flagged" if on else b"")
                except OSError as e:
                    errors.append("setxattr: %s" % errno_name(e.errno))
                stop.wait(0.3)

        th = threading.Thread(target=flagger, daemon=True)
        th.start()
        try:
            time.sleep(1.0)
            new = other.append(raw, make_message("%s arrives while we change it" % raw))
            t = wait_until(lambda: new in listing(p), 8.0)
            busy = th.is_alive() and not stop.is_set()
        finally:
            stop.set()
            th.join(10)
        T.check(t is not None and busy,
                "a message another client adds to a folder this mount keeps changing "
                "shows within 8 s, while the changes go on",
                expected="within 8 s", seen="%.2f s" % t if t is not None else late(
                    lambda: new in listing(p)))
        T.none_of(errors, "every flag change of the busy loop succeeded")
    other.close()


def test_crowded():
    other = Other()
    raws = ["LiveCrowd%d" % i for i in range(3)]
    bodies = {}
    for raw in raws:
        other.create(raw)
        for i in range(2):
            data = make_message("%s %d" % (raw, i), "A read in a crowded account.\r\n" * 300)
            bodies[(raw, other.append(raw, data))] = data
    hogs = []
    try:
        # Other clients take every connection the server allows this user
        # (Dovecot: mail_max_userip_connections), then give two back: one for
        # the mount's first connection and one more.
        refused = None
        while len(hogs) < 64 and refused is None:
            try:
                hogs.append(Server())
            except Exception as e:  # imaplib's error: NO [LIMIT]
                refused = e
        if refused is None:
            T.skip("crowded: the pool keeps working", "the server took 64 connections")
            return
        T.diag("crowded: other clients hold %d connections; the next one: %s" % (
            len(hogs) + 1, refused))
        for s in hogs[:2]:
            s.close()
        del hogs[:2]
        time.sleep(1.0)  # the server counts the logouts
        with Proxy(HOST, PORT_IMAPS) as px, \
                mounted(["port=%d" % px.port, "max_connections=3"]) as m:
            names = {raw: listing(m.p(raw)) for raw in raws}
            # A 300 ms round trip keeps a connection busy with one read for
            # longer than the reads take to start, however loaded the
            # machine: the pool asks for more connections for the others.
            px.delay = 0.150
            results = {}

            def read(key):
                raw, uid = key
                try:
                    results[key] = read_all(os.path.join(m.p(raw), names[raw][uid]))
                except OSError as e:
                    results[key] = e

            threads = [threading.Thread(target=read, args=(k,)) for k in bodies]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            bad = {"%s/%d" % k: (errno_name(v.errno) if isinstance(v, OSError)
                                 else "%d bytes" % len(v))
                   for k, v in results.items() if v != bodies[k]}
            T.check(len(results) == len(bodies) and not bad,
                    "%d reads at once, in %d folders, with the server refusing the mount's "
                    "extra connections: every read returns the message" % (
                        len(bodies), len(raws)),
                    expected="%d byte-exact reads" % len(bodies),
                    seen=bad or "%d of %d reads ended" % (len(results), len(bodies)))
            slots = sorted(k.split(".")[1] for k in m.counters()
                           if k.startswith("imap.conn") and k.endswith(".commands"))
            T.check(len(slots) > 1, "the pool did try more connections than the server took",
                    expected="more than conn1", seen=slots)
    finally:
        for s in hogs:
            s.close()
        other.close()


TESTS = [test_watched, test_polled, test_folders, test_open, test_reused, test_quiet,
         test_notify,
         test_generation, test_asleep, test_switch, test_crowded, test_busy]


if __name__ == "__main__":
    sys.exit(run_suite("test_live.py", EXE, TESTS, BUDGET))
