/* SPDX-License-Identifier: MIT */
/*
 * Typed decoders, fed with responses produced by the real parser from
 * transcripts: good shapes decode to the right fields, hostile shapes fail
 * with IMAP_ERROR_PROTOCOL and never crash.
 */
#include <string.h>

#include "imap-private.h"

#define BIN(s) s, sizeof(s) - 1

/* Streams every literal, so decoders see IMAP_VALUE_STREAMED. */
static gpointer stream_open(guint64 size, const char *context,
			    const ImapResponse *resp, gpointer user_data)
{
	return GINT_TO_POINTER(1);
}

static gboolean stream_write(gpointer handle, const guint8 *data, gsize len,
			     gpointer user_data, GError **error)
{
	return TRUE;
}

static void stream_close(gpointer handle, gboolean complete, gpointer user_data)
{
}

static const ImapLiteralSink stream_sink = {
	.open = stream_open,
	.write = stream_write,
	.close = stream_close,
};

static ImapResponse *parse_len(const char *text, gsize len, gboolean stream)
{
	g_autoptr(ImapParser) p = imap_parser_new(NULL);
	g_autoptr(GError) error = NULL;
	ImapResponse *resp = NULL;
	gsize used = 0;

	if (stream)
		imap_parser_set_sink(p, &stream_sink, NULL);
	g_assert_cmpint(imap_parser_feed(p, (const guint8 *)text, len, &used,
					 &resp, &error),
			==, IMAP_PARSE_RESPONSE);
	g_assert_no_error(error);
	g_assert_cmpuint(used, ==, len);
	return resp;
}

static ImapResponse *parse(const char *line)
{
	g_autofree char *text = g_strconcat(line, "\r\n", NULL);

	return parse_len(text, strlen(text), FALSE);
}

/* ---- CAPABILITY ---- */

static void test_capability(void)
{
	g_autoptr(ImapResponse) r = parse("* CAPABILITY IMAP4rev1 auth=plain "
					  "LITERAL+ \"quoted\" (x) NIL");
	g_autoptr(GHashTable) caps = imap_decode_capability(r->args);
	g_autoptr(ImapResponse) g = parse("* OK [CAPABILITY IMAP4rev1 "
					  "ID IDLE] ready");
	g_autoptr(GHashTable) gc = imap_decode_capability(g->code_args);
	g_autoptr(GHashTable) none = imap_decode_capability(NULL);

	g_assert_cmpuint(g_hash_table_size(caps), ==, 3);
	g_assert_true(g_hash_table_contains(caps, "IMAP4REV1"));
	g_assert_true(g_hash_table_contains(caps, "AUTH=PLAIN"));
	g_assert_true(g_hash_table_contains(caps, "LITERAL+"));
	g_assert_false(g_hash_table_contains(caps, "QUOTED"));
	g_assert_cmpuint(g_hash_table_size(gc), ==, 3);
	g_assert_true(g_hash_table_contains(gc, "IDLE"));
	g_assert_cmpuint(g_hash_table_size(none), ==, 0);
}

/* ---- LIST ---- */

static void test_list_good(void)
{
	static const struct {
		const char *in;
		const char *name;
		char delim;
		guint32 attrs;
	} cases[] = {
		{"* LIST (\\HasNoChildren \\Sent) \"/\" Sent", "Sent", '/',
		 IMAP_MBOX_HASNOCHILDREN | IMAP_MBOX_SENT},
		{"* LIST (\\noselect \\haschildren) \".\" \"INBOX.a b\"",
		 "INBOX.a b", '.', IMAP_MBOX_NOSELECT | IMAP_MBOX_HASCHILDREN},
		{"* LIST (\\NonExistent) NIL foo", "foo", '\0',
		 IMAP_MBOX_NONEXISTENT | IMAP_MBOX_NOSELECT},
		{"* LIST (\\Subscribed \\Remote) \"/\" x "
		 "(\"CHILDINFO\" (\"SUBSCRIBED\") \"OLDNAME\" (\"y\"))",
		 "x", '/', IMAP_MBOX_SUBSCRIBED | IMAP_MBOX_REMOTE},
		{"* LIST (\\All \\Archive \\Drafts \\Flagged \\Junk \\Sent "
		 "\\Trash \\Important \\Marked \\Unmarked \\Noinferiors "
		 "\\Unknown $Thing) \"/\" z",
		 "z", '/',
		 IMAP_MBOX_ALL | IMAP_MBOX_ARCHIVE | IMAP_MBOX_DRAFTS |
			 IMAP_MBOX_FLAGGED | IMAP_MBOX_JUNK | IMAP_MBOX_SENT |
			 IMAP_MBOX_TRASH | IMAP_MBOX_IMPORTANT |
			 IMAP_MBOX_MARKED | IMAP_MBOX_UNMARKED |
			 IMAP_MBOX_NOINFERIORS},
		{"* LSUB () \"/\" INBOX", "INBOX", '/', 0},
		{"* LIST (\\Noselect) \"/\" \"\"", "", '/', IMAP_MBOX_NOSELECT},
		{"* LIST () \"/\" &AOk-t&AOk-", "&AOk-t&AOk-", '/', 0},
		{"* LIST () \"\\\\\" \"a\\\"b\"", "a\"b", '\\', 0},
		{"* LIST () \"/\" [Gmail]/Sent", "[Gmail]/Sent", '/', 0},
	};

	for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
		g_autoptr(ImapResponse) r = parse(cases[i].in);
		g_autoptr(GError) error = NULL;
		g_autoptr(ImapListEntry) e = imap_decode_list(r, &error);

		g_assert_no_error(error);
		g_assert_cmpstr(e->name, ==, cases[i].name);
		g_assert_cmpint(e->delimiter, ==, cases[i].delim);
		g_assert_cmphex(e->attrs, ==, cases[i].attrs);
	}

	/* A literal name may hold anything but NUL. */
	g_autoptr(ImapResponse) lit =
		parse_len(BIN("* LIST () \"/\" {7}\r\na(b)\r\nc\r\n"), FALSE);
	g_autoptr(ImapListEntry) e = imap_decode_list(lit, NULL);

	g_assert_cmpstr(e->name, ==, "a(b)\r\nc");
}

