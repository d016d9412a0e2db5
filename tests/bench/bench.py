#!/usr/bin/env python3
"""imapfs benchmark: one command, a table of medians, the raw numbers as JSON.

    python3 tests/bench/bench.py --imapfs build/fs/imapfs [--quick] [--runs 3]
                                 [--json OUT.json]

Starts a private Dovecot (tests/fixture/dovecot.py, no corpus), writes two
generated folders straight into its Maildir (tests/bench/benchcorpus.py):
"Bench5k" (5,000 messages, ~350 MB, mostly attachments) and "Bench50k"
(50,000 messages of 2-4 KB, 1 % contain the word NEEDLE), then measures per
folder and run: a raw pipelined UID FETCH 1:* (BODY.PEEK[]) with a minimal
TLS client, a cold `cp -a` through a fresh imapfs mount, cold and warm
`ls -l`, cold and warm `grep -rl NEEDLE` (again on a `-o ro` mount, which
sends no OPEN per file), the daemon's peak RSS, and an
mbsync (isync) full sync of the folder plus a grep over its Maildir.
See tests/bench/README.md for what each figure means.  It prints numbers and
checks correctness (file counts, bytes, grep hits); it never asserts times.

Python standard library only.
"""

import argparse
import datetime
import imaplib
import json
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "fixture"))
sys.path.insert(0, HERE)
import benchcorpus  # noqa: E402
import dovecot as fixture  # noqa: E402
from proxy import Proxy  # noqa: E402

COUNTERS_XATTR = "user.imapfs.counters"
MB = 1e6  # every MB and MB/s in this benchmark is 10^6 bytes
MOUNT_TIMEOUT = 60
SLOW_DELAY = 0.010        # one way: a 20 ms round trip
SLOW_RATE = 12_500_000    # bytes/s each way: 100 Mbit/s

_T0 = time.monotonic()


def log(msg):
    sys.stderr.write("[%7.1f] %s\n" % (time.monotonic() - _T0, msg))
    sys.stderr.flush()


class BenchError(Exception):
    pass


# ---- the machine --------------------------------------------------------------


def machine_info(dovecot_path):
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        dv = subprocess.run([dovecot_path, "--version"], capture_output=True, text=True,
                            timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError, TypeError):
        dv = "unknown"
    mb = shutil.which("mbsync")
    mbv = None
    if mb:
        try:
            mbv = subprocess.run([mb, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "loadavg_start": loadavg(), "cpu_start": cpu_times(),
            "dovecot": dv, "mbsync": mbv, "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime(
                "%Y-%m-%d %H:%M:%S UTC")}


def cpu_times():
    """The machine's CPU time so far (/proc/stat, all CPUs), in ticks."""
    try:
        with open("/proc/stat") as f:
            return [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def steal_share(start, end):
    """The share of CPU time a hypervisor gave to other guests between two
    cpu_times(): on a shared VM, the times are only as good as this is small."""
    if not start or not end or len(start) < 8 or len(end) < 8:
        return None
    total = sum(end[:8]) - sum(start[:8])
    return round(100.0 * (end[7] - start[7]) / total, 1) if total > 0 else None


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return None


# ---- mounts and processes -----------------------------------------------------


def _mounts():
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 1:
                out.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)),
                                  fields[1]))
    return out


def is_mounted(path):
    return os.path.abspath(path) in _mounts()


def mounted_under(path):
    p = os.path.abspath(path) + "/"
    return [m for m in _mounts() if m.startswith(p)]


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2:][:1] != b"Z"


def pids_with_arg(fragment):
    """Live processes (not us) whose command line contains fragment: the
    imapfs daemon is found by its unique cache_dir path."""
    out = []
    frag = os.fsencode(fragment)
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if frag in cmdline and pid_alive(int(entry)):
            out.append(int(entry))
    return out


def proc_status(pid, key):
    """A kB value from /proc/PID/status (VmHWM, VmRSS) in bytes, or None."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def parse_counters(text):
    vals = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) == 2 and f[1].isdigit():
            vals[f[0]] = int(f[1])
    return vals


def delta(before, after):
    return {k: after[k] - before.get(k, 0) for k in after}


class Mount:
    """One imapfs mount with a fresh mountpoint and an empty cache_dir."""

    _seq = 0

    def __init__(self, exe, dc, workdir, extra_opts=(), port=None):
        Mount._seq += 1
        self.exe = exe
        base = os.path.join(workdir, "mount-%03d" % Mount._seq)
        self.path = os.path.join(base, "mnt")
        self.cache = os.path.join(base, "cache")
        self.base = base
        os.makedirs(self.path)
        os.makedirs(self.cache)
        opts = ["port=%d" % (port or dc.port_imaps), "cafile=%s" % dc.cafile,
                "password_file=%s" % dc.password_file, "cache_dir=%s" % self.cache]
        opts += list(extra_opts)
        self.args = [exe, "-o", ",".join(opts), "%s@%s" % (dc.user, dc.host), self.path]
        self.pid = None
        self.mount_seconds = None
        self.log_path = os.path.join(base, "imapfs.log")

    def start(self):
        t0 = time.monotonic()
        with open(self.log_path, "wb") as logf:
            try:
                rc = subprocess.run(self.args, stdin=subprocess.DEVNULL, stdout=logf,
                                    stderr=logf, timeout=MOUNT_TIMEOUT).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        self.mount_seconds = time.monotonic() - t0
        pids = pids_with_arg("cache_dir=" + self.cache)
        self.pid = pids[0] if len(pids) == 1 else None
        if rc != 0 or not is_mounted(self.path):
            raise BenchError("imapfs mount failed (status %s): %s" % (rc, self.log()[-800:]))
        if self.pid is None:
            raise BenchError("imapfs daemon not found (candidates %r)" % pids)

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def counters(self):
        return parse_counters(os.getxattr(self.path, COUNTERS_XATTR).decode("ascii",
                                                                           "replace"))

    def peak_rss(self):
        return proc_status(self.pid, "VmHWM") if self.pid else None

    def stop(self):
        """Unmount (retried while busy, lazily as a last resort), wait for
        the daemon to exit (SIGTERM, then SIGKILL, to our pid only) and
        remove the cache."""
        problems = []
        for i in range(25):
            if not is_mounted(self.path):
                break
            r = subprocess.run(["fusermount3", "-u", self.path], capture_output=True)
            if r.returncode == 0:
                break
            time.sleep(0.2)
        if is_mounted(self.path):
            problems.append("fusermount3 -u failed, unmounted lazily")
            subprocess.run(["fusermount3", "-uz", self.path], capture_output=True)
        if self.pid is not None:
            deadline = time.monotonic() + 10
            while pid_alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if pid_alive(self.pid):
                    problems.append("daemon %d still alive after unmount: %s"
                                    % (self.pid, sig.name))
                    try:
                        os.kill(self.pid, sig)
                    except OSError:
                        pass
                    time.sleep(1)
        if not is_mounted(self.path) and not mounted_under(self.base):
            shutil.rmtree(self.base, ignore_errors=True)
        return problems


def run_timed(argv, timeout, capture=False, cwd=None):
    """(seconds, returncode, stdout bytes or None, stderr tail).  On timeout
    the command is killed and returncode is "timeout"."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, cwd=cwd,
                         stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                         stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
        out, err = p.communicate()
        rc = "timeout"
    return time.monotonic() - t0, rc, out, (err or b"")[-600:].decode("utf-8", "replace")


