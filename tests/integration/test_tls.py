"""TLS and STARTTLS on the wire: no credential byte leaves before the
server's certificate is verified, strict STARTTLS fails closed, and the
password never shows in the tool's output, even with the protocol trace on.

Run as `python3 test_tls.py IMAP_TOOL` (no Dovecot needed). Every case runs
imap-tool against a small fake IMAP server written here (Python's ssl
module, 127.0.0.1, a free port), through tests/fixture/proxy.py, which
records every byte the client sent. Certificates are made per run with the
openssl command line tool (tests/fixture/certs.py) in a temporary directory
that is removed at the end.

Host-name cases that need a name resolving to 127.0.0.1 ("mail.example.org",
"a.b.example.org", ...) run imap-tool in a private mount namespace
(`unshare -rm`) where a generated hosts file is bind-mounted over
/etc/hosts; they are skipped when that is not possible.
"""

import base64
import datetime
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import warnings

# The TLS 1.1 case uses deprecated constants on purpose.
warnings.filterwarnings("ignore", category=DeprecationWarning,
                        message=".*TLSv1_1.*")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fixture"))
from certs import Pki, verify  # noqa: E402
from proxy import Proxy, tls_record_types  # noqa: E402

TOOL = sys.argv[1] if len(sys.argv) > 1 else None

# ImapErrorCode values (imap/imap.h)
E_TLS, E_STARTTLS, E_AUTH = 3, 4, 5

USER = "alice@example.org"
PASSWORD = "Zq7-LIGHTHOUSE-pw-5309-xkcd"   # distinctive: easy to spot
# For LOGIN, passwords that need a quoted string and a literal.
PASSWORD_QUOTED = 'Zq7 "light\\house" 5309'
PASSWORD_8BIT = "Zq7-\u00e9t\u00e9-\u2603-5309"
IO_TIMEOUT = 10          # seconds a fake server waits for the client
TOOL_TIMEOUT_MS = 5000   # --timeout given to imap-tool

count = 0
failures = []
outputs = []   # (what, stdout+stderr) of every imap-tool run
TMP = None     # per-run directory
NS_HOSTS = None  # hosts file for the private namespace, if usable


def check(cond, what):
    global count
    count += 1
    print(("ok" if cond else "not ok") + " %d - %s" % (count, what))
    sys.stdout.flush()
    if not cond:
        failures.append(what)
    return cond


def skip(what, why):
    global count
    count += 1
    print("ok %d - %s # SKIP %s" % (count, what, why))
    sys.stdout.flush()


# ------------------------------------------------------------ secret forms

def b64_fragments(secret):
    """The base64 characters that depend only on @secret, for each of the
    three alignments it can have in a base64 stream."""
    out = []
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + secret).decode()
        first = (k + 2) // 3           # first group made of secret bytes only
        last = (k + len(secret)) // 3  # groups before this one are full
        if last > first:
            out.append(enc[4 * first:4 * last])
    return out


def secret_forms(password=PASSWORD):
    """Every form in which @password could leak: raw, IMAP-quoted, base64
    (any alignment) and the exact SASL PLAIN message."""
    pw = password.encode()
    quoted = pw.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    plain_ir = base64.b64encode(b"\0" + USER.encode() + b"\0" + pw)
    forms = {"password": pw, "quoted password": quoted,
             "SASL PLAIN message": plain_ir}
    for i, frag in enumerate(b64_fragments(pw)):
        forms["base64 password (alignment %d)" % i] = frag.encode()
    return forms


def leaks(data, password=PASSWORD):
    if isinstance(data, str):
        data = data.encode("utf-8", "replace")
    return [name for name, form in secret_forms(password).items()
            if form and form in data]


# ------------------------------------------------------------ fake server

class Session:
    """What one client connection did, as the fake server saw it."""

    def __init__(self):
        self.plain = bytearray()   # raw bytes read before TLS
        self.tls = bytearray()     # bytes read over TLS (decrypted)
        self.handshake = None      # None: not tried; "ok"; or the error
        self.sni = None
        self.commands = []         # (phase, VERB)
        self.auth = []             # (phase, bytes of LOGIN/AUTHENTICATE)
        self.done = threading.Event()

    def verbs(self, phase):
        return [v for p, v in self.commands if p == phase]


class Reader:
    def __init__(self, sock, sink):
        self.sock, self.sink, self.buf = sock, sink, b""

    def recv(self):
        try:
            d = self.sock.recv(65536)
        except (OSError, ValueError):
            d = b""
        self.sink.extend(d)
        return d

    def readline(self):
        while b"\n" not in self.buf:
            d = self.recv()
            if not d:
                return None
            self.buf += d
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def read(self, n):
        while len(self.buf) < n:
            d = self.recv()
            if not d:
                return None
            self.buf += d
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def drain(self):
        if self.buf:
            self.buf = b""
        while self.recv():
            pass


