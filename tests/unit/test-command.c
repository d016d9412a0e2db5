/* SPDX-License-Identifier: MIT */
/* The command builder: exact wire bytes for each argument form, literal
 * split points per literal mode, redaction, and a property test that
 * parses random renderings back with a small reference tokenizer. */
#include "imap-private.h"

#include <string.h>

/* Parts joined with "|" between them; parts must not contain "|" or NUL
 * for this to be unambiguous, which holds for every table below. */
static char *render_str(const ImapCommand *cmd, ImapLiteralMode mode,
			gboolean redact)
{
	g_autoptr(GPtrArray) parts =
		imap_command_render(cmd, "A1", mode, redact);
	GString *s = g_string_new(NULL);

	g_assert_nonnull(parts);
	for (guint i = 0; i < parts->len; i++) {
		gsize len;
		const char *data = g_bytes_get_data(parts->pdata[i], &len);

		g_assert_null(memchr(data, '\0', len));
		if (i > 0)
			g_string_append_c(s, '|');
		g_string_append_len(s, data, (gssize)len);
	}
	return g_string_free(s, FALSE);
}

static void assert_render(const ImapCommand *cmd, ImapLiteralMode mode,
			  gboolean redact, const char *expected)
{
	g_autofree char *got = render_str(cmd, mode, redact);

	g_assert_cmpstr(got, ==, expected);
}

/* One string argument, rendered with synchronizing literals. */
static void assert_string(const char *data, gsize len, const char *expected)
{
	g_autoptr(ImapCommand) cmd = imap_command_new("X");
	g_autoptr(GError) error = NULL;

	g_assert_true(imap_command_add_string(cmd, data, len, &error));
	g_assert_no_error(error);
	assert_render(cmd, IMAP_LITERAL_SYNC, FALSE, expected);
}

#define STR(s) s, sizeof(s) - 1

static void test_atoms(void)
{
	assert_string(STR("INBOX"), "A1 X INBOX\r\n");
	assert_string(STR("a&b"), "A1 X a&b\r\n");
	assert_string(STR("foo]bar"), "A1 X foo]bar\r\n");
	assert_string(STR("]"), "A1 X ]\r\n");
	assert_string(STR("[x"), "A1 X [x\r\n");
	assert_string(STR("~peter/mail/&U,BTFw-"),
		      "A1 X ~peter/mail/&U,BTFw-\r\n");
	assert_string(STR("NIL"), "A1 X NIL\r\n");
	assert_string(STR("+.-_:!#$'<=>?@^`|~}"),
		      "A1 X +.-_:!#$'<=>?@^`|~}\r\n");
}

static void test_quoted(void)
{
	assert_string(STR(""), "A1 X \"\"\r\n");
	assert_string(STR("Sent Items"), "A1 X \"Sent Items\"\r\n");
	assert_string(STR(" "), "A1 X \" \"\r\n");
	assert_string(STR("%"), "A1 X \"%\"\r\n");
	assert_string(STR("a*"), "A1 X \"a*\"\r\n");
	assert_string(STR("(x)"), "A1 X \"(x)\"\r\n");
	assert_string(STR("{5}"), "A1 X \"{5}\"\r\n");
	assert_string(STR("say \"hi\""), "A1 X \"say \\\"hi\\\"\"\r\n");
	assert_string(STR("back\\slash"), "A1 X \"back\\\\slash\"\r\n");
	assert_string(STR("\\\""), "A1 X \"\\\\\\\"\"\r\n");
	/* CTLs other than CR and LF are TEXT-CHARs */
	assert_string(STR("a\tb"), "A1 X \"a\tb\"\r\n");
	assert_string(STR("\x01\x7f"), "A1 X \"\x01\x7f\"\r\n");
}

