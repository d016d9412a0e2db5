"""End-to-end tests of the imapfs mount against a throwaway Dovecot.

Run under the fixture:

    python3 tests/fixture/dovecot.py run -- python3 tests/e2e/test_mount.py IMAPFS

Each test mounts imapfs on a fresh mountpoint with a fresh cache_dir, acts
with plain POSIX calls and tools (ls, find, grep, rsync), and checks the
result against the server as Python's imaplib sees it (EXAMINE and
BODY.PEEK only).  TAP output; `1..0 # SKIP` when not runnable.
IMAPFS_E2E_ONLY=pread,grep runs only those tests (after the setup).
IMAPFS_E2E_DEBUG=1 runs the mounts in the foreground with -d and prints the
log of every mount during which a check failed.
"""

import calendar
import errno
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import (  # noqa: E402
    CAFILE, HOST, MANIFEST, MESSAGE_XATTRS, NAME_MAX, PASSWORD_FILE,
    PORT_IMAP, PORT_IMAPS, REQUIRED_COUNTERS, COUNTERS_XATTR, USER, T, Mount,
    MountError, Server, delta, errno_name, fusermount, is_mounted, mounts_under,
    name_prefix, name_problems, parse_counters, parse_imap_date, parse_message_name,
    password, processes_of, run, run_suite, short, state_diff, wait_for, words,
)

EXE = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else None
BASE_DATE = calendar.timegm((2023, 11, 20, 9, 14, 0, 0, 0, 0))
SEED = 20231120
MB = 1024 * 1024

# The server as imaplib saw it after setup(): {raw: Folder with msgs+bodies}
SERVER = {}
BY_PATH = {}      # mount-relative folder path -> Folder
SUBJECTS = {}     # (raw, uid) -> (id, intended decoded subject or None)
IDS = {}          # id -> (raw, uid)
STATE0 = None     # Server.state() after setup: nothing may change it

# Subjects whose slug is not fully defined by the specification (broken
# encodings, raw 8-bit non-UTF-8, terminal escape sequences): only the name
# invariants apply, plus these strings that must appear in the slug, in order.
SLUG_MUST_CONTAIN = {
    "bad-encoded-word": [],
    "x-raw-latin1": ["aus"],
    "x-invalid-utf8": ["Broken", "bytes", "and", "surrogate"],
    "control": ["Tab", "here", "bell", "esc", "red", "del", "end"],
}
# A slug may be cut (NAME_MAX, or a readability cap) once it is this long.
SLUG_MIN_CUT = 32


# ---- setup: the server state every test compares with -----------------------------


def _msg(headers, body, date):
    lines = [b"From: Carol Extra <carol@example.org>", b"To: Bob Example <bob@example.org>",
             b"Date: " + time.strftime("%a, %d %b %Y %H:%M:%S +0000",
                                       time.gmtime(date)).encode()]
    lines += headers
    return b"\r\n".join(lines) + b"\r\n\r\n" + body.replace(b"\n", b"\r\n")


def _b_words(text, per=10):
    """A Subject value as folded RFC 2047 B words of `per` characters."""
    import base64
    chunks = [text[i:i + per] for i in range(0, len(text), per)]
    return b"\r\n ".join(b"=?UTF-8?B?" + base64.b64encode(c.encode()) + b"?="
                         for c in chunks)


# Messages and folders added to the standard corpus for edge cases it lacks:
# (folder raw, id, subject header bytes, intended subject, body, flags, date)
LONG_CJK = "長い件名のテスト " * 30
EXTRAS = [
    ("INBOX", "x-raw-latin1", b"Gr\xfc\xdfe aus K\xf6ln, caf\xe9", None,
     b"The Subject header is raw Latin-1 (invalid UTF-8).\n", (), 200),
    ("INBOX", "x-invalid-utf8",
     b"Broken \xff\xfe bytes \xc3( and \xed\xa0\x80 surrogate", None,
     b"Invalid UTF-8 sequences in the Subject header.\n", ("\\Seen",), 201),
    ("INBOX", "x-long-cjk", _b_words(LONG_CJK), LONG_CJK,
     b"A 750-byte UTF-8 subject in folded encoded words.\n",
     ("\\Flagged", "$Label1"), 202),
    ("Percent 100%", "x-percent", b"In a folder with a percent sign",
     "In a folder with a percent sign", b"Folder name with %.\n", (), 203),
    ('Quote"d \\ name', "x-quote", b"In a folder with quote and backslash",
     "In a folder with quote and backslash", b"Folder name with \" and \\.\n",
     ("\\Seen",), 204),
]


def setup():
    """Check the server against the manifest (this also proves the imaplib
    helpers), add the edge cases, and take the snapshot tests compare with."""
    global STATE0
    with open(MANIFEST, encoding="utf-8") as f:
        manifest = json.load(f)
    T.current = "setup"
    with Server() as s:
        snap = s.snapshot(bodies=True)
        want_folders = {f["raw"] for f in manifest["folders"]}
        T.eq(set(snap), want_folders, "imaplib LIST matches the manifest's folders")
        problems = []
        for mf in manifest["folders"]:
            f = snap.get(mf["raw"])
            if f is None:
                continue
            if f.uidvalidity != mf["uidvalidity"]:
                problems.append("%s: UIDVALIDITY %s, manifest %s"
                                % (mf["raw"], f.uidvalidity, mf["uidvalidity"]))
            if sorted(f.msgs) != sorted(m["uid"] for m in mf["messages"]):
                problems.append("%s: UIDs %s, manifest %s" % (
                    mf["raw"], sorted(f.msgs), sorted(m["uid"] for m in mf["messages"])))
            for mm in mf["messages"]:
                msg = f.msgs.get(mm["uid"])
                if msg is None:
                    continue
                seen = (hashlib.sha256(msg.body).hexdigest(), msg.size, msg.internaldate,
                        sorted(msg.flags))
                want = (mm["sha256"], mm["size"], mm["internaldate"], sorted(mm["flags"]))
                if seen != want:
                    problems.append("%s UID %d (%s): (sha256, size, date, flags) %r, "
                                    "manifest %r" % (mf["raw"], mm["uid"], mm["id"], seen, want))
                SUBJECTS[(mf["raw"], mm["uid"])] = (mm["id"], mm["subject"])
        T.none_of(problems, "imaplib sees every message of the manifest byte for byte")

        existing = set(snap)
        for raw, mid, subj, intended, body, flags, hours in EXTRAS:
            if raw not in existing:
                s.create(raw)
                existing.add(raw)
            date = BASE_DATE + hours * 3600 + 17 * 60 + 5
            data = _msg([b"Subject: " + subj, b"Message-ID: <%s@imapfs.test>" % mid.encode(),
                         b"MIME-Version: 1.0", b"Content-Type: text/plain; charset=us-ascii"],
                        body, date)
            uid = s.append(raw, data, flags, date)
            if uid is None:
                raise RuntimeError("APPEND to %s returned no APPENDUID" % raw)
            SUBJECTS[(raw, uid)] = (mid, intended)
        snap = s.snapshot(bodies=True)
        STATE0 = s.state()
    SERVER.update(snap)
    for f in SERVER.values():
        BY_PATH[f.path] = f
        for uid in f.msgs:
            if (f.raw, uid) in SUBJECTS:
                IDS[SUBJECTS[(f.raw, uid)][0]] = (f.raw, uid)
    missing = [x[1] for x in EXTRAS if x[1] not in IDS]
    T.check(not missing, "the edge-case messages were appended", expected="none missing",
            seen=missing)
    delims = {f.delim for f in SERVER.values()}
    T.eq(delims, {"."}, "the server's hierarchy delimiter")
    T.diag("server: %d folders, %d messages, %d bytes" % (
        len(SERVER), sum(len(f.msgs) for f in SERVER.values()),
        sum(m.size for f in SERVER.values() for m in f.msgs.values())))


