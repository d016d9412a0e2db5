/* SPDX-License-Identifier: MIT */
/*
 * Response parser tests. Every transcript is fed whole, one byte at a time
 * and in random chunks; the renderings (and the sink's log) must match the
 * table and each other, since the split of a TCP stream is arbitrary.
 */
#include <string.h>

#include "imap-private.h"

/* ---- A recording sink ---- */

typedef struct {
	GString *data;
	guint64 size;
	gboolean closed;
} TestHandle;

typedef struct {
	GString *log; /* open/close events: independent of the split */
	GPtrArray *handles; /* TestHandle *, freed with the sink */
	gboolean fail_on_x; /* write() fails on data containing 'X' */
	guint writes;
} TestSink;

static void test_handle_free(gpointer data)
{
	TestHandle *h = data;

	g_string_free(h->data, TRUE);
	g_free(h);
}

static TestSink *test_sink_new(void)
{
	TestSink *ts = g_new0(TestSink, 1);

	ts->log = g_string_new(NULL);
	ts->handles = g_ptr_array_new_with_free_func(test_handle_free);
	return ts;
}

static void test_sink_free(TestSink *ts)
{
	/* Every handle the parser got must have been closed by now. */
	for (guint i = 0; i < ts->handles->len; i++)
		g_assert_true(((TestHandle *)ts->handles->pdata[i])->closed);
	g_string_free(ts->log, TRUE);
	g_ptr_array_unref(ts->handles);
	g_free(ts);
}

static void append_escaped(GString *out, const char *s, gsize len)
{
	for (gsize i = 0; i < len; i++) {
		guchar c = s[i];

		if (c >= 0x20 && c < 0x7f && c != '\\')
			g_string_append_c(out, c);
		else
			g_string_append_printf(out, "\\x%02x", c);
	}
}

/* Streams what looks like message content; everything else stays in
 * memory, as the real cache does. */
static gpointer sink_open(guint64 size, const char *context,
			  const ImapResponse *resp, gpointer user_data)
{
	TestSink *ts = user_data;

	g_assert_nonnull(resp);
	if (!context || (!g_str_has_prefix(context, "BODY[") &&
			 !g_str_has_prefix(context, "BINARY[")))
		return NULL;

	TestHandle *h = g_new0(TestHandle, 1);

	h->data = g_string_new(NULL);
	h->size = size;
	g_ptr_array_add(ts->handles, h);
	g_string_append_printf(ts->log, "open(%" G_GUINT64_FORMAT ",%s)", size,
			       context);
	return h;
}

static gboolean sink_write(gpointer handle, const guint8 *data, gsize len,
			   gpointer user_data, GError **error)
{
	TestSink *ts = user_data;
	TestHandle *h = handle;

	g_assert_false(h->closed);
	g_assert_cmpuint(len, >, 0);
	g_assert_cmpuint(h->data->len + len, <=, h->size);
	ts->writes++;
	if (ts->fail_on_x && memchr(data, 'X', len)) {
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_LIMIT, "disk full");
		return FALSE;
	}
	g_string_append_len(h->data, (const char *)data, len);
	return TRUE;
}

static void sink_close(gpointer handle, gboolean complete, gpointer user_data)
{
	TestSink *ts = user_data;
	TestHandle *h = handle;

	g_assert_false(h->closed);
	h->closed = TRUE;
	if (complete) {
		g_assert_cmpuint(h->data->len, ==, h->size);
		g_string_append(ts->log, "close(1,");
		append_escaped(ts->log, h->data->str, h->data->len);
		g_string_append(ts->log, ")");
	} else {
		g_string_append(ts->log, "abort");
	}
}

static const ImapLiteralSink test_sink_funcs = {
	.open = sink_open,
	.write = sink_write,
	.close = sink_close,
};

/* ---- Feeding ---- */

typedef enum {
	SPLIT_WHOLE,
	SPLIT_BYTES,
	SPLIT_RANDOM,
	SPLIT_RANDOM_BIG,
} Split;

typedef struct {
	GString *out; /* renderings, one per line, then ERR:<code> */
	ImapErrorCode code;
	gboolean failed;
	gsize consumed; /* bytes consumed including the failing call */
} FeedResult;

static void feed_result_clear(FeedResult *r)
{
	g_string_free(r->out, TRUE);
}

static void check_response_invariants(const ImapResponse *resp)
{
	if (resp->kind == IMAP_RESP_CONTINUATION)
		g_assert_nonnull(resp->text);
	if (resp->kind == IMAP_RESP_TAGGED)
		g_assert_nonnull(resp->tag);
	if (resp->code)
		g_assert_nonnull(resp->code_args);
	if (resp->status != IMAP_STATUS_NONE)
		g_assert_nonnull(resp->text);
	else if (resp->kind != IMAP_RESP_CONTINUATION)
		g_assert_nonnull(resp->args);
}

static void feed(ImapParser *p, const char *data, gsize len, Split split,
		 guint32 seed, FeedResult *r)
{
	g_autoptr(GRand) rand = g_rand_new_with_seed(seed);
	gsize off = 0;

	r->out = g_string_new(NULL);
	r->failed = FALSE;
	while (off < len) {
		gsize chunk = len - off;

		if (split == SPLIT_BYTES)
			chunk = 1;
		else if (split == SPLIT_RANDOM)
			chunk = g_rand_int_range(rand, 1, 24);
		else if (split == SPLIT_RANDOM_BIG)
			chunk = g_rand_int_range(rand, 1, 5000);
		chunk = MIN(chunk, len - off);

		gsize end = off + chunk;

		while (off < end) {
			g_autoptr(ImapResponse) resp = NULL;
			g_autoptr(GError) error = NULL;
			gsize used = 0;
			ImapParseResult res = imap_parser_feed(
				p, (const guint8 *)data + off, end - off, &used,
				&resp, &error);

			g_assert_cmpuint(used, <=, end - off);
			off += used;
			if (res == IMAP_PARSE_ERROR) {
				g_assert_nonnull(error);
				g_assert_true(error->domain == IMAP_ERROR);
				g_assert_null(resp);
				g_string_append_printf(r->out, "ERR:%d\n",
						       error->code);
				r->failed = TRUE;
				r->code = error->code;
				r->consumed = off;
				return;
			}
			g_assert_no_error(error);
			if (res == IMAP_PARSE_NEED_MORE) {
				g_assert_null(resp);
				g_assert_cmpuint(off, ==, end);
				continue;
			}
			g_assert_nonnull(resp);
			g_assert_cmpuint(used, >, 0);
			check_response_invariants(resp);

			g_autofree char *s =
				imap_response_to_string(resp, TRUE);

			g_string_append_printf(r->out, "%s\n", s);
		}
	}
	r->consumed = off;
	/* Feeding nothing is harmless. */
	{
		g_autoptr(ImapResponse) resp = NULL;
		gsize used = 1;

		g_assert_cmpint(imap_parser_feed(p, (const guint8 *)"", 0,
						 &used, &resp, NULL),
				==, IMAP_PARSE_NEED_MORE);
		g_assert_cmpuint(used, ==, 0);
	}
}