def tree_stats(path):
    """(number of *.eml files, their total size) under path."""
    n = size = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            if name.endswith(".eml"):
                n += 1
                size += os.lstat(os.path.join(dirpath, name)).st_size
    return n, size


def maildir_stats(path):
    n = size = 0
    for sub in ("cur", "new"):
        d = os.path.join(path, sub)
        if os.path.isdir(d):
            for name in os.listdir(d):
                n += 1
                size += os.lstat(os.path.join(d, name)).st_size
    return n, size


# ---- the raw ceiling ----------------------------------------------------------


def raw_fetch(dc, folder, timeout, items=b"BODY.PEEK[]", port=None):
    """Time a minimal client: implicit TLS, LOGIN, EXAMINE and
    UID FETCH 1:* (items) sent at once, read until the FETCH's tagged
    completion (the last thing the server sends), data counted and dropped.
    Returns (seconds from connect to completion, bytes received, CPU
    seconds this client used: near the wall time means the client, not the
    server, is the limit)."""
    ctx = fixture.ssl_context(dc.cafile)
    tag = b"Qz9f"
    cmds = (b'Qz9a LOGIN "%s" "%s"\r\n' % (dc.user.encode(), dc.password.encode())
            + b"Qz9b EXAMINE %s\r\n" % fixture.mailbox_arg(folder).encode()
            + tag + b" UID FETCH 1:* (%s)\r\n" % items)
    t0 = time.monotonic()
    cpu0 = time.process_time()
    sock = socket.create_connection((dc.host, port or dc.port_imaps), timeout=timeout)
    try:
        s = ctx.wrap_socket(sock, server_hostname=dc.host)
        s.sendall(cmds)
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        total = 0
        tail = b""
        while True:
            n = s.recv_into(buf)
            if n == 0:
                raise BenchError("raw fetch: server closed the connection; last bytes %r"
                                 % tail[-200:])
            total += n
            tail = (tail + bytes(view[max(0, n - 512):n]))[-512:]
            if tail.endswith(b"\r\n"):
                start = tail.rfind(b"\r\n", 0, len(tail) - 2) + 2
                line = tail[start:]
                if line.startswith(tag + b" "):
                    if not line.startswith(tag + b" OK"):
                        raise BenchError("raw fetch failed: %r" % line)
                    break
                if re.match(rb"Qz9[ab] (NO|BAD)", line):
                    raise BenchError("raw fetch: %r" % line)
        elapsed = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        try:
            s.sendall(b"Qz9g LOGOUT\r\n")
        except OSError:
            pass
        s.close()
    finally:
        sock.close()
    return elapsed, total, cpu


# What a listing needs of every message (flags, size, date, subject).
LISTING_ITEMS = b"UID FLAGS RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER.FIELDS (SUBJECT)]"


def raw_session(dc):
    """A logged-in imaplib session (implicit TLS, nothing selected)."""
    c = imaplib.IMAP4_SSL(dc.host, dc.port_imaps, ssl_context=fixture.ssl_context(dc.cafile))
    c.login(dc.user, dc.password)
    return c


def raw_read_one(c, folder, uid):
    """Milliseconds for EXAMINE folder + UID FETCH uid (BODY.PEEK[])."""
    t0 = time.monotonic()
    typ, _ = c.select(fixture.mailbox_arg(folder), readonly=True)
    if typ != "OK":
        raise BenchError("raw EXAMINE %s: %s" % (folder, typ))
    typ, data = c.uid("FETCH", str(uid), "(BODY.PEEK[])")
    if typ != "OK" or not data or not isinstance(data[0], tuple):
        raise BenchError("raw UID FETCH %d in %s: %s %r" % (uid, folder, typ, data[:1]))
    return (time.monotonic() - t0) * 1000


# ---- mbsync -------------------------------------------------------------------


def mbsync_version():
    exe = shutil.which("mbsync")
    if not exe:
        return None, None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"(\d+)\.(\d+)", out)
    return exe, (int(m.group(1)), int(m.group(2))) if m else (1, 4)


def mbsync_config(dc, version, maildir, folder):
    # isync 1.5 renamed SSLType to TLSType; 1.4 only knows SSLType.
    tls_key = "TLSType" if version >= (1, 5) else "SSLType"
    # The fixture's certificate names localhost and 127.0.0.1, but isync 1.4
    # matches only DNS names, so connect by name (it tries each address).
    return """\
IMAPAccount bench
Host localhost
Port {port}
User {user}
PassCmd "cat {pw}"
{tls} IMAPS
CertificateFile {ca}
SystemCertificates no

IMAPStore bench-far
Account bench

MaildirStore bench-near
Path {md}/
Inbox {md}/INBOX
SubFolders Verbatim

Channel bench
Far :bench-far:
Near :bench-near:
Patterns "{folder}"
Create Near
Sync Pull
SyncState *
""".format(port=dc.port_imaps, user=dc.user, pw=dc.password_file,
           tls=tls_key, ca=dc.cafile, md=maildir, folder=folder)