class FakeImap:
    """A scripted IMAP server. mode "implicit": TLS from the first byte;
    mode "plain": plaintext with a scriptable STARTTLS. Apart from the
    script it is as accommodating as possible (answers OK to everything,
    accepts any login, offers TLS to anyone who sends a ClientHello), so
    that a client that does not fail closed gets far enough to show it.
    """

    def __init__(self, mode, cert=None, greeting=None,
                 caps=b"IMAP4rev1 AUTH=PLAIN SASL-IR",
                 caps_plain=b"IMAP4rev1 STARTTLS LOGINDISABLED",
                 starttls_reply=b"{tag} OK Begin TLS negotiation now\r\n",
                 after_starttls="tls", second_segment=None,
                 tls_max=None, login_ok=True, hangup=False):
        self.mode, self.caps, self.caps_plain = mode, caps, caps_plain
        self.starttls_reply, self.after = starttls_reply, after_starttls
        self.second_segment, self.login_ok = second_segment, login_ok
        self.hangup = hangup  # close each connection as soon as accepted
        if greeting is None:
            c = caps if mode == "implicit" else caps_plain
            greeting = b"* OK [CAPABILITY " + c + b"] fake IMAP ready\r\n"
        self.greeting = greeting
        self.ctx = None
        if cert is not None:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            if tls_max is not None:
                self.ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
                self.ctx.maximum_version = tls_max
                self.ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            self.ctx.load_cert_chain(cert.chain, cert.key)
            self.ctx.sni_callback = self._sni
        self.sessions = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _sni(self, sslsock, name, ctx):
        s = getattr(sslsock, "_fake_session", None)
        if s is not None:
            s.sni = name

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass

    def wait(self, timeout=IO_TIMEOUT):
        """Wait until every session ended (the client closed)."""
        end = time.monotonic() + timeout
        with self.lock:
            sessions = list(self.sessions)
        for s in sessions:
            s.done.wait(max(0.0, end - time.monotonic()))
        return sessions

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            s = Session()
            with self.lock:
                self.sessions.append(s)
            threading.Thread(target=self._session, args=(c, s),
                             daemon=True).start()

    def _handshake(self, conn, s):
        """TLS as the server; the SSL socket, or None (s.handshake says
        why). After a failure, whatever the SSL socket still yields is
        recorded in s.tls: it must be nothing."""
        tls = None
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True,
                                       do_handshake_on_connect=False)
            tls._fake_session = s
            tls.do_handshake()
            s.handshake = "ok"
            return tls
        except (OSError, ValueError) as e:
            s.handshake = "failed: %s" % (getattr(e, "reason", None) or e)
        if tls is not None:
            Reader(tls, s.tls).drain()
        return None

    def _session(self, conn, s):
        conn.settimeout(IO_TIMEOUT)
        try:
            if self.hangup:
                return
            if self.mode == "implicit":
                tls = self._handshake(conn, s)
                if tls is not None:
                    tls.sendall(self.greeting)
                    self._dialog(tls, Reader(tls, s.tls), s, "tls")
            else:
                conn.sendall(self.greeting)
                self._dialog(conn, Reader(conn, s.plain), s, "plain")
        except (OSError, ValueError):
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass
            s.done.set()

    def _command(self, rd, sock):
        """One command with its literals; None at EOF."""
        out = b""
        while True:
            line = rd.readline()
            if line is None:
                return None
            out += line
            m = re.search(rb"\{(\d+)(\+?)\}\r?\n$", line)
            if not m:
                return out
            if not m.group(2):
                sock.sendall(b"+ go ahead\r\n")
            data = rd.read(int(m.group(1)))
            if data is None:
                return None
            out += data

    def _dialog(self, sock, rd, s, phase):
        while True:
            cmd = self._command(rd, sock)
            if cmd is None:
                return
            words = cmd.split(b"\r\n", 1)[0].split(b" ")
            tag = words[0]
            verb = words[1].upper().decode("latin-1") if len(words) > 1 else ""
            s.commands.append((phase, verb))
            if verb == "CAPABILITY":
                caps = self.caps if phase == "tls" else self.caps_plain
                sock.sendall(b"* CAPABILITY " + caps + b"\r\n" + tag +
                             b" OK done\r\n")
            elif verb == "STARTTLS" and phase == "plain":
                self._starttls(sock, rd, s, tag)
                return
            elif verb in ("LOGIN", "AUTHENTICATE"):
                if verb == "AUTHENTICATE" and len(words) < 4:
                    sock.sendall(b"+ \r\n")
                    more = rd.readline()
                    if more is None:
                        return
                    cmd += more
                s.auth.append((phase, cmd))
                if self.login_ok:
                    sock.sendall(tag + b" OK [CAPABILITY " + self.caps +
                                 b"] logged in\r\n")
                else:
                    sock.sendall(tag + b" NO [AUTHENTICATIONFAILED] "
                                 b"Authentication failed.\r\n")
            elif verb == "LOGOUT":
                sock.sendall(b"* BYE logging out\r\n" + tag + b" OK bye\r\n")
            else:
                sock.sendall(tag + b" OK done\r\n")

    def _starttls(self, sock, rd, s, tag):
        sock.sendall(self.starttls_reply.replace(b"{tag}", tag))
        if self.second_segment is not None:
            time.sleep(0.002)
            sock.sendall(self.second_segment)
        if self.after == "close":
            # Hang up at once; the session ends when the socket closes.
            sock.shutdown(socket.SHUT_RDWR)
            return
        if self.after == "plaintext":
            # Wait for the ClientHello, answer with plaintext, and keep
            # recording whatever the client sends afterwards.
            rd.recv()
            sock.sendall(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] this is "
                         b"not a TLS ServerHello\r\n")
            rd.drain()
            return
        # "tls": a handshake if the client starts one, else carry on in
        # plaintext (a client that ignored the problem shows its LOGIN).
        if rd.buf:
            self._dialog(sock, rd, s, "plain")
            return
        try:
            first = sock.recv(1, socket.MSG_PEEK)
        except OSError:
            first = b""
        if not first:
            return
        if first[0] != 0x16:
            self._dialog(sock, rd, s, "plain")
            return
        tls = self._handshake(sock, s)
        if tls is not None:
            self._dialog(tls, Reader(tls, s.tls), s, "tls")