static void test_list_bad(void)
{
	static const char *const bad[] = {
		"* LIST () \"/\"",
		"* LIST",
		"* LIST \"x\" \"/\" a",
		"* LIST NIL \"/\" a",
		"* LIST (\\a \"b\") \"/\" x",
		"* LIST (\\a (b)) \"/\" x",
		"* LIST () \"//\" x",
		"* LIST () \"\" x",
		"* LIST () / x",
		"* LIST () (\"/\") x",
		"* LIST () \"/\" NIL",
		"* LIST () \"/\" (a)",
		"* STATUS x (MESSAGES 1)",
		"* 3 LIST () \"/\" x",
		"A1 OK LIST done",
		"* OK LIST",
	};

	for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
		g_autoptr(ImapResponse) r = parse(bad[i]);
		g_autoptr(GError) error = NULL;

		g_test_message("bad LIST: %s", bad[i]);
		g_assert_null(imap_decode_list(r, &error));
		g_assert_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL);
	}

	static const struct {
		const char *in;
		gsize len;
	} bad_lit[] = {
		{BIN("* LIST () \"/\" {3}\r\na\0b\r\n")},
		{BIN("* LIST () {1}\r\n\0 x\r\n")},
		{BIN("* LIST () {1}\r\n\n x\r\n")},
		{BIN("* LIST () \"/\" {3}\r\nabc\r\n")}, /* streamed */
	};

	for (gsize i = 0; i < G_N_ELEMENTS(bad_lit); i++) {
		g_autoptr(ImapResponse) r =
			parse_len(bad_lit[i].in, bad_lit[i].len, i == 3);
		g_autoptr(GError) error = NULL;

		g_assert_null(imap_decode_list(r, &error));
		g_assert_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL);
	}
}

/* ---- STATUS ---- */

static void test_status(void)
{
	g_autoptr(ImapResponse) r = parse(
		"* STATUS blurdybloop (MESSAGES 231 UIDNEXT 44292 UIDVALIDITY "
		"1 "
		"UNSEEN 0 recent 2 HIGHESTMODSEQ 9223372036854775807 SIZE "
		"12345 DELETED 3 X-FOO (a b) APPENDLIMIT NIL MESSAGES 231)");
	g_autoptr(GError) error = NULL;
	g_autoptr(ImapStatusData) st = imap_decode_status(r, &error);

	g_assert_no_error(error);
	g_assert_cmpstr(st->mailbox, ==, "blurdybloop");
	g_assert_cmphex(
		st->has, ==,
		IMAP_STATUS_HAS_MESSAGES | IMAP_STATUS_HAS_RECENT |
			IMAP_STATUS_HAS_UIDNEXT | IMAP_STATUS_HAS_UIDVALIDITY |
			IMAP_STATUS_HAS_UNSEEN | IMAP_STATUS_HAS_HIGHESTMODSEQ |
			IMAP_STATUS_HAS_SIZE);
	g_assert_cmpuint(st->messages, ==, 231);
	g_assert_cmpuint(st->recent, ==, 2);
	g_assert_cmpuint(st->uidnext, ==, 44292);
	g_assert_cmpuint(st->uidvalidity, ==, 1);
	g_assert_cmpuint(st->unseen, ==, 0);
	g_assert_cmpuint(st->highestmodseq, ==, G_MAXINT64);
	g_assert_cmpuint(st->size, ==, 12345);

	g_autoptr(ImapResponse) q = parse("* STATUS \"a b\" ()");
	g_autoptr(ImapStatusData) sq = imap_decode_status(q, NULL);

	g_assert_cmpstr(sq->mailbox, ==, "a b");
	g_assert_cmpuint(sq->has, ==, 0);

	g_autoptr(ImapResponse) l =
		parse_len(BIN("* STATUS {3}\r\na b (UNSEEN 4)\r\n"), FALSE);
	g_autoptr(ImapStatusData) sl = imap_decode_status(l, NULL);

	g_assert_cmpstr(sl->mailbox, ==, "a b");
	g_assert_cmpuint(sl->unseen, ==, 4);

	static const char *const bad[] = {
		"* STATUS x (MESSAGES)",
		"* STATUS x (MESSAGES \"3\")",
		"* STATUS x (MESSAGES 4294967296)",
		"* STATUS x (MESSAGES -1)",
		"* STATUS x (HIGHESTMODSEQ 9223372036854775808)",
		"* STATUS x (MESSAGES 1 MESSAGES 2)",
		"* STATUS x (MESSAGES NIL)",
		"* STATUS x (UIDNEXT (1))",
		"* STATUS x (\"MESSAGES\" 1)",
		"* STATUS x",
		"* STATUS x MESSAGES 1",
		"* STATUS x (MESSAGES 1) extra",
		"* STATUS NIL (MESSAGES 1)",
		"* STATUS (MESSAGES 1)",
		"* STATUS",
		"* LIST () \"/\" x",
	};

	for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
		g_autoptr(ImapResponse) b = parse(bad[i]);
		g_autoptr(GError) e = NULL;

		g_test_message("bad STATUS: %s", bad[i]);
		g_assert_null(imap_decode_status(b, &e));
		g_assert_error(e, IMAP_ERROR, IMAP_ERROR_PROTOCOL);
	}

	g_autoptr(ImapResponse) nul =
		parse_len(BIN("* STATUS {3}\r\na\0b (UNSEEN 4)\r\n"), FALSE);
	g_autoptr(GError) e = NULL;

	g_assert_null(imap_decode_status(nul, &e));
	g_assert_error(e, IMAP_ERROR, IMAP_ERROR_PROTOCOL);
}

