/* SPDX-License-Identifier: MIT */
/* Message and folder names (cache/names.h): tables of expected names,
 * the invariants on random and real-world input (fixed seeds), and round
 * trips of folder names. */
#include "names.h"

#include "imap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 2026-11-20T09:14:33Z */
#define T_EXAMPLE G_GINT64_CONSTANT(1795166073)

/* ---- Invariants every message name must meet ---- */

static void check_uid(const char *name, guint32 uid);

static void check_message_name(const char *name, guint32 uid)
{
	gsize len = strlen(name);
	g_autofree char *tail =
		g_strdup_printf(".%" G_GUINT32_FORMAT ".eml", uid);

	g_assert_true(g_utf8_validate(name, -1, NULL));
	g_assert_cmpuint(len, <=, CACHE_NAME_MAX);
	g_assert_cmpuint(len, >, 16);
	g_assert_null(strchr(name, '/'));
	for (const char *p = name; *p; p = g_utf8_next_char(p))
		g_assert_false(g_unichar_iscntrl(g_utf8_get_char(p)));
	g_assert_cmpstr(name, !=, ".");
	g_assert_cmpstr(name, !=, "..");
	g_assert_true(g_ascii_isdigit(name[0]));
	/* "YYYY-MM-DD_HHMM_" then the slug, or "YYYY-MM-DD_HHMM" alone when
	 * the subject has nothing to show */
	for (int i = 0; i < 15; i++) {
		if (i == 4 || i == 7)
			g_assert_cmpint(name[i], ==, '-');
		else if (i == 10)
			g_assert_cmpint(name[i], ==, '_');
		else
			g_assert_true(g_ascii_isdigit(name[i]));
	}
	g_assert_true(g_str_has_suffix(name, tail));
	if (len == 15 + strlen(tail))
		return check_uid(name, uid);
	g_assert_cmpint(name[15], ==, '_');
	/* the slug has no "_" at either end */
	g_assert_cmpint(name[16], !=, '_');
	g_assert_cmpint(name[len - strlen(tail) - 1], !=, '_');
	check_uid(name, uid);
}

static void check_uid(const char *name, guint32 uid)
{
	guint32 back = 0;

	g_assert_true(cache_is_message_name(name));
	g_assert_true(cache_message_name_parse_uid(name, &back));
	g_assert_cmpuint(back, ==, uid);
}

/* ---- Table of message names ---- */

typedef struct {
	const char *what;
	gint64 date;
	const char *subject; /* NULL: no subject at all */
	gssize len; /* -1: strlen */
	guint32 uid;
	const char *expect;
} NameCase;

#define D "2026-11-20_0914_"