static void test_literals(void)
{
	assert_string(STR("a\r\nb"), "A1 X {4}\r\n|a\r\nb\r\n");
	assert_string(STR("\r"), "A1 X {1}\r\n|\r\r\n");
	assert_string(STR("\n"), "A1 X {1}\r\n|\n\r\n");
	/* 8-bit: no UTF8=ACCEPT assumed, so never quoted */
	assert_string(STR("Entwürfe"), "A1 X {9}\r\n|Entwürfe\r\n");
	assert_string(STR("\xff"), "A1 X {1}\r\n|\xff\r\n");
	assert_string(STR("x \"\xc3\xa9\""), "A1 X {6}\r\n|x \"\xc3\xa9\"\r\n");
}

static void test_refused(void)
{
	g_autoptr(ImapCommand) cmd = imap_command_new("X");
	g_autoptr(GError) error = NULL;

	g_assert_false(imap_command_add_string(cmd, STR("a\0b"), &error));
	g_assert_error(error, IMAP_ERROR, IMAP_ERROR_INVALID);
	g_assert_nonnull(strstr(error->message, "NUL"));
	g_clear_error(&error);
	g_assert_false(imap_command_add_string(cmd, STR("\0"), &error));
	g_assert_error(error, IMAP_ERROR, IMAP_ERROR_INVALID);
	/* nothing was added */
	assert_render(cmd, IMAP_LITERAL_SYNC, FALSE, "A1 X\r\n");
}

static void test_string_form(void)
{
	g_assert_cmpint(imap_string_form(NULL, 0), ==, IMAP_FORM_QUOTED);
	g_assert_cmpint(imap_string_form(STR("")), ==, IMAP_FORM_QUOTED);
	g_assert_cmpint(imap_string_form(STR("a]")), ==, IMAP_FORM_ATOM);
	g_assert_cmpint(imap_string_form(STR("a b")), ==, IMAP_FORM_QUOTED);
	g_assert_cmpint(imap_string_form(STR("a\nb")), ==, IMAP_FORM_LITERAL);
	g_assert_cmpint(imap_string_form(STR("\x80")), ==, IMAP_FORM_LITERAL);
	g_assert_cmpint(imap_string_form(STR("a\0")), ==, IMAP_FORM_REFUSED);
	g_assert_cmpint(imap_string_form(STR("\n\0")), ==, IMAP_FORM_REFUSED);
	g_assert_cmpint(imap_string_form(STR("\x80\0")), ==, IMAP_FORM_REFUSED);

	/* Every single byte lands where RFC 9051's grammar puts it. */
	for (int c = 1; c < 256; c++) {
		char b = (char)c;
		ImapStringForm want;

		if (c >= 0x80 || c == '\r' || c == '\n')
			want = IMAP_FORM_LITERAL;
		else if (c <= 0x20 || c == 0x7f || strchr("(){%*\"\\", c))
			want = IMAP_FORM_QUOTED;
		else
			want = IMAP_FORM_ATOM;
		g_assert_cmpint(imap_string_form(&b, 1), ==, want);
	}
}

static void assert_mailbox(const char *utf8, const char *expected)
{
	g_autoptr(ImapCommand) cmd = imap_command_new("SELECT");
	g_autoptr(GError) error = NULL;

	g_assert_true(imap_command_add_mailbox(cmd, utf8, &error));
	g_assert_no_error(error);
	assert_render(cmd, IMAP_LITERAL_SYNC, FALSE, expected);
}

