"""imapfs against a hostile or broken IMAP server.

    python3 tests/integration/test_hostile.py IMAP_TOOL IMAPFS [options]

Each case is a script for the fake server in fakeserver.py (a lying
literal, a 2^63 literal, an endless line, NUL bytes, unbalanced or deep
parentheses, unknown responses, a server that stops answering, odd mailbox
names, bad UIDs, sizes that disagree with the body, ...).  Every case is
played against the engine through imap-tool and, where it matters, through
a real mount.  Whatever the server does, the outcome must be a clean error
or a safe rendering:

  - no crash: the tool and the daemon never die of a signal, and a
    sanitizer build never reports anything;
  - no hang: every run is under a timeout, and with --timeout 2000 /
    -o timeout=2 a silent server fails an operation within a few seconds;
    what the engine can see for itself (a limit, a bad tag, a close) fails
    at once, without waiting for the timeout;
  - names: every name in the mount is valid UTF-8, at most 255 bytes, has
    no "/" or control character, is not "." or ".."; message names have
    the documented form;
  - bytes: a file reads exactly what the server sent as that message's
    body, or fails with an errno; a body in the cache is complete or absent;
  - nothing is created outside the cache directory (the cwd, HOME, TMPDIR
    of the processes, the run directory and the temp dir's parent are
    checked).

Options: --only NAME[,NAME] (substring match), --jobs N, --no-mount,
--no-tool, --leaks (LeakSanitizer on, for a sanitizer build), --list,
--keep (keep the temp dir), --verbose.

Output is TAP.  Python standard library only.
"""

import base64
import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fakeserver as fs  # noqa: E402
from fakeserver import (CLOSE, DEFAULT, DEFAULT_DATA, DEFLATE, HANG, Folder,  # noqa: E402
                        Msg, Pause, Script, fetch_items, in_set, parse_set)

TOOL_TIMEOUT_MS = 2000      # imap-tool --timeout
MOUNT_TIMEOUT_S = 2         # imapfs -o timeout=
OP_LIMIT = 6.5              # one op against a silent server: 2 timeouts and a reconnect
FAST_LIMIT = 1.5            # an error the engine can see by itself: well under the timeout
HARD_LIMIT = 30             # any single process, whatever happens
WALK_LIMIT = 25             # the whole walk of a mount
MOUNT_MAX_CONNS = 40        # connections of a whole mount run
MOUNT_WAIT = 12             # imapfs -f must mount or exit within this
NAME_MAX = 255

# ---- constants of the scripts -------------------------------------------------------

M1 = b"From: alice@example.org\r\nSubject: Hello there\r\n\r\nHello, world.\r\n"
M2 = b"From: bob@example.org\r\nSubject: Second one\r\n\r\nAnother body\r\n"
DATE = b"20-Nov-2023 09:51:50 +0000"
OKT = b"@TAG@ OK done\r\n"


def std_msgs():
    return [Msg(1, M1), Msg(2, M2, flags=b"")]


def inbox(msgs=None, **kw):
    return [Folder(b"INBOX", std_msgs() if msgs is None else msgs, **kw)]


def meta_line(seq, uid, size, flags=b"\\Seen", date=b'"' + DATE + b'"',
              subject=b"Subject: x\r\n\r\n", extra=b""):
    """One FETCH response with metadata (and the Subject block as a literal)."""
    return (b"* %d FETCH (UID %s FLAGS (%s) RFC822.SIZE %s INTERNALDATE %s"
            % (seq, uid if isinstance(uid, bytes) else b"%d" % uid, flags,
               size if isinstance(size, bytes) else b"%d" % size, date)
            + (b" BODY[HEADER.FIELDS (SUBJECT)] {%d}\r\n" % len(subject) + subject
               if subject is not None else b"") + extra + b")\r\n")


def requested(ctx):
    """[(seq, Msg)] of the selected folder that a UID FETCH asks for."""
    f = ctx.session.folder()
    if not f:
        return []
    uidset, _ = fetch_items(ctx.cmd)
    ranges = parse_set(uidset, max([m.uid for m in f.msgs] + [0]))
    return [(seq, m) for seq, m in enumerate(f.msgs, 1) if in_set(m.uid, ranges)]


def per_message(fn, tagged=OKT):
    """A FETCH behaviour: fn(seq, msg, ctx) -> actions for each message
    asked for (None: the built-in answer for it), then the tagged line."""
    def handler(ctx):
        out = []
        for seq, m in requested(ctx):
            r = fn(seq, m, ctx)
            if r is None:
                r = [default_body(seq, m, ctx)]
            out.extend(r if isinstance(r, list) else [r])
        return out + ([tagged] if tagged else [])
    return handler


def default_body(seq, m, ctx):
    _, items = fetch_items(ctx.cmd)
    rng = re.search(rb"BODY(?:\.PEEK)?\[\]<(\d+)\.(\d+)>", items.upper())
    if rng:
        off, n = int(rng.group(1)), int(rng.group(2))
        part = m.body[off:off + n]
        return b"* %d FETCH (UID %d BODY[]<%d> {%d}\r\n%s)\r\n" % (seq, m.uid, off, len(part), part)
    with ctx.server.lock:
        ctx.server.served.setdefault(m.uid, []).append(m.body)
    return b"* %d FETCH (UID %d BODY[] {%d}\r\n%s)\r\n" % (seq, m.uid, len(m.body), m.body)


def only_uid(uid, actions):
    """A FETCH behaviour: the given actions for message uid, the built-in
    answer for the others, then a tagged OK (unless the actions ended the
    session)."""
    return per_message(lambda seq, m, ctx: list(actions) if m.uid == uid else None)


def body_literal(uid, announced, data, seq=None):
    return b"* %d FETCH (UID %d BODY[] {%d}\r\n" % (seq or uid, uid, announced) + data


def lf_only(actions):
    """Play actions with every CRLF outside literals turned into LF (the
    literal bodies keep theirs)."""
    def conv(ctx):
        out = []
        for a in actions:
            if a is DEFAULT or a is DEFAULT_DATA:
                d = ctx.session.default(ctx.cmd)
                out.extend(_lf(x) for x in (d if a is DEFAULT else d[:-1]))
            elif isinstance(a, bytes):
                out.append(_lf(a))
            else:
                out.append(a)
        return out
    return conv


def _lf(data):
    # split at literals: {n}\r\n<n bytes>
    out, i = b"", 0
    for m in re.finditer(rb"\{(\d+)\}\r\n", data):
        if m.start() < i:
            continue
        out += data[i:m.start()].replace(b"\r\n", b"\n") + b"{%s}\n" % m.group(1)
        n = int(m.group(1))
        out += data[m.end():m.end() + n]
        i = m.end() + n
    return out + data[i:].replace(b"\r\n", b"\n")


def cycle(*variants):
    """A behaviour that answers the n-th command with the n-th variant
    (the last one repeats)."""
    state = {"n": 0}
    lock = threading.Lock()

    def handler(ctx):
        with lock:
            i = min(state["n"], len(variants) - 1)
            state["n"] += 1
        v = variants[i]
        return list(v) if isinstance(v, list) else [v]
    return handler


# ---- the cases -------------------------------------------------------------------------

ANY, OK, ERR = "any", "ok", "error"
STD_OPS = ["connect", "list", "meta INBOX", "body INBOX 1", "body INBOX 2"]


class Case:
    """name: the script; script(): a fakeserver.Script; tool: [(op, expect)]
    with expect ok / error / any, a trailing "!" meaning that the op must
    end within FAST_LIMIT; mount: None (no mount), "ok" (must mount),
    "fail" (must fail cleanly) or "any"; accept: {uid: [bytes]} that a read
    of that message may return (default: the model's bodies); must_read:
    UIDs whose files must exist and read exactly; check_tool(results,
    server) and check_mount(walk, server, case) -> [problems]."""

    def __init__(self, name, about, script, tool=None, mount="any", accept=None,
                 must_read=(), check_tool=None, check_mount=None, any_content=False,
                 compress=False, ro=False):
        self.name, self.about, self.script = name, about, script
        self.compress = compress  # ask for COMPRESS=DEFLATE (tool and mount)
        self.ro = ro  # mount -o ro (files opened without the daemon)
        self.tool = tool if tool is not None else [(o, ANY) for o in STD_OPS]
        self.mount = mount
        self._accept = accept
        self.must_read = set(must_read)
        self.check_tool = check_tool
        self.check_mount = check_mount
        self.any_content = any_content

    def accept(self, script):
        out = {}
        for f in script.folders:
            for m in f.msgs:
                out.setdefault(m.uid, set()).add(m.body)
        for uid, bodies in (self._accept or {}).items():
            out.setdefault(uid, set()).update(bodies)
        return out


CASES = []


def case(*a, **kw):
    CASES.append(Case(*a, **kw))


# -- literals that lie

case("literal-shorter-than-announced",
     "BODY[] {100} followed by 40 bytes, the closing paren and the tagged OK, then silence",
     lambda: Script(on={"FETCH_BODY": [only_uid(1, [
         body_literal(1, 100, M1[:40]) + b")\r\n@TAG@ OK done\r\n"])]}),
     tool=[("connect", OK), ("body INBOX 1", ERR), ("body INBOX 2", ANY)])

case("literal-shorter-then-close",
     "BODY[] {100} with 40 bytes, then the server closes",
     lambda: Script(on={"FETCH_BODY": [only_uid(1, [body_literal(1, 100, M1[:40]), CLOSE])]}),
     tool=[("connect", OK), ("body INBOX 1", ERR + "!"), ("body INBOX 2", ANY)])

case("literal-longer-than-announced",
     "BODY[] {20} followed by the whole 64-byte body",
     lambda: Script(on={"FETCH_BODY": [only_uid(1, [
         body_literal(1, 20, M1) + b")\r\n"])]}),
     tool=[("connect", OK), ("body INBOX 1", ANY), ("body INBOX 2", ANY)],
     accept={1: [M1[:20]]})

case("literal-2GB-then-close",
     "BODY[] {2147483648}, 1000 bytes, close",
     lambda: Script(on={"FETCH_BODY": [only_uid(1, [body_literal(1, 2 << 30, b"x" * 1000), CLOSE])]}),
     tool=[("connect", OK), ("body INBOX 1", ERR + "!")])

case("literal-2^63",
     "BODY[] {9223372036854775808}, then the server waits",
     lambda: Script(on={"FETCH_BODY": [only_uid(1, [body_literal(1, 1 << 63, b"x" * 100), HANG])]}),
     tool=[("connect", OK), ("body INBOX 1", ERR + "!")])

case("literal-2^63-1",
     "BODY[] {9223372036854775807}, then the server waits",
     lambda: Script(on={"FETCH_BODY": [only_uid(1, [body_literal(1, (1 << 63) - 1, b"x" * 100), HANG])]}),
     tool=[("connect", OK), ("body INBOX 1", ERR + "!")])