static const NameCase name_cases[] = {
	{"plain ASCII", T_EXAMPLE, "Subject: Hello world\r\n\r\n", -1, 1,
	 D "Hello_world.1.eml"},
	{"the example", T_EXAMPLE, "Subject: Re: Quarterly budget\r\n\r\n", -1,
	 4812, D "Re_Quarterly_budget.4812.eml"},
	{"B in UTF-8", T_EXAMPLE,
	 "Subject: =?UTF-8?B?R3LDvMOfZSBhdXMgS8O2bG4=?=\r\n\r\n", -1, 7,
	 D "Grüße_aus_Köln.7.eml"},
	{"Q in UTF-8, lower case", T_EXAMPLE,
	 "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe_aus_K=c3=b6ln?=\r\n\r\n", -1, 7,
	 D "Grüße_aus_Köln.7.eml"},
	{"B in ISO-8859-1", T_EXAMPLE,
	 "Subject: =?ISO-8859-1?B?Q2Fm6SBjcuhtZQ==?=\r\n\r\n", -1, 8,
	 D "Café_crème.8.eml"},
	{"Q in ISO-8859-1", T_EXAMPLE,
	 "Subject: =?ISO-8859-1?Q?Nicolas_Fouch=E9_has_accepted?=\r\n\r\n", -1,
	 9, D "Nicolas_Fouché_has_accepted.9.eml"},
	{"Q in Windows-1252 (0x80-0x9f)", T_EXAMPLE,
	 "Subject: =?windows-1252?Q?=8Akoda_=9Eivot_=93quoted=94?=\r\n\r\n", -1,
	 10, D "Škoda_život_quoted.10.eml"},
	{"ISO-2022-JP through iconv", T_EXAMPLE,
	 "Subject: =?ISO-2022-JP?B?GyRCRnxLXDhsGyhC?=\r\n\r\n", -1, 11,
	 D "日本語.11.eml"},
	{"text around a word", T_EXAMPLE,
	 "Subject: Essai =?iso-8859-1?Q?accentu=E9?= fin\r\n\r\n", -1, 12,
	 D "Essai_accentué_fin.12.eml"},
	{"adjacent words join", T_EXAMPLE,
	 "Subject: =?UTF-8?Q?ab?= =?UTF-8?Q?cd?=\r\n\r\n", -1, 13,
	 D "abcd.13.eml"},
	{"adjacent words, folded, two charsets", T_EXAMPLE,
	 "Subject: =?UTF-8?Q?ab?=\r\n\t =?ISO-8859-1?Q?c=E9?=\r\n\r\n", -1, 14,
	 D "abcé.14.eml"},
	{"character split across two words", T_EXAMPLE,
	 "Subject: =?UTF-8?Q?caf=C3?= =?UTF-8?Q?=A9_ok?=\r\n\r\n", -1, 15,
	 D "café_ok.15.eml"},
	{"text between words keeps its blanks", T_EXAMPLE,
	 "Subject: =?UTF-8?Q?ab?= x =?UTF-8?Q?cd?=\r\n\r\n", -1, 16,
	 D "ab_x_cd.16.eml"},
	{"broken B stays as text", T_EXAMPLE,
	 "Subject: =?UTF-8?B?!!!?=\r\n\r\n", -1, 17, D "=_UTF-8_B_=.17.eml"},
	{"broken Q stays as text", T_EXAMPLE,
	 "Subject: =?UTF-8?Q?bad=ZZ?=\r\n\r\n", -1, 18,
	 D "=_UTF-8_Q_bad=ZZ_=.18.eml"},
	{"broken word next to a good one", T_EXAMPLE,
	 "Subject: =?UTF-8?B?!?= =?UTF-8?Q?ok?=\r\n\r\n", -1, 19,
	 D "=_UTF-8_B_=_ok.19.eml"},
	{"unknown charset stays as text", T_EXAMPLE,
	 "Subject: =?x-no-such-charset?Q?hello?=\r\n\r\n", -1, 20,
	 D "=_x-no-such-charset_Q_hello_=.20.eml"},
	{"charset with a slash never reaches iconv", T_EXAMPLE,
	 "Subject: =?UTF-8//TRANSLIT?Q?hi?=\r\n\r\n", -1, 21,
	 D "=_UTF-8_TRANSLIT_Q_hi_=.21.eml"},
	{"RFC 2231 language is ignored", T_EXAMPLE,
	 "Subject: =?UTF-8*en?Q?hello_world?=\r\n\r\n", -1, 22,
	 D "hello_world.22.eml"},
	{"encoded NUL", T_EXAMPLE, "Subject: =?UTF-8?Q?a=00b?=\r\n\r\n", -1, 23,
	 D "a_b.23.eml"},
	{"folded", T_EXAMPLE,
	 "Subject: This is\r\n a folded\r\n\tsubject\r\n\r\n", -1, 24,
	 D "This_is_a_folded_subject.24.eml"},
	{"folded with bare LF", T_EXAMPLE, "Subject: one\n two\n\n", -1, 25,
	 D "one_two.25.eml"},
	{"raw UTF-8", T_EXAMPLE, "Subject: Grüße\r\n\r\n", -1, 26,
	 D "Grüße.26.eml"},
	{"raw Latin-1", T_EXAMPLE,
	 "Subject: Gr\xfc\xdf"
	 "e\r\n\r\n",
	 -1, 27, D "Grüße.27.eml"},
	{"raw Windows-1252", T_EXAMPLE,
	 "Subject: \x8a"
	 "koda\r\n\r\n",
	 -1, 28, D "Škoda.28.eml"},
	{"UTF-8 with one stray byte", T_EXAMPLE, "Subject: Grüße\xff!\r\n", -1,
	 29, D "Grüßeÿ.29.eml"},
	{"emoji", T_EXAMPLE, "Subject: Party 🎉 time 🍿\r\n\r\n", -1, 30,
	 D "Party_time.30.eml"},
	{"Japanese, B", T_EXAMPLE,
	 "Subject: =?UTF-8?B?44G+44G/44KA44KB44KC?=\r\n\r\n", -1, 31,
	 D "まみむめも.31.eml"},
	{"Devanagari keeps its marks", T_EXAMPLE, "Subject: नमस्ते दुनिया\r\n\r\n",
	 -1, 32, D "नमस्ते_दुनिया.32.eml"},
	{"NFC", T_EXAMPLE, "Subject: e\xcc\x81t\xc3\xa9\r\n\r\n", -1, 33,
	 D "\xc3\xa9t\xc3\xa9.33.eml"},
	{"slashes", T_EXAMPLE, "Subject: a/b//c/\r\n\r\n", -1, 34,
	 D "a_b_c.34.eml"},
	{"dot dot", T_EXAMPLE, "Subject: ..\r\n\r\n", -1, 35,
	 "2026-11-20_0914.35.eml"},
	{"dot", T_EXAMPLE, "Subject: .\r\n\r\n", -1, 36,
	 "2026-11-20_0914.36.eml"},
	{"path traversal", T_EXAMPLE, "Subject: ../../etc/passwd\r\n\r\n", -1,
	 37, D "etc_passwd.37.eml"},
	{"leading dashes", T_EXAMPLE, "Subject: --rm -rf\r\n\r\n", -1, 38,
	 D "--rm_-rf.38.eml"},
	{"shell metacharacters", T_EXAMPLE,
	 "Subject: $(rm -rf ~); `x` | y > z & w * ? ' \" \\ [a] {b} !#~ "
	 "<c>\r\n\r\n",
	 -1, 39, D "rm_-rf_x_y_z_w_a_b_c.39.eml"},
	{"kept punctuation", T_EXAMPLE, "Subject: a+b=c, x@y.z\r\n\r\n", -1, 40,
	 D "a+b=c,_x@y_z.40.eml"},
	{"control characters and NUL", T_EXAMPLE,
	 "Subject: a\x01"
	 "b\0c\x1b[31md\x7f\r\n\r\n",
	 25, 41, D "a_b_c_31md.41.eml"},
	{"bidi override", T_EXAMPLE, "Subject: abc\u202etxt.exe\r\n\r\n", -1,
	 42, D "abc_txt_exe.42.eml"},
	{"empty subject", T_EXAMPLE, "Subject: \r\n\r\n", -1, 43,
	 D "no_subject.43.eml"},
	{"only punctuation", T_EXAMPLE, "Subject: ?!?...\r\n\r\n", -1, 44,
	 "2026-11-20_0914.44.eml"},
	{"no subject at all", T_EXAMPLE, NULL, 0, 45, D "no_subject.45.eml"},
	{"empty input", T_EXAMPLE, "", 0, 46, D "no_subject.46.eml"},
	{"just the blank line", T_EXAMPLE, "\r\n", -1, 47,
	 D "no_subject.47.eml"},
	{"bare value without Subject:", T_EXAMPLE, "Re: bare subject", -1, 48,
	 D "Re_bare_subject.48.eml"},
	{"first of two Subject fields", T_EXAMPLE,
	 "Subject: first\r\nSubject: second\r\n\r\n", -1, 49, D "first.49.eml"},
	{"field name in any case, blank before colon", T_EXAMPLE,
	 "SUBJECT : shouty\r\n\r\n", -1, 50, D "shouty.50.eml"},
	{"other fields are skipped", T_EXAMPLE,
	 "X-Other: no\r\n folded no\r\nSubject: yes\r\n\r\n", -1, 51,
	 D "yes.51.eml"},
	{"nothing after the blank line", T_EXAMPLE,
	 "Subject: head\r\n\r\nSubject: body\r\n", -1, 52, D "head.52.eml"},
	{"the epoch", 0, "Subject: x\r\n", -1, 1, "1970-01-01_0000_x.1.eml"},
	{"one second before the epoch", -1, "Subject: x\r\n", -1, 1,
	 "1969-12-31_2359_x.1.eml"},
	{"1901", G_GINT64_CONSTANT(-2147483648), "Subject: x\r\n", -1, 1,
	 "1901-12-13_2045_x.1.eml"},
	{"leap day 2000", G_GINT64_CONSTANT(951782400), "Subject: x\r\n", -1, 1,
	 "2000-02-29_0000_x.1.eml"},
	{"past 2038", G_GINT64_CONSTANT(2147483648), "Subject: x\r\n", -1, 1,
	 "2038-01-19_0314_x.1.eml"},
	{"year 0 clamps", G_MININT64, "Subject: x\r\n", -1, 1,
	 "0000-01-01_0000_x.1.eml"},
	{"year 9999 clamps", G_MAXINT64, "Subject: x\r\n", -1, 1,
	 "9999-12-31_2359_x.1.eml"},
	{"largest UID", T_EXAMPLE, "Subject: x\r\n", -1, 4294967295u,
	 D "x.4294967295.eml"},
	{"UID 0 still parses", T_EXAMPLE, "Subject: x\r\n", -1, 0, D "x.0.eml"},
};

