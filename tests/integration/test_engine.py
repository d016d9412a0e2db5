"""Integration tests of the imap/ engine against the Dovecot fixture.

Run under `tests/fixture/dovecot.py run -- python3 test_engine.py IMAP_TOOL`.
The engine is driven through tests/integration/imap-tool; every result is
checked against Python's imaplib, an independent client.
"""

import hashlib
import imaplib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fixture"))
from proxy import Proxy, tls_record_types  # noqa: E402

TOOL = sys.argv[1] if len(sys.argv) > 1 else None
ENV = os.environ
HOST = ENV.get("IMAPFS_TEST_HOST")
IMAPS = int(ENV.get("IMAPFS_TEST_PORT_IMAPS", "0"))
IMAP = int(ENV.get("IMAPFS_TEST_PORT_IMAP", "0"))
CAFILE = ENV.get("IMAPFS_TEST_CAFILE")
OTHER_CA = ENV.get("IMAPFS_TEST_OTHER_CAFILE")
USER = ENV.get("IMAPFS_TEST_USER")

# ImapErrorCode values (imap/imap.h)
E_TLS, E_STARTTLS, E_AUTH = 3, 4, 5
E_DISCONNECTED, E_TIMEOUT, E_UIDVALIDITY, E_INVALID = 10, 11, 12, 14

failures = []
count = 0


def check(cond, what):
    global count
    count += 1
    if cond:
        print(f"ok {count} - {what}")
    else:
        print(f"not ok {count} - {what}")
        failures.append(what)
    sys.stdout.flush()
    return cond


def password():
    with open(ENV["IMAPFS_TEST_PASSWORD_FILE"]) as f:
        return f.readline().strip()


def imap():
    ctx = ssl.create_default_context(cafile=CAFILE)
    m = imaplib.IMAP4_SSL(HOST, IMAPS, ssl_context=ctx)
    m.login(USER, password())
    return m


def mutf7(name):
    """UTF-8 -> modified UTF-7 (independent of the C codec)."""
    out, buf = [], []

    def flush():
        if buf:
            b = "".join(buf).encode("utf-16-be")
            import base64
            out.append("&" + base64.b64encode(b).decode().rstrip("=")
                       .replace("/", ",") + "-")
            buf.clear()
    for ch in name:
        if 0x20 <= ord(ch) <= 0x7e:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            buf.append(ch)
    flush()
    return "".join(out)


def quote(name):
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def tool(*ops, options=(), timeout=120):
    """Run imap-tool with ops (lists of strings); return parsed lines."""
    args = [TOOL] + list(options)
    for i, op in enumerate(ops):
        if i:
            args.append(",")
        args.extend(op)
    p = subprocess.run(args, capture_output=True, timeout=timeout)
    lines = [json.loads(l) for l in p.stdout.decode().splitlines() if l]
    if p.returncode != 0:
        print("# imap-tool failed:", p.returncode, p.stderr.decode()[-2000:])
    return lines


def server_meta(m, folder):
    typ, _ = m.select(quote(mutf7(folder)), readonly=True)
    assert typ == "OK", folder
    typ, data = m.uid("FETCH", "1:*", "(UID FLAGS RFC822.SIZE INTERNALDATE)")
    msgs = {}
    for item in data:
        if not item:
            continue
        line = item.decode() if isinstance(item, bytes) else item[0].decode()
        uid = int(re.search(r"UID (\d+)", line).group(1))
        size = int(re.search(r"RFC822\.SIZE (\d+)", line).group(1))
        flags = [f for f in re.search(r"FLAGS \(([^)]*)\)", line).group(1)
                 .split() if f != "\\Recent"]
        date = imaplib.Internaldate2tuple(line.encode())
        msgs[uid] = (size, sorted(flags), int(time.mktime(date)))
    return msgs


def server_body(m, folder, uid):
    m.select(quote(mutf7(folder)), readonly=True)
    typ, data = m.uid("FETCH", str(uid), "(BODY.PEEK[])")
    return data[0][1]