/* ---- SELECT ---- */

static void test_select(void)
{
	static const struct {
		const char *in;
		gboolean relevant;
	} steps[] = {
		{"* 172 EXISTS", TRUE},
		{"* 1 RECENT", FALSE},
		{"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
		 TRUE},
		{"* OK [UIDVALIDITY 3857529045] UIDs valid", TRUE},
		{"* OK [UIDNEXT 4392] Predicted next UID", TRUE},
		{"* OK [PERMANENTFLAGS (\\Deleted \\Seen \\*)] Limited", TRUE},
		{"* OK [HIGHESTMODSEQ 20010715194045007]", TRUE},
		{"* VANISHED (EARLIER) 41,43:116", FALSE},
		{"* 49 FETCH (UID 117 FLAGS (\\Seen))", FALSE},
		{"* OK [UIDVALIDITY abc]", FALSE},
		{"* OK [UIDVALIDITY 0]", FALSE},
		{"* OK [UIDNEXT]", FALSE},
		{"* OK [HIGHESTMODSEQ x]", FALSE},
		{"* FLAGS (\\Seen \"x\")", FALSE},
		{"* FLAGS x", FALSE},
		{"* FLAGS", FALSE},
		{"* OK [PERMANENTFLAGS]", FALSE},
		{"* OK [PERMANENTFLAGS x]", FALSE},
		{"* NO [UIDVALIDITY 5] no", FALSE},
		{"* BAD [UIDNEXT 5] no", FALSE},
		{"* OK Just text", FALSE},
		{"A2 NO [READ-ONLY] no", FALSE},
		{"A2 OK [READ-WRITE] Sample mailbox selected", TRUE},
	};
	ImapSelectData sd = {0};

	for (gsize i = 0; i < G_N_ELEMENTS(steps); i++) {
		g_autoptr(ImapResponse) r = parse(steps[i].in);

		g_test_message("select step: %s", steps[i].in);
		g_assert_cmpint(imap_select_data_update(&sd, r), ==,
				steps[i].relevant);
	}
	g_assert_cmphex(sd.has, ==,
			IMAP_STATUS_HAS_MESSAGES | IMAP_STATUS_HAS_UIDVALIDITY |
				IMAP_STATUS_HAS_UIDNEXT |
				IMAP_STATUS_HAS_HIGHESTMODSEQ);
	g_assert_cmpuint(sd.exists, ==, 172);
	g_assert_cmpuint(sd.uidvalidity, ==, 3857529045u);
	g_assert_cmpuint(sd.uidnext, ==, 4392);
	g_assert_cmpuint(sd.highestmodseq, ==, 20010715194045007ull);
	g_assert_false(sd.nomodseq);
	g_assert_false(sd.read_only);
	g_assert_cmpuint(g_strv_length(sd.flags), ==, 5);
	g_assert_cmpstr(sd.flags[4], ==, "\\Draft");
	g_assert_cmpuint(g_strv_length(sd.permanentflags), ==, 3);
	g_assert_cmpstr(sd.permanentflags[2], ==, "\\*");

	/* Later data replaces earlier data. */
	g_autoptr(ImapResponse) f = parse("* FLAGS ()");
	g_autoptr(ImapResponse) ro = parse("A3 OK [READ-ONLY] EXAMINE done");
	g_autoptr(ImapResponse) nm = parse("* OK [NOMODSEQ] Sorry");
	g_autoptr(ImapResponse) ex = parse("* 0 EXISTS");

	g_assert_true(imap_select_data_update(&sd, f));
	g_assert_cmpuint(g_strv_length(sd.flags), ==, 0);
	g_assert_true(imap_select_data_update(&sd, ro));
	g_assert_true(sd.read_only);
	g_assert_true(imap_select_data_update(&sd, nm));
	g_assert_true(sd.nomodseq);
	g_assert_true(imap_select_data_update(&sd, ex));
	g_assert_cmpuint(sd.exists, ==, 0);
	g_assert_false(imap_select_data_update(&sd, NULL));

	imap_select_data_clear(&sd);
	g_assert_null(sd.flags);
	g_assert_null(sd.permanentflags);
	g_assert_cmpuint(sd.has, ==, 0);
	imap_select_data_clear(&sd);
}

/* ---- INTERNALDATE ---- */