static void test_name_table(void)
{
	for (gsize i = 0; i < G_N_ELEMENTS(name_cases); i++) {
		const NameCase *c = &name_cases[i];
		gsize len = c->len >= 0	 ? (gsize)c->len
			    : c->subject ? strlen(c->subject)
					 : 0;
		g_autofree char *name =
			cache_message_name(c->date, c->subject, len, c->uid);

		g_test_message("%s", c->what);
		g_assert_cmpstr(name, ==, c->expect);
		check_message_name(name, c->uid);
	}
}

/* ---- Long subjects ---- */

static char *slug_of(const char *name)
{
	const char *end = strrchr(name, '.');

	while (end > name && end[-1] != '.')
		end--;
	return g_strndup(name + 16, (gsize)(end - 1 - (name + 16)));
}

/* Subjects of 600 bytes and more, with 1- to 4-byte characters put so
 * that every byte offset of a character meets the byte cap once. */
static void test_long_subjects(void)
{
	static const char *const fill[] = {"a", "é", "日", "\xf0\x9d\x90\x80"};

	for (gsize f = 0; f < G_N_ELEMENTS(fill); f++) {
		for (gsize shift = 0; shift < 4; shift++) {
			g_autoptr(GString) s = g_string_new("Subject: ");

			for (gsize i = 0; i < shift; i++)
				g_string_append_c(s, 'x');
			while (s->len < 600)
				g_string_append(s, fill[f]);
			g_string_append(s, "\r\n\r\n");

			g_autofree char *name = cache_message_name(
				T_EXAMPLE, s->str, s->len, G_MAXUINT32);
			g_autofree char *slug = slug_of(name);

			check_message_name(name, G_MAXUINT32);
			g_assert_cmpuint(g_utf8_strlen(slug, -1), <=, 80);
			/* as long as the caps allow, not shorter */
			g_assert_cmpuint(g_utf8_strlen(slug, -1) + 1 +
						 strlen(fill[f]),
					 >, MIN(80, 224 / strlen(fill[f])));
			g_assert_true(g_str_has_prefix(s->str + 9, slug));
		}
	}

	/* A cut between words leaves no "_" behind. */
	g_autoptr(GString) s = g_string_new("Subject: ");

	for (int i = 0; i < 79; i++)
		g_string_append_c(s, 'a');
	g_string_append(s, " bbbbbbbbbb");

	g_autofree char *name = cache_message_name(0, s->str, s->len, 5);
	g_autofree char *slug = slug_of(name);

	g_assert_cmpuint(strlen(slug), ==, 79);
	check_message_name(name, 5);

	/* A gigantic folded header, mostly blanks. */
	g_autoptr(GString) big = g_string_new("Subject: start");

	for (int i = 0; i < 200000; i++)
		g_string_append(big, "\r\n =?UTF-8?Q?=E2=82?= ");
	g_autofree char *bigname = cache_message_name(0, big->str, big->len, 6);

	check_message_name(bigname, 6);
	g_assert_true(g_str_has_prefix(bigname, "1970-01-01_0000_start"));
}

/* ---- UID parsing ---- */