# ------------------------------------------------------------ running the tool

class Run:
    def __init__(self, what, proc_out, proc_err, rc):
        self.what, self.out, self.err, self.rc = what, proc_out, proc_err, rc
        self.result = None
        for line in proc_out.splitlines():
            if line.startswith("{"):
                try:
                    self.result = json.loads(line)
                except ValueError:
                    pass
        self.error = (self.result or {}).get("error")

    @property
    def ok(self):
        return self.result is not None and self.error is None

    def code(self):
        return self.error.get("code") if self.error else None

    def message(self):
        return self.error.get("message", "") if self.error else ""

    def seen(self):
        if self.result is None:
            how = "rc %s" % self.rc
            if isinstance(self.rc, int) and self.rc < 0:
                how = "killed by %s (rc %d)" % (
                    signal.Signals(-self.rc).name, self.rc)
            return "no result line: %s, stderr %r" % (
                how, self.err.strip()[-300:])
        if self.error is None:
            return "connected"
        return "code %s: %s" % (self.code(), self.message())


def password_file(password):
    path = os.path.join(TMP, "pw-%d" % abs(hash(password)))
    if not os.path.exists(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(password + "\n")
    return path


def tool(what, host, port, tls, cafile, auth=None, debug=False,
         namespace=False, password=PASSWORD):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("IMAPFS_") and k != "IMAP_TOOL_DEBUG"}
    if debug:
        env["IMAP_TOOL_DEBUG"] = "1"
    args = [TOOL, "--host", host, "--port", str(port), "--tls", tls,
            "--cafile", cafile or "", "--user", USER,
            "--password-file", password_file(password),
            "--timeout", str(TOOL_TIMEOUT_MS)]
    if auth:
        args += ["--auth", auth]
    args.append("connect")
    if namespace:
        args = ns_prefix() + args
    try:
        p = subprocess.run(args, capture_output=True, env=env, timeout=30)
        out = p.stdout.decode("utf-8", "replace")
        err = p.stderr.decode("utf-8", "replace")
        rc = p.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode("utf-8", "replace")
        err = (e.stderr or b"").decode("utf-8", "replace") + " [killed]"
        rc = "timeout"
    outputs.append((what, out + err, password))
    return Run(what, out, err, rc)


def ns_prefix():
    return ["unshare", "-rm", "sh", "-c",
            'mount --bind "$0" /etc/hosts && exec "$@"', NS_HOSTS]


