"""End-to-end tests of changing mail through the imapfs mount: mv, rm,
mkdir, rmdir, folder renames, cp-in (APPEND), editors' saves, flags, -o ro,
the MOVE/UIDPLUS fallbacks, cut connections, rsync restore, batch moves,
a server that names old UIDs for new messages.

Run under the fixture:

    python3 tests/fixture/dovecot.py run -- python3 tests/e2e/test_write.py IMAPFS

The server's state is checked with imaplib (EXAMINE, BODY.PEEK) after every
step: the folder list, the UIDs of every folder a test owns with the sha256
of each body and its flags, and every other folder's UIDs and flags.  Before
every rm and mv, "another client" appends a \\Deleted message to each folder
involved; it must survive.  What imapfs sent is read from a recording proxy
(mounts with tls=none on the plaintext port) or from Dovecot's rawlog (the
servers this test starts itself, and the fixture's with `run --rawlog`):
never a bare EXPUNGE or a CLOSE.

Tests (IMAPFS_E2E_ONLY=ops,editors runs only those):
  ops       every change on the normal server: mv (UID MOVE), refused renames
            (EPERM), rm (UID STORE + UID EXPUNGE of that UID), flags (UID STORE
            with UNCHANGEDSINCE; EINVAL for invalid flags), touch/chmod/chown/
            truncate (EPERM), cp-in (APPEND, LF -> CRLF, INTERNALDATE, flags
            from user.imap.flags), scratch files, mkdir (modified UTF-7, %2F,
            %25), rmdir (ENOTEMPTY), folder mv (RENAME), mv INBOX (EPERM),
            -o delete=trash.  Server checks are made milliseconds after each
            call returns: changes must be visible at once (a move: once the
            destination has been looked at through the mount, which waits
            for the UID MOVE that the rename sent).
  readonly  -o ro: every change fails with EROFS, the server is unchanged.
  fallback  two more Dovecots advertising no MOVE, and neither MOVE nor
            UIDPLUS: UID COPY (+ UID EXPUNGE, or \Deleted and hidden); rawlog.
  editors   vim, vim -u NONE, nano-like, sed -i, O_TRUNC rewrite, emacs-like;
            a save whose APPEND the server refuses keeps the old message.
  faults    a proxy cuts the connection at UID MOVE / RENAME (before the
            server gets it, at the first byte of the answer, 40 bytes in), and
            a third into the literal of a 5 MB APPEND and of a rewrite.
  rsync     rsync -a of 1,000 messages into a new folder; prints throughput.
  batch     mv of 50 messages with a glob; prints the IMAP commands used.
  rm_burst  rm of 30 messages through a 40 ms round trip: no resync of the
            folder for our own expunges while the rm runs.
  lying     a proxy rewrites the APPENDUID of a cp-in and the COPYUID of a mv
            to a UID the folder already has: every message still reads as
            the server has it, and the new ones show once.
  sent      no recorded session ever sent a bare EXPUNGE or a CLOSE.

TAP output.
IMAPFS_E2E_DEBUG=1: mounts in the foreground with -d; logs of failing mounts
are printed.
"""

import calendar
import os
import re
import shutil
import stat
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "fixture"))
from helpers import (  # noqa: E402
    CAFILE, HOST, PASSWORD_FILE, PORT_IMAP, PORT_IMAPS, USER, T, Mount,
    errno_name, parse_message_name, password, run, run_suite, short, state_diff,
)
from writehelpers import (  # noqa: E402
    Expect, FaultProxy, Srv, canonical_name, commands_of_proxy, commands_of_rawlog,
    commands_of_stream,
    crlf, dangerous, make_message, proxy_offsets, sha, verb,
)
from proxy import Proxy  # noqa: E402

EXE = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else None
BASE = calendar.timegm((2024, 3, 4, 8, 0, 0, 0, 0, 0))
MB = 1024 * 1024
DELETED = "\\Deleted"
ENV_RAWLOG = os.environ.get("IMAPFS_TEST_RAWLOG_DIR") or ""

# every recording proxy of the run: their streams are checked at the end
RECORDERS = []
WORLDS = []  # their imaplib connections are closed at the end


def env_conf():
    return dict(host=HOST, port=PORT_IMAPS, cafile=CAFILE, user=USER, password=password())


def errno_of(fn):
    try:
        fn()
    except OSError as e:
        return e.errno
    return None


def tool(args, timeout=60, **kw):
    r = run(args, timeout=timeout, **kw)
    return r


def tool_seen(r):
    return "status %s, stderr %r" % (r.returncode, short((r.stderr or b"").decode(
        "utf-8", "replace").strip(), 300))


def read_uncached(path):
    """The file's bytes from the daemon, not from the kernel's page cache."""
    with open(path, "rb", buffering=0) as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return read_bytes(path)


def read_bytes(path):
    with open(path, "rb", buffering=0) as f:
        out = []
        while True:
            b = f.read(MB)
            if not b:
                return b"".join(out)
            out.append(b)