static void test_parse_uid(void)
{
	static const struct {
		const char *name;
		gboolean ok;
		guint32 uid;
	} cases[] = {
		{"2026-11-20_0914_Re_Quarterly_budget.4812.eml", TRUE, 4812},
		{"x.0.eml", TRUE, 0},
		{"x.4294967295.eml", TRUE, 4294967295u},
		{"a.b.c.17.eml", TRUE, 17},
		{"x.4294967296.eml", FALSE, 0},
		{"x.99999999999.eml", FALSE, 0},
		{"x.012.eml", FALSE, 0},
		{"x.12a.eml", FALSE, 0},
		{"x.-1.eml", FALSE, 0},
		{"x..eml", FALSE, 0},
		{".5.eml", FALSE, 0},
		{"5.eml", FALSE, 0},
		{"x.5.EML", FALSE, 0},
		{"x.5.eml~", FALSE, 0},
		{"x.5.emlx", FALSE, 0},
		{"x.5", FALSE, 0},
		{".eml", FALSE, 0},
		{"", FALSE, 0},
	};

	for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
		guint32 uid = 12345;

		g_test_message("%s", cases[i].name);
		g_assert_cmpint(
			cache_message_name_parse_uid(cases[i].name, &uid), ==,
			cases[i].ok);
		g_assert_cmpuint(uid, ==, cases[i].ok ? cases[i].uid : 12345);
	}
	g_assert_true(cache_message_name_parse_uid("x.1.eml", NULL));

	g_assert_true(cache_is_message_name("notes.eml"));
	g_assert_true(cache_is_message_name("x.eml"));
	g_assert_false(cache_is_message_name(".eml"));
	g_assert_false(cache_is_message_name("eml"));
	g_assert_false(cache_is_message_name("x.eml.swp"));
	g_assert_false(cache_is_message_name("x.txt"));
	g_assert_false(cache_is_message_name(""));
}

/* ---- Random subjects ---- */

/* Pieces that steer random input into the interesting paths. */
static const char *const fragments[] = {
	"Subject: ",  "subject:", "\r\n",   "\n",   " ",     "\t",
	"=?",	      "?=",	  "?B?",    "?Q?",  "UTF-8", "utf-8*en",
	"ISO-8859-1", "x-bogus",  "=C3=A9", "=E9",  "_",     "w6k=",
	"44G+",	      "é",	  "日本",   "😀",    "/",     "..",
	"-",	      "%",	  "\xff",   "\xc3", "\x80",  "",
};

static void random_subject(GRand *rand, GString *s)
{
	gsize pieces = (gsize)g_rand_int_range(rand, 0, 120);

	g_string_truncate(s, 0);
	for (gsize i = 0; i < pieces; i++) {
		if (g_rand_boolean(rand)) {
			g_string_append(
				s, fragments[g_rand_int_range(
					   rand, 0, G_N_ELEMENTS(fragments))]);
		} else {
			gsize n = (gsize)g_rand_int_range(rand, 1, 12);

			for (gsize j = 0; j < n; j++)
				g_string_append_c(s, (char)g_rand_int_range(
							     rand, 0, 256));
		}
	}
}

static gint64 random_date(GRand *rand)
{
	switch (g_rand_int_range(rand, 0, 4)) {
	case 0: /* anything at all */
		return (gint64)(((guint64)g_rand_int(rand) << 32) |
				g_rand_int(rand));
	case 1: /* the years the clamp starts at */
		return g_rand_double_range(rand, -7e10, 2.6e11);
	default: /* mail-like */
		return g_rand_double_range(rand, -1e9, 4e9);
	}
}

static void test_random_subjects(void)
{
	g_autoptr(GRand) rand = g_rand_new_with_seed(20261120);
	g_autoptr(GString) s = g_string_new(NULL);

	for (int i = 0; i < 5000; i++) {
		guint32 uid = g_rand_int(rand);
		gint64 date = random_date(rand);

		random_subject(rand, s);

		g_autofree char *a =
			cache_message_name(date, s->str, s->len, uid);
		g_autofree char *b =
			cache_message_name(date, s->str, s->len, uid);

		check_message_name(a, uid);
		g_assert_cmpstr(a, ==, b);
	}
}

/* Names sort as their dates do, over the whole range and across the
 * clamps. */
static void test_chronological(void)
{
	g_autoptr(GRand) rand = g_rand_new_with_seed(4812);

	for (int i = 0; i < 5000; i++) {
		gint64 t1 = random_date(rand), t2 = random_date(rand);
		g_autofree char *n1 = cache_message_name(t1, "z", 1, 1);
		g_autofree char *n2 = cache_message_name(t2, "a", 1, 2);
		gint64 m1 = CLAMP(t1, G_GINT64_CONSTANT(-62167219200),
				  G_GINT64_CONSTANT(253402300799));
		gint64 m2 = CLAMP(t2, G_GINT64_CONSTANT(-62167219200),
				  G_GINT64_CONSTANT(253402300799));
		int cmp = strncmp(n1, n2, 16);

		/* floor to minutes */
		m1 = m1 / 60 - (m1 % 60 < 0);
		m2 = m2 / 60 - (m2 % 60 < 0);
		g_assert_cmpint(cmp < 0, ==, m1 < m2);
		g_assert_cmpint(cmp == 0, ==, m1 == m2);
	}

	/* against GDateTime, over all the years it knows */
	for (int i = 0; i < 20000; i++) {
		gint64 t = (gint64)g_rand_double_range(rand, -62135596800.0,
						       253402300799.0);
		g_autoptr(GDateTime) dt = g_date_time_new_from_unix_utc(t);
		g_autofree char *name = cache_message_name(t, "x", 1, 1);
		int y, mo, d, h, mi;

		g_assert_cmpint(sscanf(name, "%4d-%2d-%2d_%2d%2d", &y, &mo, &d,
				       &h, &mi),
				==, 5);
		g_assert_cmpint(y, ==, g_date_time_get_year(dt));
		g_assert_cmpint(mo, ==, g_date_time_get_month(dt));
		g_assert_cmpint(d, ==, g_date_time_get_day_of_month(dt));
		g_assert_cmpint(h, ==, g_date_time_get_hour(dt));
		g_assert_cmpint(mi, ==, g_date_time_get_minute(dt));
	}

	/* every day of 1969-1971 against GDateTime */
	for (gint64 t = -366 * 86400; t < 2 * 366 * 86400; t += 86400 - 7) {
		g_autoptr(GDateTime) dt = g_date_time_new_from_unix_utc(t);
		g_autofree char *want =
			g_date_time_format(dt, "%Y-%m-%d_%H%M_x");
		g_autofree char *name = cache_message_name(t, "x", 1, 1);

		g_assert_true(g_str_has_prefix(name, want));
	}
}