/* ---- Well-formed transcripts ---- */

typedef struct {
	const char *name;
	const char *input;
	gsize len; /* 0: strlen(input) */
	const char *expect; /* renderings, "\n"-terminated */
	const char *sink_log; /* with the test sink, or NULL for no sink */
} GoodCase;

#define BIN(s) s, sizeof(s) - 1

static const GoodCase good_cases[] = {
	{"greeting",
	 "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE "
	 "LITERAL+ AUTH=PLAIN] Dovecot ready.\r\n",
	 0,
	 "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE "
	 "LITERAL+ AUTH=PLAIN] Dovecot ready.\n"},
	{"preauth and bye",
	 "* PREAUTH IMAP4rev1 server logged in as Smith\r\n"
	 "* BYE Autologout; idle for too long\r\n",
	 0,
	 "* PREAUTH IMAP4rev1 server logged in as Smith\n"
	 "* BYE Autologout; idle for too long\n"},
	{"tagged with wild text",
	 "a001 OK LOGIN completed\r\n"
	 "A2 NO [AUTHENTICATIONFAILED] Invalid (credentials\r\n"
	 "A3 BAD Command unrecognized: \"(( ]] {5}\r\n",
	 0,
	 "a001 OK LOGIN completed\n"
	 "A2 NO [AUTHENTICATIONFAILED] Invalid (credentials\n"
	 "A3 BAD Command unrecognized: \"(( ]] {5}\n"},
	{"case-insensitive status and code",
	 "a4 ok [read-write] Select completed\r\n* bye [alert] gone\r\n", 0,
	 "a4 OK [READ-WRITE] Select completed\n* BYE [ALERT] gone\n"},
	{"status without text",
	 "A5 OK\r\n* OK [ALERT]\r\n* NO [ALERT] \r\n* OK [ALERT]x y\r\n", 0,
	 "A5 OK\n* OK [ALERT]\n* NO [ALERT]\n* OK [ALERT] x y\n"},
	{"continuations",
	 "+\r\n+ \r\n+ Ready for additional command text\r\n"
	 "+ YGgGCSqGSIb3EgECAgIBAAD/////6jcyG4GE3KkTzmeTxAAAAAAEAAA=\r\n"
	 "+ {5}\r\n",
	 0,
	 "+\n+\n+ Ready for additional command text\n"
	 "+ YGgGCSqGSIb3EgECAgIBAAD/////6jcyG4GE3KkTzmeTxAAAAAAEAAA=\n"
	 "+ {5}\n"},
	{"codes with arguments",
	 "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen "
	 "\\Draft \\*)] Flags permitted.\r\n"
	 "A6 OK [COPYUID 38505 304,319:320 3956:3958] Done\r\n"
	 "* OK [UIDVALIDITY 3857529045] UIDs valid\r\n"
	 "* OK [HIGHESTMODSEQ 715194045007]\r\n"
	 "A7 NO [EXPUNGEISSUED] Some messages were expunged\r\n"
	 "A8 NO [BADCHARSET (UTF-8 \"US-ASCII\")] bad\r\n"
	 "A9 OK [READ-ONLY] EXAMINE completed\r\n"
	 "* OK [X-FOO NIL (a nil) \"\" ()] z\r\n"
	 "* OK [UNKNOWN-CTE ] text [with] (brackets\r\n",
	 0,
	 "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen "
	 "\\Draft \\*)] Flags permitted.\n"
	 "A6 OK [COPYUID 38505 304,319:320 3956:3958] Done\n"
	 "* OK [UIDVALIDITY 3857529045] UIDs valid\n"
	 "* OK [HIGHESTMODSEQ 715194045007]\n"
	 "A7 NO [EXPUNGEISSUED] Some messages were expunged\n"
	 "A8 NO [BADCHARSET (UTF-8 \"US-ASCII\")] bad\n"
	 "A9 OK [READ-ONLY] EXAMINE completed\n"
	 "* OK [X-FOO NIL (a NIL) \"\" ()] z\n"
	 "* OK [UNKNOWN-CTE] text [with] (brackets\n"},
	{"numbered",
	 "* 172 EXISTS\r\n* 1 RECENT\r\n* 0 EXISTS\r\n* 44 expunge\r\n"
	 "* 4294967295 EXISTS\r\n",
	 0,
	 "* 172 EXISTS\n* 1 RECENT\n* 0 EXISTS\n* 44 EXPUNGE\n"
	 "* 4294967295 EXISTS\n"},
	{"capability",
	 "* CAPABILITY IMAP4rev1 STARTTLS AUTH=GSSAPI LOGINDISABLED\r\n"
	 "* capability imap4rev1\r\n",
	 0,
	 "* CAPABILITY IMAP4rev1 STARTTLS AUTH=GSSAPI LOGINDISABLED\n"
	 "* CAPABILITY imap4rev1\n"},
	{"list",
	 "* LIST (\\HasNoChildren \\Sent) \"/\" Sent\r\n"
	 "* LIST (\\Noselect) \"/\" \"\"\r\n"
	 "* LIST () NIL INBOX\r\n"
	 "* LIST (\\HasChildren) \".\" {11}\r\nfoo \"bar\r\nx\r\n"
	 "* LIST (\\Subscribed) \"/\" \"Foo/Bar\" "
	 "(\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n"
	 "* LIST (\\HasNoChildren) \"/\" [Gmail]/Sent\r\n"
	 "* LSUB () \"\\\\\" \"a\\\"b\\\\c\"\r\n"
	 "* LIST () \"/\" \"caf\xc3\xa9\"\r\n"
	 "* LIST () \"/\" foo%*]\r\n",
	 0,
	 "* LIST (\\HasNoChildren \\Sent) \"/\" Sent\n"
	 "* LIST (\\Noselect) \"/\" \"\"\n"
	 "* LIST () NIL INBOX\n"
	 "* LIST (\\HasChildren) \".\" {11}\"foo \\\"bar\\x0d\\x0ax\"\n"
	 "* LIST (\\Subscribed) \"/\" \"Foo/Bar\" "
	 "(\"CHILDINFO\" (\"SUBSCRIBED\"))\n"
	 "* LIST (\\HasNoChildren) \"/\" [Gmail]/Sent\n"
	 "* LSUB () \"\\\\\" \"a\\\"b\\\\c\"\n"
	 "* LIST () \"/\" \"caf\\xc3\\xa9\"\n"
	 "* LIST () \"/\" foo%*]\n"},
	{"status search esearch vanished",
	 "* STATUS blurdybloop (MESSAGES 231 UIDNEXT 44292)\r\n"
	 "* SEARCH 2 84 882\r\n* SEARCH\r\n* SEARCH \r\n"
	 "* SEARCH 2 5 (MODSEQ 917162500)\r\n"
	 "* ESEARCH (TAG \"A282\") UID MIN 2 COUNT 3 ALL 2,10:11\r\n"
	 "* VANISHED (EARLIER) 41,43:116,118\r\n",
	 0,
	 "* STATUS blurdybloop (MESSAGES 231 UIDNEXT 44292)\n"
	 "* SEARCH 2 84 882\n* SEARCH\n* SEARCH\n"
	 "* SEARCH 2 5 (MODSEQ 917162500)\n"
	 "* ESEARCH (TAG \"A282\") UID MIN 2 COUNT 3 ALL 2,10:11\n"
	 "* VANISHED (EARLIER) 41,43:116,118\n"},
	{"other untagged",
	 "* ID (\"name\" \"Dovecot\" \"os\" NIL)\r\n"
	 "* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n"
	 "* ENABLED QRESYNC CONDSTORE\r\n"
	 "* QUOTA \"\" (STORAGE 10 512)\r\n* XYZZY\r\n"
	 "* FLAGS ()\r\ntag.1-x OK done\r\n",
	 0,
	 "* ID (\"name\" \"Dovecot\" \"os\" NIL)\n"
	 "* NAMESPACE ((\"\" \"/\")) NIL NIL\n"
	 "* ENABLED QRESYNC CONDSTORE\n"
	 "* QUOTA \"\" (STORAGE 10 512)\n* XYZZY\n"
	 "* FLAGS ()\ntag.1-x OK done\n"},
	{"fetch with header literal",
	 "* 12 FETCH (FLAGS (\\Seen) INTERNALDATE \"17-Jul-1996 02:44:25 "
	 "-0700\" RFC822.SIZE 4286 BODY[HEADER.FIELDS (DATE SUBJECT)]<0> "
	 "{38}\r\nDate: Wed, 17 Jul 1996\r\nSubject: x\r\n\r\n UID 9)\r\n",
	 0,
	 "* 12 FETCH (FLAGS (\\Seen) INTERNALDATE \"17-Jul-1996 02:44:25 "
	 "-0700\" RFC822.SIZE 4286 BODY[HEADER.FIELDS (DATE SUBJECT)]<0> "
	 "{38}\"Date: Wed, 17 Jul 1996\\x0d\\x0aSubject: "
	 "x\\x0d\\x0a\\x0d\\x0a\" "
	 "UID 9)\n"},
	{"literal forms",
	 BIN("* 1 FETCH (BODY[] {3}\r\na\0b)\r\n"
	     "* 2 FETCH (BINARY[] ~{4}\r\n\0\1\r\n)\r\n"
	     "* 3 FETCH (BODY[] {2+}\r\nhi)\r\n"
	     "* 4 FETCH (BODY[] {0}\r\n)\r\n"
	     "* 5 FETCH (BODY[HEADER] {5}\r\nab\r\nc BODY[TEXT] {3}\r\nxyz)\r\n"
	     "* SEARCH {1}\r\n5\r\n"
	     "* 6 FETCH (BODY[] {0}\r\n {0}\r\n)\r\n"),
	 "* 1 FETCH (BODY[] {3}\"a\\x00b\")\n"
	 "* 2 FETCH (BINARY[] {4}\"\\x00\\x01\\x0d\\x0a\")\n"
	 "* 3 FETCH (BODY[] {2}\"hi\")\n"
	 "* 4 FETCH (BODY[] {0}\"\")\n"
	 "* 5 FETCH (BODY[HEADER] {5}\"ab\\x0d\\x0ac\" BODY[TEXT] {3}\"xyz\")\n"
	 "* SEARCH {1}\"5\"\n"
	 "* 6 FETCH (BODY[] {0}\"\" {0}\"\")\n"},
	{"lying literal swallows the next line",
	 "* 1 FETCH (BODY[] {10}\r\nhello)\r\n* )\r\n", 0,
	 "* 1 FETCH (BODY[] {10}\"hello)\\x0d\\x0a* \")\n"},
	{"nil everywhere",
	 "* 1 FETCH (BODY[] NIL ENVELOPE (NIL nil \"x\" NiL) X NIL)\r\n"
	 "* LIST (\\Noselect) NIL \"\"\r\n* X nil\r\n",
	 0,
	 "* 1 FETCH (BODY[] NIL ENVELOPE (NIL NIL \"x\" NIL) X NIL)\n"
	 "* LIST (\\Noselect) NIL \"\"\n* X NIL\n"},
	{"sections",
	 "* 1 FETCH (BODY[HEADER.FIELDS (\"X]Y\" DATE)]<10> NIL "
	 "BODY[1.2.MIME] NIL BINARY.SIZE[1] 42 BODY[]<0> \"\")\r\n"
	 "* 2 FETCH (BODY.PEEK[HEADER.FIELDS.NOT (A (B))] NIL)\r\n",
	 0,
	 "* 1 FETCH (BODY[HEADER.FIELDS (\"X]Y\" DATE)]<10> NIL "
	 "BODY[1.2.MIME] NIL BINARY.SIZE[1] 42 BODY[]<0> \"\")\n"
	 "* 2 FETCH (BODY.PEEK[HEADER.FIELDS.NOT (A (B))] NIL)\n"},
	{"qresync select",
	 "* 172 EXISTS\r\n* OK [UIDVALIDITY 3857529045] UIDs valid\r\n"
	 "* OK [UIDNEXT 4392] Predicted next UID\r\n"
	 "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
	 "* OK [PERMANENTFLAGS (\\Deleted \\Seen \\*)] Limited\r\n"
	 "* OK [HIGHESTMODSEQ 20010715194045007]\r\n"
	 "* VANISHED (EARLIER) 41,43:116,118,120:211,214:540\r\n"
	 "* 49 FETCH (UID 117 FLAGS (\\Seen \\Answered) MODSEQ "
	 "(90060115194045001))\r\n"
	 "A02 OK [READ-WRITE] Sample mailbox selected\r\n",
	 0,
	 "* 172 EXISTS\n* OK [UIDVALIDITY 3857529045] UIDs valid\n"
	 "* OK [UIDNEXT 4392] Predicted next UID\n"
	 "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\n"
	 "* OK [PERMANENTFLAGS (\\Deleted \\Seen \\*)] Limited\n"
	 "* OK [HIGHESTMODSEQ 20010715194045007]\n"
	 "* VANISHED (EARLIER) 41,43:116,118,120:211,214:540\n"
	 "* 49 FETCH (UID 117 FLAGS (\\Seen \\Answered) MODSEQ "
	 "(90060115194045001))\n"
	 "A02 OK [READ-WRITE] Sample mailbox selected\n"},
	{"atoms with tilde and braces", "* X ~a b} ~ a~ [x]\r\n", 0,
	 "* X ~a b} ~ a~ [x]\n"},
	/* With the sink: message content streams, the rest stays in memory. */
	{"sink streams body",
	 "* 1 FETCH (UID 5 BODY[] {11}\r\nhello world)\r\n", 0,
	 "* 1 FETCH (UID 5 BODY[] {11}<streamed>)\n",
	 "open(11,BODY[])close(1,hello world)"},
	{"sink empty literal",
	 "* 1 FETCH (BODY[]<0> {0}\r\n)\r\n* 2 FETCH (BODY[] {0+}\r\n)\r\n", 0,
	 "* 1 FETCH (BODY[]<0> {0}<streamed>)\n"
	 "* 2 FETCH (BODY[] {0}<streamed>)\n",
	 "open(0,BODY[]<0>)close(1,)open(0,BODY[])close(1,)"},
	{"sink context and memory fallback",
	 BIN("* 1 FETCH (BODY[HEADER.FIELDS (DATE SUBJECT)] {4}\r\nab\r\n "
	     "X-LABEL {2}\r\nxy BINARY[1] ~{3}\r\n\0\0\0)\r\n"
	     "* LIST () \"/\" {3}\r\nabc\r\n"),
	 "* 1 FETCH (BODY[HEADER.FIELDS (DATE SUBJECT)] {4}<streamed> "
	 "X-LABEL {2}\"xy\" BINARY[1] {3}<streamed>)\n"
	 "* LIST () \"/\" {3}\"abc\"\n",
	 "open(4,BODY[HEADER.FIELDS (DATE SUBJECT)])close(1,ab\\x0d\\x0a)"
	 "open(3,BINARY[1])close(1,\\x00\\x00\\x00)"},
};