def write_bytes(path, data, flags=os.O_WRONLY | os.O_CREAT | os.O_EXCL):
    fd = os.open(path, flags, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


class _Borrowed:
    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        return self.conn

    def __exit__(self, *exc):
        return False


# ---- one server and the folders a test owns ------------------------------------------------


class World:
    """A server, the expected state of the folders this test owns, and the
    state of every other folder (which must not change)."""

    def __init__(self, name, conf):
        WORLDS.append(self)
        self.name, self.conf = name, conf
        self.exp = Expect()
        self.folders = None
        self.others = {}
        self.meta = {}      # label -> (subject, date, body bytes as stored)
        self.hidden = {}    # raw -> uids this mount left flagged \Deleted
        self.nforeign = 0

    def srv(self):
        """The test's own logged-in connection, kept open so that a check
        right after an operation starts within milliseconds."""
        if getattr(self, "_conn", None) is not None:
            try:
                self._conn.m.noop()
            except Exception:
                self._conn = None
        if getattr(self, "_conn", None) is None:
            self._conn = Srv(**self.conf)
        return _Borrowed(self._conn)

    def close(self):
        if getattr(self, "_conn", None) is not None:
            self._conn.close()
            self._conn = None

    def own(self, *raws):
        with self.srv() as s:
            have = s.raws()
            for raw in raws:
                if raw not in have:
                    s.create(raw)
                self.exp.folder(raw)
                for uid, (d, fl, _, _) in s.contents(raw).items():
                    self.exp.have(raw, uid, d, fl, "%s UID %d (from before)" % (raw, uid))

    def start(self):
        """Take the state of the folders not owned: they must never change."""
        with self.srv() as s:
            self.folders = s.raws()
            st = s.state()
        self.others = {raw: v for raw, v in st.items() if raw not in self.exp.known}

    def put(self, raw, subject, flags=(), body=None, n=0, lf=False):
        """APPEND a message as another client; returns its UID."""
        date = BASE + len(self.meta) * 3600 + n
        body = body if body is not None else (
            b"Body of %s.\nSecond line with some words.\n" % subject.encode())
        data = make_message(subject, body, date, lf=lf)
        with self.srv() as s:
            uid = s.add(raw, data, flags, date)
        self.exp.have(raw, uid, sha(data), flags, subject)
        self.meta[subject] = (subject, date, data)
        return uid

    def foreign(self, *raws):
        """Another client's \\Deleted message in each folder: it must survive."""
        with self.srv() as s:
            for raw in raws:
                self.nforeign += 1
                label = "foreign \\Deleted #%d" % self.nforeign
                data = make_message(label, b"Another client marked this deleted.\n",
                                    BASE - 86400 + self.nforeign)
                uid = s.add(raw, data, [DELETED], BASE - 86400 + self.nforeign)
                self.exp.have(raw, uid, sha(data), [DELETED], label)

    def _problems(self, raws):
        problems = []
        with self.srv() as s:
            # the owned folders first: this runs milliseconds after the call
            p, found = self.exp.compare(s, [r for r in (raws or self.exp.known)
                                            if r in self.folders])
            now = s.raws()
            for raw in sorted(self.folders - now):
                problems.append("folder %r is missing on the server" % raw)
            for raw in sorted(now - self.folders):
                problems.append("unexpected folder %r on the server" % raw)
            problems += [x for x in p if x.split(":")[0] in now]
            st = s.state()
        other_now = {raw: v for raw, v in st.items() if raw in self.others}
        problems += ["not owned by this test: " + d
                     for d in state_diff(self.others, other_now)]
        return problems, found

    def check(self, what, raws=None, later=5.0, at_once=True):
        """Compare the server with the expectation right now (one test
        point: changes must be visible at once).  If that fails, look again
        for up to `later` seconds and say when (if ever) it became right.
        Returns {label: (raw, uid)} of the messages that arrived."""
        t0 = time.monotonic()
        problems, found = self._problems(raws)
        if not at_once:
            while problems and time.monotonic() - t0 < later:
                time.sleep(0.2)
                problems, found = self._problems(raws)
            T.none_of(problems, "%s: server as expected %s" % (self.name, what))
            return self.exp.commit(found)
        T.none_of(problems, "%s: server as expected at once %s" % (self.name, what))
        if problems and later:
            while time.monotonic() - t0 < later:
                time.sleep(0.1)
                p2, f2 = self._problems(raws)
                if not p2:
                    T.diag("  ... the server reached the expected state %.2f s later"
                           % (time.monotonic() - t0))
                    found = f2
                    break
            else:
                T.diag("  ... and still not %.0f s later (%d problems)" % (later, len(p2)))
                found = f2
        return self.exp.commit(found)

    def uid_of(self, raw, label):
        return self.exp.find(raw, label)


def listing(m, rel):
    """{uid: name} of the canonical message names in a folder, [other
    .eml names], [non-.eml files]."""
    d = m.p(rel)
    uids, odd, scratch = {}, [], []
    for name in os.listdir(d):
        p = os.path.join(d, name)
        if stat.S_ISDIR(os.lstat(p).st_mode):
            continue
        parsed = parse_message_name(name) if name.endswith(".eml") else None
        if parsed:
            uids[parsed[2]] = name
        elif name.endswith(".eml"):
            odd.append(name)
        else:
            scratch.append(name)
    return uids, odd, scratch


def view_check(w, m, rel, raw, what, scratch=(), read=True):
    """The mount's listing of a folder matches the server: every message the
    test expects there under its canonical name (another client's \\Deleted
    messages may show or not; messages this mount hid must not), bodies read
    back byte-exact, no other .eml names, only the given scratch files."""
    problems = []
    try:
        uids, odd, extra = listing(m, rel)
    except OSError as e:
        T.fail("%s: listing %s (%s)" % (w.name, rel, e))
        return {}
    known = w.exp.known.get(raw, {})
    hidden = w.hidden.get(raw, set())
    for uid, (digest, flags, label) in sorted(known.items()):
        if label.startswith("foreign") and uid not in hidden:
            continue
        if uid in hidden:
            if uid in uids:
                problems.append("UID %d (%s) was left flagged \\Deleted by the mount but "
                                "still lists as %r" % (uid, label, uids[uid]))
            continue
        if uid not in uids:
            problems.append("UID %d (%s) is on the server but not listed" % (uid, label))
            continue
        if label in w.meta:
            subject, date, data = w.meta[label]
            want = canonical_name(date, subject, uid)
            if uids[uid] != want:
                problems.append("UID %d listed as %r, expected the canonical name %r"
                                % (uid, uids[uid], want))
        if read:
            try:
                got = read_bytes(os.path.join(m.p(rel), uids[uid]))
            except OSError as e:
                problems.append("reading %s: %s" % (uids[uid], e))
                continue
            if sha(got) != digest:
                problems.append("%s reads %d bytes (sha256 %s), server sha256 %s"
                                % (uids[uid], len(got), sha(got)[:12], digest[:12]))
    for uid, name in sorted(uids.items()):
        if uid not in known:
            problems.append("%r is listed but UID %d is not on the server" % (name, uid))
    for name in odd:
        problems.append("%r: an .eml name that is not canonical is listed" % name)
    for name in extra:
        if name not in scratch:
            problems.append("unexpected file %r listed" % name)
    for name in scratch:
        if name not in extra:
            problems.append("expected the local file %r to be listed" % name)
    T.none_of(problems, "%s: the mount lists %s as the server has it %s" % (w.name, rel, what))
    return uids


def name_of(m, rel, uid):
    uids, _, _ = listing(m, rel)
    if uid not in uids:
        raise AssertionError("%s: no file for UID %d (listed: %s)" % (rel, uid, sorted(uids)))
    return os.path.join(m.p(rel), uids[uid])


def sent_since(px, offs):
    return [c for _, c in commands_of_proxy(px, offs)]


def show(cmds, n=8):
    return [c[:120].decode("utf-8", "replace") for c in cmds][-n:]


def commands_check(what, cmds, want=(), never=()):
    """want: (verb, regex on the command) that must appear; never: verbs
    that must not."""
    import re
    problems = []
    for v, rx in want:
        if not any(verb(c) == v and re.search(rx.encode(), c) for c in cmds):
            problems.append("no %s matching %r was sent" % (v, rx))
    for c in cmds:
        if verb(c) in never:
            problems.append("%s was sent: %r" % (verb(c), c[:120]))
        if dangerous(c):
            problems.append("a bare EXPUNGE or CLOSE was sent: %r" % c[:120])
    T.none_of(problems, what, ) or T.diag("  commands sent: %r" % show(cmds, 12))


def recording_proxy():
    px = Proxy(HOST, PORT_IMAP)
    RECORDERS.append(px)
    return px


def rec_mount(px, options=(), **kw):
    """A mount through a recording proxy in plaintext (tls=none)."""
    return Mount(EXE, base_options=False,
                 options=["port=%d" % px.port, "tls=none", "password_file=" + PASSWORD_FILE,
                          "poll=0"] + list(options), **kw)


# ---- 1. every operation on the normal server -----------------------------------------------


def test_ops():
    w = World("normal", env_conf())
    SRC, DST, REN, TRASH = "WSrc", "WDst", "RenMe", "Trash"
    w.own(SRC, DST, REN, TRASH)
    subj = ["Move me one", "Move me two", "Stay here three", "Delete me four",
            "Flag me five", "Trash me six", "Keep seven"]
    for i, s in enumerate(subj):
        w.put(SRC, s, flags=(["\\Seen"] if i % 2 else []) + (["$Label1"] if i == 1 else []))
    w.put(REN, "Renamed folder one")
    w.put(REN, "Renamed folder two", flags=["\\Flagged"])
    w.start()
    px = recording_proxy()
    with rec_mount(px) as m:
        uids = {s: w.uid_of(SRC, s) for s in subj}
        view_check(w, m, SRC, SRC, "at the start")

        # -- mv F.eml OtherFolder/  -> UID MOVE
        w.foreign(SRC, DST)
        name = name_of(m, SRC, uids["Move me one"])
        offs = proxy_offsets(px)
        r = tool(["mv", name, m.p(DST) + "/"])
        T.check(r.returncode == 0, "mv F.eml WDst/ succeeds", expected="status 0",
                seen=tool_seen(r))
        w.exp.gone(SRC, uids["Move me one"])
        w.exp.arrive(DST, sha(w.meta["Move me one"][2]), [], "Move me one")
        # A rename is answered as its UID MOVE goes out (renames that come
        # meanwhile join the next one); looking at the destination through
        # the mount waits for it. That look is the "at once" for moves.
        os.listdir(m.p(DST))
        w.check("after mv F.eml WDst/: gone from WSrc, in WDst with a new UID, same "
                "bytes and flags; the \\Deleted messages of another client survive")
        commands_check("mv F.eml WDst/ sent UID MOVE of exactly that UID, no STORE or "
                       "EXPUNGE", sent_since(px, offs),
                       want=[("UID MOVE", r"UID MOVE %d WDst" % uids["Move me one"])],
                       never=("UID STORE", "UID EXPUNGE", "EXPUNGE"))
        view_check(w, m, SRC, SRC, "after the mv")
        view_check(w, m, DST, DST, "after the mv (the moved file under its canonical name)")

        # -- mv F.eml Other/renamed.eml: moved, shown under its canonical name
        w.foreign(SRC, DST)
        name = name_of(m, SRC, uids["Move me two"])
        offs = proxy_offsets(px)
        e = errno_of(lambda: os.rename(name, m.p(DST, "renamed.eml")))
        T.eq(errno_name(e), "success", "rename(F.eml, WDst/renamed.eml) succeeds")
        w.exp.gone(SRC, uids["Move me two"])
        w.exp.arrive(DST, sha(w.meta["Move me two"][2]), ["\\Seen", "$Label1"], "Move me two")
        os.listdir(m.p(DST))  # waits for the move (see above)
        w.check("after rename to WDst/renamed.eml (flags \\Seen $Label1 kept)")
        T.check("renamed.eml" not in os.listdir(m.p(DST)),
                "WDst/renamed.eml is not listed after the move (the message has its "
                "canonical name)", expected="not listed", seen="listed")
        view_check(w, m, DST, DST, "after rename to another name")

        # -- renames that are refused
        name = name_of(m, SRC, uids["Stay here three"])
        for target, what in ((m.p(SRC, "other-name.eml"), "another .eml name in the same folder"),
                             (m.p(SRC, canonical_name(BASE, "Other", 999)),
                              "another canonical-looking name in the same folder"),
                             (m.p("Top.eml"), "the top level (not a folder)")):
            e = errno_of(lambda: os.rename(name, target))
            T.eq(errno_name(e), "EPERM", "rename of a message to %s fails with EPERM" % what)
        r = tool(["mv", name, m.p(SRC, "x.eml")])
        T.check(r.returncode not in (0, None), "mv F.eml x.eml in the same folder fails",
                expected="non-zero", seen=tool_seen(r))
        w.check("after the refused renames (nothing changed)")
        view_check(w, m, SRC, SRC, "after the refused renames")

        # -- rm F.eml -> UID STORE +FLAGS.SILENT (\Deleted) + UID EXPUNGE uid
        w.foreign(SRC)
        u = uids["Delete me four"]
        name = name_of(m, SRC, u)
        offs = proxy_offsets(px)
        r = tool(["rm", name])
        T.check(r.returncode == 0, "rm F.eml succeeds", expected="status 0", seen=tool_seen(r))
        w.exp.gone(SRC, u)
        w.check("after rm: that UID is gone, every other message (and every \\Deleted "
                "message of another client) is still there")
        commands_check("rm sent UID STORE %d +FLAGS.SILENT (\\Deleted) and UID EXPUNGE %d" % (u, u),
                       sent_since(px, offs),
                       want=[("UID STORE", r"UID STORE %d \+FLAGS\.SILENT \(\\Deleted\)$" % u),
                             ("UID EXPUNGE", r"UID EXPUNGE %d$" % u)],
                       never=("EXPUNGE", "UID MOVE", "UID COPY"))
        view_check(w, m, SRC, SRC, "after rm")

        # -- flags
        u = uids["Flag me five"]
        name = name_of(m, SRC, u)
        offs = proxy_offsets(px)
        r = tool(["setfattr", "-n", "user.imap.flags", "-v", "\\Seen \\Flagged", name])
        T.check(r.returncode == 0, "setfattr -n user.imap.flags -v '\\Seen \\Flagged' succeeds",
                expected="status 0", seen=tool_seen(r))
        w.exp.set_flags(SRC, u, ["\\Seen", "\\Flagged"])
        w.check("after setfattr '\\Seen \\Flagged' (exactly those flags)")
        commands_check("setfattr sent UID STORE FLAGS with UNCHANGEDSINCE (the server has "
                       "CONDSTORE)", sent_since(px, offs),
                       want=[("UID STORE", r"UID STORE %d \(UNCHANGEDSINCE \d+\) FLAGS "
                                           r"\((\\Seen \\Flagged|\\Flagged \\Seen)\)" % u)])
        got = os.getxattr(name, "user.imap.flags").decode()
        T.eq(sorted(got.split()), ["\\Flagged", "\\Seen"], "getxattr user.imap.flags shows them")
        e = errno_of(lambda: os.setxattr(name, "user.imap.flags", b"$Label1 \\Seen"))
        T.eq(errno_name(e), "success", "setxattr '$Label1 \\Seen' (a keyword) succeeds")
        w.exp.set_flags(SRC, u, ["$Label1", "\\Seen"])
        w.check("after setxattr '$Label1 \\Seen'")
        for bad in (b"\\Recent", b"(x", b"\\Seen \\Recent", b"a\"b"):
            e = errno_of(lambda: os.setxattr(name, "user.imap.flags", bad))
            T.eq(errno_name(e), "EINVAL", "setxattr of the invalid flags %r fails with EINVAL"
                 % bad.decode())
        r = tool(["setfattr", "-n", "user.imap.flags", "-v", "\\Recent", name])
        T.check(r.returncode not in (0, None), "setfattr -v '\\Recent' fails",
                expected="non-zero", seen=tool_seen(r))
        w.check("after the invalid flags (nothing changed)")

        # -- touch, chmod, chown, truncate of a message
        for what, fn in (("utime (touch)", lambda: os.utime(name, (BASE, BASE))),
                         ("utime now", lambda: os.utime(name)),
                         ("chmod", lambda: os.chmod(name, 0o600)),
                         ("chown", lambda: os.chown(name, 1, 1)),
                         ("truncate", lambda: os.truncate(name, 10)),
                         ("truncate to 0", lambda: os.truncate(name, 0))):
            e = errno_of(fn)
            T.eq(errno_name(e), "EPERM", "%s of a message fails with EPERM" % what)
        for args in (["touch", name], ["chmod", "600", name], ["truncate", "-s", "0", name]):
            r = tool(args)
            T.check(r.returncode not in (0, None), "%s of a message fails" % args[0],
                    expected="non-zero", seen=tool_seen(r))
        w.check("after touch/chmod/chown/truncate (nothing changed)")
        view_check(w, m, SRC, SRC, "after flags, touch, chmod, truncate")

        # -- cp new.eml Folder/ -> APPEND (LF -> CRLF, INTERNALDATE from Date)
        local = os.path.join(m.tmp, "new.eml")
        date = BASE + 7 * 86400 + 1234
        data = make_message("Fresh from cp", b"Bare LF line ends.\nSecond line.\n", date,
                            lf=True)
        with open(local, "wb") as f:
            f.write(data)
        offs = proxy_offsets(px)
        r = tool(["cp", local, m.p(DST) + "/"])
        T.check(r.returncode == 0, "cp new.eml WDst/ succeeds", expected="status 0",
                seen=tool_seen(r))
        w.exp.arrive(DST, sha(crlf(data)), [], "Fresh from cp")
        w.meta["Fresh from cp"] = ("Fresh from cp", date, crlf(data))
        found = w.check("after cp new.eml WDst/: one new message, the CRLF form of the file")
        commands_check("cp sent one APPEND", sent_since(px, offs),
                       want=[("APPEND", r"^\S+ APPEND WDst ")], never=("EXPUNGE",))
        if "Fresh from cp" in found:
            with w.srv() as s:
                meta = s.metadata(DST)[found["Fresh from cp"][1]]
            T.eq(meta.internaldate, date, "the APPENDed message's INTERNALDATE is its Date: header")
        T.check("new.eml" not in os.listdir(m.p(DST)), "after close, new.eml is not listed "
                "any more (the message shows under its canonical name)",
                expected="not listed", seen="listed")
        view_check(w, m, DST, DST, "after cp (canonical name)")

        # flags from user.imap.flags set before close; no Date: header -> now
        p = m.p(DST, "flagged.eml")
        data = (b"From: a@example.org\r\nSubject: Flagged on arrival\r\n"
                b"Message-ID: <flagged@write.imapfs.test>\r\n\r\nNo date header.\r\n")
        t0 = time.time()
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, data)
            os.setxattr(p, "user.imap.flags", b"\\Flagged $Label2")
            os.close(fd)
            e = None
        except OSError as ex:
            e = ex.errno
        t1 = time.time()
        T.eq(errno_name(e), "success", "create + write + setxattr flags + close of flagged.eml")
        w.exp.arrive(DST, sha(data), ["\\Flagged", "$Label2"], "Flagged on arrival")
        found = w.check("after the flagged APPEND (flags \\Flagged $Label2)")
        if "Flagged on arrival" in found:
            with w.srv() as s:
                meta = s.metadata(DST)[found["Flagged on arrival"][1]]
            T.check(t0 - 60 <= meta.internaldate <= t1 + 60,
                    "without a Date: header the INTERNALDATE is now",
                    expected="%d..%d" % (t0, t1), seen=meta.internaldate)
            w.meta["Flagged on arrival"] = ("Flagged on arrival", meta.internaldate, data)

        # -- scratch files: local only
        scratch = {"4913": b"vim probe\n", "x~": b"backup\n", ".#x": b"lock\n",
                   "#x#": b"autosave\n", "sedAbC123": b"sed temp\n", ".x.swp": b"\0swap\0" * 100,
                   "notes.txt": b"not mail\n"}
        problems = []
        for n, b in scratch.items():
            try:
                write_bytes(m.p(DST, n), b)
                if read_bytes(m.p(DST, n)) != b:
                    problems.append("%s does not read back" % n)
            except OSError as ex:
                problems.append("%s: %s" % (n, ex))
        T.none_of(problems, "scratch files (4913, x~, .#x, #x#, sedXXXXXX, .swp, .txt) are "
                  "created, written and read back")
        w.check("with scratch files in WDst (none uploaded)")
        view_check(w, m, DST, DST, "with scratch files", scratch=list(scratch), read=False)
        problems = []
        for n in scratch:
            try:
                os.unlink(m.p(DST, n))
            except OSError as ex:
                problems.append("rm %s: %s" % (n, ex))
        T.none_of(problems, "scratch files are removed")
        w.check("after removing the scratch files")
        view_check(w, m, DST, DST, "after removing the scratch files", read=False)

        # -- mkdir -> CREATE (modified UTF-7, %2F, %25)
        with w.srv() as s:
            typ, _ = s.m.create('"probe/slash"')
            if typ == "OK":
                s.m.delete('"probe/slash"')
        slash_ok = typ == "OK"
        made = [("Neu & Co", "Neu &- Co"), ("Überweisungen", "&ANw-berweisungen"),
                ("100%25 sure", "100% sure"), (DST + "/Sub", DST + ".Sub"),
                ("Parent2", "Parent2"), ("Parent2/Kid", "Parent2.Kid")]
        for rel, raw in made:
            e = errno_of(lambda: os.mkdir(m.p(rel)))
            T.eq(errno_name(e), "success", "mkdir %r" % rel)
            w.folders.add(raw)
            w.exp.folder(raw)
        offs = proxy_offsets(px)
        e = errno_of(lambda: os.mkdir(m.p("a%2Fb")))
        commands_check("mkdir a%2Fb sent CREATE \"a/b\" (a folder named a/b)",
                       sent_since(px, offs), want=[("CREATE", r'^\S+ CREATE "?a/b"?$')])
        if slash_ok:
            T.eq(errno_name(e), "success", "mkdir 'a%2Fb'")
            w.folders.add("a/b")
            w.exp.folder("a/b")
        else:
            T.check(e is not None, "mkdir 'a%2Fb' fails: this server refuses '/' in names "
                    "(NO [CANNOT])", expected="an error", seen=errno_name(e))
            T.diag("  mkdir 'a%%2Fb' on a server that refuses the name: %s" % errno_name(e))
        w.check("after mkdir: the folders exist with their modified UTF-7 names "
                "(Neu &- Co, &ANw-berweisungen, 100%% sure, WDst.Sub, Parent2.Kid%s)"
                % (", a/b" if slash_ok else ""))
        top = set(os.listdir(m.path))
        want_top = {"Neu & Co", "Überweisungen", "100%25 sure", "Parent2"} | (
            {"a%2Fb"} if slash_ok else set())
        T.check(want_top <= top, "the new folders show at the top level",
                expected=sorted(want_top), seen=sorted(top))

        # -- rmdir -> DELETE; ENOTEMPTY with messages or subfolders
        for rel, what in ((SRC, "holds messages"), ("Parent2", "holds a subfolder"),
                          (DST, "holds messages and a subfolder")):
            e = errno_of(lambda: os.rmdir(m.p(rel)))
            T.eq(errno_name(e), "ENOTEMPTY", "rmdir of a folder that %s fails with ENOTEMPTY"
                 % what)
        for rel, raw in (("Parent2/Kid", "Parent2.Kid"), ("Parent2", "Parent2"),
                         ("Neu & Co", "Neu &- Co")):
            e = errno_of(lambda: os.rmdir(m.p(rel)))
            T.eq(errno_name(e), "success", "rmdir %r" % rel)
            w.folders.discard(raw)
            w.exp.drop_folder(raw)
        w.check("after rmdir: the empty folders are gone, the others untouched")
        T.check(not os.path.exists(m.p("Neu & Co")), "the removed folder is not listed",
                expected="ENOENT", seen="exists")

        # -- mv dir newname -> RENAME (also into another parent); INBOX -> EPERM
        for old, new, oraw, nraw in ((REN, "Renamed", REN, "Renamed"),
                                     ("Renamed", DST + "/Renamed", "Renamed", DST + ".Renamed"),
                                     ("Überweisungen", "Zahlungen & Co", "&ANw-berweisungen",
                                      "Zahlungen &- Co")):
            r = tool(["mv", m.p(old), m.p(new)])
            T.check(r.returncode == 0, "mv %s %s succeeds" % (old, new), expected="status 0",
                    seen=tool_seen(r))
            w.folders.discard(oraw)
            w.folders.add(nraw)
            w.exp.rename_folder(oraw, nraw)
            w.check("after mv %s %s (RENAME; the messages went along)" % (old, new))
            T.check(os.path.isdir(m.p(new)) and not os.path.exists(m.p(old)),
                    "the mount shows %s and not %s" % (new, old), expected="renamed",
                    seen=(os.path.exists(m.p(old)), os.path.exists(m.p(new))))
        view_check(w, m, DST + "/Renamed", DST + ".Renamed", "(the renamed folder)")
        e = errno_of(lambda: os.rename(m.p("INBOX"), m.p("x")))
        T.eq(errno_name(e), "EPERM", "mv INBOX x fails with EPERM")
        r = tool(["mv", m.p("INBOX"), m.p("x")])
        T.check(r.returncode not in (0, None), "the mv tool: mv INBOX x fails",
                expected="non-zero", seen=tool_seen(r))
        w.check("after mv INBOX x (nothing changed)")
        T.check(any(verb(c) == "RENAME" for c in sent_since(px, None)),
                "RENAME was sent for the folder renames", expected="RENAME", seen="none")

    # -- -o delete=trash: rm moves to \Trash
    with rec_mount(px, ["delete=trash"]) as m:
        w.foreign(SRC, TRASH)
        u = w.uid_of(SRC, "Trash me six")
        name = name_of(m, SRC, u)
        offs = proxy_offsets(px)
        r = tool(["rm", name])
        T.check(r.returncode == 0, "-o delete=trash: rm F.eml succeeds", expected="status 0",
                seen=tool_seen(r))
        w.exp.gone(SRC, u)
        w.exp.arrive(TRASH, sha(w.meta["Trash me six"][2]), ["\\Seen"], "Trash me six")
        w.check("-o delete=trash: after rm the message is in Trash, not in WSrc")
        commands_check("-o delete=trash: rm sent UID MOVE to Trash", sent_since(px, offs),
                       want=[("UID MOVE", r"UID MOVE %d Trash" % u)], never=("EXPUNGE",))
        view_check(w, m, SRC, SRC, "(-o delete=trash)")
        view_check(w, m, TRASH, TRASH, "(-o delete=trash)")