case("literal-20-digits",
     "BODY[] {99999999999999999999}, then the server waits",
     lambda: Script(on={"FETCH_BODY": [only_uid(1, [
         b"* 1 FETCH (UID 1 BODY[] {99999999999999999999}\r\nxxxx", HANG])]}),
     tool=[("connect", OK), ("body INBOX 1", ERR + "!")])

case("literal-in-list-2^63",
     "a LIST entry whose name is a {18446744073709551615} literal",
     lambda: Script(on={"LIST": [b'* LIST () "/" {18446744073709551615}\r\nabc', HANG]}),
     tool=[("connect", OK), ("list", ERR + "!")], mount="fail")

case("literal-negative",
     "a literal written {-5} in a LIST answer",
     lambda: Script(on={"LIST": [b'* LIST () "/" {-5}\r\nabcde\r\n', OKT]}),
     tool=[("connect", OK), ("list", ERR + "!")], mount="fail")

case("literal-plus-from-server",
     "a non-synchronizing literal {5+} in a LIST answer (only clients may send those)",
     lambda: Script(on={"LIST": [b'* LIST () "/" {5+}\r\nabcde\r\n', DEFAULT]}),
     tool=[("connect", OK), ("list", ANY)])

case("endless-line",
     "1 MB of a FETCH response without CRLF, then the server waits",
     lambda: Script(on={"FETCH_META": [b"* 1 FETCH (UID 1 FLAGS (" + b"x" * (1 << 20), HANG]}),
     tool=[("connect", OK), ("meta INBOX", ERR + "!")])

case("endless-atom-in-list",
     "a 1 MB mailbox name without CRLF in LIST, then the server waits",
     lambda: Script(on={"LIST": [b'* LIST () "/" ' + b"a" * (1 << 20), HANG]}),
     tool=[("connect", OK), ("list", ERR + "!")], mount="fail")

# -- NUL bytes

case("nul-in-atom",
     "a LIST entry IN\\0BOX2 (NUL in an atom)",
     lambda: Script(on={"LIST": [b'* LIST () "/" IN\x00BOX2\r\n', DEFAULT]}),
     tool=[("connect", OK), ("list", ANY)])

case("nul-in-quoted",
     'a LIST entry "Fol\\0der" (NUL in a quoted string)',
     lambda: Script(on={"LIST": [b'* LIST () "/" "Fol\x00der"\r\n', DEFAULT]}),
     tool=[("connect", OK), ("list", ANY)])

case("nul-in-literal-name",
     "a LIST entry whose literal name holds a NUL",
     lambda: Script(on={"LIST": [b'* LIST () "/" {7}\r\nFol\x00der\r\n', DEFAULT]}),
     tool=[("connect", OK), ("list", ANY)])

NUL_BODY = b"Subject: nul\r\n\r\nbinary\x00\x00data\x00\r\n\x00\xff\xfe\r\n"

case("nul-in-body",
     "a body with NUL bytes (legal in a literal): it must come through exactly",
     lambda: Script(folders=inbox([Msg(1, NUL_BODY), Msg(2, M2)])),
     tool=[("connect", OK), ("list", OK), ("meta INBOX", OK), ("body INBOX 1", OK)],
     mount="ok", must_read={1, 2})

# -- parentheses

case("parens-unbalanced-open",
     "a FETCH response with a list never closed before CRLF",
     lambda: Script(on={"FETCH_META": [
         b'* 1 FETCH (UID 1 FLAGS (\\Seen RFC822.SIZE 64 INTERNALDATE "' + DATE + b'"\r\n', OKT]}),
     tool=[("connect", OK), ("meta INBOX", ERR)])

case("parens-unbalanced-close",
     "a FETCH response with one ')' too many",
     lambda: Script(on={"FETCH_META": [
         b'* 1 FETCH (UID 1 FLAGS (\\Seen)) RFC822.SIZE 64 INTERNALDATE "' + DATE + b'")\r\n', OKT]}),
     tool=[("connect", OK), ("meta INBOX", ANY)])

case("parens-deep-nesting",
     "a FETCH response nested 1000 levels deep",
     lambda: Script(on={"FETCH_META": [
         b"* 1 FETCH (UID 1 X " + b"(" * 1000 + b")" * 1000 + b")\r\n", OKT]}),
     tool=[("connect", OK), ("meta INBOX", ERR)])

case("parens-deep-unclosed",
     "100000 '(' in a LIST response, then the server waits",
     lambda: Script(on={"LIST": [b"* LIST " + b"(" * 100000, HANG]}),
     tool=[("connect", OK), ("list", ERR + "!")], mount="fail")

# -- unknown things


def noisy(ctx):
    return [b"* FOO bar\r\n* 3 BAZ (x y)\r\n* XYZZY\r\n* 7 WHATEVER {3}\r\nabc\r\n", DEFAULT]


case("unknown-untagged",
     "'* FOO bar', '* 3 BAZ (x y)', '* XYZZY' before every answer",
     lambda: Script(on={k: [noisy] for k in ("LIST", "SELECT", "FETCH_META", "FETCH_BODY",
                                             "FETCH_FLAGS", "STATUS")}),
     tool=[("connect", OK), ("list", OK), ("meta INBOX", OK), ("body INBOX 1", OK),
           ("status INBOX", OK)],
     mount="ok", must_read={1, 2})


def weird_codes(ctx):
    return [b"* OK [FOO-BAR 1 2 (3 4)] hi\r\n* NO [WEIRD] hmm\r\n* BAD [X] bad code\r\n"
            b"* OK [X-LIST-CODE (a (b c) \"de\")] lists in a code\r\n", DEFAULT_DATA,
            b"@TAG@ OK [XYZZY \"a\" (b)] done\r\n"]


case("unknown-response-codes",
     "unknown codes in untagged and tagged OKs",
     lambda: Script(on={k: [weird_codes] for k in ("LIST", "SELECT", "FETCH_META", "FETCH_BODY")}),
     tool=[("connect", OK), ("list", OK), ("meta INBOX", OK), ("body INBOX 1", OK)],
     mount="ok", must_read={1, 2})

case("empty-response-code",
     "'* OK [] empty code' before the LIST answer (invalid: a code is an atom)",
     lambda: Script(on={"LIST": [b"* OK [] empty code\r\n", DEFAULT]}),
     tool=[("connect", OK), ("list", ANY)])

# -- the conversation goes wrong

case("select-close",
     "the server closes the connection whenever it gets a SELECT",
     lambda: Script(on={"SELECT": [CLOSE]}),
     tool=[("connect", OK), ("meta INBOX", ERR)])

case("select-parse-error",
     "the answer to every SELECT is unparsable ('* 1 EXISTS' followed by ')')",
     lambda: Script(on={"SELECT": [b"* 1 EXISTS )\r\n", DEFAULT]}),
     tool=[("connect", OK), ("meta INBOX", ERR)])

case("select-no",
     "every SELECT fails with a tagged NO (the well-behaved way to refuse)",
     lambda: Script(on={"SELECT": [b"@TAG@ NO [NONEXISTENT] no such mailbox\r\n"]}),
     tool=[("connect", OK), ("meta INBOX", ERR + "!"), ("body INBOX 1", ERR + "!")], mount="ok")

# -- COMPRESS=DEFLATE (asked for with compress=yes)

Z_CAPS = fs.DEFAULT_CAPS + " COMPRESS=DEFLATE"
Z_OK = b"@TAG@ OK begin compression\r\n"

case("compress-works",
     "COMPRESS=DEFLATE offered and done right: everything goes through raw deflate both ways",
     lambda: Script(caps=Z_CAPS, on={"COMPRESS": [Z_OK, DEFLATE]}),
     tool=[(o, OK) for o in STD_OPS], mount="ok", must_read=(1, 2), compress=True)

case("compress-refused",
     "COMPRESS answered with NO: the connection goes on uncompressed",
     lambda: Script(caps=Z_CAPS, on={"COMPRESS": [b"@TAG@ NO not now\r\n"]}),
     tool=[(o, OK) for o in STD_OPS], mount="ok", must_read=(1, 2), compress=True)

case("compress-not-done",
     "COMPRESS answered with OK, but the server goes on in plain text",
     lambda: Script(caps=Z_CAPS, on={"COMPRESS": [Z_OK]}),
     tool=[("connect", ANY), ("list", ERR), ("body INBOX 1", ERR)], mount="any",
     compress=True)

case("compress-data-after-ok",
     "bytes right after the OK to COMPRESS, before the client said anything compressed",
     lambda: Script(caps=Z_CAPS, on={"COMPRESS": [Z_OK + b"\x78\x9c\x03\x00", DEFLATE]}),
     tool=[("connect", ERR + "!"), ("list", ERR)], mount="fail", compress=True)

case("compress-garbage",
     "after COMPRESS, the answer to LIST is random bytes, not deflate",
     lambda: Script(caps=Z_CAPS, on={"COMPRESS": [Z_OK, DEFLATE],
                                     "LIST": [lambda ctx: ctx.session.raw_garbage()]}),
     tool=[("connect", OK), ("list", ERR), ("body INBOX 1", ANY)], mount="any", compress=True)

case("compress-stream-ends",
     "after COMPRESS, the server ends its deflate stream (Z_FINISH) after a LIST",
     lambda: Script(caps=Z_CAPS, on={"COMPRESS": [Z_OK, DEFLATE],
                                     "LIST": [DEFAULT, lambda ctx: ctx.session.end_deflate()]}),
     tool=[("connect", OK), ("list", ANY), ("meta INBOX", ANY)], mount="any", compress=True)

case("select-bye",
     "every SELECT is answered with '* BYE' and a close",
     lambda: Script(on={"SELECT": [b"* BYE [UNAVAILABLE] maintenance\r\n", CLOSE]}),
     tool=[("connect", OK), ("meta INBOX", ERR)])

case("fetch-close-always",
     "the server closes the connection on every metadata FETCH (the command is sent each time)",
     lambda: Script(on={"FETCH_META": [CLOSE]}),
     tool=[("connect", OK), ("meta INBOX", ERR + "!")], mount="ok")

case("select-close-after-reconnect",
     "the first SELECT works; the body FETCH and every later SELECT close the connection",
     lambda: Script(on={"SELECT": cycle([DEFAULT], [CLOSE]), "FETCH_BODY": [CLOSE]}),
     tool=[("connect", OK), ("meta INBOX", OK), ("body INBOX 1", ERR)], mount="ok")

case("missing-tagged",
     "the metadata FETCH gets its data but never its tagged completion",
     lambda: Script(on={"FETCH_META": [DEFAULT_DATA]}),
     tool=[("connect", OK), ("list", OK), ("meta INBOX", ERR)])

case("silent-after-login",
     "the server logs in, then never answers anything",
     lambda: Script(on={k: [HANG] for k in ("LIST", "SELECT", "FETCH_META", "FETCH_BODY",
                                            "FETCH_FLAGS", "STATUS", "NOOP", "CAPABILITY",
                                            "ENABLE")}),
     tool=[("connect", OK), ("list", ERR)], mount="fail")