static void test_mailbox(void)
{
	assert_mailbox("INBOX", "A1 SELECT INBOX\r\n");
	assert_mailbox("inbox", "A1 SELECT INBOX\r\n");
	assert_mailbox("InBoX", "A1 SELECT INBOX\r\n");
	/* only the name INBOX itself is special */
	assert_mailbox("Inbox/Sub", "A1 SELECT Inbox/Sub\r\n");
	assert_mailbox("INBOX ", "A1 SELECT \"INBOX \"\r\n");
	assert_mailbox("Entwürfe", "A1 SELECT Entw&APw-rfe\r\n");
	assert_mailbox("~peter/mail/台北/日本語",
		       "A1 SELECT ~peter/mail/&U,BTFw-/&ZeVnLIqe-\r\n");
	assert_mailbox("a&b", "A1 SELECT a&-b\r\n");
	assert_mailbox("&", "A1 SELECT &-\r\n");
	assert_mailbox("My Folder", "A1 SELECT \"My Folder\"\r\n");
	assert_mailbox("50% \"off\"", "A1 SELECT \"50% \\\"off\\\"\"\r\n");
	assert_mailbox("a\\b", "A1 SELECT \"a\\\\b\"\r\n");
	assert_mailbox("*", "A1 SELECT \"*\"\r\n");
	assert_mailbox("]", "A1 SELECT ]\r\n");
	assert_mailbox("😀 x", "A1 SELECT \"&2D3eAA- x\"\r\n");
	assert_mailbox("", "A1 SELECT \"\"\r\n");

	static const char *const bad[] = {"\xff", "a\xc3", "a\r\nb", "\t"};

	for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
		g_autoptr(ImapCommand) cmd = imap_command_new("SELECT");
		g_autoptr(GError) error = NULL;

		g_assert_false(imap_command_add_mailbox(cmd, bad[i], &error));
		g_assert_error(error, IMAP_ERROR, IMAP_ERROR_INVALID);
		assert_render(cmd, IMAP_LITERAL_SYNC, FALSE, "A1 SELECT\r\n");
	}
}

static void test_mailbox_raw(void)
{
	g_autoptr(ImapCommand) cmd = imap_command_new("RENAME");
	g_autoptr(GError) error = NULL;

	g_assert_true(imap_command_add_mailbox_raw(cmd, "&U,BTFw-", &error));
	g_assert_true(imap_command_add_mailbox_raw(cmd, "Sent Items", &error));
	g_assert_true(imap_command_add_mailbox_raw(cmd, "x\xc3\xa9", &error));
	g_assert_true(imap_command_add_mailbox_raw(cmd, "inbox", &error));
	g_assert_no_error(error);
	assert_render(cmd, IMAP_LITERAL_PLUS, FALSE,
		      "A1 RENAME &U,BTFw- \"Sent Items\" {3+}\r\nx\xc3\xa9 "
		      "inbox\r\n");
}

static ImapCommand *login_command(const char *user, const char *pass)
{
	ImapCommand *cmd = imap_command_new("LOGIN");

	imap_command_begin_secret(cmd);
	g_assert_true(imap_command_add_string(cmd, user, strlen(user), NULL));
	g_assert_true(imap_command_add_string(cmd, pass, strlen(pass), NULL));
	return cmd;
}

static void test_login_redaction(void)
{
	g_autoptr(ImapCommand) cmd = login_command("alice", "p4ss word\"");

	assert_render(cmd, IMAP_LITERAL_SYNC, TRUE, "A1 LOGIN *** ***\r\n");
	assert_render(cmd, IMAP_LITERAL_SYNC, FALSE,
		      "A1 LOGIN alice \"p4ss word\\\"\"\r\n");

	/* A secret that needs a literal: redacted, there is neither an
	 * announcement (it would leak the length) nor a split. */
	g_autoptr(ImapCommand) lit = login_command("bob", "pässwörd");

	assert_render(lit, IMAP_LITERAL_SYNC, TRUE, "A1 LOGIN *** ***\r\n");
	assert_render(lit, IMAP_LITERAL_PLUS, TRUE, "A1 LOGIN *** ***\r\n");
	assert_render(lit, IMAP_LITERAL_SYNC, FALSE,
		      "A1 LOGIN bob {10}\r\n|pässwörd\r\n");
	assert_render(lit, IMAP_LITERAL_MINUS, FALSE,
		      "A1 LOGIN bob {10+}\r\npässwörd\r\n");

	/* Only what follows begin_secret() is hidden. */
	g_autoptr(ImapCommand) mixed = imap_command_new("AUTHENTICATE");

	g_assert_true(imap_command_add_raw(mixed, "PLAIN", NULL));
	imap_command_begin_secret(mixed);
	g_assert_true(
		imap_command_add_raw(mixed, "AGFsaWNlAHNlY3JldA==", NULL));
	imap_command_add_literal(mixed, g_bytes_new_static(STR("secret")));
	assert_render(mixed, IMAP_LITERAL_SYNC, TRUE,
		      "A1 AUTHENTICATE PLAIN *** ***\r\n");
	assert_render(mixed, IMAP_LITERAL_SYNC, FALSE,
		      "A1 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA== "
		      "{6}\r\n|secret\r\n");
}