static void run_good_case(const GoodCase *c, Split split, char **out,
			  char **log)
{
	g_autoptr(ImapParser) p = imap_parser_new(NULL);
	TestSink *ts = NULL;
	FeedResult r;
	gsize len = c->len ? c->len : strlen(c->input);

	if (c->sink_log) {
		ts = test_sink_new();
		imap_parser_set_sink(p, &test_sink_funcs, ts);
	}
	feed(p, c->input, len, split, 42, &r);
	g_assert_false(r.failed);
	g_assert_cmpuint(r.consumed, ==, len);
	*out = g_strdup(r.out->str);
	feed_result_clear(&r);
	g_clear_pointer(&p, imap_parser_free);
	if (ts) {
		*log = g_strdup(ts->log->str);
		test_sink_free(ts);
	} else {
		*log = NULL;
	}
}

static void test_good(void)
{
	for (gsize i = 0; i < G_N_ELEMENTS(good_cases); i++) {
		const GoodCase *c = &good_cases[i];

		for (Split s = SPLIT_WHOLE; s <= SPLIT_RANDOM_BIG; s++) {
			g_autofree char *out = NULL;
			g_autofree char *log = NULL;

			g_test_message("case '%s' split %d", c->name, s);
			run_good_case(c, s, &out, &log);
			g_assert_cmpstr(out, ==, c->expect);
			g_assert_cmpstr(log, ==, c->sink_log);
		}
	}
}