# ---- the benchmark ------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.records = []  # every measurement of every run
        self.failures = []  # correctness failures (not timings)
        self.notes = []
        self.mounts = []

    def record(self, folder, run, what, **values):
        rec = {"folder": folder, "run": run, "what": what}
        rec.update(values)
        self.records.append(rec)
        return rec

    def fail(self, msg):
        log("FAILED: " + msg)
        self.failures.append(msg)

    def mount(self, dc, extra_opts=(), port=None):
        m = Mount(self.args.imapfs, dc, self.workdir, extra_opts, port)
        self.mounts.append(m)
        m.start()
        return m

    def unmount(self, m):
        problems = m.stop()
        self.mounts.remove(m)
        for p in problems:
            self.fail("unmount %s: %s" % (m.path, p))

    def cleanup(self):
        for m in list(self.mounts):
            try:
                self.unmount(m)
            except Exception as e:  # keep cleaning up
                log("cleanup of %s: %s" % (m.path, e))

    # -- single measurements
    def m_warmup(self, dc, f, run):
        secs, _, _ = raw_fetch(dc, f["name"], self.args.timeout)
        log("%s: warm-up raw fetch %.2f s (not counted)" % (f["name"], secs))

    def m_raw(self, dc, f, run):
        secs, wire, cpu = raw_fetch(dc, f["name"], self.args.timeout)
        rec = self.record(f["name"], run, "raw", seconds=secs, wire_bytes=wire,
                          client_cpu_seconds=cpu, mbps=f["bytes"] / MB / secs)
        log("  raw fetch: %.2f s, %.1f MB/s, client CPU %.2f s" % (secs, rec["mbps"], cpu))

    def m_cp(self, dc, f, run):
        dst = os.path.join(self.workdir, "cp-%s-%d" % (f["name"], run))
        os.makedirs(dst)
        m = self.mount(dc)
        try:
            src = os.path.join(m.path, f["name"])
            # While the copy runs: how long does reading one message take,
            # in another folder and at the far end of this one?
            probes = []
            others = [g for g in self.folders if g["name"] != f["name"]]
            if others:
                od = os.path.join(m.path, others[0]["name"])
                probes.append(("other folder", os.path.join(od, sorted(os.listdir(od))[-1])))
            probes.append(("same folder", os.path.join(src, sorted(os.listdir(src))[-1])))
            # The server's own floor for the same read: a logged-in raw
            # client's first EXAMINE + UID FETCH in the other folder while
            # the copy runs (Dovecot maps UIDs to Maildir files on the
            # first body fetch of a session: that costs, not the client).
            raw_probe = raw_session(dc) if others else None
            c0 = m.counters()
            box = {}
            th = threading.Thread(target=lambda: box.update(
                r=run_timed(["cp", "-a", src, dst], self.args.timeout)))
            th.start()
            time.sleep(0.5)
            for what, path in probes:
                t0 = time.monotonic()
                try:
                    with open(path, "rb") as fh:
                        fh.read()
                    ms = (time.monotonic() - t0) * 1000
                except OSError as e:
                    ms = None
                    self.fail("%s run %d: reading %s during cp -a: %s" % (f["name"], run, path, e))
                self.record(f["name"], run, "cat_during_cp", where=what, ms=ms,
                            copy_running=th.is_alive())
                log("  during cp -a: one message in the %s read in %s ms" % (
                    what, "%.0f" % ms if ms is not None else "-"))
            if raw_probe:
                try:
                    # Not the message imapfs read: nothing is warm for it.
                    ms = raw_read_one(raw_probe, others[0]["name"], others[0]["n"] - 1)
                except (OSError, BenchError, imaplib.IMAP4.error) as e:
                    ms = None
                    self.fail("%s run %d: raw read during cp -a: %s" % (f["name"], run, e))
                self.record(f["name"], run, "cat_during_cp", where="other folder, raw client",
                            ms=ms, copy_running=th.is_alive())
                log("  during cp -a: a raw client read one message in the other folder "
                    "in %s ms" % ("%.0f" % ms if ms is not None else "-"))
                try:
                    raw_probe.logout()
                except (OSError, imaplib.IMAP4.error):
                    pass
            th.join()
            secs, rc, _, err = box["r"]
            c1 = m.counters()
            rss = m.peak_rss()
            rec = self.record(f["name"], run, "cp", seconds=secs, rc=rc,
                              mbps=f["bytes"] / MB / secs, counters=delta(c0, c1),
                              peak_rss=rss, mount_seconds=m.mount_seconds)
            if rc != 0:
                self.fail("%s run %d: cp -a exited %s: %s" % (f["name"], run, rc, err))
            n, size = tree_stats(dst)
            rec["copied_files"], rec["copied_bytes"] = n, size
            if (n, size) != (f["n"], f["bytes"]):
                self.fail("%s run %d: cp -a copied %d files / %d bytes, expected %d / %d"
                          % (f["name"], run, n, size, f["n"], f["bytes"]))
            log("  cold cp -a: %.2f s, %.1f MB/s, rss %.0f MB, %s" % (
                secs, rec["mbps"], (rss or 0) / MB, short_counters(rec["counters"])))
            # The same again from the cache: what the file system itself
            # costs, without the server.
            dst2 = dst + "-warm"
            os.makedirs(dst2)
            try:
                c0 = m.counters()
                secs, rc, _, err = run_timed(["cp", "-a", src, dst2], self.args.timeout)
                rec = self.record(f["name"], run, "cp_warm", seconds=secs, rc=rc,
                                  mbps=f["bytes"] / MB / secs, counters=delta(c0, m.counters()))
                if rc != 0:
                    self.fail("%s run %d: warm cp -a exited %s: %s" % (f["name"], run, rc, err))
                if tree_stats(dst2) != (f["n"], f["bytes"]):
                    self.fail("%s run %d: warm cp -a copied %r, expected %d files / %d bytes"
                              % (f["name"], run, tree_stats(dst2), f["n"], f["bytes"]))
                log("  warm cp -a: %.2f s, %.1f MB/s, %s" % (
                    secs, rec["mbps"], short_counters(rec["counters"])))
            finally:
                shutil.rmtree(dst2, ignore_errors=True)
        finally:
            self.unmount(m)
            shutil.rmtree(dst, ignore_errors=True)

    def m_ls(self, dc, f, run):
        m = self.mount(dc)
        try:
            d = os.path.join(m.path, f["name"])
            c0 = m.counters()
            s1, rc1, _, err1 = run_timed(["ls", "-l", d], self.args.timeout)
            c1 = m.counters()
            s2, rc2, _, err2 = run_timed(["ls", "-l", d], self.args.timeout)
            c2 = m.counters()
            r1 = self.record(f["name"], run, "ls_cold", seconds=s1, rc=rc1,
                             counters=delta(c0, c1), mount_seconds=m.mount_seconds,
                             peak_rss=m.peak_rss())
            r2 = self.record(f["name"], run, "ls_warm", seconds=s2, rc=rc2,
                             counters=delta(c1, c2))
            for rc, err, which in ((rc1, err1, "first"), (rc2, err2, "second")):
                if rc != 0:
                    self.fail("%s run %d: %s ls -l exited %s: %s" % (f["name"], run,
                                                                     which, rc, err))
            n = sum(1 for e in os.listdir(d) if e.endswith(".eml"))
            r1["entries"] = n
            if n != f["n"]:
                self.fail("%s run %d: ls shows %d .eml files, expected %d"
                          % (f["name"], run, n, f["n"]))
            log("  ls -l: cold %.2f s %s; warm %.3f s %s" % (
                s1, short_counters(r1["counters"]), s2, short_counters(r2["counters"])))
        finally:
            self.unmount(m)
        # The local baseline: as many empty files in a local directory,
        # listed twice (the second is measured, like the warm imapfs one).
        local = os.path.join(self.workdir, "ls-local-%s" % f["name"])
        os.makedirs(local, exist_ok=True)
        try:
            for i in range(f["n"]):
                open(os.path.join(local, "%07d.eml" % i), "wb").close()
            run_timed(["ls", "-l", local], self.args.timeout)
            s3, _, _, _ = run_timed(["ls", "-l", local], self.args.timeout)
            self.record(f["name"], run, "ls_local", seconds=s3)
            log("  ls -l of a local directory of %d files: %.3f s" % (f["n"], s3))
        finally:
            shutil.rmtree(local, ignore_errors=True)

    def m_rss(self, dc, f, run):
        """Peak RSS after reading the folder once and after ten times, with
        cache=none so that every pass goes through the daemon again."""
        m = self.mount(dc, ["cache=none"])
        try:
            d = os.path.join(m.path, f["name"])
            names = sorted(os.listdir(d))
            peaks = []
            t0 = time.monotonic()
            for k in range(10):
                for n in names:
                    with open(os.path.join(d, n), "rb") as fh:
                        while fh.read(1 << 20):
                            pass
                        # or the next pass is served by the kernel's page
                        # cache and never reaches the daemon
                        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                peaks.append(m.peak_rss())
            rec_counters = m.counters()
            self.record(f["name"], run, "rss_passes", rss_1x=peaks[0], rss_10x=peaks[-1],
                        rss_each=peaks, seconds=time.monotonic() - t0,
                        fetched_bytes=rec_counters.get("cache.body_bytes_fetched"))
            if (rec_counters.get("cache.body_bytes_fetched") or 0) < 9 * f["bytes"]:
                self.fail("%s run %d: reading the folder 10x fetched %s bytes, not 10x %d"
                          % (f["name"], run, rec_counters.get("cache.body_bytes_fetched"),
                             f["bytes"]))
            log("  peak RSS reading the folder (cache=none), after each of 10 passes: %s MB"
                % ", ".join("%.0f" % (p / MB) for p in peaks))
        finally:
            self.unmount(m)

    def m_slow(self, dc, f, run, compress):
        """Through the loopback proxy as a slow link (20 ms round trip,
        100 Mbit/s): the first ls -l of the small-message folder, a cold
        cp -a of the big one. Wire bytes are what crossed the proxy."""
        z = "compress=yes" if compress else "compress=no"
        zs = "_z" if compress else ""
        with Proxy("127.0.0.1", dc.port_imaps) as px:
            if f["kind"] == "small":
                # What the link adds is measured against the same proxy
                # with the link off (no delay, no rate), not against a
                # direct connection: the proxy is a Python process on the
                # same two CPUs, and its own cost is not the link's.
                px.delay, px.rate = 0.0, 0
                if not compress:
                    local = raw_fetch(dc, f["name"], self.args.timeout, LISTING_ITEMS,
                                      port=px.port)[0]
                base = self.mount(dc, [z], port=px.port)
                try:
                    secs, rc, _, err = run_timed(
                        ["ls", "-l", os.path.join(base.path, f["name"])], self.args.timeout)
                    self.record(f["name"], run, "slow_ls_base" + zs, seconds=secs, rc=rc)
                    if rc != 0:
                        self.fail("%s run %d: ls -l through the proxy (%s) exited %s: %s"
                                  % (f["name"], run, z, rc, err))
                    log("  through the proxy without the link, %s: ls -l %.2f s" % (z, secs))
                finally:
                    self.unmount(base)
            px.delay, px.rate = SLOW_DELAY, SLOW_RATE
            if f["kind"] == "small" and not compress:
                # What the link costs a client that asks for the same
                # listing data in one round trip: the price of its bytes.
                w0 = px.server_bytes
                linked = raw_fetch(dc, f["name"], self.args.timeout, LISTING_ITEMS,
                                   port=px.port)[0]
                self.record(f["name"], run, "slow_ls_raw", seconds=linked,
                            local_seconds=local, wire_bytes=px.server_bytes - w0)
                log("  slow link: a raw client's listing fetch %.2f s (%.2f s without the "
                    "link), %.1f MB over the wire" % (linked, local, (px.server_bytes - w0) / MB))
            elif f["kind"] != "small" and not compress:
                # The ceiling of the copy below, and the check that the
                # emulated link gives its rate: the whole folder, fetched
                # by a raw client over the same link.
                w0 = px.server_bytes
                linked = raw_fetch(dc, f["name"], self.args.timeout, port=px.port)[0]
                self.record(f["name"], run, "slow_cp_raw", seconds=linked,
                            wire_bytes=px.server_bytes - w0,
                            mbps=f["bytes"] / MB / linked)
                log("  slow link: a raw client's fetch of the folder %.2f s, %.1f MB over "
                    "the wire" % (linked, (px.server_bytes - w0) / MB))
            m = self.mount(dc, [z], port=px.port)
            try:
                src = os.path.join(m.path, f["name"])
                w0, c0 = px.server_bytes, m.counters()
                if f["kind"] == "small":
                    what, argv = "slow_ls", ["ls", "-l", src]
                else:
                    dst = os.path.join(self.workdir, "slow-%s-%d" % (f["name"], run))
                    what, argv = "slow_cp", ["cp", "-a", src, dst]
                secs, rc, _, err = run_timed(argv, self.args.timeout)
                wire = px.server_bytes - w0
                rec = self.record(f["name"], run, what + zs,
                                  seconds=secs, rc=rc, wire_bytes=wire,
                                  counters=delta(c0, m.counters()),
                                  mbps=f["bytes"] / MB / secs)
                if rc != 0:
                    self.fail("%s run %d: %s (%s) exited %s: %s" % (f["name"], run, what,
                                                                    z, rc, err))
                log("  slow link, %s: %s %.2f s, %.1f MB over the wire, %s" % (
                    z, what, secs, wire / MB, short_counters(rec["counters"])))
            finally:
                self.unmount(m)
                if f["kind"] != "small":
                    shutil.rmtree(os.path.join(self.workdir, "slow-%s-%d" % (f["name"], run)),
                                  ignore_errors=True)

    def _grep(self, path, f, run, what, m=None):
        c0 = m.counters() if m else None
        secs, rc, out, err = run_timed(["grep", "-rl", "NEEDLE", path], self.args.timeout,
                                       capture=True)
        found = len([line for line in (out or b"").splitlines() if line])
        rec = self.record(f["name"], run, what, seconds=secs, rc=rc, found=found,
                          expected=f["needles"])
        if m:
            rec["counters"] = delta(c0, m.counters())
        if rc not in (0, 1):
            self.fail("%s run %d: %s: grep exited %s: %s" % (f["name"], run, what, rc, err))
        if found != f["needles"]:
            self.fail("%s run %d: %s found %d files with NEEDLE, expected %d"
                      % (f["name"], run, what, found, f["needles"]))
        return rec

    def m_grep(self, dc, f, run):
        m = self.mount(dc)
        try:
            d = os.path.join(m.path, f["name"])
            r1 = self._grep(d, f, run, "grep_cold", m)
            r1["mount_seconds"] = m.mount_seconds
            r2 = self._grep(d, f, run, "grep_warm", m)
            log("  grep -rl: cold %.2f s (%d found) %s; warm %.2f s %s" % (
                r1["seconds"], r1["found"], short_counters(r1["counters"]), r2["seconds"],
                short_counters(r2["counters"])))
        finally:
            self.unmount(m)
        # A read-only mount: no OPEN or RELEASE per file (fs/ops.c).
        m = self.mount(dc, ["ro"])
        try:
            d = os.path.join(m.path, f["name"])
            r1 = self._grep(d, f, run, "grep_cold_ro", m)
            r2 = self._grep(d, f, run, "grep_warm_ro", m)
            log("  grep -rl, -o ro: cold %.2f s %s; warm %.2f s %s" % (
                r1["seconds"], short_counters(r1["counters"]), r2["seconds"],
                short_counters(r2["counters"])))
        finally:
            self.unmount(m)

    def m_mbsync(self, dc, f, run, exe, version):
        top = os.path.join(self.workdir, "mbsync-%s-%d" % (f["name"], run))
        md = os.path.join(top, "Maildir")
        os.makedirs(md)
        rc_path = os.path.join(top, "mbsyncrc")
        with open(rc_path, "w") as fh:
            fh.write(mbsync_config(dc, version, md, f["name"]))
        try:
            secs, rc, _, err = run_timed([exe, "-q", "-c", rc_path, "bench"],
                                         self.args.timeout, cwd=top)
            n, size = maildir_stats(os.path.join(md, f["name"]))
            if rc != 0:
                self.record(f["name"], run, "mbsync_failed", seconds=secs, rc=rc, files=n)
                self.fail("%s run %d: mbsync exited %s: %s" % (f["name"], run, rc,
                                                               err.strip()))
                return
            rec = self.record(f["name"], run, "mbsync", seconds=secs, rc=rc,
                              mbps=f["bytes"] / MB / secs, files=n, maildir_bytes=size)
            if n != f["n"]:
                self.fail("%s run %d: mbsync stored %d messages, expected %d"
                          % (f["name"], run, n, f["n"]))
            g = self._grep(os.path.join(md, f["name"]), f, run, "grep_mbsync")
            log("  mbsync: %.2f s, %.1f MB/s; grep over its Maildir %.2f s" % (
                secs, rec["mbps"], g["seconds"]))
        finally:
            shutil.rmtree(top, ignore_errors=True)

    def step(self, fn, *a):
        """Run one measurement; an exception is a failure of that cell, the
        benchmark goes on."""
        try:
            fn(*a)
        except Exception as e:
            self.fail("%s %s run %s: %s: %s" % (fn.__name__[2:], a[1]["name"], a[2],
                                                type(e).__name__, e))

    # -- the whole run
    def run(self):
        a = self.args
        if not os.access(a.imapfs, os.X_OK):
            raise BenchError("imapfs not found at %s (build it, or pass --imapfs)" % a.imapfs)
        if not os.path.exists("/dev/fuse"):
            raise BenchError("/dev/fuse is missing")
        if fixture.find_program("dovecot") is None:
            raise BenchError("dovecot is not installed (apt-get install dovecot-imapd)")
        mb_exe, mb_version = mbsync_version()
        if not mb_exe:
            msg = "mbsync not installed (apt-get install isync): mbsync cells left empty"
            log(msg)
            self.notes.append(msg)
        self.workdir = tempfile.mkdtemp(prefix="imapfs-bench-", dir=a.work_dir)
        specs = [("Bench5k", "large", a.large_n), ("Bench50k", "small", a.small_n)]
        if a.only:
            specs = [s for s in specs if s[0] in a.only]
        self.folders = []
        self.machine = machine_info(fixture.find_program("dovecot"))
        try:
            with fixture.Dovecot() as dc:
                log("dovecot on 127.0.0.1:%d (%s)" % (dc.port_imaps, dc.dir))
                for name, kind, n in specs:
                    c = benchcorpus.load(kind, n, a.corpus_cache, log=log)
                    t0 = time.monotonic()
                    dc.populate_maildir(name, c.messages)
                    log("%s: %d messages written to the Maildir and indexed in %.1f s"
                        % (name, n, time.monotonic() - t0))
                    self.folders.append({"name": name, "kind": kind, "n": n,
                                         "bytes": c.total_bytes, "needles": len(c.needles),
                                         "populate_seconds": time.monotonic() - t0})
                    del c
                for f in self.folders:
                    # Untimed warm-up: the server's page cache and index.
                    self.step(self.m_warmup, dc, f, 0)
                for run in range(1, a.runs + 1):
                    for f in self.folders:
                        log("%s run %d/%d" % (f["name"], run, a.runs))
                        self.step(self.m_raw, dc, f, run)
                        self.step(self.m_cp, dc, f, run)
                        self.step(self.m_ls, dc, f, run)
                        self.step(self.m_grep, dc, f, run)
                        if f["kind"] == "large":
                            self.step(self.m_rss, dc, f, run)
                        if not a.no_slow:
                            for z in (False, True):
                                self.step(self.m_slow, dc, f, run, z)
                        if mb_exe:
                            self.step(self.m_mbsync, dc, f, run, mb_exe, mb_version)
                self.cleanup()
        finally:
            self.cleanup()
            left = mounted_under(self.workdir)
            if left:
                log("still mounted, leaving %s: %r" % (self.workdir, left))
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)

    # -- results
    def values(self, folder, what, key):
        out = []
        for r in self.records:
            if r["folder"] == folder and r["what"] == what:
                # "counters.imap.commands": the counter names contain dots.
                first, _, rest = key.partition(".")
                v = r.get(first)
                if rest:
                    v = v.get(rest) if isinstance(v, dict) else None
                if v is not None:
                    out.append(v)
        return out

    def med(self, folder, what, key):
        v = self.values(folder, what, key)
        return statistics.median(v) if v else None

    def summary(self):
        rows = []

        def row(folder, what, value, unit, note="", counters="", aim="", key=None):
            rows.append({"folder": folder, "what": what, "median": value, "unit": unit,
                         "note": note, "counters": counters, "aim": aim, "key": key})

        for f in self.folders:
            name = f["name"]
            med = lambda what, key: self.med(name, what, key)
            raw = med("raw", "mbps")
            row(name, "raw UID FETCH 1:* BODY.PEEK[]", raw, "MB/s",
                "%.2f s for %.1f MB; client CPU %.2f s" % (
                    med("raw", "seconds"), f["bytes"] / MB, med("raw", "client_cpu_seconds"))
                if raw else "", key="raw.mbps")
            cp = med("cp", "mbps")
            ratio = cp / raw if cp and raw else None
            row(name, "imapfs cold cp -a", cp, "MB/s",
                ("%.2fx raw; %.2f s" % (ratio, med("cp", "seconds"))) if ratio else "",
                counters_cell(self, name, "cp"),
                aim_cell(ratio, lambda r: r >= 0.9, ">= 0.9x raw"), key="cp.mbps")
            cw = med("cp_warm", "mbps")
            row(name, "imapfs cp -a again, same mount (cached)", cw, "MB/s",
                ("%.2fx raw; %.2f s" % (cw / raw, med("cp_warm", "seconds")))
                if cw and raw else "", counters_cell(self, name, "cp_warm"),
                key="cp_warm.mbps")
            for where in ("other folder", "other folder, raw client", "same folder"):
                v = [r["ms"] for r in self.records if r["folder"] == name and
                     r["what"] == "cat_during_cp" and r["where"] == where and
                     r["ms"] is not None]
                if v:
                    ms = statistics.median(v)
                    row(name, "read one message (%s) during cp -a" % where, ms, "ms",
                        "uncached; the copy still running", "",
                        aim_cell(ms, lambda x: x <= 50, "<= 50 ms")
                        if where == "other folder" else "", key="cat_during_cp.%s" % where)
            rss = med("cp", "peak_rss")
            row(name, "daemon peak RSS after cp -a", rss / MB if rss else None, "MB",
                "VmHWM", key="cp.peak_rss")
            for z, label in (("", "no compression"), ("_z", "COMPRESS=DEFLATE")):
                if f["kind"] == "small":
                    sl = med("slow_ls" + z, "seconds")
                    wire = med("slow_ls" + z, "wire_bytes")
                    local = med("slow_ls_base" + z, "seconds")
                    raw_link = med("slow_ls_raw", "seconds")
                    raw_local = med("slow_ls_raw", "local_seconds")
                    raw_wire = med("slow_ls_raw", "wire_bytes")
                    if sl and local and raw_link and raw_local and raw_wire:
                        # What the link adds to the same first ls -l through
                        # the proxy without it (that one already holds the
                        # server's, the kernel's and the proxy's share), less
                        # the transfer of its bytes at the pace this link gave
                        # a raw client's one-round-trip fetch of the same
                        # data: waiting.
                        per_byte = max(0.0, raw_link - raw_local) / raw_wire
                        waiting = (sl - local - wire * per_byte) / (2 * SLOW_DELAY)
                        row(name, "slow link: ls -l, first (%s)" % label, sl, "s",
                            "%.1f MB over the wire; %+.2f s over the link off "
                            "(a raw client's fetch of the same data: %+.2f s for %.1f MB) "
                            "= %s round trips' worth beyond the transfer"
                            % (wire / MB, sl - local, raw_link - raw_local, raw_wire / MB,
                               "%.1f" % waiting if waiting >= 0 else
                               "no (%.1f: less than the raw client's)" % waiting),
                            counters_cell(self, name, "slow_ls" + z),
                            aim_cell(waiting, lambda x: x <= 3, "<= 3 round trips + transfer"),
                            key="slow_ls%s.seconds" % z)
                else:
                    sc = med("slow_cp" + z, "mbps")
                    wire = med("slow_cp" + z, "wire_bytes")
                    raw_sc = med("slow_cp_raw", "mbps")
                    if sc:
                        ratio = sc / (SLOW_RATE / MB)
                        note = "%.2fx the link rate; %.1f MB over the wire" % (ratio, wire / MB)
                        if raw_sc and not z:
                            note += "; a raw client's fetch over the link: %.1f MB/s (%.2fx)" % (
                                raw_sc, raw_sc / (SLOW_RATE / MB))
                        row(name, "slow link: cp -a, cold (%s)" % label, sc, "MB/s", note,
                            counters_cell(self, name, "slow_cp" + z),
                            aim_cell(ratio, lambda x: x >= 0.8, ">= 0.8x link"),
                            key="slow_cp%s.mbps" % z)
            r1, r10 = med("rss_passes", "rss_1x"), med("rss_passes", "rss_10x")
            if r1 and r10:
                # After two passes too: a step there that stays flat is not
                # growth with the bytes (FUSE threads that first run in the
                # second pass, see README).
                r2 = statistics.median(
                    [r["rss_each"][1] for r in self.records if r["folder"] == name
                     and r["what"] == "rss_passes" and len(r.get("rss_each") or []) > 1
                     and r["rss_each"][1]] or [0])
                row(name, "daemon peak RSS, folder read 10x (cache=none)", r10 / MB, "MB",
                    "%.0f MB after one pass%s" % (
                        r1 / MB, ", %.0f after two" % (r2 / MB) if r2 else ""), "",
                    aim_cell(r10 / r1, lambda x: x <= 1.1, "no growth (<= 1.1x)"),
                    key="rss_passes.rss_10x")
            lr = med("ls_cold", "peak_rss")
            if lr:
                limit = 32 + 0.3 * f["n"] / 1000  # MB
                row(name, "daemon peak RSS after the first ls -l", lr / MB, "MB",
                    "%d messages" % f["n"], "",
                    aim_cell(lr / MB, lambda x: x <= limit, "<= %.0f MB" % limit),
                    key="ls_cold.peak_rss")
            lc = med("ls_cold", "seconds")
            aim = ""
            if f["kind"] == "small" and f["n"] >= 50000:
                aim = aim_cell(lc, lambda s: s <= 2.0, "<= 2 s")
            row(name, "imapfs ls -l, first (fresh mount)", lc, "s",
                "%d entries" % f["n"], counters_cell(self, name, "ls_cold"), aim,
                key="ls_cold.seconds")
            lw_cmds = med("ls_warm", "counters.imap.commands")
            lw, ll = med("ls_warm", "seconds"), med("ls_local", "seconds")
            row(name, "imapfs ls -l, second (same mount)", lw, "s",
                ("%.2fx a local directory (%.3f s)" % (lw / ll, ll)) if lw and ll else "",
                counters_cell(self, name, "ls_warm"),
                aim_cell(lw / ll if lw and ll and lw_cmds == 0 else None, lambda r: r <= 1.2,
                         "0 commands, <= 1.2x local"), key="ls_warm.seconds")
            gc = med("grep_cold", "seconds")
            mbs = med("mbsync", "seconds")
            gm = med("grep_mbsync", "seconds")
            base = mbs + gm if mbs and gm else None  # sync, then grep the Maildir
            found = self.values(name, "grep_cold", "found") + self.values(name, "grep_warm",
                                                                          "found")
            ok = found and all(x == f["needles"] for x in found)
            row(name, "imapfs grep -rl NEEDLE, cold", gc, "s",
                "found %s of %d%s" % ("/".join(str(x) for x in sorted(set(found))) or "-",
                                      f["needles"], "" if ok else " WRONG")
                + (("; %.2fx mbsync sync + grep" % (gc / base)) if gc and base else ""),
                counters_cell(self, name, "grep_cold"),
                aim_cell(gc / base if gc and base else None, lambda r: r <= 0.5,
                         "<= 0.5x mbsync + grep"), key="grep_cold.seconds")
            for sfx, how in (("", ""), ("_ro", ", -o ro")):
                gw = med("grep_warm" + sfx, "seconds")
                gw_cmds = med("grep_warm" + sfx, "counters.imap.commands")
                if sfx:
                    gc = med("grep_cold" + sfx, "seconds")
                    row(name, "imapfs grep -rl NEEDLE, cold" + how, gc, "s",
                        ("%.2fx mbsync sync + grep" % (gc / base)) if gc and base else "",
                        counters_cell(self, name, "grep_cold" + sfx),
                        aim_cell(gc / base if gc and base else None, lambda r: r <= 0.5,
                                 "<= 0.5x mbsync + grep"), key="grep_cold%s.seconds" % sfx)
                row(name, "imapfs grep -rl NEEDLE, warm" + how, gw, "s",
                    ("%.2fx grep over the mbsync Maildir" % (gw / gm)) if gw and gm else "",
                    counters_cell(self, name, "grep_warm" + sfx),
                    aim_cell(gw / gm if gw and gm and gw_cmds == 0 else None,
                             lambda r: r <= 2.0, "<= 2x Maildir grep, 0 commands"),
                    key="grep_warm%s.seconds" % sfx)
            mbps = med("mbsync", "mbps")
            row(name, "mbsync full sync (Pull)", mbps, "MB/s",
                ("%.2fx raw; %.2f s" % (mbps / raw, mbs)) if mbps and raw else
                ("" if mbps else "not measured"), key="mbsync.mbps")
            row(name, "grep -rl NEEDLE over mbsync Maildir", med("grep_mbsync", "seconds"),
                "s", "", key="grep_mbsync.seconds")
        return rows

    def report(self, rows):
        m = self.machine
        print()
        print("imapfs benchmark  (%s; median of %d run%s; MB = 10^6 bytes)" % (
            "quick" if self.args.quick else "full", self.args.runs,
            "" if self.args.runs == 1 else "s"))
        print("machine: %s x %s, kernel %s, Dovecot %s, %s, %s" % (
            m["nproc"], m["cpu"], m["kernel"], m["dovecot"].split()[0] if m["dovecot"] else "?",
            (m["mbsync"] or "no mbsync"), m["date"]))
        for f in self.folders:
            print("folder %s: %d messages, %.1f MB, %d contain NEEDLE (written in %.1f s)"
                  % (f["name"], f["n"], f["bytes"] / MB, f["needles"], f["populate_seconds"]))
        header = ("folder", "measurement", "median", "unit", "ratio / notes",
                  "counters (median: cmds/round trips/MB in/fetches+prefetches)", "aim")
        table = [header]
        for r in rows:
            v = r["median"]
            if v is None:
                cell = "-"
            elif r["unit"] == "s" and v < 1:
                cell = "%.3f" % v
            else:
                cell = "%.2f" % v if v < 100 else "%.0f" % v
            table.append((r["folder"], r["what"], cell, r["unit"], r["note"], r["counters"],
                          r["aim"]))
        widths = [max(len(str(t[i])) for t in table) for i in range(len(header))]
        for i, t in enumerate(table):
            print("  ".join(str(c).ljust(w) if j != 2 else str(c).rjust(w)
                            for j, (c, w) in enumerate(zip(t, widths))).rstrip())
            if i == 0:
                print("  ".join("-" * w for w in widths))
        print("load average: %s at start, %s at end (other work on this machine skews "
              "the times)" % (m.get("loadavg_start"), m.get("loadavg_end")))
        if m.get("steal_pct") is not None:
            print("CPU time taken by other guests of the hypervisor (steal) during the "
                  "run: %.1f%%" % m["steal_pct"])
        for n in self.notes:
            print("note: " + n)
        if self.failures:
            print("\nCORRECTNESS FAILURES (%d):" % len(self.failures))
            for fl in self.failures:
                print("  - " + fl)