static GBytes *make_message(gsize len)
{
	GByteArray *msg = g_byte_array_sized_new((guint)len);

	for (gsize i = 0; i < len; i++) {
		guint8 b;

		/* Lines of 39 characters and CRLF, like a real message. */
		if (i % 41 == 39)
			b = '\r';
		else if (i % 41 == 40)
			b = '\n';
		else
			b = (guint8)('a' + i % 26);
		g_byte_array_append(msg, &b, 1);
	}
	return g_byte_array_free_to_bytes(msg);
}

/* Check the parts of a command with a binary literal part by part. */
static void assert_parts_redact(const ImapCommand *cmd, ImapLiteralMode mode,
				gboolean redact, const GBytes *const *expected,
				guint n)
{
	g_autoptr(GPtrArray) parts =
		imap_command_render(cmd, "A1", mode, redact);

	g_assert_cmpuint(parts->len, ==, n);
	for (guint i = 0; i < n; i++)
		g_assert_true(g_bytes_equal(parts->pdata[i], expected[i]));
}

static void assert_parts(const ImapCommand *cmd, ImapLiteralMode mode,
			 const GBytes *const *expected, guint n)
{
	assert_parts_redact(cmd, mode, FALSE, expected, n);
}

static GBytes *concat(const char *head, GBytes *mid, const char *tail)
{
	GByteArray *b = g_byte_array_new();
	gsize len;
	const guint8 *data = g_bytes_get_data(mid, &len);

	g_byte_array_append(b, (const guint8 *)head, (guint)strlen(head));
	g_byte_array_append(b, data, (guint)len);
	g_byte_array_append(b, (const guint8 *)tail, (guint)strlen(tail));
	return g_byte_array_free_to_bytes(b);
}

static void test_append(void)
{
	g_autoptr(GBytes) msg = make_message(310);
	g_autoptr(ImapCommand) cmd = imap_command_new("APPEND");

	g_assert_true(imap_command_add_mailbox(cmd, "INBOX", NULL));
	g_assert_true(imap_command_add_raw(cmd, "(\\Seen)", NULL));
	imap_command_add_literal(cmd, msg);

	g_autoptr(GBytes) sync0 =
		g_bytes_new_static(STR("A1 APPEND INBOX (\\Seen) {310}\r\n"));
	g_autoptr(GBytes) sync1 = concat("", msg, "\r\n");
	g_autoptr(GBytes) plus =
		concat("A1 APPEND INBOX (\\Seen) {310+}\r\n", msg, "\r\n");
	const GBytes *sync[] = {sync0, sync1};
	const GBytes *single[] = {plus};

	assert_parts(cmd, IMAP_LITERAL_SYNC, sync, 2);
	assert_parts(cmd, IMAP_LITERAL_PLUS, single, 1);
	assert_parts(cmd, IMAP_LITERAL_MINUS, single, 1);
	/* Redaction hides secrets only; a message is not one. */
	assert_parts_redact(cmd, IMAP_LITERAL_SYNC, TRUE, sync, 2);
}