/* Many random splits of the whole table as one stream. */
static void test_good_stream_random_splits(void)
{
	g_autoptr(GString) all = g_string_new(NULL);
	g_autoptr(GString) expect = g_string_new(NULL);

	for (gsize i = 0; i < G_N_ELEMENTS(good_cases); i++) {
		const GoodCase *c = &good_cases[i];

		if (c->sink_log)
			continue;
		g_string_append_len(all, c->input,
				    c->len ? c->len : strlen(c->input));
		g_string_append(expect, c->expect);
	}
	for (guint32 seed = 1; seed <= 50; seed++) {
		g_autoptr(ImapParser) p = imap_parser_new(NULL);
		FeedResult r;

		feed(p, all->str, all->len, SPLIT_RANDOM, seed, &r);
		g_assert_false(r.failed);
		g_assert_cmpstr(r.out->str, ==, expect->str);
		feed_result_clear(&r);
	}
}

static ImapResponse *parse_one(const char *input, gsize len)
{
	g_autoptr(ImapParser) p = imap_parser_new(NULL);
	g_autoptr(GError) error = NULL;
	ImapResponse *resp = NULL;
	gsize used = 0;

	g_assert_cmpint(imap_parser_feed(p, (const guint8 *)input, len, &used,
					 &resp, &error),
			==, IMAP_PARSE_RESPONSE);
	g_assert_no_error(error);
	g_assert_cmpuint(used, ==, len);
	return resp;
}

static void test_fields(void)
{
	g_autoptr(ImapResponse) t = NULL;
	g_autoptr(ImapResponse) n = NULL;
	g_autoptr(ImapResponse) c = NULL;
	g_autoptr(ImapResponse) d = NULL;
	g_autoptr(ImapResponse) l = NULL;
	const ImapValue *v;

	t = parse_one(BIN("A1 no [alert] Disk quota\r\n"));
	g_assert_cmpint(t->kind, ==, IMAP_RESP_TAGGED);
	g_assert_cmpstr(t->tag, ==, "A1");
	g_assert_cmpint(t->status, ==, IMAP_STATUS_NO);
	g_assert_cmpstr(t->code, ==, "ALERT");
	g_assert_cmpuint(t->code_args->len, ==, 0);
	g_assert_cmpstr(t->text, ==, "Disk quota");
	g_assert_null(t->keyword);
	g_assert_null(t->args);

	n = parse_one(BIN("* 23 Exists\r\n"));
	g_assert_cmpint(n->kind, ==, IMAP_RESP_UNTAGGED);
	g_assert_null(n->tag);
	g_assert_cmpint(n->status, ==, IMAP_STATUS_NONE);
	g_assert_true(n->has_number);
	g_assert_cmpuint(n->number, ==, 23);
	g_assert_cmpstr(n->keyword, ==, "EXISTS");
	g_assert_nonnull(n->args);
	g_assert_cmpuint(n->args->len, ==, 0);

	c = parse_one(BIN("+\r\n"));
	g_assert_cmpint(c->kind, ==, IMAP_RESP_CONTINUATION);
	g_assert_cmpstr(c->text, ==, "");

	d = parse_one(BIN("* 1 FETCH (BODY[] {3}\r\na\0b)\r\n"));
	v = imap_value_get_list(d->args->pdata[0])->pdata[1];
	g_assert_cmpint(v->type, ==, IMAP_VALUE_STRING);
	g_assert_true(v->literal);
	g_assert_cmpuint(v->len, ==, 3);
	g_assert_cmpmem(v->str, 4, "a\0b", 4); /* NUL-terminated too */

	l = parse_one(BIN("* LIST () \"/\" \"a\\\"b\"\r\n"));
	v = l->args->pdata[2];
	g_assert_cmpint(v->type, ==, IMAP_VALUE_STRING);
	g_assert_false(v->literal);
	g_assert_cmpstr(v->str, ==, "a\"b");
	g_assert_cmpuint(v->len, ==, 3);
	v = l->args->pdata[1];
	g_assert_cmpstr(imap_value_get_string(v), ==, "/");
}

