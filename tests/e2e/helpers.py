"""Shared code for the imapfs end-to-end tests: TAP output, the independent
IMAP client (imaplib), mounting and unmounting, counters.

Python standard library only.  Nothing here trusts imapfs: the server's
state always comes from imaplib, with EXAMINE and BODY.PEEK so that looking
never changes it.
"""

import calendar
import errno
import imaplib
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(1, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "fixture"))
from dovecot import mutf7_decode  # noqa: E402  (one codec for fixture and tests)

ENV = os.environ
HOST = ENV.get("IMAPFS_TEST_HOST")
PORT_IMAPS = int(ENV.get("IMAPFS_TEST_PORT_IMAPS") or 0)
PORT_IMAP = int(ENV.get("IMAPFS_TEST_PORT_IMAP") or 0)
CAFILE = ENV.get("IMAPFS_TEST_CAFILE")
OTHER_CAFILE = ENV.get("IMAPFS_TEST_OTHER_CAFILE")
USER = ENV.get("IMAPFS_TEST_USER")
PASSWORD_FILE = ENV.get("IMAPFS_TEST_PASSWORD_FILE")
MANIFEST = ENV.get("IMAPFS_TEST_MANIFEST")

# IMAPFS_E2E_DEBUG=1: mounts that may run in the foreground do, with -d,
# and the log of every mount during which a check failed is printed.
DEBUG = ENV.get("IMAPFS_E2E_DEBUG") == "1"
LOG_LINES = int(ENV.get("IMAPFS_E2E_LOG_LINES") or 200)  # how much of such a log
# IMAPFS_E2E_OPTIONS=compress=yes: -o options every mount gets (a test's own
# options come after them and win).
EXTRA_OPTIONS = [o for o in (ENV.get("IMAPFS_E2E_OPTIONS") or "").split(",") if o]

NAME_MAX = 255
MOUNT_TIMEOUT = 30.0     # the imapfs command must return within this
READY_POLL = 5.0         # ... and the mount must show up within this after
UNMOUNT_EXIT = 5.0       # the daemon must exit this soon after fusermount3 -u
CMD_TIMEOUT = 120.0      # default timeout of every other subprocess

COUNTERS_XATTR = "user.imapfs.counters"
REQUIRED_COUNTERS = (
    "imap.commands", "imap.round_trips", "imap.bytes_in", "imap.bytes_out",
    "imap.connects", "cache.body_fetches", "cache.range_fetches",
    "cache.body_bytes_fetched", "cache.body_hits",
)
MESSAGE_XATTRS = ("user.imap.flags", "user.imap.uid", "user.imap.uidvalidity",
                  "user.imap.internaldate", "user.imap.folder")