/* ---- Folder names ---- */

typedef struct {
	const char *raw;
	char delimiter;
	const char *shown[4]; /* NULL-terminated */
	gboolean reversible;
} FolderCase;

static const FolderCase folder_cases[] = {
	{"INBOX", '/', {"INBOX"}, TRUE},
	{"INBOX", '\0', {"INBOX"}, TRUE},
	{"Work.Projects", '.', {"Work", "Projects"}, TRUE},
	{"Work.Projects", '/', {"Work.Projects"}, TRUE},
	{"Work/Projects", '/', {"Work", "Projects"}, TRUE},
	{"Entw&APw-rfe", '.', {"Entwürfe"}, TRUE},
	{"INBOX.Entw&APw-rfe.2024", '.', {"INBOX", "Entwürfe", "2024"}, TRUE},
	{"R&-D", '.', {"R&D"}, TRUE},
	{"&ZeVnLIqe- &2D3eAA-", '/', {"日本語 😀"}, TRUE},
	{"a/b", '.', {"a%2Fb"}, TRUE},
	{"100%", '.', {"100%25"}, TRUE},
	{"%2F", '.', {"%252F"}, TRUE},
	{"a.b/c%", '\0', {"a.b%2Fc%25"}, TRUE},
	{"..", '/', {"%2E%2E"}, TRUE},
	{".", '/', {"%2E"}, TRUE},
	{"a/./..", '/', {"a", "%2E", "%2E%2E"}, TRUE},
	{"...", '/', {"..."}, TRUE},
	{"a..b", '.', {"a", "%00", "b"}, TRUE},
	{"", '.', {"%00"}, TRUE},
	{"-rf", '.', {"-rf"}, TRUE},
	{"&AIA-x", '.', {"%C2%80x"}, TRUE},
	{"&AJ8-", '.', {"%C2%9F"}, TRUE},
	/* the delimiter inside a base64 run does not split */
	{"x+&A+A-+y", '+', {"x", "Ϡ", "y"}, TRUE},
	{"&AOk--x", '-', {"é", "x"}, TRUE},
	{"a&-b&c", '&', {"a", "-b", "c"}, TRUE},
	/* not valid modified UTF-7: raw bytes, escaped */
	{"&Jjo!", '.', {"%26Jjo!"}, FALSE},
	{"&Jjo!-.x", '.', {"%26Jjo!-", "x"}, FALSE},
	{"a\x01"
	 "b",
	 '.',
	 {"a%01b"},
	 FALSE},
	{"tab\there", '/', {"tab%09here"}, FALSE},
	{"del\x7f", '/', {"del%7F"}, FALSE},
	{"caf\xc3\xa9", '/', {"caf%C3%A9"}, FALSE},
	{"&AOk", '/', {"%26AOk"}, FALSE},
	{"&x/y%", '.', {"%26x%2Fy%25"}, FALSE},
	{"&AGE-", '.', {"%26AGE-"}, FALSE},
	{"ok.&AGE-", '.', {"ok", "%26AGE-"}, FALSE},
};

static void test_folder_table(void)
{
	for (gsize i = 0; i < G_N_ELEMENTS(folder_cases); i++) {
		const FolderCase *c = &folder_cases[i];
		g_autoptr(GPtrArray) got =
			cache_folder_components(c->raw, c->delimiter);
		gsize n = g_strv_length((char **)c->shown);

		g_test_message("%s", c->raw);
		g_assert_cmpuint(got->len, ==, n);
		for (gsize j = 0; j < n; j++)
			g_assert_cmpstr(got->pdata[j], ==, c->shown[j]);

		g_autoptr(GError) error = NULL;
		g_autofree char *back =
			cache_folder_raw_name((const char *const *)got->pdata,
					      got->len, c->delimiter, &error);

		if (c->reversible) {
			g_assert_no_error(error);
			g_assert_cmpstr(back, ==, c->raw);
		} else {
			g_assert_error(error, CACHE_NAME_ERROR,
				       CACHE_NAME_ERROR_INVALID);
			g_assert_null(back);
		}
	}
}

static void check_component(const char *c)
{
	g_assert_true(g_utf8_validate(c, -1, NULL));
	g_assert_cmpuint(strlen(c), >, 0);
	g_assert_cmpuint(strlen(c), <=, CACHE_NAME_MAX);
	g_assert_null(strchr(c, '/'));
	g_assert_cmpstr(c, !=, ".");
	g_assert_cmpstr(c, !=, "..");
	for (const char *p = c; *p; p = g_utf8_next_char(p))
		g_assert_false(g_unichar_iscntrl(g_utf8_get_char(p)));
	/* every "%" starts a whole escape */
	for (const char *p = strchr(c, '%'); p; p = strchr(p + 1, '%'))
		g_assert_true(p[1] == '~' || (g_ascii_isxdigit(p[1]) &&
					      g_ascii_isxdigit(p[2])));
}