def counters_cell(bench, folder, what):
    med = lambda k: bench.med(folder, what, "counters." + k)
    cmds = med("imap.commands")
    if cmds is None:
        return ""
    rt = med("imap.round_trips")
    bi = med("imap.bytes_in")
    bf = med("cache.body_fetches")
    pf = med("cache.prefetches")
    return "%s/%s/%s/%s+%s" % (fmt(cmds), fmt(rt), "%.1f" % (bi / MB) if bi is not None
                               else "-", fmt(bf), fmt(pf))


def fmt(v):
    if v is None:
        return "-"
    return "%d" % v if float(v).is_integer() else "%.1f" % v


def aim_cell(value, test, text):
    if value is None:
        return ""
    return ("met: " if test(value) else "MISSED: ") + text


def short_counters(c):
    g = lambda k: c.get(k, 0)
    return "cmds %d rt %d in %.1f MB fetch %d+%d range %d" % (
        g("imap.commands"), g("imap.round_trips"), g("imap.bytes_in") / MB,
        g("cache.body_fetches"), g("cache.prefetches"), g("cache.range_fetches"))


def default_imapfs():
    for b in ("build", "build-h6"):
        p = os.path.join(ROOT, b, "fs", "imapfs")
        if os.access(p, os.X_OK):
            return p
    return os.path.join(ROOT, "build", "fs", "imapfs")