case("silent-greeting",
     "the server accepts the connection and never says anything",
     lambda: Script(greeting=[HANG]),
     tool=[("connect", ERR)], mount="fail")

case("silent-login",
     "the server greets, then never answers the login",
     lambda: Script(on={"AUTHENTICATE": [HANG], "LOGIN": [HANG]}),
     tool=[("connect", ERR)], mount="fail")

case("tag-never-sent",
     "the metadata FETCH is completed with a tag the client never sent",
     lambda: Script(on={"FETCH_META": [DEFAULT_DATA, b"ZZZ999 OK done\r\n", HANG]}),
     tool=[("connect", OK), ("meta INBOX", ERR + "!")])

case("unsolicited-continuation",
     "'+ more please' in the middle of a LIST answer",
     lambda: Script(on={"LIST": [b"+ more please\r\n", DEFAULT]}),
     tool=[("connect", OK), ("list", ERR + "!")], mount="fail")

case("bye-mid-fetch",
     "one FETCH response, then '* BYE' and close",
     lambda: Script(on={"FETCH_META": [per_message(
         lambda seq, m, ctx: [meta_line(seq, m.uid, m.size), b"* BYE shutting down\r\n", CLOSE]
         if m.uid == 1 else None)]}),
     tool=[("connect", OK), ("meta INBOX", ERR + "!")])

case("bye-mid-literal",
     "'* BYE' where the body literal should be, then close",
     lambda: Script(on={"FETCH_BODY": [only_uid(1, [
         b"* 1 FETCH (UID 1 BODY[] {64}\r\n* BYE going away\r\n", CLOSE])]}),
     tool=[("connect", OK), ("body INBOX 1", ERR + "!"), ("body INBOX 2", ANY)])

# -- connections turned away: the first one works, the server refuses more
# (a limit of connections per user that other clients have used up)


def three_folders(**kw):
    return Script(folders=fs.default_folders() + [
        Folder(b"Second", [Msg(1, b"Subject: in Second\r\n\r\nbody\r\n")]),
        Folder(b"Third", [Msg(1, b"Subject: in Third\r\n\r\nbody\r\n")])], **kw)


def first_only(actions):
    return lambda ctx: [DEFAULT] if ctx.conn == 1 else actions


def pipeline_ok(results, server):
    done = [r for r in results if r.get("op") == "pipeline"]
    if not done or done[0].get("failed") != 0:
        return ["the pipeline over three folders lost commands to refused connections: %r"
                % (done,)]
    if server.connections < 2:
        return ["the pool never tried a second connection (%d)" % server.connections]
    return []


SPREAD = ("pipeline INBOX 6 Second Third", OK)

LIMIT_NO = first_only([b"@TAG@ NO [LIMIT] Maximum number of connections from user+IP "
                       b"exceeded\r\n"])

case("limit-extra-connections",
     "LOGIN or AUTHENTICATE on every connection but the first: NO [LIMIT] Maximum number of "
     "connections",
     lambda: three_folders(on={"LOGIN": LIMIT_NO, "AUTHENTICATE": LIMIT_NO}),
     tool=[("connect", OK), SPREAD, ("body INBOX 1", OK)],
     mount="ok", must_read=(1, 2), check_tool=pipeline_ok)

case("bye-greeting-extra-connections",
     "every connection but the first is greeted with '* BYE Too many connections' and closed",
     lambda: three_folders(greeting=[lambda ctx: [
         b"* OK [CAPABILITY " + fs.DEFAULT_CAPS.encode() + b"] fake IMAP ready\r\n"]
         if ctx.conn == 1 else [b"* BYE Too many connections\r\n", CLOSE]]),
     tool=[("connect", OK), SPREAD, ("body INBOX 1", OK)],
     mount="ok", must_read=(1, 2), check_tool=pipeline_ok)