static void test_folder_long(void)
{
	static const char *const fills[] = {"a", "é", "日", "😀", "\x01"};

	for (gsize f = 0; f < G_N_ELEMENTS(fills); f++) {
		for (gsize shift = 0; shift < 4; shift++) {
			g_autoptr(GString) plain = g_string_new(NULL);

			for (gsize i = 0; i < shift; i++)
				g_string_append_c(plain, 'x');
			while (plain->len < 300)
				g_string_append(plain, fills[f]);

			/* \x01 cannot be encoded: a raw invalid name */
			g_autofree char *raw =
				imap_mutf7_encode(plain->str, NULL);
			const char *r = raw ? raw : plain->str;
			g_autoptr(GPtrArray) got =
				cache_folder_components(r, '.');
			const char *c = got->pdata[0];

			g_assert_cmpuint(got->len, ==, 1);
			check_component(c);
			g_assert_cmpuint(strlen(c), >=, CACHE_NAME_MAX - 3);
			g_assert_nonnull(strstr(c, "%~"));
			g_assert_cmpuint(strlen(strstr(c, "%~")), ==, 10);

			/* not reversible, refused */
			g_autoptr(GError) error = NULL;
			g_autofree char *back = cache_folder_raw_name(
				(const char *const *)got->pdata, 1, '.',
				&error);

			g_assert_error(error, CACHE_NAME_ERROR,
				       CACHE_NAME_ERROR_INVALID);
			g_assert_null(back);

			/* a different last character gives another name */
			g_string_append_c(plain, 'q');

			g_autofree char *raw2 =
				imap_mutf7_encode(plain->str, NULL);
			g_autoptr(GPtrArray) got2 = cache_folder_components(
				raw2 ? raw2 : plain->str, '.');

			g_assert_cmpstr(got2->pdata[0], !=, c);
		}
	}

	/* Exactly 255 bytes shown is not shortened, 256 is. */
	g_autofree char *a255 = g_strnfill(255, 'a');
	g_autofree char *a256 = g_strnfill(256, 'a');
	g_autoptr(GPtrArray) g255 = cache_folder_components(a255, '.');
	g_autoptr(GPtrArray) g256 = cache_folder_components(a256, '.');
	g_autofree char *b255 = cache_folder_raw_name(
		(const char *const *)g255->pdata, 1, '.', NULL);

	g_assert_cmpstr(g255->pdata[0], ==, a255);
	g_assert_cmpstr(b255, ==, a255);
	g_assert_cmpuint(strlen(g256->pdata[0]), ==, 255);
	g_assert_true(g_str_has_prefix(g256->pdata[0], "aaaa"));
	g_assert_nonnull(strstr(g256->pdata[0], "%~"));
}

typedef struct {
	const char *shown[4];
	char delimiter;
	const char *raw; /* NULL: refused */
} RawCase;

static const RawCase raw_cases[] = {
	{{"Entwürfe"}, '.', "Entw&APw-rfe"},
	{{"INBOX", "Entwürfe"}, '.', "INBOX.Entw&APw-rfe"},
	{{"R&D"}, '/', "R&-D"},
	{{"a%2Fb"}, '.', "a/b"},
	{{"100%25"}, '.', "100%"},
	{{"%2E%2E"}, '/', ".."},
	{{"a", "%00", "b"}, '.', "a..b"},
	{{"%C2%80"}, '.', "&AIA-"},
	{{"flat"}, '\0', "flat"},
	{{"a.b"}, '\0', "a.b"},
	{{""}, '.', NULL},
	{{"a", ""}, '.', NULL},
	{{"%"}, '.', NULL},
	{{"%2"}, '.', NULL},
	{{"50%off"}, '.', NULL},
	{{"%2f"}, '.', NULL},
	{{"%41"}, '.', NULL},
	{{"%26Jjo!"}, '.', NULL},
	{{"%00x"}, '.', NULL},
	{{"%2Ex"}, '.', NULL},
	{{"%2E"}, '.', NULL}, /* "." holds the delimiter */
	{{"%C2%A9"}, '.', NULL},
	{{"%C2%8a"}, '.', NULL},
	{{"%~0123ABCD"}, '.', NULL},
	{{"."}, '/', NULL},
	{{".."}, '/', NULL},
	{{"a.b"}, '.', NULL},
	{{"a%2Fb"}, '/', NULL},
	{{"a/b"}, '.', NULL},
	{{"tab\there"}, '.', NULL},
	{{"\xc2\x80"}, '.', NULL},
	{{"\xff"}, '.', NULL},
	{{"a", "b"}, '\0', NULL},
	{{"é"}, '&', NULL}, /* "&AOk-" would split at "&" */
	{{"x"}, '&', "x"},
};

static void test_raw_names(void)
{
	for (gsize i = 0; i < G_N_ELEMENTS(raw_cases); i++) {
		const RawCase *c = &raw_cases[i];
		gsize n = g_strv_length((char **)c->shown);
		g_autoptr(GError) error = NULL;
		g_autofree char *raw = cache_folder_raw_name(
			c->shown, n, c->delimiter, &error);

		g_autofree char *shown = g_strescape(c->shown[0], NULL);

		/* Escaped: TAP output must stay valid UTF-8. */
		g_test_message("case %zu: %s", i, shown);
		if (c->raw) {
			g_assert_no_error(error);
			g_assert_cmpstr(raw, ==, c->raw);
		} else {
			g_assert_error(error, CACHE_NAME_ERROR,
				       CACHE_NAME_ERROR_INVALID);
			g_assert_null(raw);
		}
	}

	g_autoptr(GError) error = NULL;

	g_assert_null(cache_folder_raw_name(NULL, 0, '.', &error));
	g_assert_error(error, CACHE_NAME_ERROR, CACHE_NAME_ERROR_INVALID);
}

/* Random valid names: raw -> shown -> raw is the identity. */
static const char *const name_chars[] = {
	"a",	    "Z",      "0",	"_",	      " ", "-", "&",
	"%",	    "/",      ".",	"+",	      ",", "~", "\"",
	"*",	    "é",      "ß",	"日",	      "😀", "Ϡ", "\xc2\x80",
	"\xc2\x9f", "\u00a0", "\uffff", "\U0010ffff",
};