/* At most one response per call: the rest of the buffer is left. */
static void test_one_per_call(void)
{
	static const char in[] = "* 1 EXISTS\r\n* 2 EXISTS\r\n+ go\r\n";
	g_autoptr(ImapParser) p = imap_parser_new(NULL);
	gsize off = 0, used;
	guint count = 0;

	while (off < sizeof(in) - 1) {
		g_autoptr(ImapResponse) resp = NULL;

		g_assert_cmpint(imap_parser_feed(p, (const guint8 *)in + off,
						 sizeof(in) - 1 - off, &used,
						 &resp, NULL),
				==, IMAP_PARSE_RESPONSE);
		g_assert_cmpuint(used, ==, count < 2 ? 12 : 6);
		off += used;
		count++;
	}
	g_assert_cmpuint(count, ==, 3);
}

static void test_deep_nesting(void)
{
	g_autoptr(GString) deep = g_string_new("* X ");
	g_autoptr(ImapParser) p = imap_parser_new(NULL);
	g_autoptr(ImapResponse) r = NULL;
	g_autoptr(GError) error = NULL;
	gsize used;

	for (int i = 0; i < 33; i++)
		g_string_append_c(deep, '(');
	g_string_append(deep, "\r\n");
	g_assert_cmpint(imap_parser_feed(p, (const guint8 *)deep->str,
					 deep->len, &used, &r, &error),
			==, IMAP_PARSE_ERROR);
	g_assert_error(error, IMAP_ERROR, IMAP_ERROR_LIMIT);
}

static void test_deep_nesting_ok(void)
{
	g_autoptr(GString) in = g_string_new("* X ");
	g_autoptr(GString) expect = g_string_new("* X ");
	g_autoptr(ImapResponse) resp = NULL;
	g_autofree char *s = NULL;

	for (int i = 0; i < 32; i++)
		g_string_append_c(in, '(');
	for (int i = 0; i < 32; i++)
		g_string_append_c(in, ')');
	g_string_append(expect, in->str + 4);
	g_string_append(in, "\r\n");
	resp = parse_one(in->str, in->len);
	s = imap_response_to_string(resp, FALSE);
	g_assert_cmpstr(s, ==, expect->str);
}

/* ---- Malformed input ---- */

typedef struct {
	const char *name;
	const char *input;
	gsize len;
	ImapErrorCode code;
	ImapParserLimits limits;
	gboolean with_sink;
} BadCase;

static const BadCase bad_cases[] = {
	/* The parser cannot know the literal lies: it takes exactly 10 bytes
	 * ("hello)\r\n* ") and fails on "2 EXISTS" where ')' belongs. */
	{"lying literal", "* 1 FETCH (BODY[] {10}\r\nhello)\r\n* 2 EXISTS\r\n",
	 0, IMAP_ERROR_PROTOCOL},
	{"literal size 2^63", "* 1 FETCH (BODY[] {9223372036854775808}\r\n", 0,
	 IMAP_ERROR_PROTOCOL},
	{"literal size 20 digits",
	 "* 1 FETCH (BODY[] {99999999999999999999}\r\n", 0,
	 IMAP_ERROR_PROTOCOL},
	{"literal size 2^63-1", "* 1 FETCH (BODY[] {9223372036854775807}\r\n",
	 0, IMAP_ERROR_LIMIT},
	{"literal over memory limit",
	 "* 1 FETCH (X {101}\r\n",
	 0,
	 IMAP_ERROR_LIMIT,
	 {.max_literal_mem = 100}},
	{"literal over stream limit",
	 "* 1 FETCH (BODY[] {201}\r\n",
	 0,
	 IMAP_ERROR_LIMIT,
	 {.max_literal_mem = 50, .max_literal_stream = 200},
	 TRUE},
	{"unterminated list", "* LIST ((\r\n", 0, IMAP_ERROR_PROTOCOL},
	{"stray close", "* LIST )\r\n", 0, IMAP_ERROR_PROTOCOL},
	{"unbalanced close", "* 1 FETCH (a))\r\n", 0, IMAP_ERROR_PROTOCOL},
	{"space before close", "* X (a )\r\n", 0, IMAP_ERROR_PROTOCOL},
	{"double space", "* X a  b\r\n", 0, IMAP_ERROR_PROTOCOL},
	{"NUL in atom", BIN("* CAPABILITY IMAP\0REV1\r\n"),
	 IMAP_ERROR_PROTOCOL},
	{"NUL in quoted", BIN("* LIST () \"/\" \"a\0b\"\r\n"),
	 IMAP_ERROR_PROTOCOL},
	{"NUL in text", BIN("* OK a\0b\r\n"), IMAP_ERROR_PROTOCOL},
	{"bare CR", "* OK hi\rthere\r\n", 0, IMAP_ERROR_PROTOCOL},
	{"bare LF", "* OK hi\n", 0, IMAP_ERROR_PROTOCOL},
	{"lone LF", "\n", 0, IMAP_ERROR_PROTOCOL},
	{"brace without open", "* 1 FETCH (BODY[] }5\r\n", 0,
	 IMAP_ERROR_PROTOCOL},
	{"literal mid-line", "* 1 FETCH (BODY[] {5} x)\r\n", 0,
	 IMAP_ERROR_PROTOCOL},
	{"literal8 mid-line", "* 1 FETCH (BINARY[] ~{5}x\r\n", 0,
	 IMAP_ERROR_PROTOCOL},
	{"malformed literal", "* 1 FETCH (BODY[] {5 }\r\n", 0,
	 IMAP_ERROR_PROTOCOL},
	{"empty literal size", "* 1 FETCH (BODY[] {}\r\n", 0,
	 IMAP_ERROR_PROTOCOL},
	{"too deep (limit 3)",
	 "* X ((((a))))\r\n",
	 0,
	 IMAP_ERROR_LIMIT,
	 {.max_depth = 3}},
	{"only a tag", "A1\r\n", 0, IMAP_ERROR_PROTOCOL},
	{"only a star", "*\r\n", 0, IMAP_ERROR_PROTOCOL},
	{"tag and space", "A1 \r\n", 0, IMAP_ERROR_PROTOCOL},
	{"empty line", "\r\n", 0, IMAP_ERROR_PROTOCOL},
	{"binary garbage", BIN("\x89PNG\r\n\x1a\n\0\0\0\rIHDR\xff\xfe\r\n"),
	 IMAP_ERROR_PROTOCOL},
	{"tagged unknown status", "A1 FOO bar\r\n", 0, IMAP_ERROR_PROTOCOL},
	{"tagged preauth", "A1 PREAUTH x\r\n", 0, IMAP_ERROR_PROTOCOL},
	{"invalid escape", "* LIST () \"/\" \"a\\qb\"\r\n", 0,
	 IMAP_ERROR_PROTOCOL},
	{"unterminated quoted", "* LIST () \"/\" \"abc\r\n", 0,
	 IMAP_ERROR_PROTOCOL},
	{"unterminated code", "* OK [ALERT hi\r\n", 0, IMAP_ERROR_PROTOCOL},
	{"unbalanced list in code", "* OK [X (a] hi\r\n", 0,
	 IMAP_ERROR_PROTOCOL},
	{"empty code", "* OK [] hi\r\n", 0, IMAP_ERROR_PROTOCOL},
	{"literal in code", "* OK [X {3}\r\nabc]\r\n", 0, IMAP_ERROR_PROTOCOL},
	{"too many items",
	 "* SEARCH 1 2 3 4 5 6\r\n",
	 0,
	 IMAP_ERROR_LIMIT,
	 {.max_items = 5}},
	{"too many items via literals",
	 "* X {0}\r\n {0}\r\n {0}\r\n {0}\r\n",
	 0,
	 IMAP_ERROR_LIMIT,
	 {.max_items = 3}},
	{"number overflow", "* 4294967296 EXISTS\r\n", 0, IMAP_ERROR_PROTOCOL},
	{"number without keyword", "* 5\r\n", 0, IMAP_ERROR_PROTOCOL},
	{"8-bit atom", "* X caf\xc3\xa9\r\n", 0, IMAP_ERROR_PROTOCOL},
	{"control in atom",
	 "* X a\x01"
	 "b\r\n",
	 0, IMAP_ERROR_PROTOCOL},
	{"unterminated section", "* 1 FETCH (BODY[HEADER\r\n", 0,
	 IMAP_ERROR_PROTOCOL},
	{"unbalanced section", "* 1 FETCH (BODY[a)] NIL)\r\n", 0,
	 IMAP_ERROR_PROTOCOL},
	{"continuation without space", "+x\r\n", 0, IMAP_ERROR_PROTOCOL},
	{"no space after keyword", "* SEARCH(1)\r\n", 0, IMAP_ERROR_PROTOCOL},
	{"junk after quoted", "* X \"a\"b\r\n", 0, IMAP_ERROR_PROTOCOL},
	{"status glued to code", "* OK[ALERT] x\r\n", 0, IMAP_ERROR_PROTOCOL},
	{"small line limit",
	 "* OK this line is far too long\r\n",
	 0,
	 IMAP_ERROR_LIMIT,
	 {.max_line = 16}},
	{"line limit after literal",
	 "* 1 FETCH (BODY[] {2}\r\nab UID 1234567890123456789)\r\n",
	 0,
	 IMAP_ERROR_LIMIT,
	 {.max_line = 24}},
};