# ---- -o ro -------------------------------------------------------------------------------


def test_readonly():
    w = World("ro", env_conf())
    w.own("RoTest")
    w.put("RoTest", "Read only one")
    w.put("RoTest", "Read only two")
    w.start()
    with Mount(EXE, ro=True) as m:
        n1 = name_of(m, "RoTest", w.uid_of("RoTest", "Read only one"))
        n2 = name_of(m, "RoTest", w.uid_of("RoTest", "Read only two"))
        cases = [
            ("create a .eml file", lambda: write_bytes(m.p("RoTest", "new.eml"), b"x")),
            ("create a scratch file", lambda: write_bytes(m.p("RoTest", "4913"), b"x")),
            ("open a message for writing", lambda: os.close(os.open(n1, os.O_WRONLY))),
            ("open a message with O_TRUNC", lambda: os.close(os.open(n1, os.O_WRONLY | os.O_TRUNC))),
            ("mkdir", lambda: os.mkdir(m.p("RoNew"))),
            ("rmdir", lambda: os.rmdir(m.p("Empty"))),
            ("rm", lambda: os.unlink(n1)),
            ("mv a message", lambda: os.rename(n2, os.path.join(m.p("Archive"),
                                                                os.path.basename(n2)))),
            ("mv a folder", lambda: os.rename(m.p("RoTest"), m.p("RoTest2"))),
            ("setxattr user.imap.flags", lambda: os.setxattr(n1, "user.imap.flags", b"\\Seen")),
            ("removexattr user.imap.flags", lambda: os.removexattr(n1, "user.imap.flags")),
        ]
        for what, fn in cases:
            e = errno_of(fn)
            T.eq(errno_name(e), "EROFS", "-o ro: %s fails with EROFS" % what)
        r = tool(["setfattr", "-n", "user.imap.flags", "-v", "\\Seen \\Flagged", n1])
        T.check(r.returncode not in (0, None) and b"Read-only" in (r.stderr or b""),
                "-o ro: setfattr fails with 'Read-only file system'", expected="EROFS",
                seen=tool_seen(r))
        w.check("-o ro: after every refused change (nothing changed)")
        view_check(w, m, "RoTest", "RoTest", "(-o ro)")