def setup_namespace():
    """A hosts file mapping the test names to 127.0.0.1, usable with
    ns_prefix(); None if private namespaces are not available here."""
    global NS_HOSTS
    if not shutil.which("unshare"):
        return "no unshare"
    NS_HOSTS = os.path.join(TMP, "hosts")
    with open(NS_HOSTS, "w") as f:
        f.write("127.0.0.1 localhost\n"
                "127.0.0.1 mail.example.org a.b.example.org example.org "
                "a.localhost\n")
    try:
        p = subprocess.run(ns_prefix() + ["getent", "hosts",
                                          "a.b.example.org"],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        NS_HOSTS = None
        return str(e)
    if p.returncode != 0 or "127.0.0.1" not in p.stdout:
        NS_HOSTS = None
        return "unshare -rm with a bind-mounted /etc/hosts failed: %s" % (
            p.stderr.strip() or p.stdout.strip())
    return None


def resolves_to_loopback(name):
    try:
        return all(ai[4][0] == "127.0.0.1" for ai in
                   socket.getaddrinfo(name, 1, socket.AF_INET))
    except OSError:
        return False


# ------------------------------------------------------------ checks

def wire_summary(types):
    names = {20: "ccs", 21: "alert", 22: "handshake", 23: "APPDATA"}
    return "[" + ",".join(names.get(t, str(t)) for t in types) + "]"


def check_refused(what, run, codes, reasons):
    msg = run.message().lower()
    good = (run.error is not None and run.code() in codes and
            any(r in msg for r in reasons))
    return check(good, "%s: refused (expected code %s and a message naming "
                 "%s; seen %s)" % (what, "/".join(map(str, codes)),
                                   " or ".join(repr(r) for r in reasons),
                                   run.seen()))


def check_nothing_after_handshake(what, proxy, server):
    """Implicit TLS refused: the client sent only handshake/alert records,
    the server's SSL socket read nothing, and no secret is on the wire."""
    sessions = server.wait()
    wire = proxy.client_bytes()
    types = tls_record_types(wire)
    bad = []
    if not types or types[0] != 22:
        bad.append("no ClientHello first")
    if not set(types) <= {20, 21, 22}:
        bad.append("record types beyond handshake/alert")
    if any(s.handshake == "ok" for s in sessions):
        bad.append("a handshake completed")
    app = b"".join(bytes(s.tls) for s in sessions)
    if app:
        bad.append("server read %r" % app[:80])
    cmds = [c for s in sessions for c in s.commands]
    if cmds:
        bad.append("server got commands %s" % cmds)
    lk = leaks(wire)
    if lk:
        bad.append("secret on the wire: %s" % lk)
    check(not bad, "%s: no application data left the client (expected "
          "only handshake/alert records and nothing read by the server; "
          "seen wire %s, server handshake %s, server read %d bytes, "
          "%d connection(s))%s" % (
              what, wire_summary(types),
              "/".join(str(s.handshake) for s in sessions) or "none",
              len(app), proxy.accepted,
              ("; PROBLEMS: " + "; ".join(bad)) if bad else ""))


def check_logged_in(what, run, proxy, server, sni=None, phase="tls",
                    password=PASSWORD):
    sessions = server.wait()
    check(run.ok, "%s: connects and logs in (expected success; seen %s)"
          % (what, run.seen()))
    auths = [(p, a) for s in sessions for p, a in s.auth]
    creds_ok = [p for p, a in auths if creds_in(a, password)]
    check(creds_ok == [phase],
          "%s: the server got the credentials once, over %s (seen: %s)"
          % (what, phase, [p for p, _ in auths] or "no login"))
    if phase == "tls":
        wire = proxy.client_bytes()
        lk = leaks(wire, password)
        check(not lk, "%s: no secret in clear on the wire (seen %s)"
              % (what, lk or "none"))
    if sni is not False:
        seen = [s.sni for s in sessions if s.handshake == "ok"]
        check(seen == [sni], "%s: SNI (expected %r, seen %r)"
              % (what, sni, seen))


def creds_in(auth_bytes, password):
    pw = password.encode()
    if pw in auth_bytes or \
            pw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') in auth_bytes:
        return True
    for tok in re.split(rb"[\s]+", auth_bytes):
        try:
            if base64.b64decode(tok, validate=True) == \
                    b"\0" + USER.encode() + b"\0" + pw:
                return True
        except ValueError:
            pass
    return False


# ------------------------------------------------------------ certificates

def make_pki():
    pki = Pki(os.path.join(TMP, "pki"))
    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)
    ip = "IP:127.0.0.1"
    c = {}
    c["ca"] = pki.ca("root", "imapfs test root")
    c["other_ca"] = pki.ca("other-root", "imapfs other root")
    c["good"] = pki.leaf("good", c["ca"], san=ip + ",DNS:localhost",
                         cn="localhost")
    c["expired"] = pki.leaf("expired", c["ca"], san=ip,
                            not_before=now - 400 * day,
                            not_after=now - 2 * day)
    c["future"] = pki.leaf("future", c["ca"], san=ip,
                           not_before=now + 30 * day,
                           not_after=now + 400 * day)
    c["mail"] = pki.leaf("mail", c["ca"], san="DNS:mail.example.org",
                         cn="mail.example.org")
    c["other_name"] = pki.leaf("other-name", c["ca"], san="DNS:other.example",
                               cn="other.example")
    c["self"] = pki.self_signed(
        "self", "127.0.0.1",
        "basicConstraints = critical,CA:FALSE\n"
        "keyUsage = critical,digitalSignature\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectAltName = IP:127.0.0.1,DNS:localhost\n")
    c["self"].chain = c["self"].cert
    c["by_other"] = pki.leaf("by-other", c["other_ca"], san=ip)
    c["wild"] = pki.leaf("wild", c["ca"], san="DNS:*.example.org",
                         cn="*.example.org")
    c["partial"] = pki.leaf("partial", c["ca"], san="DNS:m*.example.org",
                            cn="m*.example.org")
    c["wild_localhost"] = pki.leaf("wild-localhost", c["ca"],
                                   san="DNS:*.localhost", cn="*.localhost")
    c["cn_ip"] = pki.leaf("cn-ip", c["ca"], cn="127.0.0.1", san=None)
    c["client_eku"] = pki.leaf("client-eku", c["ca"], san=ip,
                               eku="clientAuth")
    c["inter"] = pki.ca("inter", "imapfs test intermediate", issuer=c["ca"])
    c["chained"] = pki.leaf("chained", c["inter"], san=ip)
    c["notca"] = pki.ca(
        "notca", "not a CA", issuer=c["ca"],
        ext="basicConstraints = critical,CA:FALSE\n"
            "keyUsage = critical,digitalSignature,keyCertSign\n")
    c["by_notca"] = pki.leaf("by-notca", c["notca"], san=ip)
    # The same leaf as "chained", served without its intermediate.
    c["chained_bare"] = Bare(c["chained"])
    return c


class Bare:
    """A certificate served without its intermediates."""

    def __init__(self, cert):
        self.cert, self.key, self.chain = cert.cert, cert.key, cert.cert
        self.issuer = cert.issuer