case("close-after-greeting",
     "the server greets and closes",
     lambda: Script(greeting=[b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n", CLOSE]),
     tool=[("connect", ERR + "!")], mount="fail")

case("close-mid-literal",
     "the body literal {64} stops after 30 bytes: the server closes",
     lambda: Script(on={"FETCH_BODY": [only_uid(1, [body_literal(1, 64, M1[:30]), CLOSE])]}),
     tool=[("connect", OK), ("body INBOX 1", ERR + "!"), ("body INBOX 2", ANY)])

case("hang-mid-literal",
     "the body literal {64} stops after 30 bytes: the server waits",
     lambda: Script(on={"FETCH_BODY": [only_uid(1, [body_literal(1, 64, M1[:30]), HANG])]}),
     tool=[("connect", OK), ("body INBOX 1", ERR)])

case("slow-trickle",
     "the body arrives one byte every 0.1 s (never silent for the timeout)",
     lambda: Script(on={"FETCH_BODY": [only_uid(1, [body_literal(1, len(M1), b"")] + [
         x for c in M1[:12] for x in (Pause(0.1), bytes([c]))] + [M1[12:] + b")\r\n"])]}),
     tool=[("connect", OK), ("body INBOX 1", OK)], must_read={1})

# -- greetings

case("greeting-bye",
     "the greeting is '* BYE'",
     lambda: Script(greeting=b"* BYE [UNAVAILABLE] go away\r\n"),
     tool=[("connect", ERR + "!")], mount="fail")

case("greeting-garbage",
     "the greeting is an HTTP error",
     lambda: Script(greeting=b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"),
     tool=[("connect", ERR + "!")], mount="fail")

case("greeting-binary",
     "the greeting is 4 KB of binary junk",
     lambda: Script(greeting=[bytes(range(256)) * 16, HANG]),
     tool=[("connect", ERR + "!")], mount="fail")

case("greeting-tagged",
     "the greeting is a tagged OK",
     lambda: Script(greeting=b"A1 OK hello\r\n"),
     tool=[("connect", ERR + "!")], mount="fail")


def no_login(results, server):
    bad = [c for c in server.commands() if c.split(b" ")[1:2] in
           ([b"LOGIN"], [b"AUTHENTICATE"])]
    return ["the client logged in after PREAUTH: %r" % bad] if bad else []


case("greeting-preauth",
     "PREAUTH greeting (allowed with tls=none): everything works, no login is sent",
     lambda: Script(greeting=b"* PREAUTH [CAPABILITY IMAP4rev1 UIDPLUS] you are in\r\n"),
     tool=[("connect", OK), ("list", OK), ("meta INBOX", OK), ("body INBOX 1", OK)],
     mount="ok", must_read={1, 2},
     check_tool=no_login, check_mount=lambda w, s, c: no_login(None, s))

case("greeting-preauth-no-caps",
     "PREAUTH greeting without capabilities (the client must ask)",
     lambda: Script(greeting=b"* PREAUTH hello\r\n"),
     tool=[("connect", OK), ("list", OK), ("meta INBOX", OK), ("body INBOX 1", OK)],
     mount="ok", must_read={1, 2},
     check_tool=no_login, check_mount=lambda w, s, c: no_login(None, s))

# -- line ends


def bare_cr(ctx):
    d = ctx.session.default(ctx.cmd)
    return [x.replace(b")\r\n", b")\r") for x in d[:-1]] + [d[-1]]


case("cr-without-lf",
     "FETCH responses end in a bare CR",
     lambda: Script(on={"FETCH_META": [bare_cr], "FETCH_BODY": [bare_cr]}),
     tool=[("connect", OK), ("meta INBOX", ANY), ("body INBOX 1", ANY)])

LF_ALL = ("LIST", "SELECT", "FETCH_META", "FETCH_BODY", "FETCH_FLAGS", "STATUS", "CAPABILITY",
          "ENABLE", "NOOP", "LOGIN", "AUTHENTICATE")

case("lf-without-cr",
     "every line ends in a bare LF (literal bodies keep their CRLF)",
     lambda: Script(greeting=b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR UIDPLUS] hi\n",
                    on={k: [lf_only([DEFAULT])] for k in LF_ALL}),
     tool=[("connect", ANY), ("list", ANY), ("meta INBOX", ANY), ("body INBOX 1", ANY)])

case("empty-lines",
     "empty lines between responses",
     lambda: Script(on={k: [lambda ctx: [b"\r\n\r\n"] + [x + b"\r\n" for x in
                                                         ctx.session.default(ctx.cmd)]]
                        for k in ("LIST", "SELECT", "FETCH_META", "FETCH_BODY")}),
     tool=[("connect", OK), ("list", ANY), ("meta INBOX", ANY), ("body INBOX 1", ANY)])

# -- mailbox names


def list_of(*entries):
    return [b"".join(b"* LIST %s\r\n" % e for e in entries), OKT]


def has_dir(path_parts):
    def check(walk, server, case):
        names = walk.get("dirs", {})
        parent = b""
        for p in path_parts:
            if p not in names.get(parent, []):
                return ["expected %r in %r, seen %r" % (p, parent or b"/", names.get(parent))]
            parent = p if not parent else parent + b"/" + p
        return []
    return check


case("list-nil-delimiter",
     "a flat hierarchy (NIL delimiter) with a name holding '/'",
     lambda: Script(on={"LIST": list_of(b'(\\HasNoChildren) NIL "a/b.c"', b"() NIL INBOX")}),
     tool=[("connect", OK), ("list", OK)], mount="ok",
     check_mount=has_dir([b"a%2Fb.c"]))

case("names-slash-dots",
     "names '..', '.', '../../etc', 'a//b', '/lead', 'trail/', '%2F', 'x/./y'",
     lambda: Script(on={"LIST": list_of(
         b'() "/" ".."', b'() "/" "."', b'() "/" "../../etc"', b'() "/" "a//b"',
         b'() "/" "/lead"', b'() "/" "trail/"', b'() "/" "%2F"', b'() "/" "x/./y"',
         b'() "." "..."', b'() "/" INBOX')}),
     tool=[("connect", OK), ("list", ANY)], mount="ok")

case("names-control-chars",
     "names with C0 controls, ESC sequences, DEL, tab, CRLF, raw and encoded C1",
     lambda: Script(on={"LIST": list_of(
         b'() "/" {4}\r\na\x01b\x02', b'() "/" {9}\r\n\x1b[31mred!', b'() "/" "del\x7f"',
         b'() "/" "tab\there"', b'() "/" {6}\r\nab\r\ncd', b'() "/" {5}\r\nc1\xc2\x85x',
         b'() "/" "&AAE-x"', b'() "/" "&AJs-31m"', b'() "/" "&ABsAWw-2J"', b'() "/" INBOX')}),
     tool=[("connect", OK), ("list", ANY)], mount="ok")

case("mutf7-invalid",
     "invalid modified UTF-7: '&Jjo!', '&AGE-&AGE-', '&', '&ZZZ', '&2D3dAA-', '&AC8-'",
     lambda: Script(on={"LIST": list_of(
         b'() "/" "&Jjo!"', b'() "/" "&AGE-&AGE-"', b'() "/" "&"', b'() "/" "&ZZZ"',
         b'() "/" "&2D3dAA-"', b'() "/" "&AC8-"', b'() "/" "x&AGE"', b'() "/" INBOX')}),
     tool=[("connect", OK), ("list", ANY)], mount="ok")

case("name-only-amp",
     "a folder named '&-' (that is '&')",
     lambda: Script(on={"LIST": list_of(b'() "/" "&-"', b'() "/" INBOX')}),
     tool=[("connect", OK), ("list", OK)], mount="ok", check_mount=has_dir([b"&"]))

case("name-huge",
     "2000-byte names: ASCII, an encoded run, and 40 levels of 100 bytes",
     lambda: Script(on={"LIST": list_of(
         b'() "/" "' + b"a" * 2000 + b'"', b'() "/" "&' + b"AOkA6QDp" * 250 + b'-"',
         b'() "/" "' + b"/".join([b"b" * 100] * 40) + b'"',
         b'() "/" {2000}\r\n' + b"%" * 2000, b'() "/" INBOX')}),
     tool=[("connect", OK), ("list", ANY)], mount="ok")

case("list-duplicates",
     "INBOX listed twice, 'Dup' three times (once \\Noselect)",
     lambda: Script(on={"LIST": list_of(
         b'() "/" INBOX', b'() "/" INBOX', b'() "/" Dup', b'(\\Noselect) "/" Dup', b'() "/" Dup',
         b'() "/" inbox')}),
     tool=[("connect", OK), ("list", ANY)], mount="ok")

case("list-delimiters-odd",
     "delimiters '\"ab\"', '\"\"', '\"\\\\\"', NIL and a literal",
     lambda: Script(on={"LIST": list_of(
         b'() "ab" "xaby"', b'() "" "q"', b'() "\\\\" "a\\\\b"', b'() {1}\r\n. "p.q"',
         b'() "/" INBOX')}),
     tool=[("connect", OK), ("list", ANY)], mount="any")

case("list-attrs-garbage",
     "LIST attributes with nesting, strings and a literal",
     lambda: Script(on={"LIST": list_of(
         b'(\\Noselect (nested) "str" {3}\r\nabc) "/" X', b'(\\HasChildren \\HasNoChildren '
         b'\\Marked \\Unmarked \\NonExistent) "/" Y', b'NIL "/" Z', b'() "/" INBOX')}),
     tool=[("connect", OK), ("list", ANY)], mount="any")

case("eight-bit-quoted",
     "8-bit bytes in quoted names (Latin-1, invalid UTF-8, valid raw UTF-8)",
     lambda: Script(on={"LIST": list_of(
         b'() "/" "caf\xe9"', b'() "/" "\xff\xfe\xfd"', b'() "/" "Gr\xc3\xbc\xc3\x9fe"',
         b'() "/" "\xed\xa0\x80surrogate"', b'() "/" "\xf4\x90\x80\x80big"', b'() "/" INBOX')}),
     tool=[("connect", OK), ("list", ANY)], mount="ok")


def no_select_of(name):
    def check(walk, server, case):
        bad = [c for c in server.commands() if re.match(rb"\S+ (SELECT|EXAMINE) \"?" +
                                                        re.escape(name) + rb"\"?( |$)", c)]
        eml = [p for p in walk.get("files", {}) if p.startswith(name + b"/") and
               p.count(b"/") == 1]
        return (["a \\Noselect folder was selected: %r" % bad] if bad else []) + \
               (["a \\Noselect folder shows messages: %r" % eml] if eml else [])
    return check


case("noselect-with-messages",
     "a \\Noselect folder for which the server would list messages",
     lambda: Script(folders=[Folder(b"Archive", std_msgs(), attrs=b"\\Noselect \\HasChildren"),
                             Folder(b"Archive/2024", [Msg(5, M2)]), Folder(b"INBOX", std_msgs())]),
     tool=[("connect", OK), ("list", OK)], mount="ok",
     check_mount=no_select_of(b"Archive"))

# -- UIDs


def uid_case(uids):
    def meta(ctx):
        out = []
        for i, u in enumerate(uids, 1):
            out.append(meta_line(i, u, 64, subject=b"Subject: weird uid\r\n\r\n"))
        return out + [meta_line(len(uids) + 1, 2, len(M2), subject=b"Subject: Second\r\n\r\n"), OKT]
    return meta


case("uid-zero",
     "a FETCH response with UID 0",
     lambda: Script(on={"FETCH_META": [uid_case([b"0"])]}),
     tool=[("connect", OK), ("meta INBOX", ANY)])

case("uid-too-big",
     "FETCH responses with UID 4294967296 and 99999999999999999999",
     lambda: Script(on={"FETCH_META": [uid_case([b"4294967296", b"99999999999999999999"])]}),
     tool=[("connect", OK), ("meta INBOX", ANY)])

case("uid-negative",
     "FETCH responses with UID -1 and +5",
     lambda: Script(on={"FETCH_META": [uid_case([b"-1", b"+5"])]}),
     tool=[("connect", OK), ("meta INBOX", ANY)])


def one_name_per_uid(walk, server, case):
    out = []
    for d, names in walk.get("dirs", {}).items():
        seen = {}
        for n in names:
            m = re.search(rb"\.(\d+)\.eml$", n)
            if m:
                seen.setdefault(m.group(1), []).append(n)
        out += ["UID %s shown %d times in %r: %r" % (u.decode(), len(v), d, v)
                for u, v in seen.items() if len(v) > 1]
    return out


case("duplicate-uids",
     "two FETCH responses claim UID 1, with sizes 64 and 9999 and other subjects",
     lambda: Script(on={"FETCH_META": [
         meta_line(1, 1, 64, subject=b"Subject: first claim\r\n\r\n"),
         meta_line(2, 1, 9999, subject=b"Subject: second claim\r\n\r\n"),
         meta_line(3, 2, len(M2)), OKT]}),
     tool=[("connect", OK), ("meta INBOX", ANY), ("body INBOX 1", ANY)],
     check_mount=one_name_per_uid)

case("seq-numbers-odd",
     "FETCH responses numbered 0 and 4294967296, and EXPUNGE of 0",
     lambda: Script(on={"FETCH_META": [
         meta_line(0, 1, 64) + b"* 4294967296 FETCH (UID 2 FLAGS ())\r\n* 0 EXPUNGE\r\n",
         meta_line(2, 2, len(M2)), OKT]}),
     tool=[("connect", OK), ("meta INBOX", ANY)])

# -- sizes that disagree with the body

case("size-larger-than-body",
     "RFC822.SIZE 5000 for a 64-byte body",
     lambda: Script(folders=inbox([Msg(1, M1, size=5000), Msg(2, M2)])),
     tool=[("connect", OK), ("meta INBOX", OK), ("body INBOX 1", OK)], mount="ok")

case("size-smaller-than-body",
     "RFC822.SIZE 10 for a 64-byte body",
     lambda: Script(folders=inbox([Msg(1, M1, size=10), Msg(2, M2)])),
     tool=[("connect", OK), ("meta INBOX", OK), ("body INBOX 1", OK)], mount="ok")

case("size-zero-for-body",
     "RFC822.SIZE 0 for a 64-byte body",
     lambda: Script(folders=inbox([Msg(1, M1, size=0), Msg(2, M2)])),
     tool=[("connect", OK), ("meta INBOX", OK), ("body INBOX 1", OK)], mount="ok")

# A read-only mount answers no open (so no direct_io): a message whose size
# lies must still read whole; one announced as empty is fetched at lookup.
for what, size in (("zero", 0), ("smaller", 10), ("larger", 5000)):
    case("size-%s-for-body-ro" % what,
         "-o ro: RFC822.SIZE %d for a 64-byte body" % size,
         lambda size=size: Script(folders=inbox([Msg(1, M1, size=size), Msg(2, M2)])),
         tool=[("connect", OK)], mount="ok", must_read={1, 2}, ro=True)

case("size-over-range-threshold",
     "RFC822.SIZE 3 MiB (range fetches) for a 64-byte body",
     lambda: Script(folders=inbox([Msg(1, M1, size=3 << 20), Msg(2, M2)])),
     tool=[("connect", OK), ("meta INBOX", OK), ("body INBOX 1", OK)], mount="ok")


def filler_ranges(ctx):
    out = []
    _, items = fetch_items(ctx.cmd)
    rng = re.search(rb"BODY(?:\.PEEK)?\[\]<(\d+)\.(\d+)>", items.upper())
    for seq, m in requested(ctx):
        if rng and m.uid == 1:
            off, n = int(rng.group(1)), int(rng.group(2))
            out.append(b"* %d FETCH (UID 1 BODY[]<%d> {%d}\r\n" % (seq, off, n) + b"x" * n + b")\r\n")
        else:
            out.append(default_body(seq, m, ctx))
    return out + [OKT]


def no_short_complete(walk, server, case):
    """The server answers every range of UID 1 in full, so the message
    really is as long as its RFC822.SIZE: a read that ends early (EOF before
    st_size) serves a truncated body as complete, and no body file of
    another length may be in the cache."""
    out = []
    for p, ev in walk.get("files", {}).items():
        if p.endswith(b".1.eml") and ev["eof"] and ev["length"] < ev["size"]:
            out.append("%r: EOF after %d bytes, but st_size is %d and the server serves every "
                       "range: a truncated body served as complete" % (p, ev["length"], ev["size"]))
    for dirpath, _, files in os.walk(os.path.join(walk.get("cache", "/nonexistent"), "bodies")):
        for f in files:
            if f == "1":
                size = os.path.getsize(os.path.join(dirpath, f))
                out.append("cache: a body file of %d bytes for UID 1 (RFC822.SIZE is far larger): "
                           "a partial body stored as complete" % size)
    return out


case("size-2^52-ranges",
     "RFC822.SIZE 2^52+2^20 (4 PiB), every range answered in full; a read at 2 MiB",
     lambda: Script(folders=inbox([Msg(1, M1, size=(1 << 52) + (1 << 20)), Msg(2, M2)]),
                    on={"FETCH_BODY": [filler_ranges]}),
     tool=[("connect", OK), ("meta INBOX", OK)], mount="ok", any_content=True,
     check_mount=no_short_complete)

case("size-2^63",
     "RFC822.SIZE 9223372036854775807 and 18446744073709551615",
     lambda: Script(folders=inbox([Msg(1, M1, size=(1 << 63) - 1), Msg(2, M2, size=(1 << 64) - 1)]),
                    on={"FETCH_BODY": [filler_ranges]}),
     tool=[("connect", OK), ("meta INBOX", ANY)], mount="ok", any_content=True,
     check_mount=no_short_complete)

# -- FETCH oddities

case("fetch-missing-uid",
     "FETCH responses without UID (metadata and body)",
     lambda: Script(on={
         "FETCH_META": [b'* 1 FETCH (FLAGS () RFC822.SIZE 64 INTERNALDATE "' + DATE + b'")\r\n',
                        meta_line(2, 2, len(M2)), OKT],
         "FETCH_BODY": [only_uid(1, [b"* 1 FETCH (BODY[] {%d}\r\n%s)\r\n" % (len(M1), M1)])]}),
     tool=[("connect", OK), ("meta INBOX", ANY), ("body INBOX 1", ANY)])

case("internaldate-garbage",
     "INTERNALDATE 'garbage', '99-Foo-99999 99:99:99 +9999', NIL, \"\", 12345",
     lambda: Script(on={"FETCH_META": [
         meta_line(1, 1, 64, date=b'"garbage"'),
         meta_line(2, 2, 60, date=b'"99-Foo-99999 99:99:99 +9999"'),
         meta_line(3, 3, 60, date=b"NIL"), meta_line(4, 4, 60, date=b'""'),
         meta_line(5, 5, 60, date=b"12345"), OKT]}),
     tool=[("connect", OK), ("meta INBOX", ANY)])

case("internaldate-extreme",
     "INTERNALDATE in year 1, year 9999 with -2359, and day 31 of February",
     lambda: Script(on={"FETCH_META": [
         meta_line(1, 1, 64, date=b'"01-Jan-0001 00:00:00 +2359"'),
         meta_line(2, 2, 60, date=b'"31-Dec-9999 23:59:59 -2359"'),
         meta_line(3, 3, 60, date=b'"31-Feb-2023 25:61:61 +0000"'),
         meta_line(4, 4, 60, date=b'" 1-Jan-1970 00:00:00 +0000"'), OKT]}),
     tool=[("connect", OK), ("meta INBOX", ANY)])

case("flags-garbage",
     "FLAGS with odd atoms, quoted strings, a literal, NIL, nesting and \\*",
     lambda: Script(on={"FETCH_META": [
         meta_line(1, 1, 64, flags=b'\\Seen foo\\bar "quoted" {3}\r\nabc NIL (nested) \\* $\x7f'),
         meta_line(2, 2, 60, flags=b"\\" + b"F" * 5000), OKT]}),
     tool=[("connect", OK), ("meta INBOX", ANY)])

case("fetch-extra-items",
     "unknown FETCH items (X-GM-MSGID, BODYSTRUCTURE, a literal) around the body",
     lambda: Script(on={"FETCH_BODY": [per_message(
         lambda seq, m, ctx: [b"* %d FETCH (X-GM-MSGID 1234 BODYSTRUCTURE (\"text\" \"plain\" NIL NIL "
                              b"NIL \"7bit\" 1 1) UID %d X-LIT {4}\r\nabcd BODY[] {%d}\r\n%s "
                              b"X-AFTER (a b))\r\n" % (seq, m.uid, len(m.body), m.body)])]}),
     tool=[("connect", OK), ("body INBOX 1", OK)], must_read={1, 2})

case("body-nil",
     "BODY[] NIL for message 1",
     lambda: Script(on={"FETCH_BODY": [only_uid(1, [b"* 1 FETCH (UID 1 BODY[] NIL)\r\n"])]}),
     tool=[("connect", OK), ("body INBOX 1", ANY)])

case("body-quoted-string",
     "the body as a quoted string instead of a literal",
     lambda: Script(on={"FETCH_BODY": [only_uid(1, [b'* 1 FETCH (UID 1 BODY[] "short body")\r\n'])]}),
     tool=[("connect", OK), ("body INBOX 1", ANY)], accept={1: [b"short body"]})

case("body-wrong-uid",
     "asked for UID 1, the server answers with UID 2's body",
     lambda: Script(on={"FETCH_BODY": [only_uid(1, [
         b"* 2 FETCH (UID 2 BODY[] {%d}\r\n%s)\r\n" % (len(M2), M2)])]}),
     tool=[("connect", OK), ("body INBOX 1", ANY)])

case("body-twice",
     "one FETCH response with two BODY[] items for UID 1",
     lambda: Script(on={"FETCH_BODY": [only_uid(1, [
         b"* 1 FETCH (UID 1 BODY[] {5}\r\nAAAAA BODY[] {%d}\r\n%s)\r\n" % (len(M1), M1)])]}),
     tool=[("connect", OK), ("body INBOX 1", ANY)], accept={1: [b"AAAAA"]})

case("body-no-answer",
     "the body FETCH completes OK without any FETCH response",
     lambda: Script(on={"FETCH_BODY": [OKT]}),
     tool=[("connect", OK), ("body INBOX 1", ANY)])

case("body-fetch-no",
     "the body FETCH fails with NO [SERVERBUG]",
     lambda: Script(on={"FETCH_BODY": [b"@TAG@ NO [SERVERBUG] boom\r\n"]}),
     tool=[("connect", OK), ("body INBOX 1", ERR)])

case("fetch-expunge-storm",
     "1000 EXPUNGE responses (most for absent sequence numbers) during the FETCH",
     lambda: Script(on={"FETCH_META": [b"".join(b"* %d EXPUNGE\r\n" % (i % 7 + 1)
                                                for i in range(1000)), DEFAULT]}),
     tool=[("connect", OK), ("meta INBOX", ANY)])

# -- SELECT oddities

SEL_BASE = (b"* FLAGS (\\Seen)\r\n* 2 EXISTS\r\n* OK [UIDNEXT 3] n\r\n")

case("select-no-uidvalidity",
     "SELECT without UIDVALIDITY",
     lambda: Script(on={"SELECT": [SEL_BASE, OKT]}),
     tool=[("connect", OK), ("meta INBOX", ANY)])

case("uidvalidity-zero",
     "SELECT with UIDVALIDITY 0",
     lambda: Script(on={"SELECT": [SEL_BASE + b"* OK [UIDVALIDITY 0] v\r\n", OKT]}),
     tool=[("connect", OK), ("meta INBOX", ANY)])

case("uidvalidity-huge",
     "SELECT with UIDVALIDITY 4294967296 and -1",
     lambda: Script(on={"SELECT": [SEL_BASE + b"* OK [UIDVALIDITY 4294967296] v\r\n"
                                   b"* OK [UIDVALIDITY -1] w\r\n", OKT]}),
     tool=[("connect", OK), ("meta INBOX", ANY)])

case("exists-huge",
     "SELECT with 4000000000 and 4294967295 EXISTS, EXPUNGE and FETCH of huge numbers; "
     "99999999999 EXISTS during the FETCH",
     lambda: Script(on={"SELECT": [b"* 4000000000 EXISTS\r\n* 4294967295 EXISTS\r\n"
                                   b"* 4294967295 EXPUNGE\r\n* 4000000000 FETCH (UID 1 FLAGS ())\r\n",
                                   DEFAULT],
                       "FETCH_META": [b"* 99999999999 EXISTS\r\n", DEFAULT]}),
     tool=[("connect", OK), ("meta INBOX", ANY), ("body INBOX 1", ANY)])

case("vanished-huge",
     "VANISHED 1:4294967295 and VANISHED (EARLIER) 1:4294967295 in SELECT and FETCH answers",
     lambda: Script(caps=fs.DEFAULT_CAPS + " ENABLE CONDSTORE QRESYNC",
                    on={k: [b"* VANISHED 1:4294967295\r\n* VANISHED (EARLIER) 1:4294967295\r\n"
                            b"* VANISHED 4294967295:1,0,x\r\n", DEFAULT]
                        for k in ("SELECT", "FETCH_META", "FETCH_BODY", "FETCH_FLAGS")}),
     tool=[("connect", OK), ("meta INBOX", ANY + "!"), ("body INBOX 1", ANY + "!")])

# -- other responses the engine decodes

case("status-garbage",
     "STATUS with 'x', -1 and 99999999999 as values, and a truncated list",
     lambda: Script(on={"STATUS": cycle([b"* STATUS INBOX (MESSAGES x UIDNEXT -1 UIDVALIDITY "
                                         b"99999999999)\r\n", OKT],
                                        [b"* STATUS INBOX (MESSAGES)\r\n", OKT],
                                        [b"* STATUS\r\n", OKT])}),
     tool=[("connect", OK), ("status INBOX", ANY), ("status INBOX", ANY), ("status INBOX", ANY)],
     mount=None)

ES_CAPS = fs.DEFAULT_CAPS + " ESEARCH"

case("esearch-garbage",
     "ESEARCH answers with bad sets, negative COUNT, missing values, a wrong tag",
     lambda: Script(caps=ES_CAPS, on={"SEARCH": cycle(
         [b'* ESEARCH (TAG "@TAG@") UID ALL 1:*:3,x COUNT -5 MIN\r\n', OKT],
         [b'* ESEARCH (TAG "@TAG@") UID ALL\r\n', OKT],
         [b'* ESEARCH (TAG "nope") UID ALL 1:5\r\n* ESEARCH (TAG\r\n', OKT],
         [b'* ESEARCH (TAG "@TAG@") UID ALL 0:0,4294967296\r\n', OKT],
         [b'* ESEARCH (TAG "@TAG@") UID ALL 1:4294967295\r\n', OKT])}),
     tool=[("connect", OK)] + [("search INBOX ALL", ANY + "!")] * 5, mount=None)

case("copyuid-mismatch",
     "COPYUID with source and destination sets of different sizes, and garbage",
     lambda: Script(on={"COPY": cycle([b"@TAG@ OK [COPYUID 7 1:3 10:11] done\r\n"],
                                      [b"@TAG@ OK [COPYUID 7 1,2 5] done\r\n"],
                                      [b"@TAG@ OK [COPYUID x 1:* 0] done\r\n"],
                                      [b"@TAG@ OK [COPYUID 7 1:4294967295 1:4294967295] done\r\n"]),
                        "MOVE": [b"* OK [COPYUID 7 1,2 5] moved\r\n* 1 EXPUNGE\r\n", OKT]}),
     tool=[("connect", OK)] + [("copy INBOX 1:3 Other", ANY + "!")] * 4 +
          [("move INBOX 1:2 Other", ANY + "!")], mount=None,
     check_tool=lambda results, server: [
         "%s: a mapping was made from an inconsistent COPYUID: %r" % (r["op"], r["pairs"])
         for r in results if r.get("pairs")])

case("appenduid-garbage",
     "APPENDUID 'x y', '7 0', '7 1:*', '0 5', '7 4294967296', '' ",
     lambda: Script(on={"APPEND": cycle(
         [b"@TAG@ OK [APPENDUID x y] done\r\n"], [b"@TAG@ OK [APPENDUID 7 0] done\r\n"],
         [b"@TAG@ OK [APPENDUID 7 1:*] done\r\n"], [b"@TAG@ OK [APPENDUID 0 5] done\r\n"],
         [b"@TAG@ OK [APPENDUID 7 4294967296] done\r\n"], [b"@TAG@ OK [APPENDUID] done\r\n"])}),
     tool=[("connect", OK)] + [("append INBOX MSGFILE  0", ANY + "!")] * 6, mount=None)

case("continuation-on-append-refused",
     "APPEND: the server answers the literal's '+' wait with NO",
     lambda: Script(on={"APPEND": [b"@TAG@ NO [TOOBIG] no thanks\r\n"]}),
     tool=[("connect", OK), ("append INBOX MSGFILE  0", ANY)], mount=None)

# -- alerts and subjects

ESC_TEXT = b"\x1b]0;owned\x07\x1b[2J\x1b[31mALERT\x1b[0m\x9b31m"

case("alert-escapes",
     "[ALERT] texts with terminal escape sequences (OSC title, clear screen, colour, 8-bit CSI)",
     lambda: Script(on={k: [b"* OK [ALERT] " + ESC_TEXT + b"\r\n", DEFAULT]
                        for k in ("LIST", "SELECT", "FETCH_META")}),
     tool=[("connect", OK), ("list", OK), ("meta INBOX", OK)], mount="ok")

case("alert-in-tagged-no",
     "a tagged NO [ALERT] with escapes on SELECT",
     lambda: Script(on={"SELECT": [b"@TAG@ NO [ALERT] " + ESC_TEXT + b"\r\n"]}),
     tool=[("connect", OK), ("meta INBOX", ERR)], mount="ok")


def subj(n, block, body=None):
    return Msg(n, body or (b"Subject: plain\r\n\r\nbody %d\r\n" % n), subject_block=block)


case("subject-control-chars",
     "Subjects with C0/C1 controls, ESC, DEL, NUL, and encoded-words decoding to controls",
     lambda: Script(folders=inbox([
         subj(1, b"Subject: a\x01b\x1b[31mc\x7fd\te\x00f\r\n\r\n"),
         subj(2, b"Subject: =?UTF-8?B?" + base64.b64encode(b"\x1b[31m\n\r\x00x/../y") + b"?=\r\n\r\n"),
         subj(3, b"Subject: =?UTF-8?Q?a=00b=0Ac=C2=85d=E2=80=AEe?=\r\n\r\n"),
         subj(4, b"Subject: \x85\x9b latin1 C1\r\n\r\n"),
         subj(5, b"Subject: ..\r\n\r\n"), subj(6, b"Subject: /\r\n\r\n"),
         subj(7, b"Subject: =?x-unknown?B?AAAA?= =?UTF-8?B?////?=\r\n\r\n"),
     ])),
     tool=[("connect", OK), ("meta INBOX", OK)], mount="ok", must_read={1, 2, 3, 4, 5, 6, 7})

case("subject-10kb",
     "10 KB Subjects: multibyte letters, words, and one folded over many lines",
     lambda: Script(folders=inbox([
         subj(1, b"Subject: " + "\u00e9".encode() * 5000 + b"\r\n\r\n"),
         subj(2, b"Subject: " + b"word " * 2000 + b"\r\n\r\n"),
         subj(3, b"Subject: " + b"\r\n ".join([b"fold"] * 2000) + b"\r\n\r\n"),
         subj(4, b"Subject: " + "\U0001F600".encode() * 2500 + b"\r\n\r\n"),
         subj(5, b"Subject: " + b"\xe0\xa4\x95\xe0\xa5\x8d" * 1700 + b"\r\n\r\n"),
     ])),
     tool=[("connect", OK), ("meta INBOX", OK)], mount="ok", must_read={1, 2, 3, 4, 5})

case("subject-block-huge",
     "a 200 KB Subject block (over the 64 KiB the name code looks at)",
     lambda: Script(folders=inbox([subj(1, b"Subject: " + b"x" * 200000 + b"\r\n\r\n"),
                                   subj(2, b"X-No-Subject: here\r\n\r\n")])),
     tool=[("connect", OK), ("meta INBOX", OK)], mount="ok", must_read={1, 2})

case("empty-body",
     "a message whose body is empty (RFC822.SIZE 0, BODY[] {0})",
     lambda: Script(folders=inbox([Msg(1, b"", subject_block=b""), Msg(2, M2)])),
     tool=[("connect", OK), ("meta INBOX", OK), ("body INBOX 1", OK)], mount="ok",
     must_read={1, 2})


# ---- running -----------------------------------------------------------------------


WALKER = r'''
import base64, json, os, stat, sys
root = os.fsencode(sys.argv[1])
LIMIT = 4 << 20
count = 0
def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\n"); sys.stdout.flush()
def walk(rel, depth):
    global count
    path = os.path.join(root, rel) if rel else root
    emit(ev="listdir", path=rel.hex())
    try:
        names = os.listdir(path)
    except OSError as e:
        emit(ev="error", op="listdir", path=rel.hex(), errno=e.errno); return
    emit(ev="dir", path=rel.hex(), names=[n.hex() for n in names])
    for n in sorted(names):
        count += 1
        if count > 3000:
            return
        r = os.path.join(rel, n) if rel else n
        p = os.path.join(root, r)
        emit(ev="lstat", path=r.hex())
        try:
            st = os.lstat(p)
        except OSError as e:
            emit(ev="error", op="lstat", path=r.hex(), errno=e.errno); continue
        for x in ("user.imap.folder", "user.imap.flags", "user.imap.internaldate"):
            try:
                os.getxattr(p, x, follow_symlinks=False)
            except OSError:
                pass
        if stat.S_ISDIR(st.st_mode):
            emit(ev="isdir", path=r.hex())
            if depth < 8:
                walk(r, depth + 1)
        elif stat.S_ISREG(st.st_mode):
            read_file(r, p, st)
        else:
            emit(ev="odd", path=r.hex(), mode=st.st_mode)
def read_file(r, p, st):
    emit(ev="open", path=r.hex(), size=st.st_size)
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError as e:
        emit(ev="error", op="open", path=r.hex(), errno=e.errno); return
    try:
        chunks, total, eof = [], 0, False
        try:
            while total < LIMIT:
                b = os.read(fd, 65536)
                if not b:
                    eof = True
                    break
                chunks.append(b); total += len(b)
        except OSError as e:
            emit(ev="error", op="read", path=r.hex(), errno=e.errno, after=total)
        else:
            data = b"".join(chunks)
            emit(ev="content", path=r.hex(), size=st.st_size, eof=eof, length=len(data),
                 data=base64.b64encode(data[:1 << 20]).decode())
        if st.st_size > (2 << 20) + 8192:
            try:
                b = os.pread(fd, 4096, (2 << 20) + 100)
                emit(ev="probe", path=r.hex(), length=len(b), xs=b.count(b"x"))
            except OSError as e:
                emit(ev="error", op="pread", path=r.hex(), errno=e.errno)
    finally:
        os.close(fd)
emit(ev="start")
walk(b"", 0)
emit(ev="end")
'''


class Result:
    """The TAP points of one case: [(ok, what, [diagnostics])]."""

    def __init__(self, case):
        self.case = case
        self.points = []
        self.notes = []

    def point(self, ok, what, diag=()):
        self.points.append((bool(ok), what, list(diag)))

    def none_of(self, problems, what):
        problems = list(problems)
        self.point(not problems, what + (" (%d problem%s)" % (len(problems), "s" * (len(problems) > 1))
                                        if problems else ""), problems)


class Env:
    def __init__(self, tool, imapfs, base, args):
        self.tool, self.imapfs, self.base, self.args = tool, imapfs, base, args
        self.pw = os.path.join(base, "pw")
        with open(self.pw, "w") as f:
            f.write("secret\n")
        self.msgfile = os.path.join(base, "msg.eml")
        with open(self.msgfile, "wb") as f:
            f.write(b"From: x@example.org\r\nSubject: appended\r\n\r\nhi\r\n")
        self.fuse = os.path.exists("/dev/fuse") and shutil.which("fusermount3")
        self.scale = args.get("scale", 1.0)


def child_env(rundir, leaks):
    env = dict(os.environ)
    for d in ("home", "tmp", "cwd"):
        os.makedirs(os.path.join(rundir, d), exist_ok=True)
    env["HOME"] = os.path.join(rundir, "home")
    env["XDG_CACHE_HOME"] = os.path.join(rundir, "home", ".cache")
    env["XDG_CONFIG_HOME"] = os.path.join(rundir, "home", ".config")
    env["XDG_DATA_HOME"] = os.path.join(rundir, "home", ".local")
    env["TMPDIR"] = os.path.join(rundir, "tmp")
    env.pop("IMAPFS_PASSWORD", None)
    env.pop("IMAP_TOOL_DEBUG", None)
    env["ASAN_OPTIONS"] = "detect_leaks=%d:abort_on_error=0:halt_on_error=1" % (1 if leaks else 0)
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=0"
    env["G_DEBUG"] = ""
    return env


SAN_RE = re.compile(rb"ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer|"
                    rb"SUMMARY: UndefinedBehaviorSanitizer")
CTRL_RE = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")
# C1 controls as raw 8-bit bytes (0x9b is CSI on an 8-bit terminal) or in UTF-8
C1_RE = re.compile(rb"(?<![\xc0-\xf4])[\x80-\x9f]|\xc2[\x80-\x9f]")


def log_problems(data, who):
    out = []
    m = SAN_RE.search(data)
    if m:
        i = m.start()
        out.append("%s: sanitizer report: %s" % (who, data[max(0, i - 200):i + 1500].decode(
            "utf-8", "replace")))
    if b"CRITICAL **" in data:
        i = data.index(b"CRITICAL **")
        out.append("%s: GLib CRITICAL: %r" % (who, data[max(0, i - 100):i + 300]))
    return out


def ctrl_problems(data, who, regex=CTRL_RE):
    m = regex.search(data)
    if not m:
        return []
    i = m.start()
    line_start = data.rfind(b"\n", 0, i) + 1
    line_end = data.find(b"\n", i)
    return ["%s: raw control byte 0x%02x in its log/stderr: %r" % (
        who, data[i], data[line_start:line_end if line_end >= 0 else None][:300])]


def short_log(server, n=8):
    cmds = server.commands()
    return "%d logged, first %r, last %r" % (len(cmds), cmds[:n], cmds[-4:])


def run_tool(env, case, script, rundir, res):
    server = fs.FakeServer(script).start()
    outdir = os.path.join(rundir, "out")
    os.makedirs(outdir, exist_ok=True)
    args = [env.tool, "--host", "127.0.0.1", "--port", str(server.port), "--tls", "none",
            "--user", "alice", "--password-file", env.pw, "--timeout", str(TOOL_TIMEOUT_MS)]
    if case.compress:
        args += ["--compress", "yes"]
    bodies = {}
    for i, (op, _) in enumerate(case.tool):
        words = op.split(" ")
        if words[0] == "body":
            path = os.path.join(outdir, "body-%d.out" % i)
            words.append(path)
            bodies[i] = (int(words[2]) if words[2].isdigit() else None, path)
        if words[0] == "append":
            words = ["append", words[1], env.msgfile, "", "0"]
        if i:
            args.append(",")
        args += words
    errpath = os.path.join(rundir, "tool.err")
    lines = []
    t0 = time.monotonic()
    with open(errpath, "wb") as err:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err, cwd=os.path.join(rundir, "cwd"),
                                env=child_env(rundir, env.args.get("leaks")),
                                start_new_session=True)

        def reader():
            for line in proc.stdout:
                lines.append((time.monotonic(), line))
        th = threading.Thread(target=reader, daemon=True)
        th.start()
        hung = False
        hard = min(HARD_LIMIT, OP_LIMIT * len(case.tool) + 5) * env.scale
        try:
            proc.wait(timeout=hard)
        except subprocess.TimeoutExpired:
            hung = True
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        th.join(5)
    elapsed = time.monotonic() - t0
    server.stop()
    with open(errpath, "rb") as f:
        stderr = f.read()
    rc = proc.returncode
    crash = []
    if hung:
        pass  # a hang, reported below; SIGKILL was ours
    elif rc < 0:
        crash.append("imap-tool died of signal %d (%s)" % (-rc, signal.Signals(-rc).name))
    elif rc != 0:
        crash.append("imap-tool exited with status %d" % rc)
    crash += log_problems(stderr, "imap-tool")
    if crash:
        crash.append("stderr: %r" % stderr[-1500:])
    res.none_of(crash, "imap-tool: no crash (exit status %s)" % (
        "none: killed by the test after %d s" % hard if hung else rc))

    # One JSON line per op, in order, each in time.
    results, problems, timing = [], [], []
    prev = t0
    for i, (t, raw) in enumerate(lines):
        try:
            results.append(json.loads(raw.decode("utf-8", "surrogateescape")))
        except ValueError:
            problems.append("unparsable output line %r" % raw[:300])
            results.append({})
        if i < len(case.tool):
            limit = (FAST_LIMIT if case.tool[i][1].endswith("!") else OP_LIMIT) * env.scale
            if i == 0:
                limit += 1.0 * env.scale  # process start
            if t - prev > limit:
                timing.append("op %r took %.1f s (limit %.1f s)" % (case.tool[i][0], t - prev, limit))
        prev = t
    if len(results) < len(case.tool) and not hung:
        problems.append("%d result lines for %d operations" % (len(results), len(case.tool)))
    if hung:
        timing.append("no end after %d s; ops answered: %d of %d" % (hard, len(lines),
                                                                     len(case.tool)))
    res.none_of(timing, "imap-tool: no hang (%.1f s for %d ops)" % (elapsed, len(case.tool)))
    max_conns = 2 * len(case.tool) + 2
    res.none_of(["the engine connected %d times for %d operations (at most %d expected): it "
                 "reconnects in a loop; commands: %s" % (
                     server.connections, len(case.tool), max_conns, short_log(server))]
                if server.connections > max_conns else [],
                "imap-tool: no reconnect storm (%d connections)" % server.connections)

    accept = case.accept(script)
    for i, (op, want) in enumerate(case.tool):
        if i >= len(results):
            break
        r = results[i]
        want = want.rstrip("!")
        got = "error" if "error" in r else "ok"
        if want != ANY and got != want:
            problems.append("op %r: expected %s, got %s" % (op, want, json.dumps(r)[:400]))
        if i in bodies and got == "ok":
            uid, path = bodies[i]
            data = open(path, "rb").read()
            if r.get("streamed"):
                if not r.get("complete"):
                    problems.append("op %r: success with an incomplete body %r" % (op, r))
                elif not case.any_content and data not in accept.get(uid, ()):
                    problems.append("op %r: the body file holds %d bytes %r, not what the server "
                                    "sent for UID %s" % (op, len(data), data[:120], uid))
        if "error" in r:
            e = r["error"]
            if not isinstance(e.get("code"), int) or not e.get("message"):
                problems.append("op %r: malformed error %r" % (op, e))
    if case.check_tool:
        problems += case.check_tool(results, server)
    problems += ["fake server: %s" % e for e in server.errors]
    res.none_of(problems, "imap-tool: outcomes as expected: %s" % ", ".join(
        "%s=%s" % (op.split(" ")[0], ("error(%s)" % r["error"].get("code") if "error" in r else "ok"))
        for (op, _), r in zip(case.tool, results)))
    res.notes.append("tool: " + " | ".join(json.dumps(r)[:200] for r in results))
    res.tool_stderr = stderr


def mounted(path):
    # Never stat the mountpoint here: a hung daemon would hang the test.
    p = os.path.normpath(path)
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 1 and re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)),
                                          fields[1]) == p:
                return True
    return False