def selectable():
    return sorted((f for f in SERVER.values() if f.selectable), key=lambda f: f.path)


def expected_dirs():
    out = set()
    for f in selectable():
        parts = f.path.split("/")
        for i in range(1, len(parts) + 1):
            out.add("/".join(parts[:i]))
    return out


def msg_of(raw, uid):
    return SERVER[raw].msgs[uid]


def folder_files(root, folder):
    """{name: lstat} of the message files in one folder directory, plus the
    list of problems (entries that are neither messages nor subfolders)."""
    d = os.path.join(root, folder.path)
    subdirs = {p.rsplit("/", 1)[-1] for p in expected_dirs()
               if p.startswith(folder.path + "/") and "/" not in p[len(folder.path) + 1:]}
    files, problems = {}, []
    for nb in os.listdir(os.fsencode(d)):
        st = os.lstat(os.path.join(os.fsencode(d), nb))
        name = nb.decode("utf-8", "surrogateescape")
        if stat.S_ISDIR(st.st_mode):
            if name not in subdirs:
                problems.append("%s: unexpected directory %r" % (folder.path, name))
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append("%s/%r: not a regular file (mode %o)" % (folder.path, name, st.st_mode))
        files[nb] = st
    return files, problems


def uid_map(folder, files):
    """{uid: name bytes} from file names; problems for unparsable names or
    duplicate UIDs."""
    out, problems = {}, []
    for nb in files:
        parsed = parse_message_name(nb.decode("utf-8", "replace"))
        if parsed is None:
            problems.append("%s: %r is not a message name" % (folder.path, nb))
            continue
        uid = parsed[2]
        if uid in out:
            problems.append("%s: UID %d appears twice: %r and %r" % (folder.path, uid, out[uid], nb))
        out[uid] = nb
    return out, problems


def path_of(root, raw, uid):
    """Path of the file of (raw, uid) in a mount, by listing its folder."""
    f = SERVER[raw]
    files, _ = folder_files(root, f)
    uids, _ = uid_map(f, files)
    if uid not in uids:
        raise AssertionError("%s: no file for UID %d among %d names" % (f.path, uid, len(files)))
    return os.path.join(os.fsencode(os.path.join(root, f.path)), uids[uid])


def read_file(path, chunk=MB):
    with open(path, "rb", buffering=0) as f:
        parts = []
        while True:
            b = f.read(chunk)
            if not b:
                break
            parts.append(b)
    return b"".join(parts)


def describe_mismatch(seen, want):
    if seen == want:
        return "equal"
    n = min(len(seen), len(want))
    first = 0  # first differing offset (n if one is a prefix of the other)
    while first < n and seen[first:min(n, first + 65536)] == want[first:min(n, first + 65536)]:
        first += 65536
    end = min(n, first + 65536)
    first = next((i for i in range(first, end) if seen[i] != want[i]), end)
    return ("%d bytes (sha256 %s...), expected %d bytes (sha256 %s...), first difference "
            "at offset %d" % (len(seen), hashlib.sha256(seen).hexdigest()[:12], len(want),
                              hashlib.sha256(want).hexdigest()[:12], first))


def slug_problem(folder, uid, slug):
    """None if the slug fits the decoded subject, else what is wrong."""
    mid, subject = SUBJECTS.get((folder.raw, uid), (None, None))
    if mid in SLUG_MUST_CONTAIN:
        pos = 0
        for w in SLUG_MUST_CONTAIN[mid]:
            i = slug.find(w, pos)
            if i < 0:
                return "slug %r lacks %r (expected %r in this order)" % (
                    slug, w, SLUG_MUST_CONTAIN[mid])
            pos = i + len(w)
        return None
    if subject is None:
        return None  # no Subject header: any slug, even an empty one
    nfc = lambda s: unicodedata.normalize("NFC", s)  # noqa: E731
    sw, want = words(nfc(slug)), words(nfc(subject))
    if sw == want or not want:
        return None  # (a subject without letters or digits, like "..": any slug)
    # A cut slug: its words are a prefix of the subject's, the last one
    # possibly cut short.
    if (len(slug) >= SLUG_MIN_CUT and sw and len(sw) <= len(want)
            and sw[:-1] == want[:len(sw) - 1] and want[len(sw) - 1].startswith(sw[-1])):
        return None
    return ("slug %r: its words %r, expected the words of the decoded subject %r: %r"
            % (slug, sw, subject, want))


# ---- tests -----------------------------------------------------------------------------


def _refusing_port():
    """A loopback port that refuses connections while the returned socket
    is open: bound, never listening. (A port found free and let go can be
    taken by the Dovecot of a test running beside this one.)"""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


def _attempt(args, mnt, timeout=15):
    """Run a mount command that should fail; returns (rc, stderr, elapsed).
    Output goes to files so that a wrongly started daemon cannot block us."""
    d = os.path.dirname(mnt)
    out_p, err_p = os.path.join(d, "stdout"), os.path.join(d, "stderr")
    t0 = time.monotonic()
    with open(out_p, "wb") as out, open(err_p, "wb") as err:
        try:
            p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        except OSError as e:
            return None, "cannot run %s: %s" % (args[0], e), None
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            rc = None
    with open(err_p, "rb") as f:
        text = f.read().decode("utf-8", "replace")
    return rc, text, time.monotonic() - t0