def server_flags(m, folder):
    return {u: v[1] for u, v in server_meta(m, folder).items()}


# ---------------------------------------------------------------- tests

def test_logins():
    r = tool(["connect"], ["caps"])
    check(r[0]["op"] == "connect" and "error" not in r[0],
          "login over implicit TLS")
    check("IMAP4REV1" in r[1]["caps"] and "QRESYNC" in r[1]["caps"],
          "capabilities after login include IMAP4rev1 and QRESYNC")
    r = tool(["connect"], options=["--tls", "starttls", "--port", str(IMAP)])
    check("error" not in r[0], "login over STARTTLS")
    r = tool(["connect"], options=["--tls", "none", "--port", str(IMAP)])
    check("error" not in r[0], "plaintext login when explicitly asked")
    r = tool(["connect"], options=["--auth", "login"])
    check("error" not in r[0], "LOGIN mechanism")
    r = tool(["connect"], options=["--auth", "plain"])
    check("error" not in r[0], "AUTHENTICATE PLAIN (SASL-IR)")

    with tempfile.NamedTemporaryFile("w", suffix=".pw") as pw:
        pw.write("wrong-password\n")
        pw.flush()
        r = tool(["connect"], options=["--password-file", pw.name])
        e = r[0].get("error", {})
        check(e.get("code") == E_AUTH and "login as" in e.get("message", ""),
              "wrong password: authentication error: %s" % e.get("message"))


def refused_without_credentials(options, host, port, what, code=E_TLS,
                                listen="127.0.0.2"):
    """Connect through a recording proxy; the engine must refuse and the
    client must never have sent a TLS application-data record."""
    with Proxy(host, port, listen_host=listen) as p:
        r = tool(["connect"], options=["--host", p.host, "--port",
                                       str(p.port)] + list(options))
        sent = p.client_bytes()
    e = r[0].get("error", {})
    check(e.get("code") == code, f"{what}: refused ({e.get('message')})")
    plain, tls = sent, sent
    if b"STARTTLS\r\n" in sent:
        i = sent.index(b"STARTTLS\r\n") + len(b"STARTTLS\r\n")
        plain, tls = sent[:i], sent[i:]
        check(b"LOGIN" not in plain and b"AUTHENTICATE" not in plain,
              f"{what}: no credentials in the plaintext part")
    else:
        plain = b""
    types = tls_record_types(tls)
    check(len(types) > 0 and 23 not in types,
          f"{what}: no application data sent (records {sorted(set(types))})")
    return e.get("message", "")


def test_certificates():
    msg = refused_without_credentials([], HOST, IMAPS,
                                      "certificate for another host (IP)")
    check("mismatch" in msg.lower() or "not trusted" in msg,
          "the message names the reason: " + msg)
    msg = refused_without_credentials(["--cafile", OTHER_CA], HOST, IMAPS,
                                      "untrusted CA", listen="127.0.0.1")
    check("not trusted" in msg, "untrusted CA message: " + msg)
    msg = refused_without_credentials(["--cafile", ""], HOST, IMAPS,
                                      "self-signed CA, no cafile",
                                      listen="127.0.0.1")
    check("cafile" in msg, "hint to use cafile: " + msg)
    refused_without_credentials(["--tls", "starttls"], HOST, IMAP,
                                "STARTTLS with a certificate for another host")
    try:
        socket.getaddrinfo("ip6-localhost", 1, socket.AF_INET6)
        v6 = True
    except OSError:
        v6 = False
    if v6:
        msg = refused_without_credentials(
            ["--host", "ip6-localhost"], HOST, IMAPS,
            "certificate for another host name", listen="::1")
    else:
        print("# skipping DNS name mismatch: ip6-localhost does not resolve")