# ---- 2. the MOVE / UIDPLUS fallbacks -------------------------------------------------------


def fallback_run(trim):
    from dovecot import Dovecot
    label = "no " + "/".join(trim)
    t0 = time.monotonic()
    dc = Dovecot(capability_trim=trim, rawlog=True)
    try:
        dc.start()
        T.diag("%s: Dovecot started in %.1f s, capabilities %s" % (
            label, time.monotonic() - t0, " ".join(dc.capabilities)))
        T.check(not ({c.upper() for c in dc.capabilities} & set(trim)),
                "%s: the server does not advertise %s" % (label, trim),
                expected="trimmed", seen=dc.capabilities)
        conf = dict(host=dc.host, port=dc.port_imaps, cafile=dc.cafile, user=dc.user,
                    password=dc.password)
        w = World(label, conf)
        SRC, DST, TRASH = "TSrc", "TDst", "Trash"
        w.own(SRC, DST, TRASH)
        subj = ["Fallback move one", "Fallback move two", "Fallback delete three",
                "Fallback trash four", "Fallback keep five", "Fallback move six",
                "Fallback move seven"]
        for i, s in enumerate(subj):
            w.put(SRC, s, flags=["\\Seen"] if i % 2 else [])
        w.start()
        no_uidplus = "UIDPLUS" in trim
        opts = ["port=%d" % dc.port_imaps, "cafile=" + dc.cafile,
                "password_file=" + dc.password_file, "poll=0"]
        account = "%s@%s" % (dc.user, dc.host)

        def gone(raw, uid):
            """What the mount does to the source of a move or a delete."""
            if no_uidplus:
                d, fl, lab = w.exp.known[raw][uid]
                w.exp.set_flags(raw, uid, set(fl) | {DELETED})
                w.hidden.setdefault(raw, set()).add(uid)
                return d, fl, lab
            return w.exp.gone(raw, uid)

        with Mount(EXE, base_options=False, account=account, options=opts) as m:
            view_check(w, m, SRC, SRC, "at the start")
            for n, how in ((0, "mv"), (1, "rename"), (5, "mv"), (6, "rename")):
                u = w.uid_of(SRC, subj[n])
                name = name_of(m, SRC, u)
                # another client changes both folders while the user moves
                w.foreign(SRC, DST)
                if how == "mv":
                    r = tool(["mv", name, m.p(DST) + "/"])
                    ok, seen = r.returncode == 0, tool_seen(r)
                else:
                    e = errno_of(lambda: os.rename(name, m.p(DST, "x%d.eml" % n)))
                    ok, seen = e is None, errno_name(e)
                T.check(ok, "%s: %s of a message to TDst succeeds" % (label, how),
                        expected="success", seen=seen)
                listed = listing(m, SRC)[0]
                T.check(u not in listed, "%s: right after the %s, the source no longer lists "
                        "the message" % (label, how), expected="UID %d not listed" % u,
                        seen="listed as %r" % listed.get(u))
                d, fl, lab = gone(SRC, u)
                w.exp.arrive(DST, d, fl, lab)
                # A move is answered once it is sent (README, "Changing
                # mail"); without MOVE it is COPY, STORE and UID EXPUNGE:
                # the server gets there within moments, not at once.
                w.check("after %s to TDst: %s; the \\Deleted messages of another client "
                        "survive" % (how, "the copy in TDst, the source flagged \\Deleted "
                                     "and kept" if no_uidplus else
                                     "the copy in TDst, the source expunged"),
                        at_once=False)
                view_check(w, m, SRC, SRC, "after %s (%s)" % (
                    how, "source hidden" if no_uidplus else "source gone"))
                view_check(w, m, DST, DST, "after %s" % how)
            w.foreign(SRC)
            u = w.uid_of(SRC, subj[2])
            r = tool(["rm", name_of(m, SRC, u)])
            T.check(r.returncode == 0, "%s: rm F.eml succeeds" % label, expected="status 0",
                    seen=tool_seen(r))
            gone(SRC, u)
            w.check("after rm (%s)" % ("flagged \\Deleted, kept" if no_uidplus
                                       else "UID EXPUNGE of that UID"))
            view_check(w, m, SRC, SRC, "after rm")
        with Mount(EXE, base_options=False, account=account,
                   options=opts + ["delete=trash"]) as m:
            w.foreign(SRC, TRASH)
            u = w.uid_of(SRC, subj[3])
            # a fresh cache: the messages hidden by the first mount are
            # plain \Deleted messages to this one
            for raw in list(w.hidden):
                w.hidden[raw] = set()
            r = tool(["rm", name_of(m, SRC, u)])
            T.check(r.returncode == 0, "%s: -o delete=trash: rm succeeds" % label,
                    expected="status 0", seen=tool_seen(r))
            d, fl, lab = gone(SRC, u)
            w.exp.arrive(TRASH, d, fl, lab)
            w.check("-o delete=trash: after rm the message is in Trash%s" % (
                ", the source flagged \\Deleted" if no_uidplus else ""))
            view_check(w, m, TRASH, TRASH, "-o delete=trash")
        # what imapfs sent, from Dovecot's rawlog
        lines = commands_of_rawlog(dc.rawlog_dir)
        cmds = [c for _, c in lines]
        bad = ["%s: %r" % (f, c[:100]) for f, c in lines if dangerous(c)]
        T.none_of(bad, "%s: rawlog: no session sent a bare EXPUNGE or a CLOSE (%d lines in "
                  "%d files)" % (label, len(lines), len({f for f, _ in lines})))
        vs = [verb(c) for c in cmds]
        T.check("UID COPY" in vs and "UID MOVE" not in vs,
                "%s: rawlog: moves used UID COPY, never UID MOVE (not advertised)" % label,
                expected="UID COPY, no UID MOVE", seen=sorted(set(v for v in vs if v.startswith("UID"))))
        if no_uidplus:
            T.check("UID EXPUNGE" not in vs, "%s: rawlog: no UID EXPUNGE (UIDPLUS is not "
                    "advertised)" % label, expected="none",
                    seen=[c[:80] for c in cmds if b"EXPUNGE" in c.upper()][:5])
        else:
            T.check("UID EXPUNGE" in vs, "%s: rawlog: the copied sources were removed with "
                    "UID EXPUNGE" % label, expected="UID EXPUNGE", seen="none")
    finally:
        dc.stop()