static void test_internaldate(void)
{
	static const struct {
		const char *in;
		gint64 epoch;
		gint tz;
	} good[] = {
		{"17-Jul-1996 02:44:25 -0700", 837596665, -420},
		{"17-Jul-1996 09:44:25 +0000", 837596665, 0},
		{"17-jul-1996 11:14:25 +0130", 837596665, 90},
		{" 1-Jan-1970 00:00:00 +0000", 0, 0},
		{"1-Jan-1970 00:00:00 +0000", 0, 0},
		{"01-Jan-1970 00:00:00 +0000", 0, 0},
		{"31-Dec-1969 23:59:59 +0000", -1, 0},
		{"29-Feb-2000 00:00:00 +0000", 951782400, 0},
		{"29-Feb-2024 23:59:59 +0000", 1709251199, 0},
		{"01-Mar-1900 00:00:00 +0000", -2203891200, 0},
		{"31-Dec-9999 23:59:59 +0000", 253402300799, 0},
		{"01-Jan-0001 00:00:00 +0000", -62135596800, 0},
	};
	static const char *const bad[] = {
		"",
		"29-Feb-1900 00:00:00 +0000",
		"29-Feb-2023 00:00:00 +0000",
		"31-Apr-2020 00:00:00 +0000",
		"00-Jan-2020 00:00:00 +0000",
		"32-Jan-2020 00:00:00 +0000",
		"01-Foo-2020 00:00:00 +0000",
		"01-Ja-2020 00:00:00 +0000",
		"01-Jan-2020 24:00:00 +0000",
		"01-Jan-2020 00:60:00 +0000",
		"01-Jan-2020 00:00:60 +0000",
		"01-Jan-2020 00:00:00 +0060",
		"01-Jan-2020 00:00:00 +2400",
		"01-Jan-2020 00:00:00 0000",
		"01-Jan-2020 00:00:00",
		"01-Jan-2020 00:00:00 +000",
		"01-Jan-2020 00:00:00 +0000 ",
		"01-Jan-2020 00:00:00 +0000x",
		"01-Jan-20 00:00:00 +0000",
		"01-Jan-0000 00:00:00 +0000",
		"01-Jan-2020  0:00:00 +0000",
		"01-Jan-2020T00:00:00 +0000",
		"  1-Jan-2020 00:00:00 +0000",
		"x1-Jan-2020 00:00:00 +0000",
		"001-Jan-2020 00:00:00 +0000",
	};
	gint64 epoch;
	gint tz;

	for (gsize i = 0; i < G_N_ELEMENTS(good); i++) {
		g_test_message("date: %s", good[i].in);
		g_assert_true(imap_parse_internaldate(good[i].in, &epoch, &tz));
		g_assert_cmpint(epoch, ==, good[i].epoch);
		g_assert_cmpint(tz, ==, good[i].tz);
	}
	for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
		g_test_message("bad date: '%s'", bad[i]);
		g_assert_false(imap_parse_internaldate(bad[i], &epoch, &tz));
	}
	g_assert_false(imap_parse_internaldate(NULL, &epoch, &tz));
}

static void test_format_internaldate(void)
{
	static const struct {
		gint64 epoch;
		const char *out;
	} cases[] = {
		{0, "01-Jan-1970 00:00:00 +0000"},
		{-1, "31-Dec-1969 23:59:59 +0000"},
		{837596665, "17-Jul-1996 09:44:25 +0000"},
		{951782400, "29-Feb-2000 00:00:00 +0000"},
		{1709251199, "29-Feb-2024 23:59:59 +0000"},
		{-2203891200, "01-Mar-1900 00:00:00 +0000"},
	};

	for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
		g_autofree char *s = imap_format_internaldate(cases[i].epoch);

		g_assert_cmpstr(s, ==, cases[i].out);
	}

	/* Round trip across centuries, both signs, every day of a leap
	 * year. */
	for (gint64 e = -2208988800; e < 4102444800; e += 86400 * 7 + 3607) {
		g_autofree char *s = imap_format_internaldate(e);
		gint64 back;
		gint tz;

		g_assert_true(imap_parse_internaldate(s, &back, &tz));
		g_assert_cmpint(back, ==, e);
		g_assert_cmpint(tz, ==, 0);
	}
	for (gint64 e = 946684800; e < 946684800 + 366 * 86400; e += 86400) {
		g_autofree char *s = imap_format_internaldate(e + 86399);
		gint64 back;

		g_assert_true(imap_parse_internaldate(s, &back, NULL));
		g_assert_cmpint(back, ==, e + 86399);
	}
}

/* ---- FETCH ---- */

static void test_fetch_good(void)
{
	g_autoptr(ImapResponse) r = parse_len(
		BIN("* 12 FETCH (UID 9 FLAGS (\\Seen $Forwarded) RFC822.SIZE "
		    "4286 INTERNALDATE \" 7-Jul-1996 02:44:25 -0700\" MODSEQ "
		    "(12121231000) body[header.fields (date subject)]<0> "
		    "{4}\r\n"
		    "ab\r\n BODY[] NIL X-GM-MSGID 123 ENVELOPE (NIL \"x\") "
		    "BODYSTRUCTURE (\"text\" \"plain\") BINARY.SIZE[1] 42 "
		    "BINARY[1] ~{2}\r\n\0\1 BODY[TEXT]<100> \"q\" UID 9 "
		    "FLAGS (\\Deleted))\r\n"),
		FALSE);
	g_autoptr(GError) error = NULL;
	g_autoptr(ImapFetchData) fd = imap_decode_fetch(r, &error);
	const ImapFetchSection *s;

	g_assert_no_error(error);
	g_assert_cmpuint(fd->seq, ==, 12);
	g_assert_cmphex(fd->has, ==,
			IMAP_FETCH_HAS_UID | IMAP_FETCH_HAS_FLAGS |
				IMAP_FETCH_HAS_SIZE |
				IMAP_FETCH_HAS_INTERNALDATE |
				IMAP_FETCH_HAS_MODSEQ);
	g_assert_cmpuint(fd->uid, ==, 9);
	/* The later FLAGS item wins. */
	g_assert_cmpuint(g_strv_length(fd->flags), ==, 1);
	g_assert_cmpstr(fd->flags[0], ==, "\\Deleted");
	g_assert_cmpuint(fd->rfc822_size, ==, 4286);
	g_assert_cmpint(fd->internaldate, ==, 836732665);
	g_assert_cmpint(fd->internaldate_tz, ==, -420);
	g_assert_cmpuint(fd->modseq, ==, 12121231000);
	g_assert_cmpuint(fd->sections->len, ==, 4);

	s = imap_fetch_data_section(fd, "HEADER.FIELDS (DATE SUBJECT)");
	g_assert_nonnull(s);
	g_assert_true(s->has_origin);
	g_assert_cmpuint(s->origin, ==, 0);
	g_assert_cmpint(s->value->type, ==, IMAP_VALUE_STRING);
	g_assert_cmpmem(s->value->str, s->value->len, "ab\r\n", 4);

	s = imap_fetch_data_section(fd, "");
	g_assert_nonnull(s);
	g_assert_false(s->has_origin);
	g_assert_cmpint(s->value->type, ==, IMAP_VALUE_NIL);

	s = imap_fetch_data_section(fd, "1");
	g_assert_nonnull(s);
	g_assert_cmpmem(s->value->str, s->value->len, "\0\1", 2);

	s = imap_fetch_data_section(fd, "text");
	g_assert_nonnull(s);
	g_assert_cmpuint(s->origin, ==, 100);
	g_assert_cmpstr(s->value->str, ==, "q");
	g_assert_null(imap_fetch_data_section(fd, "HEADER"));

	g_autoptr(ImapResponse) old =
		parse_len(BIN("* 1 FETCH (RFC822 {1}\r\na RFC822.HEADER \"h\" "
			      "rfc822.text NIL BODY.PEEK[2] NIL)\r\n"),
			  TRUE);
	g_autoptr(ImapFetchData) fo = imap_decode_fetch(old, &error);

	g_assert_no_error(error);
	g_assert_cmpuint(fo->has, ==, 0);
	g_assert_cmpint(imap_fetch_data_section(fo, "")->value->type, ==,
			IMAP_VALUE_STREAMED);
	g_assert_cmpstr(imap_fetch_data_section(fo, "HEADER")->value->str, ==,
			"h");
	g_assert_nonnull(imap_fetch_data_section(fo, "TEXT"));
	g_assert_nonnull(imap_fetch_data_section(fo, "2"));

	g_autoptr(ImapResponse) empty = parse("* 3 FETCH ()");
	g_autoptr(ImapFetchData) fe = imap_decode_fetch(empty, &error);

	g_assert_no_error(error);
	g_assert_cmpuint(fe->seq, ==, 3);
	g_assert_cmpuint(fe->has, ==, 0);
	g_assert_null(imap_fetch_data_section(fe, ""));
	g_assert_null(imap_fetch_data_section(NULL, ""));
}