static void test_literal_continues_line(void)
{
	g_autoptr(ImapCommand) cmd = imap_command_new("X");

	imap_command_add_literal(cmd, g_bytes_new_static(STR("abc")));
	g_assert_true(imap_command_add_raw(cmd, "more", NULL));
	imap_command_add_literal(cmd, g_bytes_new_static(STR("")));
	g_assert_true(imap_command_add_string(cmd, STR("x\ny"), NULL));
	g_assert_true(imap_command_add_raw(cmd, "end", NULL));

	assert_render(cmd, IMAP_LITERAL_SYNC, FALSE,
		      "A1 X {3}\r\n|abc more {0}\r\n| {3}\r\n|x\ny end\r\n");
	assert_render(cmd, IMAP_LITERAL_PLUS, FALSE,
		      "A1 X {3+}\r\nabc more {0+}\r\n {3+}\r\nx\ny end\r\n");
	assert_render(cmd, IMAP_LITERAL_MINUS, FALSE,
		      "A1 X {3+}\r\nabc more {0+}\r\n {3+}\r\nx\ny end\r\n");

	/* A literal may hold any byte, NUL included. */
	g_autoptr(ImapCommand) bin = imap_command_new("X");
	g_autoptr(GBytes) data = g_bytes_new_static(STR("\0\r\n\xff"));
	g_autoptr(GBytes) want = concat("A1 X {4+}\r\n", data, "\r\n");
	const GBytes *single[] = {want};

	imap_command_add_literal(bin, data);
	assert_parts(bin, IMAP_LITERAL_PLUS, single, 1);
}

static void test_literal_minus_boundary(void)
{
	for (gsize len = 4095; len <= 4098; len++) {
		g_autoptr(GBytes) msg = make_message(len);
		g_autoptr(ImapCommand) cmd = imap_command_new("APPEND");
		g_autofree char *head_sync =
			g_strdup_printf("A1 APPEND Drafts {%zu}\r\n", len);
		g_autofree char *head_plus =
			g_strdup_printf("A1 APPEND Drafts {%zu+}\r\n", len);

		g_assert_true(imap_command_add_mailbox(cmd, "Drafts", NULL));
		imap_command_add_literal(cmd, msg);

		g_autoptr(GBytes) s0 =
			g_bytes_new(head_sync, strlen(head_sync));
		g_autoptr(GBytes) s1 = concat("", msg, "\r\n");
		g_autoptr(GBytes) one = concat(head_plus, msg, "\r\n");
		const GBytes *sync[] = {s0, s1};
		const GBytes *single[] = {one};

		assert_parts(cmd, IMAP_LITERAL_SYNC, sync, 2);
		assert_parts(cmd, IMAP_LITERAL_PLUS, single, 1);
		if (len <= 4096)
			assert_parts(cmd, IMAP_LITERAL_MINUS, single, 1);
		else
			assert_parts(cmd, IMAP_LITERAL_MINUS, sync, 2);
	}
}

static void test_add_raw(void)
{
	static const char *const bad[] = {"a\rb", "a\nb", "\r\n", "\r", "x\n"};
	g_autoptr(ImapCommand) cmd = imap_command_new("UID FETCH");

	for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
		g_autoptr(GError) error = NULL;

		g_assert_false(imap_command_add_raw(cmd, bad[i], &error));
		g_assert_error(error, IMAP_ERROR, IMAP_ERROR_INVALID);
	}
	g_assert_true(imap_command_add_raw(cmd, "1:*", NULL));
	imap_command_add_printf(cmd, "(UID %s)", "FLAGS");
	imap_command_add_printf(cmd, "(CHANGEDSINCE %" G_GUINT64_FORMAT ")",
				(guint64)G_MAXUINT64);
	assert_render(cmd, IMAP_LITERAL_SYNC, FALSE,
		      "A1 UID FETCH 1:* (UID FLAGS) "
		      "(CHANGEDSINCE 18446744073709551615)\r\n");
}

/* A C string cannot carry a NUL to add_raw(); "%c" can carry one to
 * add_printf(), which must refuse it like CR and LF. */
