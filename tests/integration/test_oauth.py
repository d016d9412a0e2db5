"""XOAUTH2 and OAUTHBEARER against a scripted server: the engine sends the
right SASL message, with or without SASL-IR, and an error challenge ends in
a clean authentication error.

Run as `python3 test_oauth.py IMAP_TOOL` (no Dovecot needed: Dovecot's
OAuth2 needs an identity provider).
"""

import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading

TOOL = sys.argv[1] if len(sys.argv) > 1 else None
TOKEN = "ya29.test-token"
count = 0
failures = []


def check(cond, what):
    global count
    count += 1
    print(("ok" if cond else "not ok") + " %d - %s" % (count, what))
    if not cond:
        failures.append(what)


class FakeServer:
    """Speaks just enough IMAP for a login; records the SASL message."""

    def __init__(self, mech, sasl_ir, accept):
        self.mech, self.sasl_ir, self.accept = mech, sasl_ir, accept
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.payloads = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.session, args=(c,), daemon=True).start()

    def session(self, c):
        f = c.makefile("rwb", buffering=0)
        caps = "IMAP4rev1 AUTH=%s%s" % (self.mech, " SASL-IR" if self.sasl_ir else "")
        f.write(b"* OK [CAPABILITY " + caps.encode() + b"] fake ready\r\n")
        while True:
            line = f.readline()
            if not line:
                return
            tag, _, rest = line.decode().rstrip("\r\n").partition(" ")
            words = rest.split(" ")
            verb = words[0].upper()
            if verb == "AUTHENTICATE":
                if len(words) > 2:
                    payload = words[2]
                else:
                    f.write(b"+ \r\n")
                    payload = f.readline().decode().rstrip("\r\n")
                self.payloads.append(base64.b64decode(payload))
                if self.accept:
                    f.write(("%s OK [CAPABILITY IMAP4rev1] logged in\r\n" % tag).encode())
                else:
                    err = base64.b64encode(json.dumps({"status": "401"}).encode())
                    f.write(b"+ " + err + b"\r\n")
                    f.readline()  # the client's empty response
                    f.write(("%s NO [AUTHENTICATIONFAILED] invalid token\r\n" % tag).encode())
            elif verb == "LOGOUT":
                f.write(b"* BYE bye\r\n" + ("%s OK bye\r\n" % tag).encode())
                return
            else:
                f.write(("%s OK done\r\n" % tag).encode())


def login(server, mech, token_file):
    p = subprocess.run([TOOL, "--host", "127.0.0.1", "--port", str(server.port),
                        "--tls", "none", "--auth", mech, "--user", "alice@example.org",
                        "--password-file", token_file, "connect"],
                       capture_output=True, text=True, timeout=30)
    return [json.loads(line) for line in p.stdout.splitlines() if line]


def main():
    if not TOOL:
        print("1..0 # SKIP no imap-tool given")
        return 0
    with tempfile.NamedTemporaryFile("w") as tf:
        tf.write(TOKEN + "\n")
        tf.flush()
        for mech in ("XOAUTH2", "OAUTHBEARER"):
            for ir in (True, False):
                s = FakeServer(mech, ir, accept=True)
                r = login(s, mech.lower(), tf.name)
                check(r and "error" not in r[0],
                      "%s %s SASL-IR: logged in" % (mech, "with" if ir else "without"))
                want = (b"user=alice@example.org\x01auth=Bearer " + TOKEN.encode() + b"\x01\x01"
                        if mech == "XOAUTH2" else
                        b"n,a=alice@example.org,\x01host=127.0.0.1\x01port=%d\x01auth=Bearer "
                        % s.port + TOKEN.encode() + b"\x01\x01")
                check(s.payloads and s.payloads[0] == want,
                      "%s: the SASL message is %r (seen %r)" % (mech, want, s.payloads[:1]))
            s = FakeServer(mech, True, accept=False)
            r = login(s, mech.lower(), tf.name)
            e = r[0].get("error", {}) if r else {}
            check(e.get("code") == 5 and "invalid token" in e.get("message", ""),
                  "%s: a refused token is a clean authentication error: %s"
                  % (mech, e.get("message")))
    print("1..%d" % count)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