static FeedResult run_bad(const BadCase *c, Split split, TestSink **ts_out)
{
	g_autoptr(ImapParser) p = imap_parser_new(&c->limits);
	TestSink *ts = NULL;
	FeedResult r;
	gsize len = c->len ? c->len : strlen(c->input);

	if (c->with_sink) {
		ts = test_sink_new();
		imap_parser_set_sink(p, &test_sink_funcs, ts);
	}
	feed(p, c->input, len, split, 7, &r);

	/* Unusable until reset, then as good as new. */
	if (r.failed) {
		g_autoptr(ImapResponse) resp = NULL;
		g_autoptr(GError) error = NULL;
		gsize used;

		g_assert_cmpint(imap_parser_feed(p, (const guint8 *)"+\r\n", 3,
						 &used, &resp, &error),
				==, IMAP_PARSE_ERROR);
		g_assert_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL);
		g_clear_error(&error);
		imap_parser_reset(p);
		g_assert_cmpint(
			imap_parser_feed(p, (const guint8 *)"* 3 EXISTS\r\n",
					 12, &used, &resp, &error),
			==, IMAP_PARSE_RESPONSE);
		g_assert_cmpuint(resp->number, ==, 3);
	}
	g_clear_pointer(&p, imap_parser_free);
	if (ts_out)
		*ts_out = ts;
	else if (ts)
		test_sink_free(ts);
	return r;
}

static void test_bad(void)
{
	for (gsize i = 0; i < G_N_ELEMENTS(bad_cases); i++) {
		const BadCase *c = &bad_cases[i];
		g_autofree char *first = NULL;

		for (Split s = SPLIT_WHOLE; s <= SPLIT_RANDOM; s++) {
			FeedResult r;

			g_test_message("bad case '%s' split %d", c->name, s);
			r = run_bad(c, s, NULL);
			g_assert_true(r.failed);
			g_assert_cmpint(r.code, ==, c->code);
			/* Where it fails does not depend on the split. */
			if (!first)
				first = g_strdup(r.out->str);
			g_assert_cmpstr(r.out->str, ==, first);
			feed_result_clear(&r);
		}
	}
}

/* The error names the problem and never echoes much server data. */
static void test_error_message(void)
{
	g_autoptr(GString) in = g_string_new("* X (");
	g_autoptr(ImapParser) p = imap_parser_new(NULL);
	g_autoptr(ImapResponse) resp = NULL;
	g_autoptr(GError) error = NULL;
	gsize used;

	g_string_append_c(in, '\x01');
	for (int i = 0; i < 1000; i++)
		g_string_append_c(in, 'A');
	g_string_append(in, "\r\n");
	g_assert_cmpint(imap_parser_feed(p, (const guint8 *)in->str, in->len,
					 &used, &resp, &error),
			==, IMAP_PARSE_ERROR);
	g_assert_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL);
	g_assert_nonnull(strstr(error->message, "unexpected character"));
	g_assert_nonnull(strstr(error->message, "line 1, column 6"));
	g_assert_nonnull(strstr(error->message, "\\x01AAA"));
	g_assert_cmpuint(strlen(error->message), <, 160);
	for (const char *s = error->message; *s; s++)
		g_assert_true(g_ascii_isprint(*s));
}