def test_fallback():
    fallback_run(["MOVE"])
    fallback_run(["MOVE", "UIDPLUS"])


# ---- 3. editors -------------------------------------------------------------------------


def test_editors():
    w = World("editors", env_conf())
    ED = "Editing"
    w.own(ED)
    subjects = {"vim": "Edit with vim", "vim -u NONE": "Edit with vim noinit",
                "nano-like": "Edit with nano", "sed -i": "Edit with sed",
                "O_TRUNC rewrite": "Edit with truncate", "emacs-like": "Edit with emacs",
                "failed APPEND": "Edit that fails"}
    eds = list(subjects)
    for i, e in enumerate(eds):
        w.put(ED, subjects[e],
              body=b"Please replace old-word here.\nAnd old-word there.\n",
              flags=["\\Seen"] if i % 2 else [])
    w.put(ED, "Bystander", body=b"This one contains old-word too but is not edited.\n")
    w.start()
    home = tempfile.mkdtemp(prefix="imapfs-e2e-home-")
    env = dict(os.environ, HOME=home, TERM="dumb")
    env.pop("VIMINIT", None)
    env.pop("EXINIT", None)
    px = recording_proxy()
    try:
        with rec_mount(px) as m:
            view_check(w, m, ED, ED, "at the start")
            for e in eds[:-1]:
                subject = subjects[e]
                u = w.uid_of(ED, subject)
                old = w.meta[subject][2]
                new = old.replace(b"old-word", b"new-word")
                path = name_of(m, ED, u)
                base = os.path.basename(path)
                keep = []
                offs = proxy_offsets(px)
                w.foreign(ED)
                if e == "vim":
                    r = tool(["vim", "-es", "-c", "%s/old-word/new-word/g", "-c", "wq", path],
                             env=env)
                    ok, seen = r.returncode == 0, tool_seen(r)
                elif e == "vim -u NONE":
                    r = tool(["vim", "-es", "-u", "NONE", "-c", "%s/old-word/new-word/g", "-c",
                              "wq", path], env=env)
                    ok, seen = r.returncode == 0, tool_seen(r)
                elif e == "sed -i":
                    r = tool(["sed", "-i", "s/old-word/new-word/g", path])
                    ok, seen = r.returncode == 0, tool_seen(r)
                else:
                    try:
                        if e == "nano-like":
                            tmp = os.path.join(m.p(ED), "." + base + ".swp~tmp")
                            write_bytes(tmp, new)
                            os.rename(tmp, path)
                        elif e == "O_TRUNC rewrite":
                            write_bytes(path, new, os.O_WRONLY | os.O_TRUNC)
                        elif e == "emacs-like":
                            os.rename(path, path + "~")
                            write_bytes(path, new)
                            keep = [base + "~"]
                        ok, seen = True, "success"
                    except OSError as ex:
                        ok, seen = False, "%s: %s" % (errno_name(ex.errno), ex)
                T.check(ok, "%s: the save succeeds" % e, expected="success", seen=seen)
                w.exp.gone(ED, u)
                w.exp.arrive(ED, sha(new), None, subject)
                w.meta[subject] = (subject, w.meta[subject][1], new)
                found = w.check("after the %s save: exactly one message with the new bytes, "
                                "none with the old, no scratch file uploaded" % e)
                commands_check("%s: the save sent APPEND, then removed the old UID %d with "
                               "UID EXPUNGE" % (e, u), sent_since(px, offs),
                               want=[("APPEND", r"APPEND Editing"),
                                     ("UID EXPUNGE", r"UID EXPUNGE %d$" % u)],
                               never=("EXPUNGE",))
                if subject in found:
                    with w.srv() as s:
                        meta = s.metadata(ED)[found[subject][1]]
                    T.eq(meta.internaldate, w.meta[subject][1],
                         "%s: the new version keeps the arrival time (from its Date: header)" % e)
                view_check(w, m, ED, ED, "after the %s save" % e, scratch=keep)
                if keep:
                    try:
                        got = read_bytes(os.path.join(m.p(ED), keep[0]))
                    except OSError as ex:
                        got = ("error", ex)
                    T.check(got == old, "emacs-like: the backup F~ keeps the old bytes",
                            expected="%d bytes" % len(old), seen=short(got, 100))
                    e2 = errno_of(lambda: os.unlink(os.path.join(m.p(ED), keep[0])))
                    T.eq(errno_name(e2), "success", "emacs-like: rm F~ succeeds")
                    w.check("after rm F~ (the new version stays)")
                    view_check(w, m, ED, ED, "after rm F~")

            # An APPEND the server refuses leaves the old message: an
            # emacs-like save (F -> F~, new F) whose new file carries the
            # flag \Foo, which imapfs passes on and Dovecot rejects (BAD).
            subject = subjects["failed APPEND"]
            u = w.uid_of(ED, subject)
            path = name_of(m, ED, u)
            w.foreign(ED)
            offs = proxy_offsets(px)
            steps = []
            try:
                os.rename(path, path + "~")
                steps.append("rename F F~")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    os.write(fd, w.meta[subject][2].replace(b"old-word", b"new-word"))
                    os.setxattr(path, "user.imap.flags", b"\\Foo")
                    steps.append("write + setxattr \\Foo")
                finally:
                    os.close(fd)
                steps.append("close succeeded")
            except OSError as ex:
                steps.append("%s: %s" % (errno_name(ex.errno), ex.strerror))
            T.check(steps[-1] != "close succeeded" and len(steps) == 3,
                    "a save whose APPEND the server refuses fails at close",
                    expected="rename, write, then an error at close", seen=steps)
            w.check("after the refused save: the old message is still there unchanged")
            cmds = sent_since(px, offs)
            T.check(not any(verb(c) in ("UID STORE", "UID EXPUNGE") for c in cmds),
                    "the refused save did not touch the old message",
                    expected="no STORE/EXPUNGE", seen=show(cmds))
            uids, odd, extra = listing(m, ED)
            T.diag("after the refused save the folder lists %d messages, other .eml %s, "
                   "other files %s" % (len(uids), odd, extra))
            e = errno_of(lambda: os.unlink(path))
            T.eq(errno_name(e), "success", "rm of the new F that could not be stored")
            e = errno_of(lambda: os.rename(path + "~", path))
            T.eq(errno_name(e), "success", "mv F~ F (the backup goes back) succeeds")
            w.check("after rm F and mv F~ F (nothing changed on the server)")
            view_check(w, m, ED, ED, "after the backup went back (the old message shows "
                       "again)", scratch=[x for x in extra if x != os.path.basename(path) + "~"])
    finally:
        shutil.rmtree(home, ignore_errors=True)