static void test_folder_round_trip(void)
{
	static const char delimiters[] = {'.', '/', '\0', '-', '+', ','};
	g_autoptr(GRand) rand = g_rand_new_with_seed(3501);

	for (int i = 0; i < 600; i++) {
		char delim = delimiters[g_rand_int_range(
			rand, 0, G_N_ELEMENTS(delimiters))];
		gsize parts = delim ? (gsize)g_rand_int_range(rand, 1, 5) : 1;
		g_autoptr(GString) raw = g_string_new(NULL);

		for (gsize p = 0; p < parts; p++) {
			g_autoptr(GString) plain = g_string_new(NULL);
			gsize len = (gsize)g_rand_int_range(rand, 0, 12);

			for (gsize k = 0; k < len; k++) {
				const char *ch = name_chars[g_rand_int_range(
					rand, 0, G_N_ELEMENTS(name_chars))];

				if (delim && strchr(ch, delim))
					continue;
				g_string_append(plain, ch);
			}

			g_autofree char *enc =
				imap_mutf7_encode(plain->str, NULL);

			g_assert_nonnull(enc);
			if (p > 0)
				g_string_append_c(raw, delim);
			g_string_append(raw, enc);
		}

		g_autoptr(GPtrArray) shown =
			cache_folder_components(raw->str, delim);

		g_assert_cmpuint(shown->len, ==, parts);
		for (guint j = 0; j < shown->len; j++)
			check_component(shown->pdata[j]);

		g_autoptr(GError) error = NULL;
		g_autofree char *back =
			cache_folder_raw_name((const char *const *)shown->pdata,
					      shown->len, delim, &error);

		g_assert_no_error(error);
		g_assert_cmpstr(back, ==, raw->str);
	}
}

/* Random shown names: whatever is accepted maps back to itself, and any
 * raw bytes at all give safe components. */
static const char *const shown_pieces[] = {
	"a",   "é",   "&",	"-",	  ".",	    "%",   "%25",   "%2F",
	"%2E", "%00", "%C2%80", "%C2%9F", "%C2%A0", "%26", "%~",    "/",
	"+",   ",",   "%2E%2E", "\x01",	  "\xff",   "日",  "&AOk-", "&-",
};

static void test_folder_random(void)
{
	g_autoptr(GRand) rand = g_rand_new_with_seed(6855);
	guint accepted = 0;

	for (int i = 0; i < 3000; i++) {
		const char *comps[3];
		g_autoptr(GPtrArray) own =
			g_ptr_array_new_with_free_func(g_free);
		gsize n = (gsize)g_rand_int_range(rand, 1, 4);
		char delim = g_rand_boolean(rand) ? '.' : '/';

		for (gsize j = 0; j < n; j++) {
			g_autoptr(GString) s = g_string_new(NULL);
			gsize len = (gsize)g_rand_int_range(rand, 1, 4);

			for (gsize k = 0; k < len; k++)
				g_string_append(
					s,
					shown_pieces[g_rand_int_range(
						rand, 0,
						G_N_ELEMENTS(shown_pieces))]);
			comps[j] = s->str;
			g_ptr_array_add(
				own, g_string_free(g_steal_pointer(&s), FALSE));
		}

		g_autofree char *raw =
			cache_folder_raw_name(comps, n, delim, NULL);

		if (raw == NULL)
			continue;
		accepted++;

		g_autoptr(GPtrArray) back = cache_folder_components(raw, delim);

		g_assert_cmpuint(back->len, ==, n);
		for (gsize j = 0; j < n; j++)
			g_assert_cmpstr(back->pdata[j], ==, comps[j]);
	}
	/* the generator must reach the accepting side too */
	g_assert_cmpuint(accepted, >, 100);

	for (int i = 0; i < 3000; i++) {
		char raw[64];
		gsize len = (gsize)g_rand_int_range(rand, 0, sizeof(raw));

		for (gsize k = 0; k < len; k++)
			raw[k] = (char)g_rand_int_range(rand, 1, 256);
		raw[len] = '\0';

		g_autoptr(GPtrArray) shown = cache_folder_components(
			raw, (char)g_rand_int_range(rand, 0, 128));

		g_assert_cmpuint(shown->len, >=, 1);
		for (guint j = 0; j < shown->len; j++)
			check_component(shown->pdata[j]);
	}
}

/* Distinct raw names in one parent never share a shown name. */
static void test_folder_unique(void)
{
	static const char *const raws[] = {
		"&Jjo!", "&-Jjo!", "%26Jjo!",  "a%2Fb",	 "a/b",	    "%2E",
		".",	 "%00",	   "",	       "&AIA-",	 "%C2%80",  "\x01",
		"%01",	 "&AOk-",  "\xc3\xa9", "%C3%A9", "%26AOk-", "&AOk",
		"..",	 "%2E%2E", "&-",       "%26",	 "&",	    "a&b",
	};
	g_autoptr(GHashTable) seen =
		g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);

	for (gsize i = 0; i < G_N_ELEMENTS(raws); i++) {
		g_autoptr(GPtrArray) shown =
			cache_folder_components(raws[i], '\0');

		g_assert_cmpuint(shown->len, ==, 1);
		g_test_message("%s -> %s", raws[i], (char *)shown->pdata[0]);
		g_assert_true(
			g_hash_table_add(seen, g_strdup(shown->pdata[0])));
	}
}

/* ---- The shared corpus of real mail ---- */

/* The first header block: up to the first empty line. */
static gsize header_length(const char *s, gsize len)
{
	for (gsize i = 0; i + 1 < len; i++) {
		if (s[i] != '\n')
			continue;
		if (s[i + 1] == '\n')
			return i + 1;
		if (s[i + 1] == '\r' && i + 2 < len && s[i + 2] == '\n')
			return i + 1;
	}
	return len;
}

/* Every field named @field (with its continuation lines), as a server
 * returns BODY.PEEK[HEADER.FIELDS (field)]; NULL if there is none. */