def check_fixture(c):
    """openssl verify's own opinion of each certificate, so that every
    refused case tests the property it is named after."""
    ca = c["ca"].cert
    want = [
        ("good", dict(ip="127.0.0.1"), "OK"),
        ("good", dict(host="localhost"), "OK"),
        ("chained", dict(untrusted=c["inter"].cert, ip="127.0.0.1"), "OK"),
        ("expired", dict(ip="127.0.0.1"), "certificate has expired"),
        ("future", dict(ip="127.0.0.1"), "certificate is not yet valid"),
        ("mail", dict(ip="127.0.0.1"), "IP address mismatch"),
        ("mail", dict(host="mail.example.org"), "OK"),
        ("other_name", dict(host="localhost"), "hostname mismatch"),
        ("self", dict(ip="127.0.0.1"), "self-signed certificate"),
        ("by_other", dict(ip="127.0.0.1"),
         "unable to get local issuer certificate"),
        ("wild", dict(host="mail.example.org"), "OK"),
        ("wild", dict(host="a.b.example.org"), "hostname mismatch"),
        ("wild", dict(host="example.org"), "hostname mismatch"),
        ("wild", dict(ip="127.0.0.1"), "IP address mismatch"),
        ("partial", dict(host="mail.example.org"), "OK"),
        ("wild_localhost", dict(host="localhost"), "hostname mismatch"),
        ("wild_localhost", dict(host="a.localhost"), "hostname mismatch"),
        ("cn_ip", dict(ip="127.0.0.1"), "IP address mismatch"),
        ("client_eku", dict(ip="127.0.0.1"), "unsuitable certificate "
         "purpose"),
        ("chained", dict(ip="127.0.0.1"),
         "unable to get local issuer certificate"),
        ("by_notca", dict(untrusted=c["notca"].cert, ip="127.0.0.1"),
         "invalid CA certificate"),
    ]
    bad = []
    for name, kw, expected in want:
        got = verify(ca, c[name].cert, **kw)
        if got != expected:
            bad.append("%s %s: expected %r, openssl verify says %r"
                       % (name, kw, expected, got))
    # "m*.example.org" passes with OpenSSL's default flags: only the
    # engine's X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS refuses it.
    check(not bad, "fixture: openssl verify gives each certificate the "
          "intended verdict%s" % (": " + "; ".join(bad) if bad else
                                  " (%d verdicts)" % len(want)))


# ------------------------------------------------------------ the cases

def implicit_case(what, cert, host="127.0.0.1", cafile=None, codes=(E_TLS,),
                  reasons=(), ok=False, namespace=False, sni=None,
                  tls_max=None):
    with FakeImap("implicit", cert, tls_max=tls_max) as srv, \
            Proxy("127.0.0.1", srv.port) as p:
        run = tool(what, host, p.port, "implicit", cafile,
                   namespace=namespace)
        if ok:
            check_logged_in(what, run, p, srv, sni=sni)
        else:
            check_refused(what, run, codes, reasons)
            check_nothing_after_handshake(what, p, srv)
    return run