# ---- 4. faults: cut connections ------------------------------------------------------------


def fault_mount(px, options=()):
    return Mount(EXE, base_options=False,
                 options=["port=%d" % px.port, "tls=none", "password_file=" + PASSWORD_FILE,
                          "timeout=5", "poll=0"] + list(options), limit=120)


def mount_agrees(w, m, rel, raw, what, wait=3.0):
    """The mount's listing of a folder (canonical .eml names -> UIDs) equals
    the server's UIDs, except another client's \\Deleted messages; retried
    for `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        with w.srv() as s:
            server = {u for u, v in s.contents(raw).items() if DELETED not in v[1]}
            allf = set(s.uids(raw))
        try:
            listed = set(listing(m, rel)[0])
        except OSError as e:
            listed = "error %s" % e
        if isinstance(listed, set) and server <= listed <= allf:
            T.check(True, "%s: the mount lists %s as the server has it %s" % (w.name, rel, what))
            return True
        if time.monotonic() > deadline:
            return T.check(False, "%s: the mount lists %s as the server has it %s"
                           % (w.name, rel, what), expected=sorted(server), seen=listed
                           if not isinstance(listed, set) else sorted(listed))
        time.sleep(0.3)


def where(w, raws, digest):
    """[(raw, uid)] of the messages with this sha256."""
    out = []
    with w.srv() as s:
        for raw in raws:
            for u, v in s.contents(raw).items():
                if v[0] == digest:
                    out.append((raw, u))
    return out


def settle_after_cut(m, px, wait_fire=5.0):
    """Wait until the armed cut happened (moves may be sent after mv
    returned) and the mount is quiet again; returns whether it fired."""
    fired = px.fired.wait(wait_fire)
    px.disarm()
    try:
        m.settle(quiet=0.6, timeout=12)
    except OSError:
        time.sleep(2)
    return fired


CUTS = [("cut as %s is sent (the server never gets it)", "drop", 0),
        ("cut at the 1st byte of the answer to %s (the server did it)", "answer", 1),
        ("cut 40 bytes into the answer to %s", "answer", 40)]


def test_faults():
    w = World("faults", env_conf())
    SRC, DST, APP = "FSrc", "FDst", "FApp"
    w.own(SRC, DST, APP)
    for i in range(len(CUTS)):
        w.put(SRC, "Fault move %d" % i)
    w.put(SRC, "Fault next move")
    w.put(APP, "Fault rewrite me", body=b"old-word body\n")
    w.start()
    px = FaultProxy(HOST, PORT_IMAP)
    RECORDERS.append(px)
    with fault_mount(px) as m:
        # -- MOVE cut at three places
        for i, (fmt, action, k) in enumerate(CUTS):
            what = fmt % "UID MOVE"
            subject = "Fault move %d" % i
            u = w.uid_of(SRC, subject)
            digest = sha(w.meta[subject][2])
            w.foreign(SRC, DST)
            name = name_of(m, SRC, u)
            listing(m, DST)
            m.settle(quiet=0.4)
            px.arm(b"UID MOVE", action, k)
            t0 = time.monotonic()
            r = tool(["mv", name, m.p(DST) + "/"], timeout=60)
            t_mv = time.monotonic() - t0
            fired = settle_after_cut(m, px)
            T.diag("%s: mv %s after %.2f s; the cut %s" % (
                what, tool_seen(r), t_mv, "happened" if fired else "did NOT happen"))
            T.check(fired, "%s: the proxy cut the connection at the UID MOVE" % what,
                    expected="cut", seen="no UID MOVE was sent within 5 s")
            try:
                listing(m, DST)  # waits for the move, retried after the cut
            except OSError as e:
                T.diag("%s: listing the destination after the cut: %s" % (what, e))
            at = where(w, [SRC, DST], digest)
            T.check(at, "%s: the message is in the source, the destination or both" % what,
                    expected="in FSrc and/or FDst", seen=at or "in neither: LOST")
            moved = bool([a for a in at if a[0] == DST]) and not [a for a in at if a[0] == SRC]
            T.check(r.returncode != 0 or moved,
                    "%s: mv reports success only if the message moved" % what,
                    expected="mv fails, or the message only in FDst",
                    seen="mv status %s, the message at %s" % (r.returncode, at))
            w.exp.gone(SRC, u)
            for raw, uu in at:
                w.exp.have(raw, uu, digest, [], subject)
            w.check("%s: nothing lost, the \\Deleted messages of another client survive"
                    % what, at_once=False)
            mount_agrees(w, m, SRC, SRC, "after the cut (%s)" % what)
            mount_agrees(w, m, DST, DST, "after the cut (%s)" % what)

        # the next operation through the mount works
        w.foreign(SRC, DST)
        u = w.uid_of(SRC, "Fault next move")
        r = tool(["mv", name_of(m, SRC, u), m.p(DST) + "/"])
        T.check(r.returncode == 0, "after the cuts, the next mv works", expected="status 0",
                seen=tool_seen(r))
        d = w.exp.gone(SRC, u)
        w.exp.arrive(DST, d[0], d[1], d[2])
        w.check("after the next mv", at_once=False)

        # -- APPEND of a 5 MB message, cut after a third of the literal
        big = make_message("Fault big append",
                           b"".join(b"%07d the quick brown fox jumps over the lazy dog "
                                    b"0123456789\r\n" % k for k in range(85000)),
                           BASE + 99)
        local = os.path.join(m.tmp, "big.eml")
        with open(local, "wb") as f:
            f.write(big)
        listing(m, APP)
        m.settle(quiet=0.4)
        px.arm_bytes(len(big) // 3)
        r = tool(["cp", local, m.p(APP) + "/"], timeout=60)
        T.diag("APPEND of %d bytes: cp %s; the proxy cut after %d client bytes" % (
            len(big), tool_seen(r), len(big) // 3))
        T.check(px.fired.is_set(), "the proxy cut during the %d-byte APPEND" % len(big),
                expected="cut", seen="no cut")
        settle_after_cut(m, px, 0)
        at = where(w, [APP], sha(big))
        T.check(len(at) <= 1, "the cut APPEND is absent or there once, whole",
                expected="0 or 1 copies", seen=at)
        for raw, uu in at:
            w.exp.have(raw, uu, sha(big), [], "Fault big append")
        T.check(r.returncode != 0 or at, "cp reports success only if the message arrived",
                expected="cp fails, or the message there", seen=(tool_seen(r), at))
        w.check("after the cut APPEND: no truncated or partial message", at_once=False)
        e = errno_of(lambda: os.unlink(m.p(APP, "big.eml")))
        T.diag("rm of the local big.eml left by the failed cp: %s" % errno_name(e))

        # -- an editor's save (O_TRUNC rewrite) whose APPEND is cut: the old stays
        subject = "Fault rewrite me"
        u = w.uid_of(APP, subject)
        path = name_of(m, APP, u)
        newbytes = make_message(subject, b"".join(b"new-word line %07d\r\n" % k
                                                  for k in range(130000)), BASE + 100)
        m.settle(quiet=0.4)
        px.arm_bytes(len(newbytes) // 3)
        errs = []
        try:
            write_bytes(path, newbytes, os.O_WRONLY | os.O_TRUNC)
        except OSError as ex:
            errs.append(errno_name(ex.errno))
        T.check(px.fired.is_set(), "the proxy cut during the rewrite's APPEND",
                expected="cut", seen="no cut")
        settle_after_cut(m, px, 0)
        T.diag("the rewrite whose APPEND was cut: %s" % (errs or "no error"))
        at_new = where(w, [APP], sha(newbytes))
        T.check(len(at_new) <= 1, "the cut rewrite's new version is absent or there once",
                expected="0 or 1", seen=at_new)
        for raw, uu in at_new:
            w.exp.have(raw, uu, sha(newbytes), [], subject + " (new)")
        if at_new and not errs:
            w.exp.gone(APP, u)  # a save that succeeded replaced the old version
        T.check(errs or at_new, "the cut save reports an error, or the new version arrived",
                expected="an error at write or close", seen="no error, no new version")
        w.check("after the cut rewrite: the old message stays unless the new one arrived "
                "whole", at_once=False)

        # -- RENAME cut at three places
        for j, (fmt, action, k) in enumerate(CUTS):
            what = fmt % "RENAME"
            old, new = "FRen%d" % j, "FRenamed%d" % j
            e = errno_of(lambda: os.mkdir(m.p(old)))
            T.eq(errno_name(e), "success", "mkdir %s" % old)
            w.folders.add(old)
            w.exp.folder(old)
            w.put(old, "In renamed folder %d a" % j)
            w.put(old, "In renamed folder %d b" % j, flags=["\\Flagged"])
            listing(m, old)
            m.settle(quiet=0.4)
            px.arm(b"RENAME", action, k)
            r = tool(["mv", m.p(old), m.p(new)], timeout=60)
            fired = settle_after_cut(m, px)
            T.diag("%s: mv %s; the cut %s" % (what, tool_seen(r),
                                               "happened" if fired else "did NOT happen"))
            T.check(fired, "%s: the proxy cut the connection at the RENAME" % what,
                    expected="cut", seen="no RENAME was sent")
            with w.srv() as s:
                raws = s.raws()
            there = [x for x in (old, new) if x in raws]
            T.check(len(there) == 1, "%s: exactly one of %s and %s exists" % (what, old, new),
                    expected="one", seen=there)
            T.check(r.returncode != 0 or there == [new],
                    "%s: mv reports success only if the folder was renamed" % what,
                    expected="mv fails, or renamed", seen=(tool_seen(r), there))
            if there == [new]:
                w.folders.discard(old)
                w.folders.add(new)
                w.exp.rename_folder(old, new)
            w.check("%s: the folder and its messages are all there" % what, at_once=False)
            deadline = time.monotonic() + 3
            while True:
                top = set(os.listdir(m.path))
                shown = [x for x in (old, new) if x in top and os.path.isdir(m.p(x))]
                if shown == there or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            T.check(shown == there, "%s: the mount shows the folder under the name the "
                    "server has" % what, expected=there, seen=shown)

        # the next operations work
        e = errno_of(lambda: os.mkdir(m.p("FAfter")))
        T.eq(errno_name(e), "success", "after the cuts, mkdir through the mount works")
        if e is None:
            w.folders.add("FAfter")
            w.exp.folder("FAfter")
        data = make_message("After the faults", b"small\n", BASE + 200)
        local = os.path.join(m.tmp, "after.eml")
        with open(local, "wb") as f:
            f.write(data)
        r = tool(["cp", local, m.p(APP) + "/"])
        T.check(r.returncode == 0, "after the cuts, cp of a small message works",
                expected="status 0", seen=tool_seen(r))
        w.exp.arrive(APP, sha(data), [], "After the faults")
        w.check("after the final operations", at_once=False)


# ---- 5. rsync restore ------------------------------------------------------------------------


def test_rsync():
    if shutil.which("rsync") is None:
        T.skip("rsync restore", "rsync is not installed")
        return
    N = 1000
    w = World("rsync", env_conf())
    w.start()
    backup = tempfile.mkdtemp(prefix="imapfs-e2e-backup-")
    try:
        want = {}
        total = 0
        for i in range(N):
            date = BASE - 400 * 86400 + i * 577
            data = make_message("Restored message %04d" % i,
                                b"Line %d of a restored message.\n" % i * (1 + i % 7), date,
                                lf=(i % 10 == 0))
            name = "%s_%04d.eml" % (time.strftime("%Y%m%d", time.gmtime(date)), i)
            with open(os.path.join(backup, name), "wb") as f:
                f.write(data)
            os.utime(os.path.join(backup, name), (date, date))
            want[sha(crlf(data))] = (name, date)
            total += len(crlf(data))
        with Mount(EXE, ["poll=0"], limit=220) as m:
            e = errno_of(lambda: os.mkdir(m.p("Restore")))
            T.eq(errno_name(e), "success", "mkdir Restore")
            w.folders.add("Restore")
            w.exp.folder("Restore")
            c0 = m.counters()
            t0 = time.monotonic()
            r = tool(["rsync", "-a", backup + "/", m.p("Restore") + "/"], timeout=200)
            dt = time.monotonic() - t0
            c1 = m.counters()
            T.check(r.returncode == 0, "rsync -a backup/ MOUNT/Restore/ exits 0",
                    expected="status 0", seen=tool_seen(r))
            T.diag("rsync restore of %d messages (%.1f MB): %.1f s, %.0f messages/s, %.2f MB/s, "
                   "%d IMAP commands" % (N, total / MB, dt, N / dt, total / MB / dt,
                                         c1["imap.commands"] - c0["imap.commands"]))
            for d, (name, date) in want.items():
                w.exp.arrive("Restore", d, [], name)
            w.check("after rsync: all %d messages arrived byte-exact (CRLF)" % N)
            with w.srv() as s:
                meta = s.metadata("Restore")
            byuid = {uid: w.exp.known["Restore"][uid][2] for uid in w.exp.known["Restore"]}
            bad = ["UID %d (%s): INTERNALDATE %d, Date: header %d" % (
                uid, byuid[uid], meta[uid].internaldate, dict(want.values())[byuid[uid]])
                   for uid in meta if uid in byuid
                   and meta[uid].internaldate != dict(want.values())[byuid[uid]]]
            T.none_of(bad, "every restored message's INTERNALDATE is its Date: header")
            uids, odd, extra = listing(m, "Restore")
            T.check(set(uids) == set(meta) and not odd and not extra,
                    "the mount lists the %d restored messages under canonical names, no "
                    "temp files" % N, expected="%d canonical names" % N,
                    seen="%d canonical, other .eml %s, other files %s" % (
                        len(uids), odd[:3], extra[:3]))
    finally:
        shutil.rmtree(backup, ignore_errors=True)


# ---- 6. batch move ---------------------------------------------------------------------------


def glob_world(label, n, subject, unread_every, src, *others):
    """A started World whose folder src holds n messages "subject NN" (one
    in unread_every unread), and a recording proxy to mount through."""
    w = World(label, env_conf())
    w.own(src, *others)
    for i in range(n):
        w.put(src, "%s %02d" % (subject, i), flags=["\\Seen"] if i % unread_every else [],
              n=i)
    w.start()
    return w, recording_proxy()


def test_batch():
    N = 50
    SRC, DST = "BatchIn", "Archive"
    w, px = glob_world("batch", N, "Batch message", 3, SRC, DST)
    with rec_mount(px) as m:
        names = sorted(listing(m, SRC)[0].values())
        T.eq(len(names), N, "%d messages listed in %s" % (N, SRC))
        w.foreign(SRC, DST)
        c0 = m.settle()
        offs = proxy_offsets(px)
        t0 = time.monotonic()
        r = tool(["sh", "-c", 'mv "$1"/*_Batch_message_*.eml "$2"/', "sh", m.p(SRC), m.p(DST)])
        dt = time.monotonic() - t0
        c1 = m.settle()
        T.check(r.returncode == 0, "mv %s/*.eml %s/ succeeds" % (SRC, DST),
                expected="status 0", seen=tool_seen(r))
        for uid, (d, fl, lab) in sorted(w.exp.known[SRC].items()):
            if lab.startswith("foreign"):
                continue
            w.exp.gone(SRC, uid)
            w.exp.arrive(DST, d, fl, lab)
        w.check("after mv %s/*.eml %s/: all %d arrived, none lost" % (SRC, DST, N))
        cmds = sent_since(px, offs)
        kinds = {}
        for c in cmds:
            kinds[verb(c)] = kinds.get(verb(c), 0) + 1
        T.diag("batch mv of %d messages: %.2f s, %d IMAP commands (imap.commands counter; "
               "by the proxy: %s), %d round trips" % (
                   N, dt, c1["imap.commands"] - c0["imap.commands"],
                   ", ".join("%s %d" % kv for kv in sorted(kinds.items())),
                   c1["imap.round_trips"] - c0["imap.round_trips"]))
        commands_check("the batch mv used UID MOVE, no bare EXPUNGE", cmds,
                       want=[("UID MOVE", r"UID MOVE")])
        # Each UID MOVE reports the message it took away, and the watch
        # resyncs a folder at most once per settle interval (0.2 s) of such
        # reports: a resync per move would select the source again before
        # every other UID MOVE.
        settles = int(dt / 0.2) + 2
        T.check(kinds.get("SELECT", 0) <= 2 + 2 * settles,
                "the batch mv selected folders a few times, not once per move",
                expected="<= %d SELECTs in %.2f s" % (2 + 2 * settles, dt),
                seen="%d" % kinds.get("SELECT", 0))
        view_check(w, m, SRC, SRC, "after the batch mv", read=False)
        view_check(w, m, DST, DST, "after the batch mv")


# ---- rm of many messages on a slow link ------------------------------------------------------


def test_rm_burst():
    """rm of 30 messages through a link with a 40 ms round trip: what the
    server reports of our own expunges must not make the watch resync the
    folder (a SELECT, and in a big folder a reload of the whole index)
    while the rm goes on."""
    N = 30
    SRC = "RmBurst"
    w, px = glob_world("rmburst", N, "Burst message", 2, SRC)
    with rec_mount(px) as m:
        names = sorted(listing(m, SRC)[0].values())
        T.eq(len(names), N, "%d messages listed in %s" % (N, SRC))
        w.foreign(SRC)
        m.settle()
        px.delay = 0.020
        offs = proxy_offsets(px)
        t0 = time.monotonic()
        r = tool(["sh", "-c", 'rm "$1"/*_Burst_message_*.eml', "sh", m.p(SRC)])
        dt = time.monotonic() - t0
        cmds = sent_since(px, offs)
        px.delay = 0.0
        T.check(r.returncode == 0, "rm %s/*.eml succeeds" % SRC,
                expected="status 0", seen=tool_seen(r))
        m.settle()
        for uid, (d, fl, lab) in sorted(w.exp.known[SRC].items()):
            if not lab.startswith("foreign"):
                w.exp.gone(SRC, uid)
        w.check("after rm %s/*.eml: the %d are gone, nothing else" % (SRC, N))
        kinds = {}
        for c in cmds:
            kinds[verb(c)] = kinds.get(verb(c), 0) + 1
        T.diag("rm of %d messages at a 40 ms round trip: %.2f s; %s" % (
            N, dt, ", ".join("%s %d" % kv for kv in sorted(kinds.items()))))
        commands_check("the rm used UID EXPUNGE, no bare EXPUNGE", cmds,
                       want=[("UID EXPUNGE", r"UID EXPUNGE")])
        # A resync of the folder is a SELECT of it (QRESYNC): one after
        # each settle interval of the watch (0.2 s) would be several here.
        limit = 1 + int(dt)
        T.check(kinds.get("SELECT", 0) <= limit,
                "no resync of the folder for our own expunges while the rm runs",
                expected="<= %d SELECTs in %.2f s" % (limit, dt),
                seen="%d" % kinds.get("SELECT", 0))
        view_check(w, m, SRC, SRC, "after the rm burst")


# ---- a server that names old UIDs for new messages ----------------------------------------


def test_lying():
    """After an APPEND (APPENDUID) and a MOVE (COPYUID) the server names a UID
    the folder already has: the new bytes must not end up under the old
    message's name, and the new message must still show, byte-exact."""
    s = Srv(**env_conf())
    A, SRC, DST = "LieAppend", "LieMoveSrc", "LieMoveDst"
    old = {}
    for raw in (A, SRC, DST):
        s.create(raw)
        for i in range(2):
            data = make_message("%s old %d" % (raw, i), b"An old message.\r\n", BASE + 60 * i)
            old.setdefault(raw, {})[s.add(raw, data, date=BASE + 60 * i)] = data
    moving = make_message("LieMoveSrc moving", b"The one that moves.\r\n", BASE + 600)
    s.add(SRC, moving, date=BASE + 600)
    lies = []

    def lie(data):
        # the tagged OK of an APPEND, the untagged OK of a MOVE: the new
        # message's UID becomes the folder's first one
        def app(mo):
            lies.append("APPENDUID")
            return b"[APPENDUID %s %d]" % (mo.group(1), min(old[A]))

        def cop(mo):
            lies.append("COPYUID")
            return b"[COPYUID %s %s %d]" % (mo.group(1), mo.group(2), min(old[DST]))
        data = re.sub(rb"\[APPENDUID (\d+) (\d+)\]", app, data)
        return re.sub(rb"\[COPYUID (\d+) (\S+) (\d+)\]", cop, data)

    px = recording_proxy()
    with rec_mount(px) as m:
        names = {raw: listing(m, raw)[0] for raw in (A, SRC, DST)}
        for raw in (A, SRC, DST):  # every body is cached, the moving one too
            for uid in names[raw]:
                read_bytes(m.p(raw, names[raw][uid]))
        px.rewrite = lie
        new = make_message("LieAppend new", b"Written through the mount.\r\n", BASE + 900)
        with open(m.p(A, "new.eml"), "wb") as f:
            f.write(new)
        mv = tool(["mv", m.p(SRC, names[SRC][max(names[SRC])]), m.p(DST)])
        T.check(mv.returncode == 0, "mv of a message into %s succeeds" % DST,
                expected="status 0", seen=tool_seen(mv))
        listing(m, DST)  # the batched move goes out
        px.rewrite = None
        T.eq(sorted(set(lies)), ["APPENDUID", "COPYUID"],
             "the server's answers named an old UID (the proxy rewrote them)")
        for raw, arrived in ((A, new), (DST, moving)):
            srv = {uid: s.body(raw, uid) for uid in s.metadata(raw)}
            uids, odd, _ = listing(m, raw)
            got = {uid: read_uncached(m.p(raw, name)) for uid, name in uids.items()}
            T.eq(sorted(uids), sorted(srv), "%s lists the server's UIDs" % raw)
            T.check(all(got.get(u) == srv[u] for u in srv),
                    "%s: every message reads as the server has it (the old ones too)" % raw,
                    expected="byte-exact",
                    seen=sorted(u for u in srv if got.get(u) != srv[u]))
            T.check(sum(1 for b in got.values() if b == crlf(arrived)) == 1,
                    "%s: the new message shows once" % raw, expected=1,
                    seen=sum(1 for b in got.values() if b == crlf(arrived)))
    s.close()