static void test_fetch_bad(void)
{
	static const char *const bad[] = {
		"* 1 FETCH (UID 0)",
		"* 1 FETCH (UID \"9\")",
		"* 1 FETCH (UID 4294967296)",
		"* 1 FETCH (UID NIL)",
		"* 1 FETCH (UID 1 UID 2)",
		"* 1 FETCH (UID)",
		"* 1 FETCH (UID 1 FLAGS)",
		"* 1 FETCH (FLAGS \\Seen)",
		"* 1 FETCH (FLAGS (\\Seen \"x\"))",
		"* 1 FETCH (FLAGS NIL)",
		"* 1 FETCH (INTERNALDATE \"31-Feb-2020 00:00:00 +0000\")",
		"* 1 FETCH (INTERNALDATE x)",
		"* 1 FETCH (INTERNALDATE NIL)",
		"* 1 FETCH (MODSEQ 5)",
		"* 1 FETCH (MODSEQ (5 6))",
		"* 1 FETCH (MODSEQ ())",
		"* 1 FETCH (MODSEQ (x))",
		"* 1 FETCH (RFC822.SIZE NIL)",
		"* 1 FETCH (RFC822.SIZE -5)",
		"* 1 FETCH (BODY[] x)",
		"* 1 FETCH (BODY[] (a))",
		"* 1 FETCH (BODY[]<x> NIL)",
		"* 1 FETCH (BODY[]<> NIL)",
		"* 1 FETCH (BODY[]<5 NIL)",
		"* 1 FETCH (BODY[]<5>x NIL)",
		"* 1 FETCH (BODY[]junk NIL)",
		"* 1 FETCH (BODY[]<99999999999999999999> NIL)",
		"* 1 FETCH (RFC822 x)",
		"* 1 FETCH (RFC822.TEXT (x))",
		"* 1 FETCH (\"UID\" 1)",
		"* 1 FETCH ((UID) 1)",
		"* 1 FETCH (NIL 1)",
		"* 0 FETCH (UID 1)",
		"* FETCH (UID 1)",
		"* 1 FETCH UID 1",
		"* 1 FETCH (UID 1) (FLAGS ())",
		"* 1 FETCH",
		"* 1 EXISTS",
		"A1 OK FETCH",
	};

	for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
		g_autoptr(ImapResponse) r = parse(bad[i]);
		g_autoptr(GError) error = NULL;

		g_test_message("bad FETCH: %s", bad[i]);
		g_assert_null(imap_decode_fetch(r, &error));
		g_assert_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL);
	}

	/* A repeated UID that agrees is harmless. */
	g_autoptr(ImapResponse) same = parse("* 1 FETCH (UID 7 UID 7)");
	g_autoptr(ImapFetchData) fd = imap_decode_fetch(same, NULL);

	g_assert_cmpuint(fd->uid, ==, 7);

	g_autoptr(ImapResponse) nul =
		parse_len(BIN("* 1 FETCH (INTERNALDATE {27}\r\n"
			      "01-Jan-2020 00:00:00 +0000\0)\r\n"),
			  FALSE);
	g_autoptr(GError) error = NULL;

	g_assert_null(imap_decode_fetch(nul, &error));
	g_assert_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL);
}

/* ---- VANISHED, ESEARCH, SEARCH ---- */