def test_certificates(c):
    ca = c["ca"].cert
    implicit_case("expired leaf", c["expired"], cafile=ca,
                  reasons=("expired",))
    implicit_case("not-yet-valid leaf", c["future"], cafile=ca,
                  reasons=("not yet valid",))
    implicit_case("certificate for mail.example.org, client connects to "
                  "127.0.0.1", c["mail"], cafile=ca, reasons=("mismatch",))
    implicit_case("certificate for other.example, client connects to "
                  "localhost", c["other_name"], host="localhost", cafile=ca,
                  reasons=("hostname mismatch",))
    run = implicit_case("self-signed leaf, no cafile (system store)",
                        c["self"], cafile=None,
                        reasons=("self-signed", "self signed"))
    check("cafile" in run.message(),
          "self-signed leaf, no cafile: the message hints at cafile "
          "(expected 'cafile' in it; seen %r)" % run.message())
    implicit_case("self-signed leaf, cafile is the test CA", c["self"],
                  cafile=ca, reasons=("self-signed", "self signed"))
    implicit_case("chain from a different CA than the cafile", c["by_other"],
                  cafile=ca, reasons=("unable to get local issuer",))
    implicit_case("good leaf, no cafile (system store does not know the "
                  "test CA)", c["good"], cafile=None,
                  reasons=("unable to get local issuer",))
    implicit_case("wildcard *.example.org, client connects to 127.0.0.1 "
                  "(DNS names only)", c["wild"], cafile=ca,
                  reasons=("mismatch",))
    implicit_case("IP only in the subject CN, no IP SAN", c["cn_ip"],
                  cafile=ca, reasons=("mismatch",))
    implicit_case("*.localhost certificate, client connects to localhost",
                  c["wild_localhost"], host="localhost", cafile=ca,
                  reasons=("hostname mismatch",))
    implicit_case("leaf for client authentication only (EKU clientAuth)",
                  c["client_eku"], cafile=ca, reasons=("purpose",))
    implicit_case("leaf issued by a certificate without CA:TRUE",
                  c["by_notca"], cafile=ca, reasons=("invalid ca",))
    implicit_case("server omits the intermediate", c["chained_bare"],
                  cafile=ca, reasons=("unable to get local issuer",))

    # Wildcard semantics need names that resolve to 127.0.0.1.
    if resolves_to_loopback("a.localhost"):
        implicit_case("*.localhost certificate, client connects to "
                      "a.localhost (system resolver)", c["wild_localhost"],
                      host="a.localhost", cafile=ca,
                      reasons=("hostname mismatch",))
    elif NS_HOSTS:
        implicit_case("*.localhost certificate, client connects to "
                      "a.localhost (private hosts file)",
                      c["wild_localhost"], host="a.localhost", cafile=ca,
                      reasons=("hostname mismatch",), namespace=True)
    else:
        skip("*.localhost certificate, client connects to a.localhost",
             "a.localhost does not resolve here")
    ns = [
        ("*.example.org certificate, client connects to a.b.example.org "
         "(a wildcard covers one label)", c["wild"], "a.b.example.org",
         False),
        ("*.example.org certificate, client connects to example.org",
         c["wild"], "example.org", False),
        ("m*.example.org certificate, client connects to mail.example.org "
         "(no partial wildcards)", c["partial"], "mail.example.org", False),
        ("positive control: *.example.org certificate, client connects to "
         "mail.example.org", c["wild"], "mail.example.org", True),
        ("positive control: certificate for mail.example.org, client "
         "connects to mail.example.org", c["mail"], "mail.example.org",
         True),
    ]
    for what, cert, host, ok in ns:
        if not NS_HOSTS:
            skip(what, "no private namespace to resolve %s" % host)
            continue
        if ok:
            implicit_case(what, cert, host=host, cafile=ca, ok=True,
                          namespace=True, sni=host)
        else:
            implicit_case(what, cert, host=host, cafile=ca,
                          reasons=("hostname mismatch",), namespace=True)

    implicit_case("positive control: IP SAN 127.0.0.1 matches", c["good"],
                  cafile=ca, ok=True, sni=None)
    implicit_case("positive control: DNS SAN localhost matches", c["good"],
                  host="localhost", cafile=ca, ok=True, sni="localhost")
    implicit_case("positive control: leaf issued by a CA:TRUE intermediate, "
                  "served with it", c["chained"], cafile=ca, ok=True,
                  sni=None)

    # No proxy, and the system store (slow to load) so that the hang-up
    # reaches the client before its ClientHello leaves, as with a server
    # that drops connections at once.
    what = "implicit TLS, the server hangs up before the handshake"
    with FakeImap("implicit", c["good"], hangup=True) as srv:
        run = tool(what, "127.0.0.1", srv.port, "implicit", None)
        srv.wait()
    check_refused(what, run, (E_TLS,), ("closed", "eof"))

    # TLS 1.1 only: refused, if this Python/OpenSSL can still serve it.
    if tls11_available(c["good"]):
        implicit_case("server speaks at most TLS 1.1", c["good"], cafile=ca,
                      reasons=("protocol", "version"),
                      tls_max=ssl.TLSVersion.TLSv1_1)
    else:
        skip("server speaks at most TLS 1.1",
             "this Python/OpenSSL cannot serve TLS 1.1")


def tls11_available(cert):
    try:
        with FakeImap("implicit", cert,
                      tls_max=ssl.TLSVersion.TLSv1_1) as srv:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            with socket.create_connection(("127.0.0.1", srv.port), 5) as s:
                with ctx.wrap_socket(s) as t:
                    return t.version() == "TLSv1.1"
    except (OSError, ssl.SSLError, ValueError):
        return False


def starttls_case(what, codes, reasons, plain_verbs, server_kw,
                  cert=None, cafile=None, tls_part="empty", direct=False):
    """A STARTTLS connection that must be refused. @plain_verbs: the exact
    plaintext commands the client may send; @tls_part: "empty" (no
    handshake started) or "handshake" (only handshake/alert records) or
    "any-of" (either). @direct: no proxy in between (the server's own
    record of the raw bytes is the wire)."""
    with FakeImap("plain", cert, **server_kw) as srv:
        if direct:
            run = tool(what, "127.0.0.1", srv.port, "starttls", cafile)
            sessions = srv.wait()
            wire = b"".join(bytes(s.plain) for s in sessions)
        else:
            with Proxy("127.0.0.1", srv.port) as p:
                run = tool(what, "127.0.0.1", p.port, "starttls", cafile)
                sessions = srv.wait()
                wire = p.client_bytes()
    check_refused(what, run, codes, reasons)
    m = re.search(rb"^[^ \r\n]+ STARTTLS\r\n", wire, re.M)
    plain, after = (wire[:m.end()], wire[m.end():]) if m else (wire, b"")
    seen_verbs = [v for s in sessions for v in s.verbs("plain")]
    types = tls_record_types(after)
    bad = []
    if seen_verbs != plain_verbs:
        bad.append("plaintext commands differ")
    if re.search(rb"(?im)^\S+ (LOGIN|AUTHENTICATE)\b", plain):
        bad.append("LOGIN/AUTHENTICATE in plaintext")
    if tls_part == "empty" and after:
        bad.append("bytes after STARTTLS")
    if tls_part in ("handshake", "any-of") and after and \
            (types[:1] != [22] or not set(types) <= {20, 21, 22}):
        bad.append("more than handshake/alert records after STARTTLS")
    if tls_part == "handshake" and not after:
        bad.append("no handshake attempted")
    lk = leaks(wire)
    if lk:
        bad.append("secret on the wire: %s" % lk)
    auths = [(ph, a[:40]) for s in sessions for ph, a in s.auth]
    if auths:
        bad.append("server got a login: %s" % auths)
    check(not bad, "%s: no credentials sent (expected plaintext commands %s "
          "and %s after STARTTLS; seen %s, %s)%s" % (
              what, plain_verbs,
              {"empty": "nothing", "handshake": "only handshake/alert "
               "records", "any-of": "nothing or only handshake/alert "
               "records"}[tls_part],
              seen_verbs,
              wire_summary(types) if after else "nothing after STARTTLS",
              ("; PROBLEMS: " + "; ".join(bad)) if bad else ""))
    return run