def test_list():
    r = tool(["list"])
    got = {f["name"]: f for f in r[0]["folders"]}
    m = imap()
    typ, data = m.list()
    want = set()
    for line in data:
        mm = re.match(rb'\((.*?)\) "(.)" (.*)', line)
        name = mm.group(3).decode()
        if name.startswith('"'):
            name = name[1:-1]
        want.add(name)
        check(mm.group(2) == b".", f"delimiter of {name} is '.'")
    check(set(f["raw"] for f in got.values()) == want,
          "LIST: the engine sees exactly the server's folders")
    for name in ("Entwürfe", "日本語", "R&D", "Folder with spaces",
                 "Work.Projects"):
        check(name in got, f"LIST decodes {name!r}")
    m.logout()


def test_meta_and_bodies():
    m = imap()
    want = server_meta(m, "INBOX")
    r = tool(["connect"], ["meta", "INBOX"])[1]
    # \Recent belongs to a session, not to a message: leave it out.
    got = {x["uid"]: (x["size"],
                      sorted(f for f in x["flags"] if f != "\\Recent"),
                      x["date"])
           for x in r["messages"]}
    check(len(got) == len(want) and len(got) > 10,
          f"UID FETCH 1:* returns every INBOX message ({len(got)})")
    check(got == want, "UID, FLAGS, RFC822.SIZE and INTERNALDATE match imaplib")
    check(r["commands"] == 2 and r["round_trips"] == 2,
          f"SELECT + one pipelined FETCH: {r['commands']} commands, "
          f"{r['round_trips']} round trips")

    flags_before = server_flags(m, "INBOX")
    with tempfile.TemporaryDirectory() as d:
        ops = [["body", "INBOX", str(uid), os.path.join(d, str(uid))]
               for uid in sorted(want)]
        res = tool(*ops)
        same = True
        for uid, line in zip(sorted(want), res):
            data = open(os.path.join(d, str(uid)), "rb").read()
            if data != server_body(m, "INBOX", uid) or not line.get("complete"):
                same = False
                print(f"# body of {uid} differs")
        check(same, "every INBOX body is byte-identical to imaplib's BODY.PEEK[]")

        big = server_meta(m, "Big")
        uid = max(big, key=lambda u: big[u][0])
        path = os.path.join(d, "big")
        res = tool(["body", "Big", str(uid), path], ["counters"])
        data = open(path, "rb").read()
        check(len(data) == big[uid][0] and len(data) > 19_000_000,
              f"20 MB body streamed to a file ({len(data)} bytes)")
        check(hashlib.sha256(data).digest() ==
              hashlib.sha256(server_body(m, "Big", uid)).digest(),
              "20 MB body is byte-identical")
    check(server_flags(m, "INBOX") == flags_before,
          "fetching bodies set no flag (\\Seen untouched)")
    m.logout()


def test_pipeline():
    r = tool(["connect"], ["pipeline", "INBOX", "20"])[1]
    check(r["failed"] == 0, "20 concurrent UID FETCH commands succeed")
    check(r["commands"] == 21 and r["round_trips"] <= 3,
          f"they pipeline: {r['commands']} commands in "
          f"{r['round_trips']} round trips")