static void test_vanished(void)
{
	g_autoptr(ImapResponse) a = parse("* VANISHED (EARLIER) 41,43:116");
	g_autoptr(ImapResponse) b = parse("* VANISHED 407,405");
	g_autoptr(ImapResponse) c = parse("* vanished (earlier) 1");
	gboolean earlier = FALSE;
	g_autoptr(ImapUidSet) sa = imap_decode_vanished(a, &earlier, NULL);
	g_autofree char *ta = imap_uid_set_to_string(sa);

	g_assert_true(earlier);
	g_assert_cmpstr(ta, ==, "41,43:116");

	g_autoptr(ImapUidSet) sb = imap_decode_vanished(b, &earlier, NULL);
	g_autofree char *tb = imap_uid_set_to_string(sb);

	g_assert_false(earlier);
	g_assert_cmpstr(tb, ==, "405,407");

	g_autoptr(ImapUidSet) sc = imap_decode_vanished(c, NULL, NULL);

	g_assert_nonnull(sc);

	static const char *const bad[] = {
		"* VANISHED",		"* VANISHED (LATER) 1",
		"* VANISHED (EARLIER)", "* VANISHED (EARLIER FOO) 1",
		"* VANISHED () 1",	"* VANISHED 1 2",
		"* VANISHED 0",		"* VANISHED 1:*",
		"* VANISHED \"1\"",	"* VANISHED NIL",
		"* VANISHED 1,,2",	"* EXPUNGE 1",
	};

	for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
		g_autoptr(ImapResponse) r = parse(bad[i]);
		g_autoptr(GError) error = NULL;

		g_test_message("bad VANISHED: %s", bad[i]);
		g_assert_null(imap_decode_vanished(r, &earlier, &error));
		g_assert_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL);
	}
}

static void test_esearch(void)
{
	g_autoptr(ImapResponse) r =
		parse("* ESEARCH (TAG \"A282\") UID MIN 2 MAX 47 COUNT 3 ALL "
		      "2,10:11 MODSEQ 917162500");
	g_autoptr(GError) error = NULL;
	g_autoptr(ImapEsearchData) es = imap_decode_esearch(r, &error);
	g_autofree char *all = NULL;

	g_assert_no_error(error);
	g_assert_cmpstr(es->tag, ==, "A282");
	g_assert_true(es->uid);
	g_assert_true(es->has_min && es->has_max && es->has_count &&
		      es->has_modseq);
	g_assert_cmpuint(es->min, ==, 2);
	g_assert_cmpuint(es->max, ==, 47);
	g_assert_cmpuint(es->count, ==, 3);
	g_assert_cmpuint(es->modseq, ==, 917162500);
	all = imap_uid_set_to_string(es->all);
	g_assert_cmpstr(all, ==, "2,10:11");

	g_autoptr(ImapResponse) e = parse("* ESEARCH (TAG \"a\") UID");
	g_autoptr(ImapEsearchData) ee = imap_decode_esearch(e, &error);

	g_assert_no_error(error);
	g_assert_true(ee->uid);
	g_assert_false(ee->has_min || ee->has_max || ee->has_count);
	g_assert_null(ee->all);

	g_autoptr(ImapResponse) c = parse(
		"* ESEARCH count 0 PARTIAL (1:10 5,7) RELEVANCY (1 2) MIN 4");
	g_autoptr(ImapEsearchData) ec = imap_decode_esearch(c, &error);

	g_assert_no_error(error);
	g_assert_null(ec->tag);
	g_assert_false(ec->uid);
	g_assert_true(ec->has_count);
	g_assert_cmpuint(ec->count, ==, 0);
	g_assert_cmpuint(ec->min, ==, 4);

	g_autoptr(ImapResponse) t = parse("* ESEARCH (TAG A9) ALL 1 ALL 2");
	g_autoptr(ImapEsearchData) et = imap_decode_esearch(t, &error);
	g_autofree char *tall = imap_uid_set_to_string(et->all);

	g_assert_cmpstr(et->tag, ==, "A9");
	g_assert_cmpstr(tall, ==, "2");

	static const char *const bad[] = {
		"* ESEARCH UID COUNT",	       "* ESEARCH MIN x",
		"* ESEARCH MAX NIL",	       "* ESEARCH COUNT 4294967296",
		"* ESEARCH MODSEQ x",	       "* ESEARCH ALL 0",
		"* ESEARCH ALL \"1\"",	       "* ESEARCH ALL (1)",
		"* ESEARCH (TAG) UID",	       "* ESEARCH (TAG NIL)",
		"* ESEARCH (TAG \"a\" \"b\")", "* ESEARCH (FOO \"x\")",
		"* ESEARCH (COUNT 5)",	       "* ESEARCH \"MIN\" 5",
		"* ESEARCH UID UID",	       "* SEARCH 1",
	};

	for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
		g_autoptr(ImapResponse) b = parse(bad[i]);
		g_autoptr(GError) err = NULL;

		g_test_message("bad ESEARCH: %s", bad[i]);
		g_assert_null(imap_decode_esearch(b, &err));
		g_assert_error(err, IMAP_ERROR, IMAP_ERROR_PROTOCOL);
	}
}

static void test_search(void)
{
	static const struct {
		const char *in;
		const char *out;
	} good[] = {
		{"* SEARCH 2 84 882", "2,84,882"},
		{"* SEARCH", ""},
		{"* SEARCH ", ""},
		{"* SEARCH 5 3 4 1 4", "1,3:5"},
		{"* SEARCH 2 5 (MODSEQ 917162500)", "2,5"},
		{"* search 4294967295", "4294967295"},
	};
	static const char *const bad[] = {
		"* SEARCH 0",	       "* SEARCH x",
		"* SEARCH 1 (MODSEQ)", "* SEARCH 1 (MODSEQ x)",
		"* SEARCH 1 (FOO 5)",  "* SEARCH (MODSEQ 5) 1",
		"* SEARCH \"5\"",      "* SEARCH NIL",
		"* SEARCH 4294967296", "* ESEARCH 1",
	};

	for (gsize i = 0; i < G_N_ELEMENTS(good); i++) {
		g_autoptr(ImapResponse) r = parse(good[i].in);
		g_autoptr(GError) error = NULL;
		g_autoptr(ImapUidSet) set = imap_decode_search(r, &error);
		g_autofree char *s = NULL;

		g_assert_no_error(error);
		s = imap_uid_set_to_string(set);
		g_assert_cmpstr(s, ==, good[i].out);
	}
	for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
		g_autoptr(ImapResponse) r = parse(bad[i]);
		g_autoptr(GError) error = NULL;

		g_test_message("bad SEARCH: %s", bad[i]);
		g_assert_null(imap_decode_search(r, &error));
		g_assert_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL);
	}
}