def short(value, limit=300):
    """repr(value), cut to limit characters for a TAP line."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "...(%d chars)" % len(text)


# ---- TAP ----------------------------------------------------------------------


class Tap:
    """TAP producer: `ok N - what` / `not ok N - what`, diagnostics as `#`
    lines, the plan (`1..N`) at the end."""

    def __init__(self):
        self.count = 0
        self.failures = []
        self.lock = threading.Lock()
        self.current = ""  # the running test, prefixed to every line

    def _emit(self, line):
        with self.lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def diag(self, text):
        for line in str(text).splitlines() or [""]:
            self._emit("# " + line)

    def _point(self, ok, what, directive=""):
        with self.lock:
            self.count += 1
            n = self.count
        label = "%s: %s" % (self.current, what) if self.current else what
        label = label.replace("\n", " ").replace("#", "\\#")
        self._emit("%s %d - %s%s" % ("ok" if ok else "not ok", n, label, directive))
        if not ok:
            self.failures.append(label)
        return ok

    def check(self, cond, what, expected=None, seen=None, details=()):
        """One test point.  On failure, say what was expected and seen."""
        ok = bool(cond)
        if not ok and (expected is not None or seen is not None):
            what = "%s (expected %s; seen %s)" % (what, short(expected), short(seen))
        self._point(ok, what)
        if not ok:
            for d in list(details)[:12]:
                self.diag("  " + short(d, 1000))
            if len(details) > 12:
                self.diag("  ... and %d more" % (len(details) - 12))
        return ok

    def eq(self, seen, expected, what):
        return self.check(seen == expected, what, expected=expected, seen=seen)

    def none_of(self, problems, what, ok_note=None):
        """Passes when the list of problems (strings) is empty; otherwise
        lists them.  Each problem should say expected vs seen itself."""
        problems = list(problems)
        if problems:
            what = "%s (%d problem%s, first: %s)" % (
                what, len(problems), "" if len(problems) == 1 else "s",
                short(problems[0], 400))
        return self.check(not problems, what, details=problems[1:] if problems else ())

    def skip(self, what, reason):
        self._point(True, what, " # SKIP " + reason)

    def fail(self, what, details=()):
        return self.check(False, what, details=details)

    def finish(self):
        self._emit("1..%d" % self.count)
        return 1 if self.failures else 0


T = Tap()


# ---- small codecs (independent of imapfs's C code) -------------------------------


def imap_quote(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def fs_component(part):
    """One hierarchy level of a decoded folder name -> its directory name."""
    return part.replace("%", "%25").replace("/", "%2F")


def folder_path(raw, delim):
    """Raw server name -> path relative to the mount root."""
    name = mutf7_decode(raw)
    parts = name.split(delim) if delim else [name]
    return "/".join(fs_component(p) for p in parts)


_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
IMAP_DATE_RE = re.compile(
    r"^ ?(\d{1,2})-([A-Z][a-z]{2})-(\d{4}) (\d\d):(\d\d):(\d\d) ([-+])(\d\d)(\d\d)$")


def parse_imap_date(text):
    """IMAP date-time ("20-Nov-2023 09:51:50 +0000") -> epoch seconds."""
    if isinstance(text, bytes):
        text = text.decode("ascii")
    m = IMAP_DATE_RE.match(text)
    if not m or m.group(2) not in _MONTHS:
        raise ValueError("not an IMAP date-time: %r" % text)
    d, mon, y, hh, mm, ss, sign, oh, om = m.groups()
    t = calendar.timegm((int(y), _MONTHS.index(mon) + 1, int(d),
                         int(hh), int(mm), int(ss), 0, 0, 0))
    off = (int(oh) * 60 + int(om)) * 60
    return t - off if sign == "+" else t + off


def format_imap_date(epoch):
    t = time.gmtime(epoch)
    return "%02d-%s-%04d %02d:%02d:%02d +0000" % (
        t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)


# message file names: YYYY-MM-DD_HHMM_<slug>.<uid>.eml (slug may be empty)
NAME_RE = re.compile(r"^(\d{4})-(\d\d)-(\d\d)_(\d\d)(\d\d)(?:_(.*))?\.([1-9][0-9]*)\.eml$",
                     re.S)


def parse_message_name(name):
    """-> (epoch of the minute, slug, uid) or None if name is not a message
    name of the specified form."""
    m = NAME_RE.match(name)
    if not m:
        return None
    y, mo, d, hh, mi, slug, uid = m.groups()
    try:
        minute = calendar.timegm((int(y), int(mo), int(d), int(hh), int(mi), 0, 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    return minute, slug or "", int(uid)


def name_prefix(epoch):
    """The YYYY-MM-DD_HHMM a name must start with for this INTERNALDATE."""
    return time.strftime("%Y-%m-%d_%H%M", time.gmtime(epoch))


def name_problems(name_bytes):
    """The invariants every message name must satisfy (DESIGN.md section 3):
    a list of what is wrong with it (empty when fine)."""
    out = []
    try:
        name = name_bytes.decode("utf-8", "strict")
    except UnicodeDecodeError as e:
        return ["%r is not valid UTF-8 (%s)" % (name_bytes, e)]
    if len(name_bytes) > NAME_MAX:
        out.append("%r is %d bytes long, more than NAME_MAX %d"
                   % (name, len(name_bytes), NAME_MAX))
    if "/" in name or "\0" in name:
        out.append("%r contains / or NUL" % name)
    if name in (".", ".."):
        out.append("name is %r" % name)
    bad = [c for c in name if ord(c) < 0x20 or ord(c) == 0x7F]
    if bad:
        out.append("%r contains control characters %r (names must be readable)"
                   % (name, "".join(bad)))
    if parse_message_name(name) is None:
        out.append("%r is not of the form YYYY-MM-DD_HHMM_<slug>.<uid>.eml" % name)
    return out


def words(text):
    """Maximal runs of letters and digits: what a slug must keep of a subject."""
    return re.findall(r"[^\W_]+", text)


# ---- the independent client ---------------------------------------------------


class ServerError(Exception):
    pass


def password():
    with open(PASSWORD_FILE) as f:
        return f.readline().rstrip("\r\n")


def _ok(res, what):
    typ, data = res
    if typ != "OK":
        raise ServerError("%s: %s %r" % (what, typ, data))
    return data


class Msg:
    __slots__ = ("uid", "flags", "size", "internaldate", "body")

    def __init__(self, uid, flags, size, internaldate, body=None):
        self.uid, self.flags, self.size = uid, frozenset(flags), size
        self.internaldate, self.body = internaldate, body


class Folder:
    """One server folder as imaplib sees it."""

    def __init__(self, raw, delim, attrs):
        self.raw, self.delim, self.attrs = raw, delim, attrs
        self.name = mutf7_decode(raw)
        self.path = folder_path(raw, delim)
        self.selectable = not ({"\\noselect", "\\nonexistent"}
                               & {a.lower() for a in attrs})
        self.uidvalidity = None
        self.msgs = {}  # uid -> Msg

    def __repr__(self):
        return "Folder(%r -> %r, %d messages)" % (self.raw, self.path, len(self.msgs))


_LIST_RE = re.compile(rb'^\(([^)]*)\) (NIL|"(?:[^"\\]|\\.)*") ?(.*)$', re.S)


def _unquote(b):
    if b.startswith(b'"') and b.endswith(b'"') and len(b) >= 2:
        return re.sub(rb"\\(.)", rb"\1", b[1:-1])
    return b


class Server:
    """A logged-in imaplib connection, read-only helpers (EXAMINE, PEEK)."""

    def __init__(self, timeout=60):
        ctx = ssl.create_default_context(cafile=CAFILE)
        self.m = imaplib.IMAP4_SSL(HOST, PORT_IMAPS, ssl_context=ctx, timeout=timeout)
        _ok(self.m.login(USER, password()), "LOGIN")

    def close(self):
        try:
            self.m.logout()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def list(self):
        """[Folder] from LIST "" "*" (no messages yet)."""
        data = _ok(self.m.list('""', "*"), "LIST")
        out = []
        for item in data:
            if item is None:
                continue
            if isinstance(item, tuple):  # the name came as a literal
                mo = _LIST_RE.match(item[0].rsplit(b" {", 1)[0] + b" ")
                name = item[1]
            else:
                mo = _LIST_RE.match(item)
                name = _unquote(mo.group(3)) if mo else None
            if not mo:
                raise ServerError("cannot parse LIST response %r" % (item,))
            attrs = mo.group(1).decode("ascii").split()
            delim = None if mo.group(2) == b"NIL" else _unquote(mo.group(2)).decode()
            out.append(Folder(name.decode("ascii"), delim, attrs))
        return out

    def examine(self, raw):
        data = _ok(self.m.select(imap_quote(raw), readonly=True), "EXAMINE %s" % raw)
        return int(data[0] or 0)

    def uidvalidity(self, raw):
        data = _ok(self.m.status(imap_quote(raw), "(UIDVALIDITY)"), "STATUS %s" % raw)
        blob = b" ".join(d if isinstance(d, bytes) else d[0] for d in data if d)
        return int(re.search(rb"UIDVALIDITY (\d+)", blob).group(1))

    def uids(self, raw):
        """UID SEARCH ALL -> sorted list."""
        if self.examine(raw) == 0:
            return []
        data = _ok(self.m.uid("SEARCH", "ALL"), "UID SEARCH %s" % raw)
        return sorted(int(x) for x in b" ".join(d for d in data if d).split())

    def metadata(self, raw):
        """{uid: Msg without body}."""
        if self.examine(raw) == 0:
            return {}
        data = _ok(self.m.uid("FETCH", "1:*", "(UID FLAGS RFC822.SIZE INTERNALDATE)"),
                   "UID FETCH %s" % raw)
        out = {}
        for item in data:
            if item is None:
                continue
            line = item if isinstance(item, bytes) else item[0]
            uid = re.search(rb"UID (\d+)", line)
            size = re.search(rb"RFC822\.SIZE (\d+)", line)
            date = re.search(rb'INTERNALDATE "([^"]+)"', line)
            flags = re.search(rb"FLAGS \(([^)]*)\)", line)
            if not (uid and size and date and flags):
                continue  # unsolicited FETCH
            fl = [f.decode("ascii") for f in flags.group(1).split()
                  if f.lower() != b"\\recent"]
            out[int(uid.group(1))] = Msg(int(uid.group(1)), fl, int(size.group(1)),
                                         parse_imap_date(date.group(1)))
        return out

    def bodies(self, raw, uids=None):
        """{uid: BODY.PEEK[] bytes} (all messages, or the given UIDs)."""
        if self.examine(raw) == 0:
            return {}
        which = "1:*" if uids is None else ",".join(str(u) for u in uids)
        data = _ok(self.m.uid("FETCH", which, "(UID BODY.PEEK[])"), "UID FETCH BODY %s" % raw)
        out = {}
        for item in data:
            if isinstance(item, tuple):
                uid = re.search(rb"UID (\d+)", item[0])
                if uid and re.search(rb"BODY\[\] \{\d+\}$", item[0]):
                    out[int(uid.group(1))] = item[1]
        return out

    def snapshot(self, bodies=False):
        """{raw name: Folder with msgs} for every selectable folder."""
        out = {}
        for f in self.list():
            if not f.selectable:
                out[f.raw] = f
                continue
            f.uidvalidity = self.uidvalidity(f.raw)
            f.msgs = self.metadata(f.raw)
            if bodies and f.msgs:
                got = self.bodies(f.raw)
                for uid, msg in f.msgs.items():
                    if uid not in got:
                        raise ServerError("no body for UID %d in %s" % (uid, f.raw))
                    msg.body = got[uid]
            out[f.raw] = f
        return out

    def state(self):
        """Comparable server state: {raw: (uidvalidity, {uid: flags})}."""
        return {raw: (f.uidvalidity, {u: m.flags for u, m in f.msgs.items()})
                for raw, f in self.snapshot().items()}

    def create(self, raw):
        _ok(self.m.create(imap_quote(raw)), "CREATE %s" % raw)

    def append(self, raw, data, flags=(), date=None):
        """APPEND the bytes unchanged; returns the UID (APPENDUID)."""
        self.m.literal = data
        res = _ok(self.m._simple_command(
            "APPEND", imap_quote(raw), "(%s)" % " ".join(flags) if flags else None,
            '"%s"' % format_imap_date(date) if date is not None else None),
            "APPEND %s" % raw)
        mo = re.search(rb"\[APPENDUID \d+ (\d+)\]",
                       b" ".join(d for d in res if isinstance(d, bytes)))
        return int(mo.group(1)) if mo else None


def state_diff(before, after):
    """Human-readable differences between two Server.state() results."""
    out = []
    for raw in sorted(set(before) | set(after)):
        if raw not in after:
            out.append("folder %r disappeared" % raw)
            continue
        if raw not in before:
            out.append("folder %r appeared" % raw)
            continue
        (v1, m1), (v2, m2) = before[raw], after[raw]
        if v1 != v2:
            out.append("%s: UIDVALIDITY %s -> %s" % (raw, v1, v2))
        for uid in sorted(set(m1) | set(m2)):
            if uid not in m2:
                out.append("%s: UID %d disappeared" % (raw, uid))
            elif uid not in m1:
                out.append("%s: UID %d appeared" % (raw, uid))
            elif m1[uid] != m2[uid]:
                out.append("%s: UID %d flags %s -> %s" % (
                    raw, uid, sorted(m1[uid]), sorted(m2[uid])))
    return out


# ---- processes and mounts ----------------------------------------------------------


def run(args, timeout=CMD_TIMEOUT, **kw):
    """subprocess.run with a timeout; returns CompletedProcess, or one with
    returncode None and the reason in stderr when it could not run or timed
    out (so callers report instead of crashing)."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("capture_output", True)
    try:
        return subprocess.run(args, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(
            args, None, e.stdout or b"",
            (e.stderr or b"") + b"\n(timed out after %d s)" % timeout)
    except OSError as e:
        return subprocess.CompletedProcess(args, None, b"", str(e).encode())


def _unescape_mount_field(s):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def mounts():
    """{mountpoint: fstype} from /proc/mounts (never blocks on a FUSE mount)."""
    out = {}
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3:
                out[_unescape_mount_field(fields[1])] = fields[2]
    return out


def is_mounted(path):
    return os.path.realpath(path) in mounts()


def mounts_under(path):
    p = os.path.realpath(path)
    return [m for m in mounts() if m == p or m.startswith(p + "/")]


def wait_for(pred, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2:][:1] != b"Z"


def runs(pid, exe):
    """Is pid running exe (its /proc/PID/exe, or an interpreter or wrapper
    that has exe as one of its first two arguments)?"""
    want = os.path.realpath(exe)
    try:
        if os.path.realpath("/proc/%d/exe" % pid) == want:
            return True
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return any(os.path.realpath(os.fsdecode(a)) == want for a in argv[:2] if a)


def processes_of(exe, arg):
    """Pids of live processes running exe with arg among their arguments:
    how a daemonized imapfs is found (like pgrep -f, but exact)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if os.fsencode(arg) in argv and runs(int(entry), exe) and pid_alive(int(entry)):
            out.append(int(entry))
    return out


def fusermount(path, lazy=False, timeout=15):
    return run(["fusermount3", "-uz" if lazy else "-u", path], timeout=timeout)


class MountError(Exception):
    pass


def parse_counters(text):
    """'name value' lines -> ({name: int}, [malformed lines])."""
    vals, bad = {}, []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not re.fullmatch(r"\d+", fields[1]):
            bad.append(line)
            continue
        vals[fields[0]] = int(fields[1])
    return vals, bad


class Mount:
    """One imapfs mount on a fresh mountpoint and a fresh cache_dir inside a
    private temp dir.  Use as a context manager: the exit always unmounts,
    kills a daemon that is left and removes the temp dir (never while
    something is still mounted under it).

    foreground=True runs `imapfs -f` as our child (self.proc); otherwise
    imapfs daemonizes and the daemon is found by its arguments.  A watchdog
    kills the daemon and lazily unmounts after `limit` seconds, so a hung
    filesystem fails the test instead of hanging the suite."""

    def __init__(self, exe, options=(), account=None, foreground=None, ro=False,
                 env=None, limit=150, base_options=True, extra_args=()):
        if foreground is None:  # the test does not care: daemon unless debugging
            foreground = DEBUG
        self.exe = exe
        self.tmp = tempfile.mkdtemp(prefix="imapfs-e2e-")
        self.path = os.path.join(self.tmp, "mnt")
        self.cache = os.path.join(self.tmp, "cache")
        os.mkdir(self.path)
        os.mkdir(self.cache)
        opts = []
        if base_options:
            opts += ["port=%d" % PORT_IMAPS, "cafile=%s" % CAFILE,
                     "password_file=%s" % PASSWORD_FILE]
        opts += ["cache_dir=%s" % self.cache] + EXTRA_OPTIONS + list(options)
        if ro:
            opts.append("ro")
        self.args = [exe] + (["-f"] + (["-d"] if DEBUG else []) if foreground else [])
        self.args += list(extra_args) + ["-o", ",".join(opts),
                                         account or "%s@%s" % (USER, HOST), self.path]
        self.foreground = foreground
        self.env = env
        self.limit = limit
        self.proc = None
        self.pids = []
        self.returncode = None  # of the mount command (daemon mode)
        self.elapsed = None     # seconds until the command returned / mount appeared
        self.mounted_at_return = None
        self.log_path = os.path.join(self.tmp, "imapfs.log")
        self.timer = None
        self.expired = False
        self.failures_at_start = len(T.failures)

    # -- lifecycle
    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc):
        self.cleanup(raised=exc[0] is not None)
        return False

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def start(self):
        log = open(self.log_path, "wb")
        t0 = time.monotonic()
        try:
            # Output to a file, not a pipe: a daemon that kept a pipe open
            # would make us wait for it.
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, env=self.env)
        except OSError as e:
            raise MountError("cannot run %s: %s" % (self.exe, e))
        finally:
            log.close()
        if self.foreground:
            self.pids = [self.proc.pid]
            ok = wait_for(lambda: is_mounted(self.path) or self.proc.poll() is not None,
                          MOUNT_TIMEOUT)
            self.elapsed = time.monotonic() - t0
            if self.proc.poll() is not None:
                raise MountError("imapfs -f exited with status %s before mounting: %s"
                                 % (self.proc.returncode, short(self.log().strip(), 600)))
            if not ok:
                raise MountError("imapfs -f: %s not mounted after %.0f s; log: %s"
                                 % (self.path, MOUNT_TIMEOUT, short(self.log().strip(), 600)))
        else:
            try:
                self.returncode = self.proc.wait(timeout=MOUNT_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.pids = [self.proc.pid]
                raise MountError("imapfs did not return within %.0f s (it must daemonize "
                                 "once the mount is ready)" % MOUNT_TIMEOUT)
            self.elapsed = time.monotonic() - t0
            self.mounted_at_return = is_mounted(self.path)
            self.pids = processes_of(self.exe, self.path)
            if self.returncode != 0:
                raise MountError("imapfs exited with status %d: %s" % (
                    self.returncode, short(self.log().strip(), 600)))
            if not wait_for(lambda: is_mounted(self.path), READY_POLL):
                raise MountError("imapfs exited 0 but %s is not mounted %.0f s later"
                                 % (self.path, READY_POLL))
            if not self.pids:
                self.pids = processes_of(self.exe, self.path)
        self.timer = threading.Timer(self.limit, self._expire)
        self.timer.daemon = True
        self.timer.start()

    def _expire(self):
        self.expired = True
        T.diag("watchdog: %s still running after %d s; killing imapfs %s and "
               "unmounting lazily" % (T.current, self.limit, self.pids))
        self._kill(signal.SIGKILL)
        fusermount(self.path, lazy=True)

    def _kill(self, sig):
        for pid in self.pids:
            if pid_alive(pid) and runs(pid, self.exe):
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=0.1 if sig != signal.SIGKILL else 5)
            except subprocess.TimeoutExpired:
                pass

    def alive(self):
        if self.proc is not None and self.foreground:
            return self.proc.poll() is None
        return any(pid_alive(p) for p in self.pids)

    def unmount(self):
        """fusermount3 -u (retried briefly while busy); returns (ok, message)."""
        if not is_mounted(self.path):
            return False, "%s was not mounted" % self.path
        deadline = time.monotonic() + 5
        while True:
            last = fusermount(self.path, timeout=5)
            if last.returncode == 0:
                return True, ""
            if time.monotonic() > deadline:
                return False, "fusermount3 -u failed: %s" % short(
                    (last.stderr or b"").decode(errors="replace").strip())
            time.sleep(0.2)  # busy: a file may still be closing

    def wait_exit(self, timeout=UNMOUNT_EXIT):
        return wait_for(lambda: not self.alive(), timeout)

    def cleanup(self, raised=False):
        if self.timer is not None:
            self.timer.cancel()
        if self.expired:
            T.fail("the mount's work finished within %d s (the watchdog had to kill "
                   "imapfs)" % self.limit)
        failed = len(T.failures) > self.failures_at_start
        if DEBUG and failed:
            lines = self.log().splitlines()
            T.diag("log of %s (last %d of %d lines):" % (" ".join(self.args),
                                                         min(LOG_LINES, len(lines)), len(lines)))
            T.diag("\n".join(lines[-LOG_LINES:]))
        elif failed or raised:
            # The log goes with the temp dir: its end (a sanitizer's
            # report, say) to stderr, which meson shows for a failed test.
            lines = self.log().splitlines()
            sys.stderr.write("-- log of %s, last lines:\n%s\n" % (
                " ".join(self.args), "\n".join(lines[-LOG_LINES:])))
        if is_mounted(self.path):
            ok, _ = self.unmount()
            if ok:
                self.wait_exit()
        if is_mounted(self.path):
            fusermount(self.path, lazy=True)
        self.pids = sorted(set(self.pids) | set(processes_of(self.exe, self.path)))
        if self.alive():
            self._kill(signal.SIGTERM)
            if not self.wait_exit(3):
                self._kill(signal.SIGKILL)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        left = mounts_under(self.tmp)
        if left:  # never rm -r through a mount
            T.diag("cleanup: still mounted %r; leaving %s" % (left, self.tmp))
            return
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- inside the mount
    def p(self, *parts):
        return os.path.join(self.path, *parts)

    def counters(self):
        """{name: int} from the root's user.imapfs.counters."""
        vals, bad = parse_counters(os.getxattr(self.path, COUNTERS_XATTR).decode())
        if bad:
            raise AssertionError("malformed counter lines %r" % bad)
        missing = [n for n in REQUIRED_COUNTERS if n not in vals]
        if missing:
            raise AssertionError("counters missing %r" % missing)
        return vals

    def settle(self, quiet=0.5, timeout=5.0):
        """Wait until the IMAP counters stop moving (background work done),
        return the counters."""
        keys = ("imap.commands", "imap.bytes_in", "imap.bytes_out")
        last = self.counters()
        since = time.monotonic()
        deadline = since + timeout
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.counters()
            if any(now[k] != last[k] for k in keys):
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return last


def delta(before, after, name):
    return after[name] - before[name]


def format_exc():
    return traceback.format_exc().rstrip()


def errno_name(e):
    if e is None:
        return "success"
    return errno.errorcode.get(e, str(e))


# ---- running a suite ---------------------------------------------------------------------


def log_tail(path, lines=40):
    """The last lines of a log file, or why there are none."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError as e:
        return "(%s: %s)\n" % (path, e.strerror)
    return "".join(text.splitlines(True)[-lines:])


def run_one(fn, t_start, budget, label=None, logs=()):
    """Run one test function (labelled by its name without test_) within
    what is left of budget seconds; an exception is a failed check, and
    its traceback and the tails of the server logs (the fixture's and
    those of the callable logs) go to stderr."""
    T.current = label or fn.__name__[5:]
    if time.monotonic() - t_start > budget:
        T.fail("not run: the suite's time budget of %.0f s is used up" % budget)
        T.current = ""
        return
    before = len(T.failures)
    t0 = time.monotonic()
    try:
        fn()
    except MountError as e:
        T.fail("mount (expected a working mount; seen: %s)" % e)
    except Exception as e:
        T.fail("raised %s: %s" % (type(e).__name__, short(str(e), 400)),
               details=format_exc().splitlines())
        # The whole traceback on stderr too: meson prints stderr on failure,
        # where the TAP comments above are cut to 12 lines and not shown.
        sys.stderr.write("%s: raised\n%s" % (T.current, format_exc()))
        paths = [os.environ.get("IMAPFS_TEST_LOG")] + list(logs() if callable(logs) else logs)
        for path in filter(None, paths):
            sys.stderr.write("-- %s, last lines:\n%s" % (path, log_tail(path)))
    T.diag("%s: %.1f s" % (T.current, time.monotonic() - t0))
    if len(T.failures) > before:
        T.diag("%s: %d failed check(s)" % (T.current, len(T.failures) - before))
    T.current = ""


def skip_reason(script, exe):
    """Why an e2e script cannot run here (print it as `1..0 # SKIP`), or
    None: not under the fixture, or no FUSE."""
    if not exe or not HOST or not MANIFEST:
        return "not run under the Dovecot fixture (dovecot.py run -- python3 %s IMAPFS)" % script
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (apt-get install fuse3)"
    return None


def run_suite(script, exe, tests, budget, setup=None, cleanup=None):
    """Run the test_* functions (IMAPFS_E2E_ONLY=a,b picks some by name),
    each within what is left of budget seconds; TAP to stdout, the exit
    status to return.  `1..0 # SKIP` when not under the fixture or without
    FUSE; `Bail out!` when setup() raises."""
    reason = skip_reason(script, exe)
    if reason:
        print("1..0 # SKIP " + reason)
        return 0
    t0 = time.monotonic()
    if setup:
        try:
            setup()
        except Exception as e:
            print("Bail out! setup against the Dovecot fixture failed: %s" % short(str(e), 500))
            for line in format_exc().splitlines():
                print("# " + line)
            return 1
        T.diag("setup: %.1f s" % (time.monotonic() - t0))
    only = [x for x in ENV.get("IMAPFS_E2E_ONLY", "").split(",") if x]
    try:
        for fn in tests:
            if not only or fn.__name__[5:] in only:
                run_one(fn, t0, budget)
    finally:
        if cleanup:
            cleanup()
    T.diag("total: %.1f s" % (time.monotonic() - t0))
    if T.failures:
        T.diag("%d failed:" % len(T.failures))
        for f in T.failures:
            T.diag("  " + short(f, 200))
    return T.finish()