def _clean_attempt(mnt):
    if is_mounted(mnt):
        fusermount(mnt)
    if is_mounted(mnt):
        fusermount(mnt, lazy=True)
    for pid in processes_of(EXE, mnt):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_cli_errors():
    """Four failures, each one line on stderr, non-zero at once, no mount."""
    try:
        with Mount(EXE) as m:
            T.check("INBOX" in os.listdir(m.path),
                    "control: the same command with correct settings mounts (INBOX listed)")
    except MountError as e:
        T.fail("control: the same command with correct settings mounts (seen: %s)" % e)
    holder, closed_port = _refusing_port()
    with holder, tempfile.TemporaryDirectory(prefix="imapfs-e2e-") as tmp:
        wrong_pw = os.path.join(tmp, "wrong-password")
        # 0600 like the real one: the password is the only difference
        with os.fdopen(os.open(wrong_pw, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write("not-the-password\n")
        good = {"port": str(PORT_IMAPS), "cafile": CAFILE, "password_file": PASSWORD_FILE}
        cases = [
            ("wrong password", dict(good, password_file=wrong_pw), True),
            ("unreachable port", dict(good, port=str(closed_port)), True),
            ("untrusted certificate (no cafile)",
             {k: v for k, v in good.items() if k != "cafile"}, True),
            ("missing mountpoint", good, False),
        ]
        lines = {}
        for i, (what, opts, make_mnt) in enumerate(cases):
            case_dir = os.path.join(tmp, "case%d" % i)
            os.mkdir(case_dir)
            os.mkdir(os.path.join(case_dir, "cache"))
            mnt = os.path.join(case_dir, "mnt")
            if make_mnt:
                os.mkdir(mnt)
            o = ",".join("%s=%s" % kv for kv in opts.items())
            o += ",cache_dir=" + os.path.join(case_dir, "cache")
            args = [EXE, "-o", o, "%s@%s" % (USER, HOST), mnt]
            try:
                rc, err, elapsed = _attempt(args, mnt)
                if elapsed is None:
                    T.fail("%s: exits non-zero with one line on stderr (seen: %s)" % (what, err))
                    continue
                T.check(rc is not None and rc != 0, "%s: exits non-zero" % what,
                        expected="a non-zero status", seen=rc if rc is not None else err)
                T.check(elapsed < 10, "%s: fails at once" % what, expected="< 10 s",
                        seen="%.1f s" % elapsed)
                body = err.rstrip("\n")
                T.check(body and "\n" not in body, "%s: exactly one line on stderr" % what,
                        expected="one non-empty line", seen=err)
                lines[what] = body
                T.check(not is_mounted(mnt) and not mounts_under(case_dir),
                        "%s: no mount left behind (/proc/mounts)" % what,
                        expected="no mount", seen=mounts_under(case_dir))
                wait_for(lambda: not processes_of(EXE, mnt), 3)
                left = processes_of(EXE, mnt)
                T.check(not left, "%s: no imapfs process left behind" % what,
                        expected="none", seen=left)
            finally:
                _clean_attempt(mnt)
        T.check(len(set(lines.values())) == len(lines) == len(cases),
                "the four failures have four different messages (%s)" % " | ".join(
                    "%s: %s" % kv for kv in lines.items()),
                expected="4 distinct lines", seen=lines)


def test_daemon():
    """Without -f: daemonizes once the mount is ready; fusermount3 -u ends it."""
    with Mount(EXE, foreground=False) as m:
        T.check(m.returncode == 0, "imapfs (no -f) exits 0", expected=0, seen=m.returncode)
        T.check(m.mounted_at_return, "the mount is ready when the command returns",
                expected="mountpoint in /proc/mounts at exit", seen="not yet mounted")
        T.check(len(m.pids) == 1, "one daemon process is found by its arguments",
                expected="1 process", seen=m.pids)
        T.check("INBOX" in os.listdir(m.path), "the root lists INBOX")
        ok, msg = m.unmount()
        T.check(ok, "fusermount3 -u succeeds", expected="status 0", seen=msg)
        t0 = time.monotonic()
        gone = m.wait_exit()
        T.check(bool(m.pids) and gone, "the daemon exits after fusermount3 -u",
                expected="exit within 5 s", seen="pids %r, alive after %.1f s"
                % (m.pids, time.monotonic() - t0))
        T.check(not is_mounted(m.path), "no mount left after fusermount3 -u")


def _foreground(what, fn):
    try:
        with Mount(EXE, foreground=True) as m:
            fn(m)
    except MountError as e:
        T.fail("%s (seen: %s)" % (what, e))


def test_signals():
    """imapfs -f: SIGTERM, SIGINT and fusermount3 -u end it cleanly."""
    def by_signal(sig, m):
        name = signal.Signals(sig).name
        T.check(m.alive() and "INBOX" in os.listdir(m.path),
                "imapfs -f serves the mount while running")
        m.proc.send_signal(sig)
        unmounted = wait_for(lambda: not is_mounted(m.path), 5)
        T.check(unmounted, "%s to imapfs -f unmounts" % name,
                expected="mountpoint gone from /proc/mounts within 5 s",
                seen="still mounted")
        exited = wait_for(lambda: m.proc.poll() is not None, 5)
        # Any exit status: libfuse's loop reports the signal (passthrough_ll
        # then exits 1); but not killed by it or by a crash.
        T.check(exited and m.proc.returncode >= 0,
                "imapfs -f exits by itself after %s (status %s)" % (name, m.proc.poll()),
                expected="an exit within 5 s, not death by a signal",
                seen="still running" if not exited else "status %s" % m.proc.returncode)

    def by_fusermount(m):
        ok, msg = m.unmount()
        exited = wait_for(lambda: m.proc.poll() is not None, 5)
        T.check(ok and exited and m.proc.returncode == 0,
                "imapfs -f exits with status 0 after fusermount3 -u",
                expected="status 0 within 5 s", seen="%s %s" % (msg, m.proc.poll()))

    _foreground("SIGTERM to imapfs -f", lambda m: by_signal(signal.SIGTERM, m))
    _foreground("SIGINT to imapfs -f", lambda m: by_signal(signal.SIGINT, m))
    _foreground("fusermount3 -u of imapfs -f", by_fusermount)


def test_variants():
    """[user@]host:port, password_command, IMAPFS_PASSWORD, STARTTLS, plaintext."""
    pw_cmd = "cat %s" % PASSWORD_FILE
    variants = [
        ("user@host:port with password_command",
         dict(base_options=False, account="%s@%s:%d" % (USER, HOST, PORT_IMAPS),
              options=["cafile=" + CAFILE, "password_command=" + pw_cmd])),
        ("tls=starttls with IMAPFS_PASSWORD",
         dict(base_options=False, env=dict(os.environ, IMAPFS_PASSWORD=password()),
              options=["port=%d" % PORT_IMAP, "tls=starttls", "cafile=" + CAFILE])),
        ("tls=none on the plaintext port",
         dict(base_options=False, options=["port=%d" % PORT_IMAP, "tls=none",
                                            "password_file=" + PASSWORD_FILE])),
    ]
    for what, kw in variants:
        try:
            with Mount(EXE, **kw) as m:
                names = os.listdir(m.path)
                T.check("INBOX" in names and "Work" in names, "%s: mounts" % what,
                        expected="INBOX and Work at the root", seen=names)
        except MountError as e:
            T.fail("%s: mounts (seen: %s)" % (what, e))


def test_tree():
    """Directories = the server's folders; statvfs."""
    with Mount(EXE) as m:
        dirs, other = set(), []
        for top, dnames, fnames in os.walk(m.path):
            rel = os.path.relpath(top, m.path)
            for d in dnames:
                dirs.add(d if rel == "." else rel + "/" + d)
            for f in fnames:
                if rel == ".":
                    other.append(f)
        want = expected_dirs()
        T.check(dirs == want, "the directory tree equals the server's LIST",
                expected=sorted(want), seen=sorted(dirs),
                details=["missing %r" % d for d in sorted(want - dirs)]
                + ["unexpected %r" % d for d in sorted(dirs - want)])
        T.check(not other, "no files at the root", expected=[], seen=other)
        for p in ("Work/Projects", "Entwürfe", "日本語", "R&D", "Folder with spaces",
                  "Percent 100%25", 'Quote"d \\ name', "Empty"):
            T.check(os.path.isdir(m.p(p)), "%r is a directory" % p)
        T.check(not os.path.exists(m.p("Work.Projects")),
                "the delimiter is not left in names (no Work.Projects)")
        st = os.statvfs(m.path)
        T.check(st.f_bsize > 0 and st.f_namemax == NAME_MAX,
                "statvfs: f_bsize > 0, f_namemax == 255",
                expected="bsize > 0, namemax 255",
                seen="bsize %d, namemax %d" % (st.f_bsize, st.f_namemax))


def check_listing(root, ro=False):
    """Every folder's message files against imaplib: UIDs, names, attributes."""
    uid_p, name_p, date_p, slug_p, attr_p, order_p = [], [], [], [], [], []
    mode = 0o444 if ro else 0o644
    for f in selectable():
        files, probs = folder_files(root, f)
        uid_p += probs
        uids, probs = uid_map(f, files)
        uid_p += probs
        if set(uids) != set(f.msgs):
            uid_p.append("%s: UIDs from names %s, UID SEARCH ALL %s" % (
                f.path, sorted(uids), sorted(f.msgs)))
        for nb in files:
            name_p += ["%s: %s" % (f.path, p) for p in name_problems(nb)]
        for uid, nb in uids.items():
            msg = f.msgs.get(uid)
            if msg is None:
                continue
            name = nb.decode("utf-8", "replace")
            minute, slug, _ = parse_message_name(name)
            if not name.startswith(name_prefix(msg.internaldate) + "_") and \
                    not name.startswith(name_prefix(msg.internaldate) + "."):
                date_p.append("%s: %r should start with %s (UTC INTERNALDATE %s)" % (
                    f.path, name, name_prefix(msg.internaldate), msg.internaldate))
            sp = slug_problem(f, uid, slug)
            if sp:
                slug_p.append("%s UID %d: %s" % (f.path, uid, sp))
            st = files[nb]
            seen = (stat.S_IMODE(st.st_mode), st.st_nlink, st.st_uid, st.st_gid,
                    st.st_size, st.st_mtime_ns, st.st_blocks)
            want = (mode, 1, os.getuid(), os.getgid(), msg.size,
                    msg.internaldate * 10 ** 9, (msg.size + 511) // 512)
            if seen != want:
                attr_p.append("%s/%s: (mode, nlink, uid, gid, size, mtime_ns, blocks) %r, "
                              "expected %r" % (f.path, name, seen, want))
        by_name = sorted((nb, uid) for uid, nb in uids.items() if uid in f.msgs)
        dates = [f.msgs[uid].internaldate // 60 for _, uid in by_name]
        if dates != sorted(dates):
            order_p.append("%s: INTERNALDATE minutes in name order %r" % (f.path, dates))
    T.none_of(uid_p, "every folder has exactly one file per message (UIDs == UID SEARCH ALL)")
    T.none_of(name_p, "names are valid UTF-8, <= 255 bytes, readable, of the form "
              "YYYY-MM-DD_HHMM_<slug>.<uid>.eml")
    T.none_of(date_p, "names start with the UTC INTERNALDATE")
    T.none_of(slug_p, "slugs are the RFC 2047-decoded subject")
    T.none_of(order_p, "names sort chronologically")
    T.none_of(attr_p, "mode %o, nlink 1, our uid/gid, size == RFC822.SIZE, mtime == "
              "INTERNALDATE, blocks == ceil(size/512)" % mode)


def test_listing():
    with Mount(EXE) as m:
        check_listing(m.path)


def test_find():
    """find lists exactly the server's messages, and nothing else."""
    with Mount(EXE) as m:
        r = run(["find", m.path, "-mindepth", "1", "-printf", r"%y %P\0"], timeout=120)
        T.check(r.returncode == 0 and not r.stderr, "find succeeds without errors",
                expected="status 0, no stderr", seen=(r.returncode, r.stderr[-500:]))
        entries = [e for e in r.stdout.split(b"\0") if e]
        dirs = {e[2:].decode("utf-8", "replace") for e in entries if e[:2] == b"d "}
        files = [e[2:] for e in entries if e[:2] == b"f "]
        other = [e for e in entries if e[:2] not in (b"d ", b"f ")]
        T.check(dirs == expected_dirs(), "find -type d: exactly the folders",
                expected=sorted(expected_dirs()), seen=sorted(dirs))
        T.check(not other, "find: nothing but directories and regular files",
                expected=[], seen=other)
        problems, got = [], {}
        for fb in files:
            rel = fb.decode("utf-8", "replace")
            folder, _, name = rel.rpartition("/")
            parsed = parse_message_name(name)
            if folder not in BY_PATH or not name.endswith(".eml") or parsed is None:
                problems.append("unexpected file %r (not a message in a folder)" % rel)
                continue
            got.setdefault(folder, []).append(parsed[2])
        with Server() as s:
            for f in selectable():
                server_uids = s.uids(f.raw)
                if sorted(got.get(f.path, [])) != server_uids:
                    problems.append("%s: UIDs %s, UID SEARCH ALL %s" % (
                        f.path, sorted(got.get(f.path, [])), server_uids))
        T.none_of(problems, "find -type f: per folder, the UIDs in the names == "
                  "UID SEARCH ALL (%d files)" % len(files))


def test_xattrs():
    with Mount(EXE) as m:
        problems, listed = [], []
        n = 0
        for f in selectable():
            files, _ = folder_files(m.path, f)
            uids, _ = uid_map(f, files)
            for uid, nb in sorted(uids.items()):
                msg = f.msgs.get(uid)
                if msg is None:
                    continue
                n += 1
                p = os.path.join(os.fsencode(m.p(f.path)), nb)
                where = "%s UID %d" % (f.path, uid)
                try:
                    names = os.listxattr(p)
                except OSError as e:
                    listed.append("%s: listxattr: %s" % (where, e))
                    names = []
                # Only the flags are listed (what a copy should carry),
                # and only when there are some: an empty value says no
                # more than a missing one. The rest are read by name
                # (checked below).
                want = ["user.imap.flags"] if msg.flags else []
                if names != want:
                    listed.append("%s (flags %r): listxattr %r, expected %r"
                                  % (where, sorted(msg.flags), names, want))

                def get(name):
                    try:
                        return os.getxattr(p, name).decode("utf-8", "replace")
                    except OSError as e:
                        return "<%s>" % errno_name(e.errno)

                flags = get("user.imap.flags")
                if set(flags.split(" ")) - {""} != set(msg.flags) or flags != flags.strip():
                    problems.append("%s: user.imap.flags %r, imaplib %r" % (
                        where, flags, sorted(msg.flags)))
                v = get("user.imap.uid")
                if v != str(uid):
                    problems.append("%s: user.imap.uid %r, expected %r" % (where, v, str(uid)))
                v = get("user.imap.uidvalidity")
                if v != str(f.uidvalidity):
                    problems.append("%s: user.imap.uidvalidity %r, expected %r" % (
                        where, v, str(f.uidvalidity)))
                v = get("user.imap.internaldate")
                try:
                    ok = parse_imap_date(v) == msg.internaldate
                except ValueError:
                    ok = False
                if not ok:
                    problems.append("%s: user.imap.internaldate %r, expected the time %s" % (
                        where, v, time.strftime("%d-%b-%Y %H:%M:%S +0000",
                                                time.gmtime(msg.internaldate))))
                v = get("user.imap.folder")
                if v != f.raw:
                    problems.append("%s: user.imap.folder %r, expected %r" % (where, v, f.raw))
                if n <= 3:
                    try:
                        os.getxattr(p, "user.imap.no-such-attribute")
                        e = None
                    except OSError as ex:
                        e = ex.errno
                    if e != errno.ENODATA:
                        problems.append("%s: getxattr of an unknown name: %s, expected ENODATA"
                                        % (where, errno_name(e)))
                    for other in ("security.selinux", "system.posix_acl_access",
                                  "trusted.x"):
                        try:
                            os.getxattr(p, other)
                            e = None
                        except OSError as ex:
                            e = ex.errno
                        if e != errno.EOPNOTSUPP:
                            problems.append("%s: getxattr %s: %s, expected EOPNOTSUPP (only "
                                            "the user namespace exists)"
                                            % (where, other, errno_name(e)))
        T.check(n == sum(len(f.msgs) for f in selectable()), "xattrs checked on every message",
                expected=sum(len(f.msgs) for f in selectable()), seen=n)
        T.check(any(f.msgs[u].flags for f in selectable() for u in f.msgs)
                and any(not f.msgs[u].flags for f in selectable() for u in f.msgs),
                "the corpus has messages with flags and messages without")
        T.none_of(listed, "listxattr lists user.imap.flags only, and only for a message with "
                  "flags (the others are read by name: cp -a and rsync -X do not copy "
                  "server bookkeeping)")
        T.none_of(problems, "user.imap.{flags,uid,uidvalidity,internaldate,folder} "
                  "match imaplib")


def _ls_l(path):
    for name in os.listdir(path):
        os.lstat(os.path.join(path, name))


def test_counters():
    with Mount(EXE) as m:
        try:
            text = os.getxattr(m.path, COUNTERS_XATTR).decode()
        except OSError as e:
            T.fail("the root has the xattr %s (seen: %s)" % (COUNTERS_XATTR, e))
            return
        vals, bad = parse_counters(text)
        T.check(not bad, "counters are 'name value' lines", expected="no malformed lines",
                seen=bad)
        miss = [n for n in REQUIRED_COUNTERS if n not in vals]
        T.check(not miss, "counters include the required names", expected=REQUIRED_COUNTERS,
                seen=sorted(vals))
        if bad or miss:
            return
        inbox = SERVER["INBOX"]
        n = len(inbox.msgs)

        # (d) the first ls -l of INBOX: a handful of commands
        c0 = m.settle()
        _ls_l(m.p("INBOX"))
        c1 = m.counters()
        d = delta(c0, c1, "imap.commands")
        T.check(d <= 4, "first ls -l of INBOX (%d messages): %d IMAP commands" % (n, d),
                expected="<= 4", seen=d)
        T.check(c1["imap.connects"] >= 1 and c1["imap.bytes_in"] > 0 and
                c1["imap.bytes_out"] > 0 and c1["imap.round_trips"] > 0,
                "the counters count (connects, bytes, round trips > 0 after a listing)",
                expected="> 0", seen={k: c1[k] for k in c1 if k.startswith("imap.")})

        # (a) the second ls -l: no IMAP at all
        c1 = m.settle()
        _ls_l(m.p("INBOX"))
        c2 = m.counters()
        T.eq(delta(c1, c2, "imap.commands"), 0, "second ls -l of INBOX sends no IMAP command")
        r = run(["ls", "-l", m.p("INBOX")], timeout=60)
        c3 = m.counters()
        T.check(r.returncode == 0 and delta(c2, c3, "imap.commands") == 0,
                "`ls -l INBOX` (with its getxattr calls) sends no IMAP command",
                expected="status 0, 0 commands",
                seen="status %s, %d commands" % (r.returncode, delta(c2, c3, "imap.commands")))
        # ls -l asks for security.selinux and the ACL of every file unless
        # the file system says it has none ("not supported", remembered).
        T.check(delta(c2, c3, "fuse.getxattr") <= 4,
                "`ls -l INBOX` (%d files) sends a constant number of getxattr requests" % n,
                expected="<= 4", seen=delta(c2, c3, "fuse.getxattr"))

        # (b) a message is fetched once per mount, also with 4 KB reads
        uid = max(inbox.msgs, key=lambda u: inbox.msgs[u].size if u in inbox.msgs and
                  inbox.msgs[u].size < MB else 0)
        msg = inbox.msgs[uid]
        p = path_of(m.path, "INBOX", uid)
        c3 = m.settle()
        first = read_file(p, 4096)
        c4 = m.settle()
        T.check(first == msg.body, "4 KB reads of a %d-byte message return its bytes" % msg.size,
                expected="equal", seen=describe_mismatch(first, msg.body))
        fetched = delta(c3, c4, "cache.body_fetches") + delta(c3, c4, "cache.range_fetches")
        T.check(fetched >= 1 and delta(c3, c4, "cache.body_bytes_fetched") >= msg.size,
                "the first read fetches the body (cache counters move)",
                expected=">= 1 fetch, >= %d bytes fetched" % msg.size,
                seen="%d fetches, %d bytes" % (fetched, delta(c3, c4, "cache.body_bytes_fetched")))
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # drop the page cache
        finally:
            os.close(fd)
        second = read_file(p, 4096)
        c5 = m.counters()
        T.check(second == msg.body, "reading it again returns the same bytes",
                expected="equal", seen=describe_mismatch(second, msg.body))
        seen = {k: delta(c4, c5, k) for k in ("cache.body_fetches", "cache.range_fetches",
                                              "imap.commands")}
        T.check(seen == {"cache.body_fetches": 0, "cache.range_fetches": 0, "imap.commands": 0},
                "the second read fetches nothing", expected="all 0", seen=seen)
        T.check(delta(c4, c5, "cache.body_hits") >= 1,
                "the second read is a cache hit (cache.body_hits)",
                expected=">= 1", seen=delta(c4, c5, "cache.body_hits"))

        # (e) cat of every INBOX message in name order: prefetch
        names = sorted(os.listdir(os.fsencode(m.p("INBOX"))))
        c5 = m.settle()
        wrong = []
        for nb in names:
            data = read_file(os.path.join(os.fsencode(m.p("INBOX")), nb))
            uid_ = parse_message_name(nb.decode("utf-8", "replace"))
            if not uid_ or uid_[2] not in inbox.msgs:
                wrong.append("%r: not the file of an INBOX message" % nb)
            elif data != inbox.msgs[uid_[2]].body:
                wrong.append("%r: %s" % (nb, describe_mismatch(data, inbox.msgs[uid_[2]].body)))
        c6 = m.counters()
        rt = delta(c5, c6, "imap.round_trips")
        T.none_of(wrong, "cat of every INBOX message returns its bytes")
        T.check(rt <= len(names) // 2 + 3,
                "cat of %d INBOX messages in name order: %d round trips" % (len(names), rt),
                expected="<= %d" % (len(names) // 2 + 3), seen=rt)
        T.check(delta(c5, c6, "cache.body_fetches") + delta(c5, c6, "cache.range_fetches") >= 1,
                "... and it did fetch bodies", expected=">= 1 fetch",
                seen=delta(c5, c6, "cache.body_fetches"))

        # (c) head -c 4096 of the 20 MB message
        big = SERVER["Big"]
        buid = max(big.msgs, key=lambda u: big.msgs[u].size)
        bp = path_of(m.path, "Big", buid)
        c6 = m.settle()
        with open(bp, "rb", buffering=0) as fh:
            head = fh.read(4096)
        c7 = m.settle()
        got = delta(c6, c7, "imap.bytes_in")
        T.check(head == big.msgs[buid].body[:4096], "head -c 4096 of the 20 MB message",
                expected="its first 4096 bytes",
                seen=describe_mismatch(head, big.msgs[buid].body[:4096]))
        T.check(4096 <= got < 5 * MB,
                "head -c 4096 of a %d-byte message: %d bytes in" % (big.msgs[buid].size, got),
                expected="4096 <= bytes_in < 5 MB", seen=got)


def test_pread():
    """Random offsets and sizes (fixed seed), on a fresh mount, also from
    several threads at once; then the whole file."""
    with Mount(EXE) as m:
        check_preads(m, "")


def check_preads(m, label):
    rng = random.Random(SEED)
    big = SERVER["Big"]
    buid = max(big.msgs, key=lambda u: big.msgs[u].size)
    body = big.msgs[buid].body
    size = len(body)
    cases = [(0, 1), (0, 4096), (size - 1, 1), (size - 10, 100), (size, 10),
             (size + 12345, 10), (4095, 2), (131071, 3), (size // 2, 1 << 20)]
    cases += [(rng.randrange(0, size), rng.randrange(1, 256 * 1024)) for _ in range(40)]
    problems = []
    fd = os.open(path_of(m.path, "Big", buid), os.O_RDONLY)
    try:
        for off, n in cases:
            got = os.pread(fd, n, off)
            if got != body[off:off + n]:
                problems.append("Big pread(offset %d, %d bytes): %s" % (
                    off, n, describe_mismatch(got, body[off:off + n])))
    finally:
        os.close(fd)
    T.none_of(problems, label + "pread at %d offsets of the 20 MB message" % len(cases))

    problems = []
    inbox = SERVER["INBOX"]
    for uid in sorted(inbox.msgs):
        b = inbox.msgs[uid].body
        fd = os.open(path_of(m.path, "INBOX", uid), os.O_RDONLY)
        try:
            for _ in range(3):
                off = rng.randrange(0, len(b) + 1)
                n = rng.randrange(1, 3000)
                got = os.pread(fd, n, off)
                if got != b[off:off + n]:
                    problems.append("INBOX UID %d pread(offset %d, %d bytes): %s" % (
                        uid, off, n, describe_mismatch(got, b[off:off + n])))
        finally:
            os.close(fd)
    T.none_of(problems, label + "pread at random offsets of every INBOX message")

    # Several readers at once: other folders' messages and the Big one.
    jobs = [("Big", buid)] * 2 + [(f.raw, u) for f in selectable()
                                  if f.raw not in ("INBOX", "Big") for u in f.msgs]
    results = []
    lock = threading.Lock()

    def reader(k):
        r = random.Random(SEED + k)
        out = []
        for raw, uid in jobs[k::4]:
            b = SERVER[raw].msgs[uid].body
            op = "listing the folder"
            try:
                p = path_of(m.path, raw, uid)
                op = "open"
                fd = os.open(p, os.O_RDONLY)
                try:
                    for _ in range(4):
                        off = r.randrange(0, len(b))
                        n = r.randrange(1, 200000)
                        op = "pread(offset %d, %d bytes)" % (off, n)
                        got = os.pread(fd, n, off)
                        if got != b[off:off + n]:
                            out.append("%s UID %d pread(offset %d, %d bytes): %s" % (
                                raw, uid, off, n, describe_mismatch(got, b[off:off + n])))
                finally:
                    os.close(fd)
            except Exception as e:
                out.append("%s UID %d: %s failed: %s: %s" % (raw, uid, op,
                                                             type(e).__name__, e))
        with lock:
            results.extend(out)

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    T.check(not any(t.is_alive() for t in threads), label + "4 concurrent readers finish",
            expected="done within 120 s", seen="still reading")
    T.none_of(results, label + "4 concurrent readers at random offsets get the right bytes")

    data = read_file(path_of(m.path, "Big", buid))
    T.check(data == body, label + "after the random reads, the whole 20 MB file is exact",
            expected="equal", seen=describe_mismatch(data, body))


def test_read_all():
    """Every message, read whole: the bytes of BODY.PEEK[]."""
    with Mount(EXE) as m:
        check_read_all(m, "")


def check_read_all(m, label):
    problems, n, total = [], 0, 0
    for f in selectable():
        files, _ = folder_files(m.path, f)
        uids, _ = uid_map(f, files)
        for uid in sorted(f.msgs, key=lambda u: uids.get(u, b"")):
            if uid not in uids:
                problems.append("%s UID %d: no file" % (f.path, uid))
                continue
            p = os.path.join(os.fsencode(m.p(f.path)), uids[uid])
            want = f.msgs[uid].body
            with open(p, "rb", buffering=0) as fh:
                size = os.fstat(fh.fileno()).st_size
                parts = []
                while True:
                    b = fh.read(MB)
                    if not b:
                        break
                    parts.append(b)
            data = b"".join(parts)
            n += 1
            total += len(data)
            if hashlib.sha256(data).digest() != hashlib.sha256(want).digest():
                problems.append("%s UID %d: %s" % (f.path, uid, describe_mismatch(data, want)))
            if size != len(data):
                problems.append("%s UID %d: st_size %d but %d bytes read" % (
                    f.path, uid, size, len(data)))
    want_n = sum(len(f.msgs) for f in selectable())
    T.check(n == want_n, label + "every message was read", expected=want_n, seen=n)
    T.none_of(problems, label + "every file == BODY.PEEK[] (sha256) and st_size == bytes read "
              "(%d files, %d bytes)" % (n, total))
    T.check(total > 20 * MB, label + "the 20 MB message was among them", expected="> 20 MiB",
            seen=total)


def test_grep():
    with Mount(EXE) as m:
        all_msgs = [(f, uid, msg) for f in selectable() for uid, msg in f.msgs.items()]
        for word in ("Apollo", "twins", "Müller", "contract"):
            wb = word.encode()
            want = set()
            for f, uid, msg in all_msgs:
                if wb in msg.body:
                    want.add((f.path, uid))
            if not 0 < len(want) < len(all_msgs):
                T.fail("grep word %r is in %d of %d messages: pick another word"
                       % (word, len(want), len(all_msgs)))
                continue
            r = run(["grep", "-rlF", "-e", word, "--", m.path], timeout=120,
                    env=dict(os.environ, LC_ALL="C"))
            got, bad = set(), []
            for line in r.stdout.split(b"\n"):
                if not line:
                    continue
                rel = os.path.relpath(line.decode("utf-8", "replace"), m.path)
                folder, _, name = rel.rpartition("/")
                parsed = parse_message_name(name)
                if parsed is None:
                    bad.append(rel)
                else:
                    got.add((folder, parsed[2]))
            T.check(r.returncode in (0, 1) and not r.stderr, "grep -rl %s: no errors" % word,
                    expected="status 0 or 1, no stderr", seen=(r.returncode, r.stderr[-400:]))
            T.check(got == want and not bad,
                    "grep -rl %s finds exactly the %d messages that contain it" % (word, len(want)),
                    expected=sorted(want), seen=sorted(got) + bad)
        r = run(["grep", "-rlF", "-e", "xyzzy-nowhere-4711", "--", m.path], timeout=120,
                env=dict(os.environ, LC_ALL="C"))
        T.check(r.returncode == 1 and not r.stdout and not r.stderr,
                "grep -rl of an absent word reads everything and finds nothing",
                expected="status 1, no output", seen=(r.returncode, r.stdout[:200], r.stderr[-300:]))


def test_rsync():
    if shutil.which("rsync") is None:
        T.skip("rsync -a copy of the account", "rsync is not installed (apt-get install rsync)")
        return
    with Mount(EXE, limit=240) as m:
        copy = os.path.join(m.tmp, "copy")
        os.mkdir(copy)
        r = run(["rsync", "-a", m.path + "/", copy + "/"], timeout=200)
        T.check(r.returncode == 0, "rsync -a MOUNT/ copy/ succeeds",
                expected="status 0", seen=(r.returncode, r.stderr[-500:]))
        problems, n = [], 0
        for f in selectable():
            d = os.path.join(copy, f.path)
            if not os.path.isdir(d):
                problems.append("%s: not copied" % f.path)
                continue
            names = [x for x in os.listdir(os.fsencode(d))
                     if not os.path.isdir(os.path.join(os.fsencode(d), x))]
            uids = {}
            for nb in names:
                parsed = parse_message_name(nb.decode("utf-8", "replace"))
                if parsed is None:
                    problems.append("%s: unexpected %r" % (f.path, nb))
                else:
                    uids[parsed[2]] = nb
            if set(uids) != set(f.msgs):
                problems.append("%s: copied UIDs %s, server %s" % (f.path, sorted(uids),
                                                                  sorted(f.msgs)))
            for uid, nb in uids.items():
                if uid not in f.msgs:
                    continue
                p = os.path.join(os.fsencode(d), nb)
                n += 1
                data = read_file(p)
                if data != f.msgs[uid].body:
                    problems.append("%s UID %d: %s" % (f.path, uid,
                                                       describe_mismatch(data, f.msgs[uid].body)))
                mt = os.stat(p).st_mtime_ns
                if mt != f.msgs[uid].internaldate * 10 ** 9:
                    problems.append("%s UID %d: copy's mtime %d, INTERNALDATE %d" % (
                        f.path, uid, mt // 10 ** 9, f.msgs[uid].internaldate))
        T.none_of(problems, "the copy is byte-identical with mtimes preserved (%d files)" % n)
        r = run(["rsync", "-a", "--itemize-changes", m.path + "/", copy + "/"], timeout=200)
        lines = [x for x in r.stdout.decode("utf-8", "replace").splitlines()
                 if x.startswith(">f")]
        T.check(r.returncode == 0 and not lines, "a second rsync -a copies nothing",
                expected="status 0, no >f lines", seen=(r.returncode, lines[:10]))


EDGE_IDS = ["huge-subject", "slash", "dotdot", "dotfile", "control", "shell",
            "bad-encoded-word", "no-subject", "raw-utf8-subject", "q-latin1", "b-utf8",
            "dup-a", "dup-b", "x-raw-latin1", "x-invalid-utf8", "x-long-cjk", "x-percent",
            "x-quote"]


def test_names_edge():
    """Subjects with /, .., control characters, 600 bytes, invalid UTF-8."""
    with Mount(EXE) as m:
        names = {}
        for mid in EDGE_IDS:
            if mid not in IDS:
                T.fail("%s: in the corpus" % mid)
                continue
            raw, uid = IDS[mid]
            f = SERVER[raw]
            try:
                p = path_of(m.path, raw, uid)
            except AssertionError as e:
                T.fail("%s: has a file (%s)" % (mid, e))
                continue
            nb = os.path.basename(p)
            names[mid] = nb
            probs = name_problems(nb)
            sp = slug_problem(f, uid, parse_message_name(nb.decode("utf-8", "replace"))[1]) \
                if not probs else None
            T.check(not probs and not sp, "%s: name %s" % (mid, short(nb, 120)),
                    expected="a valid name", seen=probs + ([sp] if sp else []))
            try:
                data = read_file(p)
                st = os.stat(p)
                ok = data == f.msgs[uid].body and st.st_size == len(data)
                seen = describe_mismatch(data, f.msgs[uid].body)
            except OSError as e:
                ok, seen = False, "%s" % e
            T.check(ok, "%s: the file reads back exactly" % mid, expected="its bytes", seen=seen)
        if "huge-subject" in names:
            T.check(len(names["huge-subject"]) <= NAME_MAX and len(names["huge-subject"]) >= 100,
                    "the 600-byte subject is cut, not dropped",
                    expected="100..255 bytes", seen=len(names["huge-subject"]))
        if "dup-a" in names and "dup-b" in names:
            T.check(names["dup-a"] != names["dup-b"], "twins (same subject and time) differ",
                    expected="two names", seen=names["dup-a"])


def _all_files(root):
    out = set()
    for top, _, fnames in os.walk(os.fsencode(root)):
        for fn in fnames:
            out.add(os.path.relpath(os.path.join(top, fn), os.fsencode(root)))
    return out


def test_stable_names():
    with Mount(EXE) as m:
        first = _all_files(m.path)
    with Mount(EXE) as m:
        # read a few bodies first this time: names must not depend on it
        for uid in sorted(SERVER["INBOX"].msgs)[:3]:
            read_file(path_of(m.path, "INBOX", uid))
        second = _all_files(m.path)
    want = sum(len(f.msgs) for f in selectable())
    T.check(first == second and len(first) == want,
            "two mounts (fresh cache_dir each) show the same %d names" % want,
            expected="%d identical names" % want,
            seen="%d vs %d names" % (len(first), len(second)),
            details=["only in the first: %r" % x for x in sorted(first - second)]
            + ["only in the second: %r" % x for x in sorted(second - first)])


def _drop_caches():
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")  # dentries and inodes: the kernel forgets ours
        return True
    except OSError:
        return False


def test_inodes():
    with Mount(EXE) as m:
        targets = ["INBOX", "Work", "Work/Projects", "Entwürfe", "Big"]
        for raw, uid in (("INBOX", min(SERVER["INBOX"].msgs)),
                         ("Entw&APw-rfe", min(SERVER["Entw&APw-rfe"].msgs)),
                         ("Work.Projects", max(SERVER["Work.Projects"].msgs))):
            targets.append(os.path.relpath(path_of(m.path, raw, uid).decode(), m.path))
        before = {t: os.stat(m.p(t)).st_ino for t in targets}
        # activity: list everything, read some, stat everything
        inos = {}
        for top, dnames, fnames in os.walk(m.path):
            for x in dnames + fnames:
                p = os.path.join(top, x)
                inos[os.path.relpath(p, m.path)] = os.lstat(p).st_ino
        for uid in sorted(SERVER["Work"].msgs):
            read_file(path_of(m.path, "Work", uid))
        mid = {t: os.stat(m.p(t)).st_ino for t in targets}
        T.check(mid == before, "st_ino of files and directories is stable within a mount",
                expected=before, seen=mid)
        dup = {}
        for p, ino in inos.items():
            dup.setdefault(ino, []).append(p)
        dup = {k: v for k, v in dup.items() if len(v) > 1}
        T.check(not dup and os.stat(m.path).st_ino not in inos.values(),
                "every file and directory has its own inode number (%d)" % (len(inos) + 1),
                expected="distinct", seen=dup)
        if _drop_caches():
            after = {t: os.stat(m.p(t)).st_ino for t in targets}
            T.check(after == before, "st_ino is the same after the kernel forgot the inodes "
                    "(drop_caches)", expected=before, seen=after)
        else:
            T.skip("st_ino after drop_caches", "cannot write /proc/sys/vm/drop_caches")


def test_readonly():
    with Server() as s:
        before = s.state()
    with Mount(EXE, ro=True) as m:
        inbox = SERVER["INBOX"]
        uid = min(inbox.msgs)
        p = path_of(m.path, "INBOX", uid)
        p2 = path_of(m.path, "INBOX", max(inbox.msgs))
        T.check(read_file(p) == inbox.msgs[uid].body, "-o ro: reading works")

        def expect_erofs(what, fn):
            try:
                fn()
                e = None
            except OSError as ex:
                e = ex.errno
            T.check(e == errno.EROFS, "-o ro: %s fails with EROFS" % what,
                    expected="EROFS", seen=errno_name(e))

        def create():
            fd = os.open(m.p("INBOX", "new.eml"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.close(fd)

        expect_erofs("creating a file", create)
        expect_erofs("opening a message for writing", lambda: os.close(os.open(p, os.O_WRONLY)))
        expect_erofs("mkdir of a folder", lambda: os.mkdir(m.p("NewFolder")))
        expect_erofs("mkdir inside a folder", lambda: os.mkdir(m.p("Work", "Sub")))
        expect_erofs("rm of a message", lambda: os.unlink(p))
        expect_erofs("rmdir of the empty folder", lambda: os.rmdir(m.p("Empty")))
        expect_erofs("mv of a message to another folder",
                     lambda: os.rename(p2, os.path.join(os.fsencode(m.p("Archive")),
                                                        os.path.basename(p2))))
        expect_erofs("mv of a folder", lambda: os.rename(m.p("Work"), m.p("Work2")))
        expect_erofs("setfattr user.imap.flags",
                     lambda: os.setxattr(p, "user.imap.flags", b"\\Seen \\Flagged"))
        r = run(["setfattr", "-n", "user.imap.flags", "-v", "\\Deleted", p], timeout=30) \
            if shutil.which("setfattr") else None
        if r is not None:
            T.check(r.returncode not in (0, None) and b"Read-only file system" in r.stderr,
                    "-o ro: the setfattr tool fails with 'Read-only file system'",
                    expected="status 1, EROFS", seen=(r.returncode, r.stderr[-200:]))
        bad = []
        for f in selectable():
            try:
                files, _ = folder_files(m.path, f)
            except OSError as e:
                bad.append("%s: %s" % (f.path, e))
                continue
            bad += ["%s/%r mode %o" % (f.path, nb, stat.S_IMODE(st.st_mode))
                    for nb, st in files.items() if stat.S_IMODE(st.st_mode) != 0o444]
        T.none_of(bad, "-o ro: every message file has mode 0444")
        T.check(os.statvfs(m.path).f_flag & os.ST_RDONLY, "-o ro: the kernel's mount is read-only",
                expected="ST_RDONLY", seen=os.statvfs(m.path).f_flag)

        # Opens and closes do not reach the daemon (SharedHandle in
        # fs/ops.c): reads find their handle by inode, from several threads
        # at once, and more files than it keeps open.
        check_read_all(m, "-o ro: ")
        check_preads(m, "-o ro: ")
        c0 = m.counters()
        T.eq(c0["fuse.open"], 1, "-o ro: no open but the first (answered ENOSYS) reached "
             "the daemon")
        small = path_of(m.path, "INBOX", uid)
        T.check(read_file(small) == inbox.msgs[uid].body, "-o ro: read once more")
        T.eq(delta(c0, m.counters(), "fuse.read"), 0,
             "-o ro: a file read before comes from the kernel's page cache (no READ)")

    # ro from the config file: the kernel's mount is read-only all the same.
    home = tempfile.mkdtemp(prefix="imapfs-e2e-home-")
    try:
        os.makedirs(os.path.join(home, "imapfs"))
        with open(os.path.join(home, "imapfs", "config"), "w") as f:
            f.write("[rocfg]\nhost = %s\nuser = %s\nport = %d\ncafile = %s\n"
                    "password_file = %s\nro = true\n"
                    % (HOST, USER, PORT_IMAPS, CAFILE, PASSWORD_FILE))
        with Mount(EXE, base_options=False, account="rocfg",
                   env=dict(os.environ, XDG_CONFIG_HOME=home)) as m:
            p = path_of(m.path, "INBOX", uid)
            T.check(os.statvfs(m.path).f_flag & os.ST_RDONLY,
                    "ro = true in the config file: the kernel's mount is read-only",
                    expected="ST_RDONLY", seen=os.statvfs(m.path).f_flag)
            T.check(read_file(p) == inbox.msgs[uid].body, "ro = true in the config file: "
                    "reading works")
            expect_erofs("(ro = true in the config file) opening a message for writing",
                         lambda: os.close(os.open(p, os.O_WRONLY)))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    with Server() as s:
        after = s.state()
    T.none_of(state_diff(before, after), "-o ro: the server is unchanged")


def test_final_state():
    """After all the reading (cat, pread, grep -r, rsync): no flag changed."""
    with Server() as s:
        now = s.state()
    T.none_of(state_diff(STATE0, now), "no message gained \\Seen or any flag, none "
              "appeared or disappeared, in the whole run")


def test_quota():
    """statvfs reports the server's quota (a Dovecot of our own with a 1 GiB
    storage limit, started here)."""
    sys.path.insert(0, os.path.dirname(os.environ["IMAPFS_TEST_FIXTURE"]))
    import dovecot  # noqa: E402  (the fixture module)

    with dovecot.Dovecot(quota=True) as d:
        d.populate("standard")
        opts = ["port=%d" % d.port_imaps, "cafile=%s" % d.cafile,
                "password_file=%s" % d.password_file]
        with Mount(EXE, options=opts, base_options=False) as m:
            st = os.statvfs(m.path)
            total = st.f_blocks * st.f_frsize
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            T.check(total == 1 << 30, "statvfs: the quota's 1 GiB limit is the size",
                    expected=1 << 30, seen=total)
            T.check(15 << 20 < used < 40 << 20,
                    "statvfs: the quota's usage (the ~21 MB corpus) is what is used",
                    expected="15-40 MiB", seen=used)


def test_fstab():
    """The mount(8) helper: what an fstab line runs."""
    helper = os.path.join(os.path.dirname(EXE), "mount.fuse.imapfs")
    if not os.path.exists(helper):
        T.skip("fstab helper", "%s was not built" % helper)
        return
    tmp = tempfile.mkdtemp(prefix="imapfs-fstab-")
    try:
        # The installed helper runs the installed binary: point it at ours.
        text = open(helper).read()
        local = os.path.join(tmp, "mount.fuse.imapfs")
        with open(local, "w") as f:
            f.write(re.sub(r'exec "[^"]*/imapfs"', 'exec "%s"' % EXE, text))
        os.chmod(local, 0o755)
        mnt = os.path.join(tmp, "mnt")
        os.mkdir(mnt)
        opts = ("noauto,user,_netdev,nofail,x-systemd.automount,comment=x,"
                "port=%d,cafile=%s,password_file=%s,cache_dir=%s" %
                (PORT_IMAPS, CAFILE, PASSWORD_FILE, os.path.join(tmp, "cache")))
        r = run([local, "%s@%s" % (USER, HOST), mnt, "-s", "-n", "-o", opts], timeout=30)
        try:
            T.check(r.returncode == 0, "fstab: mount.fuse.imapfs with fstab-only words mounts",
                    expected=0, seen=(r.returncode, r.stderr[-300:]))
            names = os.listdir(mnt) if r.returncode == 0 else []
            T.check("INBOX" in names, "fstab: the mount shows the folders",
                    expected="INBOX", seen=names)
            line = [l for l in open("/proc/mounts") if " %s " % mnt in l]
            T.check(line and " fuse.imapfs " in line[0],
                    "fstab: the mount's type is fuse.imapfs", expected="fuse.imapfs",
                    seen=line)
        finally:
            run(["fusermount3", "-u", mnt], timeout=30)
    finally:
        if not is_mounted(os.path.join(tmp, "mnt")):
            shutil.rmtree(tmp, ignore_errors=True)


def test_secrets():
    """The password never shows: not in ps, not in the -d protocol trace,
    not in the cache (index and bodies)."""
    pw = password().encode()
    with Mount(EXE, foreground=True, extra_args=["-d"]) as m:
        inbox = SERVER["INBOX"]
        read_file(path_of(m.path, "INBOX", min(inbox.msgs)))
        procs = run(["ps", "-eo", "args"], timeout=30).stdout
        T.check(pw not in procs, "secrets: the password is not on any command line (ps)",
                expected="absent", seen="present" if pw in procs else "absent")
        fusermount(m.path)
        wait_for(lambda: m.proc.poll() is not None, 10)
        log = open(m.log_path, "rb").read()
        T.check(b"AUTHENTICATE" in log or b"LOGIN" in log,
                "secrets: the -d trace shows the login command",
                expected="a login in the trace", seen=short(log[:300].decode("utf-8", "replace")))
        T.check(pw not in log and b"***" in log,
                "secrets: the -d trace shows *** instead of the password",
                expected="*** and no password", seen="password found" if pw in log else "ok")
        leaks = []
        for root, dirs, files in os.walk(m.cache):
            for f in files:
                with open(os.path.join(root, f), "rb") as fh:
                    if pw in fh.read():
                        leaks.append(os.path.join(root, f))
        T.none_of(leaks, "secrets: no file of the cache (index, bodies) holds the password")


TESTS = [test_cli_errors, test_daemon, test_signals, test_variants, test_tree, test_listing, test_find, test_xattrs,
         test_counters, test_pread, test_read_all, test_grep, test_rsync, test_names_edge,
         test_stable_names, test_inodes, test_readonly, test_quota, test_fstab,
         test_secrets,
         test_final_state]


BUDGET = 540.0  # seconds: report the rest as not run rather than hit meson's 600


if __name__ == "__main__":
    sys.exit(run_suite("test_mount.py", EXE, TESTS, BUDGET, setup=setup))