static void test_add_printf_refuses(gconstpointer data)
{
	char c = *(const char *)data;

	if (g_test_subprocess()) {
		g_autoptr(ImapCommand) cmd = imap_command_new("X");

		imap_command_add_printf(cmd, "a%cb", c);
		/* Reached only if criticals were not fatal. */
		assert_render(cmd, IMAP_LITERAL_SYNC, FALSE, "A1 X\r\n");
		return;
	}
	g_test_trap_subprocess(NULL, 0, G_TEST_SUBPROCESS_DEFAULT);
	g_test_trap_assert_failed();
	g_test_trap_assert_stderr("*CRITICAL*");
}

static void test_refcount(void)
{
	ImapCommand *cmd = imap_command_new("UID STORE");

	g_assert_cmpstr(imap_command_verb(cmd), ==, "UID STORE");
	g_assert_true(imap_command_ref(cmd) == cmd);
	imap_command_unref(cmd);
	g_assert_cmpstr(imap_command_verb(cmd), ==, "UID STORE");
	imap_command_unref(cmd);
	imap_command_unref(NULL);

	/* The verb is copied. */
	char verb[] = "NOOP";
	g_autoptr(ImapCommand) noop = imap_command_new(verb);

	verb[0] = 'X';
	assert_render(noop, IMAP_LITERAL_SYNC, FALSE, "A1 NOOP\r\n");
}

/* ---- property test ---- */

/* A reference reader for what render() may produce: "T1 X" then
 * astrings, then CRLF, checked against the split points. */
typedef struct {
	const guint8 *buf;
	gsize len;
	gsize pos;
	GArray *splits; /* gsize offsets where a new part starts */
	GArray *literal_spans; /* gsize pairs: [start, end) of literal data */
	ImapLiteralMode mode;
} Reader;

static gboolean reader_astring_char(guint8 c)
{
	return c > 0x20 && c < 0x7f && strchr("(){%*\"\\", c) == NULL;
}

static gboolean split_at(const Reader *r, gsize off)
{
	for (guint i = 0; i < r->splits->len; i++)
		if (g_array_index(r->splits, gsize, i) == off)
			return TRUE;
	return FALSE;
}

/* Returns the decoded argument and the form it was sent in. */
static GByteArray *read_astring(Reader *r, ImapStringForm *form_out,
				guint *sync_literals)
{
	GByteArray *out = g_byte_array_new();

	g_assert_cmpuint(r->pos, <, r->len);
	if (r->buf[r->pos] == '"') {
		*form_out = IMAP_FORM_QUOTED;
		r->pos++;
		for (;;) {
			g_assert_cmpuint(r->pos, <, r->len);
			guint8 c = r->buf[r->pos++];

			if (c == '"')
				break;
			if (c == '\\') {
				g_assert_cmpuint(r->pos, <, r->len);
				c = r->buf[r->pos++];
				g_assert_true(c == '"' || c == '\\');
			}
			g_assert_true(c >= 1 && c <= 0x7f && c != '\r' &&
				      c != '\n');
			g_byte_array_append(out, &c, 1);
		}
		return out;
	}
	if (r->buf[r->pos] == '{') {
		guint64 n = 0;
		gboolean plus = FALSE;

		*form_out = IMAP_FORM_LITERAL;
		r->pos++;
		g_assert_true(g_ascii_isdigit(r->buf[r->pos]));
		while (g_ascii_isdigit(r->buf[r->pos]))
			n = n * 10 + (guint64)(r->buf[r->pos++] - '0');
		if (r->buf[r->pos] == '+') {
			plus = TRUE;
			r->pos++;
		}
		g_assert_cmpint(r->buf[r->pos++], ==, '}');
		g_assert_cmpint(r->buf[r->pos++], ==, '\r');
		g_assert_cmpint(r->buf[r->pos++], ==, '\n');

		gboolean want_sync =
			r->mode == IMAP_LITERAL_SYNC ||
			(r->mode == IMAP_LITERAL_MINUS && n > 4096);

		g_assert_cmpint(plus, ==, !want_sync);
		g_assert_cmpint(split_at(r, r->pos), ==, want_sync);
		if (want_sync)
			(*sync_literals)++;

		g_assert_cmpuint(r->pos + n, <=, r->len);
		gsize span[2] = {r->pos, r->pos + n};

		g_array_append_vals(r->literal_spans, span, 2);
		g_byte_array_append(out, r->buf + r->pos, (guint)n);
		r->pos += n;
		return out;
	}
	*form_out = IMAP_FORM_ATOM;
	while (r->pos < r->len && reader_astring_char(r->buf[r->pos]))
		g_byte_array_append(out, &r->buf[r->pos++], 1);
	g_assert_cmpuint(out->len, >, 0);
	return out;
}