def wait_for(pred, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def fusermount(path, lazy=False):
    try:
        return subprocess.run(["fusermount3", "-uz" if lazy else "-u", path], timeout=10,
                              capture_output=True).returncode
    except subprocess.TimeoutExpired:
        return None


MSG_RE = re.compile(rb"^\d{4}-\d\d-\d\d_\d{4}(?:_.+)?\.([1-9][0-9]*)\.eml$", re.S)


def name_problems(name, is_dir):
    out = []
    try:
        s = name.decode("utf-8")
    except UnicodeDecodeError:
        return ["%r is not valid UTF-8" % name]
    if not name:
        out.append("an empty name")
    if len(name) > NAME_MAX:
        out.append("%r... is %d bytes (more than %d)" % (name[:60], len(name), NAME_MAX))
    if b"/" in name or b"\0" in name:
        out.append("%r contains / or NUL" % name)
    if name in (b".", b".."):
        out.append("a name is %r" % name)
    bad = [c for c in s if ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f]
    if bad:
        out.append("%r contains control characters %r" % (name[:120], "".join(bad)))
    if not is_dir:
        m = MSG_RE.match(name)
        if not m:
            out.append("file %r is not of the form YYYY-MM-DD_HHMM_<slug>.<uid>.eml" % name[:120])
        elif int(m.group(1)) > 0xFFFFFFFF:
            out.append("file %r has a UID over 2^32-1" % name[:120])
    return out


def parse_walk(text):
    w = {"dirs": {}, "files": {}, "errors": [], "isdir": set(), "last": None, "ended": False,
         "probes": {}, "odd": []}
    for line in text.splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        w["last"] = ev
        kind = ev.get("ev")
        path = bytes.fromhex(ev.get("path", ""))
        if kind == "dir":
            w["dirs"][path] = [bytes.fromhex(n) for n in ev["names"]]
        elif kind == "isdir":
            w["isdir"].add(path)
        elif kind == "content":
            w["files"][path] = ev
        elif kind == "error":
            w["errors"].append((ev["op"], path, ev["errno"]))
        elif kind == "probe":
            w["probes"][path] = ev
        elif kind == "odd":
            w["odd"].append((path, ev["mode"]))
        elif kind == "end":
            w["ended"] = True
    return w


def describe_last(ev):
    if not ev:
        return "nothing"
    e = dict(ev)
    if "path" in e:
        e["path"] = bytes.fromhex(e["path"])
    e.pop("data", None)
    e.pop("names", None)
    return repr(e)


def run_mount(env, case, script, rundir, res):
    server = fs.FakeServer(script).start()
    mnt = os.path.join(rundir, "mnt")
    cache = os.path.join(rundir, "cache")
    os.makedirs(mnt, exist_ok=True)
    logpath = os.path.join(rundir, "daemon.log")
    cenv = child_env(rundir, env.args.get("leaks"))
    args = [env.imapfs, "-f", "-o", "port=%d,tls=none,password_file=%s,cache_dir=%s,timeout=%d%s"
            % (server.port, env.pw, cache, MOUNT_TIMEOUT_S,
               (",compress=yes" if case.compress else "") + (",ro" if case.ro else "")),
            "alice@127.0.0.1", mnt]
    crash, hang, names, reads, other = [], [], [], [], []
    killed = False
    t0 = time.monotonic()
    with open(logpath, "wb") as log:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                cwd=os.path.join(rundir, "cwd"), env=cenv, start_new_session=True)
    is_up = wait_for(lambda: mounted(mnt) or proc.poll() is not None, MOUNT_WAIT * env.scale)
    up = mounted(mnt)
    walk = {}
    outcome = "mounted" if up else "not mounted"
    if not is_up:
        hang.append("imapfs -f neither mounted nor exited within %.0f s" % (MOUNT_WAIT * env.scale))
    if up:
        # The walk runs in a child: a hung FUSE call hangs it, not us.
        wt0 = time.monotonic()
        wp = subprocess.Popen([sys.executable, "-c", WALKER, mnt], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              cwd=os.path.join(rundir, "cwd"), env=cenv, start_new_session=True)
        try:
            out, err = wp.communicate(timeout=WALK_LIMIT * env.scale)
        except subprocess.TimeoutExpired:
            os.killpg(wp.pid, signal.SIGKILL)
            out, err = wp.communicate()
            w = parse_walk(out.decode())
            hang.append("the walk of the mount did not end within %.0f s; last step: %s"
                        % (WALK_LIMIT * env.scale, describe_last(w["last"])))
        walk = parse_walk(out.decode())
        walk["seconds"] = time.monotonic() - wt0
        walk["cache"] = cache
        if not walk["ended"] and not hang:
            other.append("the walker failed: %r" % err[-500:])
        alive = proc.poll() is None
        if not alive:
            rc = proc.returncode
            if rc < 0:
                crash.append("imapfs died of signal %d (%s) during the walk" % (
                    -rc, signal.Signals(-rc).name))
            else:
                other.append("imapfs exited (status %d) while mounted" % rc)
        # unmount
        if mounted(mnt):
            deadline = time.monotonic() + 5
            while fusermount(mnt) != 0 and time.monotonic() < deadline:
                time.sleep(0.2)
        if alive:
            try:
                proc.wait(timeout=8 * env.scale)
            except subprocess.TimeoutExpired:
                hang.append("imapfs did not exit within %.0f s of the unmount" % (8 * env.scale))
    if proc.poll() is None:
        killed = True
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if mounted(mnt):
        fusermount(mnt, lazy=True)
        other.append("the mountpoint was still mounted after the daemon ended")
    server.stop()
    if server.connections > MOUNT_MAX_CONNS:
        hang.append("imapfs connected %d times (at most %d expected): it reconnects in a loop; "
                    "commands: %s" % (server.connections, MOUNT_MAX_CONNS, short_log(server)))
    rc = proc.returncode
    with open(logpath, "rb") as f:
        log = f.read()
    if rc is not None and rc < 0 and not killed and not crash:
        crash.append("imapfs died of signal %d (%s)" % (-rc, signal.Signals(-rc).name))
    crash += log_problems(log, "imapfs")
    if not up and not hang:
        if rc == 0:
            other.append("imapfs exited 0 without mounting")
        elif rc is not None and rc > 0 and not log.strip().startswith(b"imapfs:"):
            other.append("imapfs failed without a one-line 'imapfs: ...' message: %r" % log[:300])
        outcome = "failed cleanly (status %s: %s)" % (rc, log.strip().split(b"\n")[0][:150].decode(
            "utf-8", "replace"))
    if killed:
        other.append("imapfs had to be killed by the test (status %s)" % rc)
    elif up and rc not in (0, None) and not crash:
        other.append("imapfs exited with status %s after the unmount" % rc)
    if case.mount == "ok" and not up:
        other.append("the mount was expected to work: %s" % outcome)
    if case.mount == "fail" and up:
        other.append("the mount was expected to fail, but it mounted")
    if crash:
        crash.append("log tail: %r" % log[-1500:])
    res.none_of(crash, "mount: no crash (%s; exit status %s)" % (outcome, rc))
    res.none_of(hang, "mount: no hang (%.1f s in all%s)" % (
        time.monotonic() - t0, ", walk %.1f s" % walk["seconds"] if walk.get("seconds") else ""))

    if up:
        # names
        for d, ns in walk["dirs"].items():
            if len(set(ns)) != len(ns):
                dup = sorted({n for n in ns if ns.count(n) > 1})
                names.append("duplicate names in %r: %r" % (d or b"/", dup[:5]))
            for n in ns:
                p = d + b"/" + n if d else n
                names += ["%r: %s" % (d or b"/", x) for x in
                          name_problems(n, p in walk["isdir"] or p in walk["dirs"] or not d)]
        for p, mode in walk["odd"]:
            names.append("%r is neither a file nor a directory (mode %o)" % (p, mode))
        res.none_of(names, "mount: every name is valid (%d names in %d directories)" % (
            sum(len(v) for v in walk["dirs"].values()), len(walk["dirs"])))
        # bytes
        accept = case.accept(script)
        read_uids = {}
        for p, ev in walk["files"].items():
            m = re.search(rb"\.(\d+)\.eml$", p)
            uid = int(m.group(1)) if m else None
            data = base64.b64decode(ev["data"])
            if case.any_content:
                if data.strip(b"x") and data not in accept.get(uid, ()):
                    reads.append("%r read %d bytes that the server never sent: %r" % (
                        p, len(data), data[:80]))
                continue
            if not ev["eof"]:
                reads.append("%r: more than 4 MiB read without EOF (st_size %d)" % (p, ev["size"]))
                continue
            if data not in accept.get(uid, ()):
                want = sorted(accept.get(uid, ()), key=len)
                reads.append("%r read %d bytes %r, not what the server sent for UID %s (%s)" % (
                    p, len(data), data[:100], uid, ", ".join(
                        "%d bytes %r" % (len(b), b[:60]) for b in want) or "no body at all"))
            read_uids.setdefault(uid, []).append(p)
        for uid in sorted(case.must_read):
            if uid not in read_uids:
                errs = [e for e in walk["errors"] if re.search(rb"\.%d\.eml$" % uid, e[1])]
                reads.append("UID %d must read exactly, but %s" % (
                    uid, "failed: %r" % errs if errs else "no file for it was seen"))
        res.none_of(reads, "mount: files read exactly what the server sent, or fail with an errno "
                    "(%d read, %d errors%s)" % (
                        len(walk["files"]), len(walk["errors"]), (": " + ", ".join(
                            "%s %s" % (op, os.strerror(e)) for op, _, e in walk["errors"][:3])
                        ) if walk["errors"] else ""))
        other += ["command never sent by imapfs: %r" % c for c in server.commands()
                  if re.search(rb"BODY\[", c) and re.match(rb"\S+ UID FETCH", c)]
        if case.check_mount:
            other += case.check_mount(walk, server, case)
    other += cache_problems(cache, case, script, rundir)
    other += ["fake server: %s" % e for e in server.errors]
    res.none_of(other, "mount: clean exit, cache dir sane, script checks")
    res.daemon_log = log
    for d, ns in sorted(walk.get("dirs", {}).items()):
        res.notes.append("  %r: %s" % (d or b"/", " ".join(repr(n)[2:-1][:80] for n in sorted(ns))[:900]))
    res.notes.append("mount: %s; walk: %d dirs, %d files read, errors %r" % (
        outcome, len(walk.get("dirs", {})), len(walk.get("files", {})),
        [(op, p[:60], os.strerror(e)) for op, p, e in walk.get("errors", [])][:6]))