# ---- the whole run: what imapfs sent ------------------------------------------------------


def test_sent():
    cases = {b"a1 EXPUNGE": True, b"a2 expunge ": True, b"a3 CLOSE": True,
             b"a4 UID EXPUNGE 7": False, b"a5 UID MOVE 1:3 Archive": False,
             b"a6 SELECT EXPUNGE": False}
    T.eq({c.decode(): dangerous(c) for c in cases}, {c.decode(): v for c, v in cases.items()},
         "the detector finds bare EXPUNGE and CLOSE, and only those")
    T.eq(commands_of_stream(b"a1 APPEND X {5+}\r\nb1 EX\r\na2 EXPUNGE\r\na3 NOOP"),
         [b"a1 APPEND X {5+}<literal 5>", b"a2 EXPUNGE", b"a3 NOOP"],
         "the stream parser skips literal data")
    problems, n = [], 0
    for k, px in enumerate(RECORDERS):
        for conn, c in commands_of_proxy(px):
            n += 1
            if dangerous(c):
                problems.append("proxy %d connection %d: %r" % (k, conn, c[:100]))
    T.none_of(problems, "no session recorded by the proxies sent a bare EXPUNGE or a CLOSE "
              "(%d commands)" % n)
    if ENV_RAWLOG:
        lines = commands_of_rawlog(ENV_RAWLOG)
        bad = ["%s: %r" % (f, c[:100]) for f, c in lines if dangerous(c)]
        T.none_of(bad, "the fixture server's rawlog: no session sent a bare EXPUNGE or a "
                  "CLOSE (%d lines)" % len(lines))
    else:
        T.diag("the fixture server has no rawlog (dovecot.py run --rawlog adds that check)")


TESTS = [test_ops, test_readonly, test_fallback, test_editors, test_faults, test_rsync,
         test_batch, test_rm_burst, test_lying, test_sent]
BUDGET = 480.0


def cleanup():
    for px in RECORDERS:
        px.close()
    for w in WORLDS:
        w.close()


if __name__ == "__main__":
    sys.exit(run_suite("test_write.py", EXE, TESTS, BUDGET, cleanup=cleanup))