def test_append_move_expunge():
    m = imap()
    msg = (b"From: Test <t@example.org>\r\nTo: u@example.org\r\n"
           b"Subject: engine append\r\nDate: Mon, 02 Mar 2026 10:00:00 +0000"
           b"\r\n\r\nBody with a \xc3\xa4 8-bit byte.\r\n")
    date = 1772445600  # 2026-03-02 10:00:00 UTC
    with tempfile.NamedTemporaryFile(suffix=".eml") as f:
        f.write(msg)
        f.flush()
        r = tool(["append", "Archive", f.name, "\\Flagged $Label1",
                  str(date)])[0]
    check("error" not in r and r["uids"], f"APPEND returns APPENDUID {r}")
    uid = int(r["uids"])
    meta = server_meta(m, "Archive")
    check(uid in meta and server_body(m, "Archive", uid) == msg,
          "the appended message is on the server, byte-exact")
    check(meta[uid][1] == sorted(["\\Flagged", "$Label1"]),
          f"with its flags {meta[uid][1]}")
    check(meta[uid][2] == date, "with its INTERNALDATE")

    # A foreign \Deleted message that must survive our expunges.
    m.select(quote("Work"))
    typ, resp = m.append("Work", "(\\Deleted)", None,
                         b"Subject: foreign deleted\r\n\r\nkeep me\r\n")
    foreign = int(re.search(rb"APPENDUID \d+ (\d+)", resp[0]).group(1))

    r = tool(["move", "Archive", str(uid), "Work"])[0]
    check("error" not in r and len(r["pairs"]) == 1 and r["pairs"][0][0] == uid,
          f"UID MOVE returns COPYUID {r}")
    new = r["pairs"][0][1]
    check(uid not in server_meta(m, "Archive"), "moved: gone from Archive")
    check(server_body(m, "Work", new) == msg, "moved: in Work, byte-exact")

    r = tool(["store", "Work", str(new), "+FLAGS.SILENT", "\\Deleted"],
             ["expunge", "Work", str(new)])
    check(all("error" not in x for x in r), "UID STORE + UID EXPUNGE")
    work = server_meta(m, "Work")
    check(new not in work, "UID EXPUNGE removed our message")
    check(foreign in work, "a foreign \\Deleted message survived UID EXPUNGE")

    r = tool(["raw", "EXPUNGE"], ["raw", "CLOSE"], ["raw", "FETCH"])
    check(all(x.get("error", {}).get("code") == E_INVALID for x in r),
          "bare EXPUNGE, CLOSE and sequence FETCH are refused by the API")
    check(foreign in server_meta(m, "Work"), "still there after the refusal")

    r = tool(["expunge-stale", "Work", str(foreign), "1"])[0]
    check(r.get("error", {}).get("code") == E_UIDVALIDITY,
          "a command bound to another UIDVALIDITY fails before it is sent")
    check(foreign in server_meta(m, "Work"), "and expunged nothing")
    m.logout()


def test_folders():
    name = "Ünïcode & Co"
    r = tool(["create", name], ["rename", name, name + " 2"], ["list"])
    check(all("error" not in x for x in r[:2]), "CREATE and RENAME")
    check(any(f["name"] == name + " 2" for f in r[2]["folders"]),
          "the renamed folder is listed under its UTF-8 name")
    m = imap()
    typ, data = m.list()
    check(any(mutf7(name + " 2").encode() in l for l in data),
          "imaplib sees the modified UTF-7 name")
    r = tool(["delete", name + " 2"], ["create", "Work"])
    check("error" not in r[0], "DELETE")
    check(r[1].get("error", {}).get("code") == 17,
          "CREATE of an existing folder: ALREADYEXISTS")
    # One connection: a failed SELECT fails what waited for it, not what
    # comes later (the folder may exist by then).
    r = tool(["meta", "Made Later"], ["create", "Made Later"], ["meta", "Made Later"],
             options=["--connections", "1"])
    check("error" in r[0], "meta of a folder that does not exist fails")
    check("error" not in r[2],
          "after CREATE, meta of that folder works on the same connection")
    m.logout()