/* Outside literal data, CR appears only in the CRLF ending the line or an
 * announcement, LF only after such a CR, and NUL never. */
static void check_bare_bytes(const Reader *r)
{
	gsize span = 0;

	for (gsize i = 0; i < r->len; i++) {
		if (span < r->literal_spans->len &&
		    i == g_array_index(r->literal_spans, gsize, span)) {
			i = g_array_index(r->literal_spans, gsize, span + 1) -
			    1;
			span += 2;
			continue;
		}
		guint8 c = r->buf[i];

		g_assert_cmpint(c, !=, 0);
		if (c == '\r') {
			g_assert_cmpuint(i + 1, <, r->len);
			g_assert_cmpint(r->buf[i + 1], ==, '\n');
			g_assert_true(i + 2 == r->len || r->buf[i - 1] == '}');
		} else if (c == '\n') {
			g_assert_cmpint(r->buf[i - 1], ==, '\r');
		}
	}
}

static GByteArray *random_bytes(GRand *rand)
{
	static const char specials[] = "(){%*\"\\] \r\n\t\x7f\x01";
	GByteArray *b = g_byte_array_new();
	gint len;
	/* Most strings are short; a few are long enough to cross the
	 * LITERAL- limit. Each string draws from a few byte classes so
	 * that every form comes up often. */
	guint classes = (guint)g_rand_int_range(rand, 1, 16);

	if (g_rand_int_range(rand, 0, 50) == 0)
		len = g_rand_int_range(rand, 4000, 4200);
	else
		len = g_rand_int_range(rand, 0, 40);

	for (gint i = 0; i < len; i++) {
		guint8 c;
		gint cls;

		do {
			cls = g_rand_int_range(rand, 0, 4);
		} while (!(classes & (1u << cls)));
		switch (cls) {
		case 0:
			do {
				c = (guint8)g_rand_int_range(rand, 0x21, 0x7f);
			} while (!reader_astring_char(c));
			break;
		case 1:
			c = (guint8)specials[g_rand_int_range(
				rand, 0, sizeof(specials) - 1)];
			break;
		case 2:
			c = (guint8)g_rand_int_range(rand, 0x01, 0x80);
			break;
		default:
			c = (guint8)g_rand_int_range(rand, 0x01, 0x100);
			break;
		}
		g_byte_array_append(b, &c, 1);
	}
	return b;
}

static void check_render(const ImapCommand *cmd, ImapLiteralMode mode,
			 GPtrArray *args)
{
	g_autoptr(GPtrArray) parts =
		imap_command_render(cmd, "T1", mode, FALSE);
	g_autoptr(GByteArray) all = g_byte_array_new();
	g_autoptr(GArray) splits = g_array_new(FALSE, FALSE, sizeof(gsize));
	g_autoptr(GArray) spans = g_array_new(FALSE, FALSE, sizeof(gsize));
	guint sync_literals = 0;

	for (guint i = 0; i < parts->len; i++) {
		gsize len;
		const guint8 *data = g_bytes_get_data(parts->pdata[i], &len);

		g_assert_cmpuint(len, >, 0);
		gsize off = all->len;

		if (i > 0)
			g_array_append_val(splits, off);
		g_byte_array_append(all, data, (guint)len);
	}

	Reader r = {
		.buf = all->data,
		.len = all->len,
		.splits = splits,
		.literal_spans = spans,
		.mode = mode,
	};

	g_assert_cmpuint(r.len, >=, 6);
	g_assert_cmpmem(r.buf, 4, "T1 X", 4);
	r.pos = 4;
	for (guint i = 0; i < args->len; i++) {
		GByteArray *want = args->pdata[i];
		ImapStringForm form;

		g_assert_cmpint(r.buf[r.pos++], ==, ' ');

		g_autoptr(GByteArray) got =
			read_astring(&r, &form, &sync_literals);

		g_assert_cmpmem(got->data, got->len, want->data, want->len);
		g_assert_cmpint(
			form, ==,
			imap_string_form((const char *)want->data, want->len));
	}
	g_assert_cmpuint(r.pos + 2, ==, r.len);
	g_assert_cmpmem(r.buf + r.pos, 2, "\r\n", 2);
	g_assert_cmpuint(parts->len, ==, 1 + sync_literals);
	check_bare_bytes(&r);
}