CACHE_TOP = {"index.sqlite", "index.sqlite-wal", "index.sqlite-shm", "index.sqlite-journal",
             "bodies", "tmp"}


def cache_problems(cache, case, script, rundir):
    out = []
    if not os.path.isdir(cache):
        return out
    accept = case.accept(script)
    real = os.path.realpath(cache)
    for dirpath, dirnames, filenames in os.walk(cache):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, cache)
            if os.path.islink(p):
                out.append("cache: %s is a symbolic link (to %s)" % (rel, os.readlink(p)))
                continue
            if not os.path.realpath(p).startswith(real + os.sep):
                out.append("cache: %s resolves outside the cache dir" % rel)
            parts = rel.split(os.sep)
            if parts[0] not in CACHE_TOP:
                out.append("cache: unexpected entry %r" % rel)
            elif parts[0] == "bodies" and len(parts) > 1:
                if not all(x.isdigit() for x in parts[1:]) or len(parts) > 4:
                    out.append("cache: body path not built from numbers: %r" % rel)
                elif len(parts) == 4 and os.path.isfile(p) and not case.any_content:
                    data = open(p, "rb").read()
                    if data not in accept.get(int(parts[3]), ()):
                        out.append("cache: body file %s holds %d bytes %r: not a complete body "
                                   "the server sent for UID %s" % (rel, len(data), data[:80],
                                                                   parts[3]))
            elif parts[0] == "tmp" and len(parts) > 1:
                out.append("cache: %s left in tmp/ after the daemon ended" % rel)
    return out