def report_from_json(path):
    with open(path) as f:
        saved = json.load(f)
    cfg = saved["config"]
    b = Bench(argparse.Namespace(quick=cfg["quick"], runs=cfg["runs"]))
    b.machine, b.folders = saved["machine"], saved["folders"]
    b.records, b.failures, b.notes = saved["runs"], saved["failures"], saved["notes"]
    b.report(b.summary())
    return 1 if b.failures else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description="imapfs benchmark against a private Dovecot "
                                 "(see tests/bench/README.md)")
    ap.add_argument("--imapfs", default=None, help="the imapfs binary (default "
                    "build/fs/imapfs)")
    ap.add_argument("--quick", action="store_true",
                    help="smaller folders (500 and 5,000 messages) for a smoke run")
    ap.add_argument("--runs", type=int, default=3, help="runs per measurement (median)")
    ap.add_argument("--json", default=None, help="where to write the JSON (default: "
                    "bench-results.json in the imapfs build dir)")
    ap.add_argument("--large-n", type=int, default=None, help="messages in Bench5k")
    ap.add_argument("--small-n", type=int, default=None, help="messages in Bench50k")
    ap.add_argument("--only", action="append", choices=["Bench5k", "Bench50k"],
                    help="measure only this folder (repeatable)")
    ap.add_argument("--work-dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                    help="tmpfs for mountpoints, cache_dirs, cp -a and mbsync targets "
                    "(default /dev/shm)")
    ap.add_argument("--corpus-cache", default=os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "imapfs-bench"),
        help="where generated messages are kept between runs (default "
        "~/.cache/imapfs-bench; '' to not cache)")
    ap.add_argument("--no-slow", action="store_true",
                    help="skip the slow-link measurements (20 ms, 100 Mbit/s proxy)")
    ap.add_argument("--timeout", type=float, default=1800,
                    help="seconds before one command is killed (default 1800)")
    ap.add_argument("--report", metavar="JSON", default=None,
                    help="only print the table of an earlier run's JSON")
    a = ap.parse_args(argv)
    if a.report:
        return report_from_json(a.report)
    a.imapfs = os.path.abspath(a.imapfs or default_imapfs())
    if a.large_n is None:
        a.large_n = 500 if a.quick else 5000
    if a.small_n is None:
        a.small_n = 5000 if a.quick else 50000
    if a.runs < 1:
        ap.error("--runs must be at least 1")
    if a.json is None:
        a.json = os.path.join(os.path.dirname(os.path.dirname(a.imapfs)),
                              "bench-results.json")
    b = Bench(a)
    rc = 0
    try:
        b.run()
    except BenchError as e:
        print("bench.py: %s" % e, file=sys.stderr)
        rc = 2
    except KeyboardInterrupt:
        print("bench.py: interrupted", file=sys.stderr)
        rc = 130
    if not getattr(b, "folders", None):
        return rc or 2
    b.machine["loadavg_end"] = loadavg()
    b.machine["steal_pct"] = steal_share(b.machine.get("cpu_start"), cpu_times())
    rows = b.summary()
    b.report(rows)
    result = {"version": 1, "machine": b.machine,
              "config": {"quick": a.quick, "runs": a.runs, "imapfs": a.imapfs,
                         "work_dir": a.work_dir, "mb": MB},
              "folders": b.folders, "summary": rows, "runs": b.records,
              "failures": b.failures, "notes": b.notes}
    tmp = a.json + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    os.replace(tmp, a.json)
    print("\nJSON: %s" % a.json)
    if b.failures and rc == 0:
        rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