static void test_property(void)
{
	g_autoptr(GRand) rand = g_rand_new_with_seed(20260101);
	guint forms[4] = {0};

	for (int iter = 0; iter < 4000; iter++) {
		g_autoptr(ImapCommand) cmd = imap_command_new("X");
		g_autoptr(GPtrArray) args = g_ptr_array_new_with_free_func(
			(GDestroyNotify)g_byte_array_unref);
		gint nargs = g_rand_int_range(rand, 1, 4);
		gboolean secret = g_rand_int_range(rand, 0, 8) == 0;

		if (secret)
			imap_command_begin_secret(cmd);
		for (gint i = 0; i < nargs; i++) {
			GByteArray *b = random_bytes(rand);

			forms[imap_string_form((const char *)b->data,
					       b->len)]++;
			g_assert_true(imap_command_add_string(
				cmd, (const char *)b->data, b->len, NULL));
			g_ptr_array_add(args, b);
		}

		check_render(cmd, IMAP_LITERAL_SYNC, args);
		check_render(cmd, IMAP_LITERAL_PLUS, args);
		check_render(cmd, IMAP_LITERAL_MINUS, args);

		if (secret) {
			g_autoptr(GString) want = g_string_new("A1 X");

			for (gint i = 0; i < nargs; i++)
				g_string_append(want, " ***");
			g_string_append(want, "\r\n");
			assert_render(cmd, IMAP_LITERAL_SYNC, TRUE, want->str);
		}
	}
	g_assert_cmpuint(forms[IMAP_FORM_ATOM], >, 500);
	g_assert_cmpuint(forms[IMAP_FORM_QUOTED], >, 500);
	g_assert_cmpuint(forms[IMAP_FORM_LITERAL], >, 500);
	g_assert_cmpuint(forms[IMAP_FORM_REFUSED], ==, 0);
}

int main(int argc, char **argv)
{
	g_test_init(&argc, &argv, NULL);
	g_test_add_func("/command/atoms", test_atoms);
	g_test_add_func("/command/quoted", test_quoted);
	g_test_add_func("/command/literals", test_literals);
	g_test_add_func("/command/refused", test_refused);
	g_test_add_func("/command/string-form", test_string_form);
	g_test_add_func("/command/mailbox", test_mailbox);
	g_test_add_func("/command/mailbox-raw", test_mailbox_raw);
	g_test_add_func("/command/login-redaction", test_login_redaction);
	g_test_add_func("/command/append", test_append);
	g_test_add_func("/command/literal-continues-line",
			test_literal_continues_line);
	g_test_add_func("/command/literal-minus-boundary",
			test_literal_minus_boundary);
	g_test_add_func("/command/add-raw", test_add_raw);
	g_test_add_data_func("/command/add-printf-refuses/nul", "",
			     test_add_printf_refuses);
	g_test_add_data_func("/command/add-printf-refuses/cr", "\r",
			     test_add_printf_refuses);
	g_test_add_data_func("/command/add-printf-refuses/lf", "\n",
			     test_add_printf_refuses);
	g_test_add_func("/command/refcount", test_refcount);
	g_test_add_func("/command/property", test_property);
	return g_test_run();
}