def test_starttls(c):
    ca = c["ca"].cert
    good = c["good"]
    no_cap = b"IMAP4rev1 AUTH=PLAIN LITERAL+"
    with_cap = b"IMAP4rev1 STARTTLS AUTH=PLAIN"
    starttls_case("(a) greeting CAPABILITY without STARTTLS", (E_STARTTLS,),
                  ("starttls",), [],
                  dict(caps_plain=no_cap), good, ca)
    starttls_case("(a) bare greeting, CAPABILITY response without STARTTLS",
                  (E_STARTTLS,), ("starttls",), ["CAPABILITY"],
                  dict(greeting=b"* OK fake IMAP ready\r\n",
                       caps_plain=no_cap), good, ca)
    starttls_case("(b) NO to STARTTLS", (E_STARTTLS,), ("refused",),
                  ["STARTTLS"],
                  dict(caps_plain=with_cap,
                       starttls_reply=b"{tag} NO TLS not available now\r\n"),
                  good, ca)
    starttls_case("(c) BAD to STARTTLS", (E_STARTTLS,), ("refused",),
                  ["STARTTLS"],
                  dict(caps_plain=with_cap,
                       starttls_reply=b"{tag} BAD unknown command\r\n"),
                  good, ca)
    starttls_case("(d) response injected after the tagged OK, same segment",
                  (E_STARTTLS,), ("injection",), ["STARTTLS"],
                  dict(caps_plain=with_cap,
                       starttls_reply=b"{tag} OK Begin TLS\r\n* OK "
                       b"[CAPABILITY IMAP4rev1 AUTH=PLAIN] injected\r\n"),
                  good, ca)
    starttls_case("(d) response injected right after the tagged OK, next "
                  "segment", (E_STARTTLS, E_TLS), ("injection", "tls"),
                  ["STARTTLS"],
                  dict(caps_plain=with_cap,
                       starttls_reply=b"{tag} OK Begin TLS\r\n",
                       second_segment=b"* OK [CAPABILITY IMAP4rev1 "
                       b"AUTH=PLAIN] injected\r\n"),
                  good, ca, tls_part="any-of")
    starttls_case("(e) untagged OK between STARTTLS and its tagged OK",
                  (E_STARTTLS,), ("injection", "after starttls"),
                  ["STARTTLS"],
                  dict(caps_plain=with_cap,
                       starttls_reply=b"* OK hold on\r\n"
                       b"{tag} OK Begin TLS\r\n"),
                  good, ca)
    starttls_case("(e) untagged CAPABILITY between STARTTLS and its tagged "
                  "OK", (E_STARTTLS,), ("injection", "after starttls"),
                  ["STARTTLS"],
                  dict(caps_plain=with_cap,
                       starttls_reply=b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n"
                       b"{tag} OK Begin TLS\r\n"),
                  good, ca)
    starttls_case("(f) PREAUTH greeting", (E_STARTTLS,), ("preauth",), [],
                  dict(greeting=b"* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS "
                       b"AUTH=PLAIN] already logged in\r\n"),
                  good, ca)
    run = starttls_case("(g) OK to STARTTLS, then plaintext instead of a "
                        "ServerHello", (E_TLS,), ("tls",), ["STARTTLS"],
                        dict(caps_plain=with_cap, after_starttls="plaintext"),
                        good, ca, tls_part="handshake")
    check(re.search(r"wrong version|record|packet|http request|protocol",
                    run.message().lower()) is not None,
          "(g) the error says the reply was not TLS (expected an OpenSSL "
          "reason like 'wrong version number'; seen %r)" % run.message())
    # No proxy here: the hang-up must reach the client before its
    # ClientHello does, as with a real server that drops the connection.
    starttls_case("(g) OK to STARTTLS, then the server hangs up", (E_TLS,),
                  ("closed", "eof"), ["STARTTLS"],
                  dict(caps_plain=with_cap, after_starttls="close"),
                  good, ca, tls_part="any-of", direct=True)
    starttls_case("(h) STARTTLS with a certificate for another host",
                  (E_TLS,), ("mismatch",), ["STARTTLS"],
                  dict(caps_plain=with_cap), c["mail"], ca,
                  tls_part="handshake")
    starttls_case("(h) STARTTLS with an expired certificate", (E_TLS,),
                  ("expired",), ["STARTTLS"],
                  dict(caps_plain=with_cap), c["expired"], ca,
                  tls_part="handshake")

    # Positive controls.
    what = "positive control: STARTTLS with the test CA"
    with FakeImap("plain", good, caps=b"IMAP4rev1 AUTH=PLAIN",
                  caps_plain=b"IMAP4rev1 STARTTLS LOGINDISABLED") as srv, \
            Proxy("127.0.0.1", srv.port) as p:
        run = tool(what, "127.0.0.1", p.port, "starttls", ca)
        check_logged_in(what, run, p, srv, sni=None)
        s = srv.sessions[0] if srv.sessions else Session()
        check(s.verbs("plain") == ["STARTTLS"] and
              s.verbs("tls")[:2] == ["CAPABILITY", "AUTHENTICATE"],
              "%s: capabilities asked again after the handshake, before "
              "login (expected plaintext [STARTTLS] then CAPABILITY, "
              "AUTHENTICATE over TLS; seen plaintext %s, TLS %s)"
              % (what, s.verbs("plain"), s.verbs("tls")))
    what = "positive control: --tls none against a plain server"
    with FakeImap("plain", None, caps_plain=b"IMAP4rev1 AUTH=PLAIN") as srv, \
            Proxy("127.0.0.1", srv.port) as p:
        run = tool(what, "127.0.0.1", p.port, "none", None)
        check_logged_in(what, run, p, srv, sni=False, phase="plain")