def test_search_status_idle():
    m = imap()
    meta = server_meta(m, "INBOX")
    flagged = sorted(u for u, v in meta.items() if "\\Flagged" in v[1])
    r = tool(["connect"], ["search", "INBOX", "FLAGGED"], ["status", "INBOX"])[1:]
    check(r[0].get("esearch") is True, "UID SEARCH uses ESEARCH when offered")
    got = set()
    for part in filter(None, r[0]["uids"].split(",")):
        lo, _, hi = part.partition(":")
        got.update(range(int(lo), int(hi or lo) + 1))
    check(sorted(got) == flagged and flagged,
          f"UID SEARCH FLAGGED finds exactly {flagged}")
    typ, data = m.status("INBOX", "(MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)")
    want = dict(re.findall(rb"(\w+) (\d+)", data[0].split(b"(", 1)[1]))
    st = r[1]
    check(st["messages"] == int(want[b"MESSAGES"]) and
          st["uidnext"] == int(want[b"UIDNEXT"]) and
          st["uidvalidity"] == int(want[b"UIDVALIDITY"]) and
          st["highestmodseq"] == int(want[b"HIGHESTMODSEQ"]),
          f"STATUS matches imaplib: {st}")

    # IDLE: another client's APPEND arrives as an event; a new command
    # ends the IDLE (DONE) and runs.
    proc = subprocess.Popen([TOOL, "idle", "Archive", "1500"],
                            stdout=subprocess.PIPE, text=True)
    first = json.loads(proc.stdout.readline())
    check(first["op"] == "idling", "IDLE started")
    other = imap()
    other.append("Archive", None, None, b"Subject: during idle\r\n\r\nx\r\n")
    other.logout()
    out, _ = proc.communicate(timeout=30)
    r = json.loads(out.splitlines()[-1])
    check(r.get("events", 0) >= 1, f"the APPEND was seen during IDLE: {r}")
    check(r.get("idle_ok") is True and r.get("noop_ms", 99999) < 2000,
          "DONE ended the IDLE and the next command ran at once")
    m.logout()


def run_background(args):
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True)


def test_disconnects():
    with Proxy(HOST, IMAPS) as p:
        base = [TOOL, "--port", str(p.port), "--timeout", "2000"]
        # A cut between commands: the next command reconnects.
        proc = run_background(base + ["meta", "INBOX", ",", "sleep", "800",
                                      ",", "meta", "INBOX", ",", "counters"])
        first = json.loads(proc.stdout.readline())
        p.cut()
        rest = [json.loads(l) for l in proc.stdout.read().splitlines()]
        proc.wait(timeout=30)
        check("error" not in first and "error" not in rest[1],
              "after a cut the next command reconnects and succeeds")
        check(rest[2]["connects"] == 2, "two logins in all")

        # A stalled server: the command fails within the timeout.
        proc = run_background(base + ["connect", ",", "sleep", "300", ",",
                                      "meta", "INBOX"])
        proc.stdout.readline()
        p.stall = True
        start = time.monotonic()
        rest = [json.loads(l) for l in proc.stdout.read().splitlines()]
        elapsed = time.monotonic() - start
        proc.wait(timeout=30)
        p.stall = False
        e = rest[-1].get("error", {})
        check(e.get("code") in (E_TIMEOUT, E_DISCONNECTED),
              f"a stalled server fails the command: {e.get('message')}")
        check(elapsed < 8, f"within a bounded time ({elapsed:.1f} s)")
        p.cut()

        # A cut in the middle of a 20 MB body.
        m = imap()
        big = server_meta(m, "Big")
        uid = max(big, key=lambda u: big[u][0])
        m.logout()
        with tempfile.TemporaryDirectory() as d:
            proc = run_background(base + ["connect"])
            proc.communicate(timeout=30)
            p.cut_at = p.server_bytes + 5_000_000
            r = tool(["body", "Big", str(uid), os.path.join(d, "b")],
                     ["meta", "INBOX"],
                     options=["--port", str(p.port), "--timeout", "5000"])
            data = open(os.path.join(d, "b"), "rb").read()
        check("error" not in r[0] and r[0]["streamed"] == 2,
              "a cut mid-body: the fetch is retried once on a new connection")
        check(len(data) == big[uid][0] and data == server_body(imap(), "Big", uid),
              "and the body is byte-exact")
        check("error" not in r[1], "and the next command works")


def main():
    if not TOOL or not HOST:
        print("1..0 # SKIP not run under the Dovecot fixture")
        return 0
    for t in (test_logins, test_certificates, test_list, test_meta_and_bodies,
              test_pipeline, test_append_move_expunge, test_folders,
              test_search_status_idle,
              test_disconnects):
        print(f"# {t.__name__}")
        try:
            t()
        except Exception as e:  # a crash in a test is a failure, not a skip
            import traceback
            traceback.print_exc(file=sys.stdout)
            check(False, f"{t.__name__} raised {e!r}")
    print(f"1..{count}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