/* ---- Response codes ---- */

static void test_appenduid(void)
{
	static const struct {
		const char *in;
		guint32 uidvalidity;
		const char *uids;
	} good[] = {
		{"A003 OK [APPENDUID 38505 3955] APPEND completed", 38505,
		 "3955"},
		{"A004 OK [appenduid 1 3957:3955] MULTIAPPEND", 1, "3955:3957"},
		{"A005 OK [APPENDUID 4294967295 1,3]", G_MAXUINT32, "1,3"},
	};
	static const char *const bad[] = {
		"A1 OK [APPENDUID 0 5]",
		"A1 OK [APPENDUID 38505]",
		"A1 OK [APPENDUID]",
		"A1 OK [APPENDUID 38505 0]",
		"A1 OK [APPENDUID x 5]",
		"A1 OK [APPENDUID 1 2 3]",
		"A1 OK [APPENDUID 38505 \"5\"]",
		"A1 OK [APPENDUID 38505 *]",
		"A1 OK [APPENDUID 38505 NIL]",
		"A1 OK [APPENDUID 4294967296 1]",
	};

	for (gsize i = 0; i < G_N_ELEMENTS(good); i++) {
		g_autoptr(ImapResponse) r = parse(good[i].in);
		g_autoptr(GError) error = NULL;
		g_autoptr(ImapUidSet) set = NULL;
		g_autofree char *s = NULL;
		guint32 v = 0;

		g_assert_true(imap_decode_appenduid(r, &v, &set, &error));
		g_assert_no_error(error);
		g_assert_cmpuint(v, ==, good[i].uidvalidity);
		s = imap_uid_set_to_string(set);
		g_assert_cmpstr(s, ==, good[i].uids);
		/* Outputs are optional. */
		g_assert_true(imap_decode_appenduid(r, NULL, NULL, NULL));
	}
	for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
		g_autoptr(ImapResponse) r = parse(bad[i]);
		g_autoptr(GError) error = NULL;
		ImapUidSet *set = NULL;
		guint32 v = 0;

		g_test_message("bad APPENDUID: %s", bad[i]);
		g_assert_false(imap_decode_appenduid(r, &v, &set, &error));
		g_assert_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL);
		g_assert_null(set);
	}

	g_autoptr(ImapResponse) none = parse("A1 OK APPEND completed");
	g_autoptr(ImapResponse) other = parse("A1 OK [COPYUID 1 2 3] done");
	g_autoptr(GError) error = NULL;

	g_assert_false(imap_decode_appenduid(none, NULL, NULL, &error));
	g_assert_no_error(error);
	g_assert_false(imap_decode_appenduid(other, NULL, NULL, &error));
	g_assert_no_error(error);
}

static void assert_pairs(GArray *pairs, const guint32 *expect, guint n)
{
	g_assert_cmpuint(pairs->len, ==, n);
	for (guint i = 0; i < n; i++)
		g_assert_cmpuint(g_array_index(pairs, guint32, i), ==,
				 expect[i]);
}

static void test_copyuid(void)
{
	static const guint32 p1[] = {304, 3956, 319, 3957, 320, 3958};
	static const guint32 p2[] = {5, 100, 2, 101, 9, 102};
	static const guint32 p3[] = {2, 11, 3, 12};
	struct {
		const char *in;
		guint32 uidvalidity;
		const guint32 *pairs;
		guint n;
	} good[] = {
		{"A004 OK [COPYUID 38505 304,319:320 3956:3958] Done", 38505,
		 p1, G_N_ELEMENTS(p1)},
		{"* OK [COPYUID 7 5,2,9 100:102] Moved", 7, p2,
		 G_N_ELEMENTS(p2)},
		{"A5 OK [copyuid 1 3:2 12:11]", 1, p3, G_N_ELEMENTS(p3)},
	};
	static const char *const bad[] = {
		"A1 OK [COPYUID 1 1:3 5:6]",
		"A1 OK [COPYUID 1 1:20000000 1:20000000]",
		"A1 OK [COPYUID 1 1:4294967295 1:4294967295]",
		"A1 OK [COPYUID 1 1,,2 3:4]",
		"A1 OK [COPYUID 1 1, 3]",
		"A1 OK [COPYUID 0 1 2]",
		"A1 OK [COPYUID 1 1]",
		"A1 OK [COPYUID 1 1 2 3]",
		"A1 OK [COPYUID 1 0 1]",
		"A1 OK [COPYUID 1 1 x]",
		"A1 OK [COPYUID 1 (1) 2]",
		"A1 OK [COPYUID 1 * 2]",
		"A1 OK [COPYUID 1 \"1\" 2]",
		"A1 OK [COPYUID NIL 1 2]",
	};

	for (gsize i = 0; i < G_N_ELEMENTS(good); i++) {
		g_autoptr(ImapResponse) r = parse(good[i].in);
		g_autoptr(GError) error = NULL;
		g_autoptr(GArray) pairs = NULL;
		guint32 v = 0;

		g_assert_true(imap_decode_copyuid(r, &v, &pairs, &error));
		g_assert_no_error(error);
		g_assert_cmpuint(v, ==, good[i].uidvalidity);
		assert_pairs(pairs, good[i].pairs, good[i].n);
		g_assert_true(imap_decode_copyuid(r, NULL, NULL, NULL));
	}
	for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
		g_autoptr(ImapResponse) r = parse(bad[i]);
		g_autoptr(GError) error = NULL;
		GArray *pairs = NULL;

		g_test_message("bad COPYUID: %s", bad[i]);
		g_assert_false(imap_decode_copyuid(r, NULL, &pairs, &error));
		g_assert_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL);
		g_assert_null(pairs);
	}

	g_autoptr(ImapResponse) none = parse("A1 OK done");
	g_autoptr(GError) error = NULL;

	g_assert_false(imap_decode_copyuid(none, NULL, NULL, &error));
	g_assert_no_error(error);
}