def containment(rundir):
    out = []
    expected = {"cwd", "home", "tmp", "mnt", "cache", "out", "tool.err", "daemon.log"}
    for n in sorted(set(os.listdir(rundir)) - expected):
        out.append("new entry %r in the run directory (the cache dir's parent)" % n)
    for d in ("cwd", "home", "tmp", "mnt"):
        p = os.path.join(rundir, d)
        if not mounted(p) and os.path.isdir(p):
            for dirpath, dirnames, filenames in os.walk(p):
                for n in dirnames + filenames:
                    out.append("%s/%s was created (only the cache dir may be written)" % (
                        d, os.path.relpath(os.path.join(dirpath, n), p)))
    outdir = os.path.join(rundir, "out")
    if os.path.isdir(outdir):
        for n in os.listdir(outdir):
            if not re.fullmatch(r"body-\d+\.out", n):
                out.append("out/%s was created" % n)
    return out


def run_case(env, case):
    res = Result(case)
    res.tool_stderr = b""
    res.daemon_log = b""
    rundir = os.path.join(env.base, "runs", case.name)
    os.makedirs(rundir)
    try:
        script = case.script()
        if not env.args.get("no_tool") and case.tool:
            run_tool(env, case, script, rundir, res)
        if case.mount and not env.args.get("no_mount"):
            if env.fuse:
                run_mount(env, case, case.script(), rundir, res)
            else:
                res.points.append((True, "mount # SKIP /dev/fuse or fusermount3 missing", []))
        logs = ctrl_problems(res.tool_stderr, "imap-tool") + ctrl_problems(res.daemon_log, "imapfs")
        res.none_of(logs, "logs: no raw C0 control bytes (ESC, BEL, ...) from the server")
        c1 = ctrl_problems(res.tool_stderr, "imap-tool", C1_RE) + \
            ctrl_problems(res.daemon_log, "imapfs", C1_RE)
        res.none_of(c1, "logs: no raw C1 control bytes (8-bit CSI 0x9b, ...) from the server")
        res.none_of(containment(rundir), "nothing created outside the cache dir")
    except Exception:
        import traceback
        res.point(False, "the test itself failed", traceback.format_exc().splitlines())
    return res