static GString *header_fields(const char *s, gsize len, const char *field)
{
	GString *out = NULL;
	gsize flen = strlen(field);
	gboolean in = FALSE;

	for (gsize i = 0; i < len;) {
		const char *nl = memchr(s + i, '\n', len - i);
		gsize end = nl ? (gsize)(nl - s) + 1 : len;

		if (s[i] == ' ' || s[i] == '\t') {
			if (in)
				g_string_append_len(out, s + i, end - i);
		} else {
			in = end - i > flen &&
			     g_ascii_strncasecmp(s + i, field, flen) == 0 &&
			     s[i + flen] == ':';
			if (in) {
				if (out == NULL)
					out = g_string_new(NULL);
				g_string_append_len(out, s + i, end - i);
			}
		}
		i = end;
	}
	if (out)
		g_string_append(out, "\r\n");
	return out;
}

/* An RFC 5322 date ("Mon, 2 Jan 2006 15:04:05 -0700"), or @fallback. */
static gint64 parse_date(const GString *field, gint64 fallback)
{
	static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
	char mon[4] = "", zone[8] = "";
	int d, y, h, mi, sec = 0;

	if (field == NULL)
		return fallback;

	const char *p = strchr(field->str, ':') + 1;
	const char *comma = strchr(p, ',');

	if (comma)
		p = comma + 1;
	if (sscanf(p, "%d %3s %d %d:%d:%d %7s", &d, mon, &y, &h, &mi, &sec,
		   zone) < 5)
		return fallback;

	const char *m = strstr(months, mon);

	if (m == NULL || mon[0] == '\0' || (m - months) % 3 != 0)
		return fallback;
	if (y < 50)
		y += 2000;
	else if (y < 1000)
		y += 1900;

	g_autoptr(GDateTime) dt = g_date_time_new_utc(
		y, (int)(m - months) / 3 + 1, d, h, mi, sec);

	if (dt == NULL)
		return fallback;

	gint64 t = g_date_time_to_unix(dt);

	if ((zone[0] == '+' || zone[0] == '-') && g_ascii_isdigit(zone[1])) {
		int z = atoi(zone + 1);
		gint64 off = (z / 100) * 3600 + (z % 100) * 60;

		t += zone[0] == '+' ? -off : off;
	}
	return t;
}

typedef struct {
	gint64 date;
	char *name;
} Dated;

static void dated_clear(gpointer p)
{
	g_free(((Dated *)p)->name);
}

static gint compare_by_name(gconstpointer a, gconstpointer b)
{
	return strcmp(((const Dated *)a)->name, ((const Dated *)b)->name);
}

static void walk(const char *dir, GArray *all, guint *with_subject)
{
	g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
	const char *entry;

	g_assert_nonnull(d);
	while ((entry = g_dir_read_name(d)) != NULL) {
		g_autofree char *path = g_build_filename(dir, entry, NULL);
		g_autofree char *data = NULL;
		gsize len = 0;

		if (g_file_test(path, G_FILE_TEST_IS_DIR)) {
			walk(path, all, with_subject);
			continue;
		}
		g_assert_true(g_file_get_contents(path, &data, &len, NULL));

		gsize hlen = header_length(data, len);
		g_autoptr(GString) subject =
			header_fields(data, hlen, "Subject");
		g_autoptr(GString) date = header_fields(data, hlen, "Date");
		guint32 uid = all->len + 1;
		Dated one = {parse_date(date, (gint64)uid * 86400), NULL};

		one.name = cache_message_name(one.date,
					      subject ? subject->str : NULL,
					      subject ? subject->len : 0, uid);
		g_test_message("%s -> %s", entry, one.name);
		check_message_name(one.name, uid);
		if (subject != NULL)
			(*with_subject)++;

		g_autofree char *again = cache_message_name(
			one.date, subject ? subject->str : NULL,
			subject ? subject->len : 0, uid);

		g_assert_cmpstr(again, ==, one.name);
		g_array_append_val(all, one);
	}
}

static void test_corpus(void)
{
	const char *dir = g_getenv("IMAPFS_SHARED_CORPUS");

	if (dir == NULL || !g_file_test(dir, G_FILE_TEST_IS_DIR)) {
		g_test_skip("no shared corpus (IMAPFS_SHARED_CORPUS)");
		return;
	}

	g_autoptr(GArray) all = g_array_new(FALSE, TRUE, sizeof(Dated));
	guint with_subject = 0;

	g_array_set_clear_func(all, dated_clear);
	walk(dir, all, &with_subject);
	g_test_message("%u files, %u with a Subject", all->len, with_subject);
	g_assert_cmpuint(with_subject, >, 0);

	/* plain `ls` order is date order */
	g_array_sort(all, compare_by_name);
	for (guint i = 1; i < all->len; i++) {
		const Dated *a = &g_array_index(all, Dated, i - 1);
		const Dated *b = &g_array_index(all, Dated, i);

		g_assert_cmpint(a->date / 60 - (a->date % 60 < 0), <=,
				b->date / 60 - (b->date % 60 < 0));
	}
}

int main(int argc, char **argv)
{
	g_test_init(&argc, &argv, NULL);

	g_test_add_func("/names/message/table", test_name_table);
	g_test_add_func("/names/message/long", test_long_subjects);
	g_test_add_func("/names/message/parse-uid", test_parse_uid);
	g_test_add_func("/names/message/random", test_random_subjects);
	g_test_add_func("/names/message/chronological", test_chronological);
	g_test_add_func("/names/message/corpus", test_corpus);
	g_test_add_func("/names/folder/table", test_folder_table);
	g_test_add_func("/names/folder/long", test_folder_long);
	g_test_add_func("/names/folder/raw-name", test_raw_names);
	g_test_add_func("/names/folder/round-trip", test_folder_round_trip);
	g_test_add_func("/names/folder/random", test_folder_random);
	g_test_add_func("/names/folder/unique", test_folder_unique);

	return g_test_run();
}