static void test_codes(void)
{
	g_autoptr(ImapResponse) bye = parse("* BYE Logging out");
	g_autoptr(ImapResponse) alert = parse("A1 OK [ALERT] x");
	g_autoptr(ImapResponse) alert2 = parse("* no [alert] quota");
	g_autoptr(ImapResponse) plain = parse("* OK hi");
	g_autoptr(ImapResponse) gone = parse("A2 NO [EXPUNGEISSUED] gone");
	g_autoptr(ImapResponse) data = parse("* 3 EXISTS");

	g_assert_true(imap_response_is_bye(bye));
	g_assert_false(imap_response_is_alert(bye));
	g_assert_true(imap_response_is_alert(alert));
	g_assert_false(imap_response_is_bye(alert));
	g_assert_true(imap_response_is_alert(alert2));
	g_assert_false(imap_response_is_alert(plain));
	g_assert_false(imap_response_is_bye(plain));
	g_assert_true(imap_response_has_code(gone, "EXPUNGEISSUED"));
	g_assert_true(imap_response_has_code(gone, "expungeissued"));
	g_assert_false(imap_response_has_code(gone, "ALERT"));
	g_assert_false(imap_response_has_code(data, "ALERT"));
	g_assert_false(imap_response_has_code(NULL, "ALERT"));
	g_assert_false(imap_response_is_bye(NULL));
	g_assert_false(imap_response_is_bye(data));
}

/* Every decoder on every shape: a result or an error, never both, never
 * neither, never a crash. */
static void test_decoders_any_shape(void)
{
	static const char *const lines[] = {
		"* LIST",
		"* LIST (",
		"* LIST ((()))",
		"* STATUS ((",
		"* FETCH",
		"* 1 FETCH ((((",
		"* 1 FETCH (BODY[",
		"* 1 FETCH (BODY[] BODY[])",
		"* ESEARCH ((",
		"* SEARCH ((",
		"* VANISHED ((",
		"* OK [COPYUID]",
		"* OK [APPENDUID (",
		"* OK [PERMANENTFLAGS ((",
		"* 1 FETCH (BODY[]<",
		"* 1 FETCH (BODY[]<0",
		"* 1 FETCH (BINARY.PEEK[]<1> NIL)",
	};
	const char *suffixes[] = {"", ")", "))", ") x", " NIL)", " ())"};

	for (gsize i = 0; i < G_N_ELEMENTS(lines); i++) {
		for (gsize j = 0; j < G_N_ELEMENTS(suffixes); j++) {
			g_autofree char *text = g_strconcat(
				lines[i], suffixes[j], "\r\n", NULL);
			g_autoptr(ImapParser) p = imap_parser_new(NULL);
			g_autoptr(ImapResponse) r = NULL;
			gsize used;

			if (imap_parser_feed(p, (const guint8 *)text,
					     strlen(text), &used, &r,
					     NULL) != IMAP_PARSE_RESPONSE)
				continue;

			g_autoptr(GError) e1 = NULL;
			g_autoptr(GError) e2 = NULL;
			g_autoptr(GError) e3 = NULL;
			g_autoptr(GError) e4 = NULL;
			g_autoptr(GError) e5 = NULL;
			g_autoptr(GError) e6 = NULL;
			g_autoptr(ImapListEntry) l = imap_decode_list(r, &e1);
			g_autoptr(ImapStatusData) s =
				imap_decode_status(r, &e2);
			g_autoptr(ImapFetchData) f = imap_decode_fetch(r, &e3);
			g_autoptr(ImapUidSet) v =
				imap_decode_vanished(r, NULL, &e4);
			g_autoptr(ImapEsearchData) es =
				imap_decode_esearch(r, &e5);
			g_autoptr(ImapUidSet) se = imap_decode_search(r, &e6);
			ImapSelectData sd = {0};

			g_assert_true(!l != !e1);
			g_assert_true(!s != !e2);
			g_assert_true(!f != !e3);
			g_assert_true(!v != !e4);
			g_assert_true(!es != !e5);
			g_assert_true(!se != !e6);
			imap_select_data_update(&sd, r);
			imap_select_data_clear(&sd);
			g_hash_table_unref(imap_decode_capability(r->args));
		}
	}
}

int main(int argc, char **argv)
{
	g_test_init(&argc, &argv, NULL);
	g_test_add_func("/response/capability", test_capability);
	g_test_add_func("/response/list-good", test_list_good);
	g_test_add_func("/response/list-bad", test_list_bad);
	g_test_add_func("/response/status", test_status);
	g_test_add_func("/response/select", test_select);
	g_test_add_func("/response/internaldate", test_internaldate);
	g_test_add_func("/response/format-internaldate",
			test_format_internaldate);
	g_test_add_func("/response/fetch-good", test_fetch_good);
	g_test_add_func("/response/fetch-bad", test_fetch_bad);
	g_test_add_func("/response/vanished", test_vanished);
	g_test_add_func("/response/esearch", test_esearch);
	g_test_add_func("/response/search", test_search);
	g_test_add_func("/response/appenduid", test_appenduid);
	g_test_add_func("/response/copyuid", test_copyuid);
	g_test_add_func("/response/codes", test_codes);
	g_test_add_func("/response/decoders-any-shape",
			test_decoders_any_shape);
	return g_test_run();
}