def test_trace(c):
    ca = c["ca"].cert
    cases = [
        ("AUTHENTICATE PLAIN with SASL-IR", b"IMAP4rev1 AUTH=PLAIN SASL-IR",
         "plain", PASSWORD, "***"),
        ("AUTHENTICATE PLAIN without SASL-IR", b"IMAP4rev1 AUTH=PLAIN",
         "plain", PASSWORD, "<credentials>"),
        ("LOGIN, atom password", b"IMAP4rev1", "login", PASSWORD, "***"),
        ("LOGIN, password needing a quoted string", b"IMAP4rev1", "login",
         PASSWORD_QUOTED, "***"),
        ("LOGIN, 8-bit password (literal)", b"IMAP4rev1", "login",
         PASSWORD_8BIT, "***"),
        ("LOGIN, 8-bit password (LITERAL+)", b"IMAP4rev1 LITERAL+", "login",
         PASSWORD_8BIT, "***"),
    ]
    for name, caps, auth, pw, marker in cases:
        what = "debug trace, " + name
        with FakeImap("implicit", c["good"], caps=caps) as srv, \
                Proxy("127.0.0.1", srv.port) as p:
            run = tool(what, "127.0.0.1", p.port, "implicit", ca, auth=auth,
                       debug=True, password=pw)
            srv.wait()
            got = [a for s in srv.sessions for _, a in s.auth]
        text = run.out + run.err
        traced = re.search(r"C: \S+ (LOGIN|AUTHENTICATE)", text) is not None
        check(run.ok and got and creds_in(got[0], pw),
              "%s: logs in with that password (seen %s, server got %r)"
              % (what, run.seen(), [g[:60] for g in got]))
        lk = leaks(text, pw)
        check(traced and marker in text and not lk,
              "%s: the trace shows the login redacted (expected a traced "
              "C: line, %r and no secret; seen traced=%s, marker=%s, "
              "secrets=%s)" % (what, marker, traced, marker in text,
                               lk or "none"))
    what = "debug trace, STARTTLS login"
    with FakeImap("plain", c["good"], caps=b"IMAP4rev1 AUTH=PLAIN SASL-IR",
                  caps_plain=b"IMAP4rev1 STARTTLS") as srv, \
            Proxy("127.0.0.1", srv.port) as p:
        run = tool(what, "127.0.0.1", p.port, "starttls", ca, debug=True)
        srv.wait()
    text = run.out + run.err
    lk = leaks(text)
    check(run.ok and "STARTTLS" in text and "***" in text and not lk,
          "%s: succeeds, trace redacted (expected success, a trace with "
          "STARTTLS and ***, no secret; seen %s, secrets=%s)"
          % (what, run.seen(), lk or "none"))
    what = "debug trace, rejected password"
    with FakeImap("implicit", c["good"], login_ok=False) as srv, \
            Proxy("127.0.0.1", srv.port) as p:
        run = tool(what, "127.0.0.1", p.port, "implicit", ca, debug=True)
        srv.wait()
    text = run.out + run.err
    lk = leaks(text)
    check(run.code() == E_AUTH and not lk,
          "%s: authentication error without the secret (expected code %d, "
          "no secret; seen %s, secrets=%s)" % (what, E_AUTH, run.seen(),
                                               lk or "none"))


def main():
    global TMP
    if not TOOL:
        print("1..0 # SKIP no imap-tool given")
        return 0
    if not shutil.which("openssl"):
        print("1..0 # SKIP no openssl command")
        return 0
    started = time.monotonic()
    TMP = tempfile.mkdtemp(prefix="imapfs-tls-")
    try:
        c = make_pki()
        why = setup_namespace()
        if why:
            print("# host-name cases that need a private /etc/hosts are "
                  "skipped: %s" % why)
        check_fixture(c)
        test_certificates(c)
        test_starttls(c)
        test_trace(c)
        bad = [(w, lk) for w, text, pw in outputs
               for lk in [leaks(text, pw)] if lk]
        check(not bad, "no imap-tool run (%d, debug or not) printed a "
              "secret (seen: %s)" % (len(outputs), bad or "none"))
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    print("# %.1f s" % (time.monotonic() - started))
    print("1..%d" % count)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
