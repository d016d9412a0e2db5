"""`imapfs --check`: logs in, prints capabilities and folders; every
failure is one clear line on stderr and a non-zero exit.

Run under `tests/fixture/dovecot.py run -- python3 test_probe.py IMAPFS`.
"""

import os
import socket
import subprocess
import sys
import tempfile

IMAPFS = sys.argv[1] if len(sys.argv) > 1 else None
ENV = os.environ
count = 0
failures = []


def check(cond, what):
    global count
    count += 1
    print(("ok" if cond else "not ok") + f" {count} - {what}")
    if not cond:
        failures.append(what)


def probe(*opts, account=None, env=None):
    account = account or f"{ENV['IMAPFS_TEST_USER']}@{ENV['IMAPFS_TEST_HOST']}"
    args = [IMAPFS, "--check"] + list(opts) + [account]
    p = subprocess.run(args, capture_output=True, text=True, timeout=60,
                       env=env or os.environ)
    return p.returncode, p.stdout, p.stderr


def refusing_port():
    """A loopback port that refuses connections while the returned socket
    is open: bound, never listening. (A port found free and let go was
    once taken by the Dovecot of a test running beside this one.)"""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


def main():
    if not IMAPFS or "IMAPFS_TEST_HOST" not in ENV:
        print("1..0 # SKIP not run under the Dovecot fixture")
        return 0
    ok_opts = ["-o", f"port={ENV['IMAPFS_TEST_PORT_IMAPS']},"
               f"cafile={ENV['IMAPFS_TEST_CAFILE']},"
               f"password_file={ENV['IMAPFS_TEST_PASSWORD_FILE']}"]

    rc, out, err = probe(*ok_opts)
    check(rc == 0, f"--check succeeds (stderr: {err.strip()})")
    check("certificate verified" in out, "reports the verified certificate")
    check("capabilities:" in out and "IMAP4REV1" in out, "prints capabilities")
    check('hierarchy delimiter "."' in out, "prints the delimiter")
    for name in ("INBOX", "Entwürfe", "日本語", "R&D", "Folder with spaces"):
        check(any(l.strip().startswith(name) for l in out.splitlines()),
              f"lists {name}")
    check("[Entw&APw-rfe]" in out, "shows the raw name next to a decoded one")
    check("\\Trash" in out, "shows special-use attributes")

    env = dict(os.environ)
    env["IMAPFS_PASSWORD"] = open(ENV["IMAPFS_TEST_PASSWORD_FILE"]).read().strip()
    rc, out, err = probe("-o", f"port={ENV['IMAPFS_TEST_PORT_IMAP']},"
                         f"tls=starttls,cafile={ENV['IMAPFS_TEST_CAFILE']}",
                         env=env)
    check(rc == 0, "STARTTLS with the password from IMAPFS_PASSWORD")

    with tempfile.NamedTemporaryFile("w") as f:
        f.write("not-the-password\n")
        f.flush()
        rc, out, err = probe("-o", f"port={ENV['IMAPFS_TEST_PORT_IMAPS']},"
                             f"cafile={ENV['IMAPFS_TEST_CAFILE']},"
                             f"password_file={f.name}")
    check(rc != 0 and err.count("\n") == 1 and "login as" in err,
          f"wrong password: one clear line: {err.strip()}")

    rc, out, err = probe("-o", f"port={ENV['IMAPFS_TEST_PORT_IMAPS']},"
                         f"password_file={ENV['IMAPFS_TEST_PASSWORD_FILE']}")
    check(rc != 0 and "not trusted" in err and "cafile" in err,
          f"untrusted certificate: {err.strip()}")

    holder, port = refusing_port()
    with holder:
        rc, out, err = probe("-o", f"port={port},"
                             f"cafile={ENV['IMAPFS_TEST_CAFILE']},"
                             f"password_file={ENV['IMAPFS_TEST_PASSWORD_FILE']}")
    check(rc != 0 and "cannot connect" in err, f"closed port: {err.strip()}")

    rc, out, err = probe("-o", "password=secret123")
    check(rc != 0 and "password_command" in err,
          f"a password on argv is refused: {err.strip()}")

    rc, out, err = probe("-o", "password_command=false,"
                         f"port={ENV['IMAPFS_TEST_PORT_IMAPS']},"
                         f"cafile={ENV['IMAPFS_TEST_CAFILE']}")
    check(rc != 0 and "password command failed" in err,
          f"failing password command: {err.strip()}")

    rc, out, err = probe("-o", "tls=bogus")
    check(rc != 0 and "tls must be" in err, "bad tls= value")

    print(f"1..{count}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