def parse_args(argv):
    args = {"jobs": 8, "scale": 1.0}
    pos = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--only":
            args["only"] = argv[i + 1].split(",")
            i += 1
        elif a == "--jobs":
            args["jobs"] = int(argv[i + 1])
            i += 1
        elif a == "--scale":
            args["scale"] = float(argv[i + 1])
            i += 1
        elif a in ("--no-mount", "--no-tool", "--leaks", "--list", "--keep", "--verbose"):
            args[a[2:].replace("-", "_")] = True
        else:
            pos.append(a)
        i += 1
    return pos, args


def main():
    pos, args = parse_args(sys.argv[1:])
    if args.get("list"):
        for c in CASES:
            print("%-34s %s" % (c.name, c.about))
        return 0
    if len(pos) < 2:
        print("1..0 # SKIP usage: test_hostile.py IMAP_TOOL IMAPFS")
        return 0
    tool, imapfs = (os.path.abspath(p) for p in pos[:2])
    if "asan" in tool or "sanitize" in tool:
        args["scale"] = max(args["scale"], 1.5)
    cases = CASES
    if args.get("only"):
        cases = [c for c in CASES if any(o in c.name for o in args["only"])]
    names = [c.name for c in CASES]
    assert len(set(names)) == len(names), "duplicate case names"

    parent = tempfile.gettempdir()
    before = set(os.listdir(parent))
    base = os.path.realpath(tempfile.mkdtemp(prefix="imapfs-hostile-"))
    env = Env(tool, imapfs, base, args)
    print("# imapfs hostile-server test: %d scripts, tool %s, imapfs %s" % (len(cases), tool, imapfs))
    if not env.fuse:
        print("# SKIP mount checks: /dev/fuse or fusermount3 is missing")
    t0 = time.monotonic()
    n = 0
    failed_cases = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=args["jobs"]) as ex:
        futures = [ex.submit(run_case, env, c) for c in cases]
        for c, fut in zip(cases, futures):
            res = fut.result()
            print("# --- %s: %s" % (c.name, c.about))
            if args.get("verbose"):
                for note in res.notes:
                    print("#   " + note.replace("\n", " ")[:1000])
            bad = False
            for ok, what, diag in res.points:
                n += 1
                what = what.replace("\n", " ").replace("#", "\\#") if "# SKIP" not in what else what
                print("%s %d - %s: %s" % ("ok" if ok else "not ok", n, c.name, what))
                if not ok:
                    bad = True
                    for d in diag[:10]:
                        print("#   " + str(d).replace("\n", "\n#   ")[:3000])
            if bad:
                failed_cases.append(c.name)
            sys.stdout.flush()
    # The temp dir's parent: nothing of ours may appear there.
    after = set(os.listdir(parent))
    new = sorted(x for x in after - before if not x.startswith("imapfs-hostile-"))
    ours = [x for x in new if re.match(r"(body|part)\w{6}$", x) or x in ("cwd", "home", "mnt",
                                                                         "cache", "out")]
    n += 1
    print("%s %d - nothing of imapfs appeared in %s%s" % (
        "not ok" if ours else "ok", n, parent, (": %r" % ours) if ours else ""))
    if new and not ours:
        print("# (other new entries in %s, from other processes: %r)" % (parent, new[:10]))
    if ours:
        failed_cases.append("temp-parent")
    print("# %d scripts run in %.0f s; %d with failures%s" % (
        len(cases), time.monotonic() - t0, len(failed_cases),
        (": " + ", ".join(failed_cases)) if failed_cases else ""))
    print("1..%d" % n)
    if args.get("keep"):
        print("# kept %s" % base)
    else:
        if not [m for m in open("/proc/mounts").read().split("\n") if base in m]:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print("# %s left: something is still mounted there" % base)
    return 1 if failed_cases else 0


if __name__ == "__main__":
    sys.exit(main())