/* A runaway line fails as soon as it crosses the limit. */
static void test_long_line(void)
{
	gsize n = 100 * 1024;
	g_autofree char *line = g_malloc(n + 2);

	memcpy(line, "* OK ", 5);
	memset(line + 5, 'a', n - 5);
	memcpy(line + n, "\r\n", 2);

	for (int limit = 0; limit < 2; limit++) {
		ImapParserLimits lim = {.max_line = limit ? 1024 : 0};
		gsize max = limit ? 1024 : 64 * 1024;
		g_autoptr(ImapParser) p = imap_parser_new(&lim);
		g_autoptr(ImapResponse) resp = NULL;
		g_autoptr(GError) error = NULL;
		gsize used;

		g_assert_cmpint(imap_parser_feed(p, (const guint8 *)line, n + 2,
						 &used, &resp, &error),
				==, IMAP_PARSE_ERROR);
		g_assert_error(error, IMAP_ERROR, IMAP_ERROR_LIMIT);
		g_assert_cmpuint(used, <=, max + 1);
		g_clear_error(&error);

		/* One byte at a time: same point. */
		imap_parser_reset(p);
		for (gsize i = 0; i < n + 2; i++) {
			ImapParseResult res =
				imap_parser_feed(p, (const guint8 *)line + i, 1,
						 &used, &resp, &error);

			if (res == IMAP_PARSE_ERROR) {
				g_assert_cmpuint(i, ==, max);
				break;
			}
			g_assert_cmpint(res, ==, IMAP_PARSE_NEED_MORE);
		}
		g_assert_error(error, IMAP_ERROR, IMAP_ERROR_LIMIT);
	}
}

/* A lying literal that stops short leaves the parser waiting. */
static void test_short_literal_needs_more(void)
{
	static const char in[] = "* 1 FETCH (BODY[] {10}\r\nhello)\r\n";
	g_autoptr(ImapParser) p = imap_parser_new(NULL);
	g_autoptr(ImapResponse) resp = NULL;
	gsize used;

	g_assert_cmpint(imap_parser_feed(p, (const guint8 *)in, sizeof(in) - 1,
					 &used, &resp, NULL),
			==, IMAP_PARSE_NEED_MORE);
	g_assert_cmpuint(used, ==, sizeof(in) - 1);
	g_assert_cmpint(imap_parser_feed(p, (const guint8 *)"* ", 2, &used,
					 &resp, NULL),
			==, IMAP_PARSE_NEED_MORE);
	g_assert_cmpint(imap_parser_feed(p, (const guint8 *)")\r\n", 3, &used,
					 &resp, NULL),
			==, IMAP_PARSE_RESPONSE);
	g_assert_nonnull(resp);
}

/* ---- Sink lifecycle ---- */

static void test_sink_abort_on_error(void)
{
	/* A complete streamed literal is closed once (complete); the
	 * error that follows must not close it again. */
	static const char in[] =
		"* 1 FETCH (BODY[1] {2}\r\nab BODY[2] {3}\r\nxyz UID \"x)\r\n";

	for (Split s = SPLIT_WHOLE; s <= SPLIT_RANDOM; s++) {
		g_autoptr(ImapParser) p = imap_parser_new(NULL);
		TestSink *ts = test_sink_new();
		FeedResult r;

		imap_parser_set_sink(p, &test_sink_funcs, ts);
		feed(p, in, sizeof(in) - 1, s, 3, &r);
		g_assert_true(r.failed);
		g_assert_cmpstr(ts->log->str, ==,
				"open(2,BODY[1])close(1,ab)"
				"open(3,BODY[2])close(1,xyz)");
		feed_result_clear(&r);
		g_clear_pointer(&p, imap_parser_free);
		test_sink_free(ts);
	}
}

static void test_sink_write_failure(void)
{
	static const char in[] =
		"* 1 FETCH (BODY[] {6}\r\nabcXef)\r\n* 2 EXISTS\r\n";

	for (Split s = SPLIT_WHOLE; s <= SPLIT_RANDOM; s++) {
		g_autoptr(ImapParser) p = imap_parser_new(NULL);
		TestSink *ts = test_sink_new();
		FeedResult r;

		ts->fail_on_x = TRUE;
		imap_parser_set_sink(p, &test_sink_funcs, ts);
		feed(p, in, sizeof(in) - 1, s, 5, &r);
		g_assert_true(r.failed);
		g_assert_cmpint(r.code, ==, IMAP_ERROR_LIMIT); /* the sink's */
		g_assert_cmpstr(ts->log->str, ==, "open(6,BODY[])abort");
		feed_result_clear(&r);
		g_clear_pointer(&p, imap_parser_free);
		test_sink_free(ts);
	}
}

/* An in-memory literal cut short is simply dropped. */
static void test_memory_literal_reset(void)
{
	static const char in[] = "* 1 FETCH (X {100}\r\npartial";
	g_autoptr(ImapParser) p = imap_parser_new(NULL);
	g_autoptr(ImapResponse) resp = NULL;
	gsize used;

	g_assert_cmpint(imap_parser_feed(p, (const guint8 *)in, sizeof(in) - 1,
					 &used, &resp, NULL),
			==, IMAP_PARSE_NEED_MORE);
	imap_parser_reset(p);
	g_assert_cmpint(imap_parser_feed(p, (const guint8 *)"* 1 EXISTS\r\n",
					 12, &used, &resp, NULL),
			==, IMAP_PARSE_RESPONSE);
	g_assert_cmpuint(resp->number, ==, 1);
}

/* A sink that refuses without saying why still fails the parse. */
static gboolean silent_refuse(gpointer handle, const guint8 *data, gsize len,
			      gpointer user_data, GError **error)
{
	return FALSE;
}

static void test_sink_silent_refusal(void)
{
	static const char in[] = "* 1 FETCH (BODY[] {3}\r\nabc)\r\n";
	ImapLiteralSink sink = test_sink_funcs;
	g_autoptr(ImapParser) p = imap_parser_new(NULL);
	g_autoptr(ImapResponse) resp = NULL;
	g_autoptr(GError) error = NULL;
	TestSink *ts = test_sink_new();
	gsize used;

	sink.write = silent_refuse;
	imap_parser_set_sink(p, &sink, ts);
	g_assert_cmpint(imap_parser_feed(p, (const guint8 *)in, sizeof(in) - 1,
					 &used, &resp, &error),
			==, IMAP_PARSE_ERROR);
	g_assert_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL);
	g_assert_cmpstr(ts->log->str, ==, "open(3,BODY[])abort");
	/* A NULL sink goes back to memory. */
	imap_parser_reset(p);
	imap_parser_set_sink(p, NULL, NULL);
	g_assert_cmpint(imap_parser_feed(p, (const guint8 *)in, sizeof(in) - 1,
					 &used, &resp, NULL),
			==, IMAP_PARSE_RESPONSE);
	g_clear_pointer(&p, imap_parser_free);
	test_sink_free(ts);
}

static void test_sink_abort_on_free_and_reset(void)
{
	static const char in[] = "* 1 FETCH (BODY[] {100}\r\npartial";

	for (int reset = 0; reset < 2; reset++) {
		ImapParser *p = imap_parser_new(NULL);
		TestSink *ts = test_sink_new();
		g_autoptr(ImapResponse) resp = NULL;
		gsize used;

		imap_parser_set_sink(p, &test_sink_funcs, ts);
		g_assert_cmpint(imap_parser_feed(p, (const guint8 *)in,
						 sizeof(in) - 1, &used, &resp,
						 NULL),
				==, IMAP_PARSE_NEED_MORE);
		g_assert_cmpuint(ts->writes, ==, 1); /* streamed, not held */
		if (reset) {
			imap_parser_reset(p);
			g_assert_cmpstr(ts->log->str, ==,
					"open(100,BODY[])abort");
			g_assert_cmpint(
				imap_parser_feed(p, (const guint8 *)"+\r\n", 3,
						 &used, &resp, NULL),
				==, IMAP_PARSE_RESPONSE);
		}
		imap_parser_free(p);
		g_assert_cmpstr(ts->log->str, ==, "open(100,BODY[])abort");
		test_sink_free(ts);
	}
}

/* A 20 MB literal in 4 KB chunks, to memory and to the sink: linear, and
 * the sink never sees the literal buffered. */
static void test_big_literal(void)
{
	const gsize size = 20 * 1024 * 1024;
	g_autoptr(GString) in =
		g_string_new("* 1 FETCH (BODY[] {20971520}\r\n");
	gsize body_start = in->len;

	g_string_set_size(in, body_start + size);
	for (gsize i = 0; i < size; i++)
		in->str[body_start + i] = 'a' + i % 26;
	g_string_append(in, " UID 7)\r\n");

	for (int sink = 0; sink < 2; sink++) {
		g_autoptr(ImapParser) p = imap_parser_new(NULL);
		g_autoptr(ImapResponse) resp = NULL;
		TestSink *ts = test_sink_new();
		gsize off = 0, used;
		ImapParseResult res = IMAP_PARSE_NEED_MORE;

		if (sink)
			imap_parser_set_sink(p, &test_sink_funcs, ts);
		while (off < in->len && res == IMAP_PARSE_NEED_MORE) {
			gsize n = MIN(4096, in->len - off);

			res = imap_parser_feed(p, (const guint8 *)in->str + off,
					       n, &used, &resp, NULL);
			off += used;
		}
		g_assert_cmpint(res, ==, IMAP_PARSE_RESPONSE);
		g_assert_cmpuint(off, ==, in->len);

		const ImapValue *v =
			imap_value_get_list(resp->args->pdata[0])->pdata[1];

		g_assert_cmpuint(v->len, ==, size);
		if (sink) {
			TestHandle *h = ts->handles->pdata[0];

			g_assert_cmpint(v->type, ==, IMAP_VALUE_STREAMED);
			g_assert_true(v->sink_handle == h);
			g_assert_cmpuint(ts->writes, >=, size / 4096);
			g_assert_true(memcmp(h->data->str, in->str + body_start,
					     size) == 0);
		} else {
			g_assert_cmpint(v->type, ==, IMAP_VALUE_STRING);
			g_assert_true(memcmp(v->str, in->str + body_start,
					     size) == 0);
			g_assert_cmpint(v->str[size], ==, '\0');
		}
		g_clear_pointer(&resp, imap_response_free);
		g_clear_pointer(&p, imap_parser_free);
		test_sink_free(ts);
	}
}

static void test_value_helpers(void)
{
	ImapValue a = {.type = IMAP_VALUE_ATOM};
	ImapValue s = {.type = IMAP_VALUE_STRING, .str = "12", .len = 2};
	ImapValue nil = {.type = IMAP_VALUE_NIL};
	guint32 u32;
	guint64 u64;
	static const struct {
		const char *text;
		gboolean ok32, ok64;
	} nums[] = {
		{"0", TRUE, TRUE},
		{"4294967295", TRUE, TRUE},
		{"4294967296", FALSE, TRUE},
		{"00000000001", FALSE, TRUE},
		{"9223372036854775807", FALSE, TRUE},
		{"9223372036854775808", FALSE, FALSE},
		{"99999999999999999999", FALSE, FALSE},
		{"12a", FALSE, FALSE},
		{"-1", FALSE, FALSE},
		{"+1", FALSE, FALSE},
		{"", FALSE, FALSE},
	};

	for (gsize i = 0; i < G_N_ELEMENTS(nums); i++) {
		a.str = (char *)nums[i].text;
		a.len = strlen(a.str);
		g_assert_cmpint(imap_value_get_u32(&a, &u32), ==, nums[i].ok32);
		g_assert_cmpint(imap_value_get_u64(&a, &u64), ==, nums[i].ok64);
	}
	a.str = "4294967295";
	a.len = 10;
	g_assert_true(imap_value_get_u32(&a, &u32));
	g_assert_cmpuint(u32, ==, G_MAXUINT32);
	g_assert_false(imap_value_get_u32(&s, &u32));
	g_assert_false(imap_value_get_u64(&nil, &u64));
	g_assert_false(imap_value_get_u32(NULL, &u32));

	a.str = "\\Seen";
	a.len = 5;
	g_assert_true(imap_value_is_atom(&a, "\\SEEN"));
	g_assert_false(imap_value_is_atom(&s, "12"));
	g_assert_cmpstr(imap_value_get_string(&a), ==, "\\Seen");
	g_assert_cmpstr(imap_value_get_string(&s), ==, "12");
	g_assert_null(imap_value_get_string(&nil));
	g_assert_null(imap_value_get_list(&a));
	imap_value_free(NULL);
	imap_response_free(NULL);
}

int main(int argc, char **argv)
{
	g_test_init(&argc, &argv, NULL);
	g_test_add_func("/parser/good", test_good);
	g_test_add_func("/parser/good-stream-random-splits",
			test_good_stream_random_splits);
	g_test_add_func("/parser/fields", test_fields);
	g_test_add_func("/parser/one-per-call", test_one_per_call);
	g_test_add_func("/parser/deep-nesting-ok", test_deep_nesting_ok);
	g_test_add_func("/parser/deep-nesting", test_deep_nesting);
	g_test_add_func("/parser/bad", test_bad);
	g_test_add_func("/parser/error-message", test_error_message);
	g_test_add_func("/parser/long-line", test_long_line);
	g_test_add_func("/parser/short-literal-needs-more",
			test_short_literal_needs_more);
	g_test_add_func("/parser/sink-abort-on-error",
			test_sink_abort_on_error);
	g_test_add_func("/parser/sink-write-failure", test_sink_write_failure);
	g_test_add_func("/parser/sink-abort-on-free-and-reset",
			test_sink_abort_on_free_and_reset);
	g_test_add_func("/parser/memory-literal-reset",
			test_memory_literal_reset);
	g_test_add_func("/parser/sink-silent-refusal",
			test_sink_silent_refusal);
	g_test_add_func("/parser/big-literal", test_big_literal);
	g_test_add_func("/parser/value-helpers", test_value_helpers);
	return g_test_run();
}
