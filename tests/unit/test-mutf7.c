/* SPDX-License-Identifier: MIT */
/* Modified UTF-7 mailbox names: both directions, hostile input, and the
 * round-trip properties on random data (fixed seed). */
#include "imap-private.h"

#include <string.h>

typedef struct {
	const char *mutf7;
	const char *utf8;
} Pair;

/* Valid canonical names; each must map both ways exactly. */
static const Pair valid[] = {
	{"", ""},
	{"INBOX", "INBOX"},
	{"~peter/mail/&U,BTFw-/&ZeVnLIqe-", "~peter/mail/台北/日本語"},
	{"&-", "&"},
	{"&-&-", "&&"},
	{"a&-b", "a&b"},
	{"Entw&APw-rfe", "Entwürfe"},
	{"&2D3eAA-", "😀"},
	{"&ZeVnLIqe- &2D3eAA- x", "日本語 😀 x"},
	{"&2,,f,w-", "\U0010FFFF"},
	{"&,,8-", "\uFFFF"},
	{"&AKA-", "\u00A0"},
	{"&AIA-", "\xc2\x80"},
	{"&AJ8-", "\xc2\x9f"},
	{"&AOk-", "é"},
	{"&AOkA6QDp-", "ééé"},
	{"&AOkA6Q-", "éé"},
	{"&AOkA6QDq-", "ééê"},
	{"&AOk--", "é-"},
	{"&AOk-&-", "é&"},
	{"&-&AOk-", "&é"},
	{"-", "-"},
	{"--&--", "--&-"},
	{"&AMQ- B", "Ä B"},
	{"Sent Items", "Sent Items"},
	{"  ", "  "},
	{"Archive/2024 Q1", "Archive/2024 Q1"},
	{"a\"b\\c%d*e", "a\"b\\c%d*e"},
	{" !\"#$%&-'()*+,-./0123456789:;<=>?@AZ[\\]^_`az{|}~",
	 " !\"#$%&'()*+,-./0123456789:;<=>?@AZ[\\]^_`az{|}~"},
};

static void test_valid_pairs(void)
{
	for (gsize i = 0; i < G_N_ELEMENTS(valid); i++) {
		g_autoptr(GError) error = NULL;
		g_autofree char *dec =
			imap_mutf7_decode(valid[i].mutf7, &error);

		g_assert_no_error(error);
		g_assert_cmpstr(dec, ==, valid[i].utf8);

		g_autofree char *enc = imap_mutf7_encode(valid[i].utf8, &error);

		g_assert_no_error(error);
		g_assert_cmpstr(enc, ==, valid[i].mutf7);
	}
}

/* Each must be refused by the decoder with IMAP_ERROR_PROTOCOL. */
static const char *const invalid[] = {
	/* unterminated runs */
	"&",
	"abc&",
	"&AGE",
	"&AOk",
	"abc&U,BTFw",
	"&2D3eAA",
	/* characters outside the modified base64 alphabet inside a run */
	"&AOk/-",
	"&AOk=-",
	"&AOk x-",
	"&AOk.-",
	"&&-",
	"&&",
	"&AOk&-",
	"&AOk\x80-",
	/* "&" followed by base64 that encodes nothing */
	"&A-",
	"&AA-",
	"x&A-y",
	/* partial 16-bit unit, nonzero padding bits */
	"&AOkA-",
	"&AOkA6-",
	"&AOkA6R-",
	"&AOl-",
	"&AOm-",
	"&AOn-",
	"&U,BTFx-",
	"&AOkA6QD-",
	"&2D3eAB-",
	/* unpaired or misordered surrogates */
	"&2D0-",
	"&3gA-",
	"&2D3YPd4A-",
	"&3gDYPQ-",
	"&2D0A6Q-",
	"&AOnYPQ-",
	"&2D3eAN4A-",
	"&2D0-&3gA-",
	/* encoded printable US-ASCII */
	"&AGE-",
	"&ACA-",
	"&ACY-",
	"&AH4-",
	"&AC0-",
	"&AOkAQQ-",
	"&AEEA6Q-",
	/* encoded NUL and control characters */
	"&AAA-",
	"&AAE-",
	"&AAk-",
	"&AAo-",
	"&AA0-",
	"&AB8-",
	"&AH8-",
	"&AOkAAA-",
	/* raw 8-bit and control bytes */
	"\x80",
	"abc\xc3\xa9",
	"\xff",
	"a\x01",
	"a\tb",
	"a\rb",
	"a\nb",
	"\x1f",
	"\x7f",
	"&AOk-\x7f",
	/* adjacent base64 runs */
	"&AOk-&AOk-",
	"&AGE-&AGE-",
	"x&AOk-&AOk-y",
	"&AOk-&A-",
	"&AOk-&",
	"&ZeVnLIqe-&2D3eAA-",
};

static void test_invalid(void)
{
	for (gsize i = 0; i < G_N_ELEMENTS(invalid); i++) {
		g_autoptr(GError) error = NULL;
		g_autofree char *dec = imap_mutf7_decode(invalid[i], &error);

		if (dec != NULL)
			g_error("accepted invalid name #%zu: decoded to \"%s\"",
				i, dec);
		g_assert_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL);
		g_assert_nonnull(strstr(error->message, "modified UTF-7"));
	}
}

static void test_decode_null_error(void)
{
	/* Callers may ignore the reason. */
	g_assert_null(imap_mutf7_decode("&AGE-", NULL));
}

static void test_encode_invalid(void)
{
	static const char *const bad_utf8[] = {
		"\xff",
		"a\xc3",
		"\xc3\x28",
		"\xc0\x80",
		"\xc1\xbf",
		"\xe0\x80\xaf",
		"\xed\xa0\x80",
		"\xed\xbf\xbf",
		"\xf4\x90\x80\x80",
		"\xf8\x88\x80\x80",
		"\x80",
		"ok\xe6\x97",
	};
	static const char *const controls[] = {
		"\x01", "a\tb", "\r\n", "x\x1f", "\x7f", "&\x7f&",
	};

	for (gsize i = 0; i < G_N_ELEMENTS(bad_utf8); i++) {
		g_autoptr(GError) error = NULL;
		g_autofree char *enc = imap_mutf7_encode(bad_utf8[i], &error);

		g_assert_null(enc);
		g_assert_error(error, IMAP_ERROR, IMAP_ERROR_INVALID);
	}
	/* The decoder refuses encoded controls, so the encoder must not
	 * produce them, or a folder it created could not be listed. */
	for (gsize i = 0; i < G_N_ELEMENTS(controls); i++) {
		g_autoptr(GError) error = NULL;
		g_autofree char *enc = imap_mutf7_encode(controls[i], &error);

		g_assert_null(enc);
		g_assert_error(error, IMAP_ERROR, IMAP_ERROR_INVALID);
	}
}

static gunichar random_char(GRand *rand)
{
	static const char interesting[] = "&-,+/ AZaz09~%*\"\\";

	switch (g_rand_int_range(rand, 0, 8)) {
	case 0:
		return (gunichar)interesting[g_rand_int_range(
			rand, 0, sizeof(interesting) - 1)];
	case 1:
	case 2:
		return (gunichar)g_rand_int_range(rand, 0x20, 0x7f);
	case 3:
		return (gunichar)g_rand_int_range(rand, 0x80, 0x800);
	case 4:
		return (gunichar)g_rand_int_range(rand, 0x4e00, 0x9fff);
	case 5:
		/* whole BMP above the surrogates, incl. U+FFFE/U+FFFF */
		return (gunichar)g_rand_int_range(rand, 0xe000, 0x10000);
	case 6:
		return (gunichar)g_rand_int_range(rand, 0x10000, 0x110000);
	default: {
		gunichar c;

		do {
			c = (gunichar)g_rand_int_range(rand, 0x80, 0x10000);
		} while (c >= 0xd800 && c <= 0xdfff);
		return c;
	}
	}
}

static char *random_utf8(GRand *rand)
{
	GString *s = g_string_new(NULL);
	gint n = g_rand_int_range(rand, 0, 24);

	for (gint i = 0; i < n; i++)
		g_string_append_unichar(s, random_char(rand));
	return g_string_free(s, FALSE);
}

static void test_roundtrip_utf8(void)
{
	g_autoptr(GRand) rand = g_rand_new_with_seed(0x6d757466);

	for (int iter = 0; iter < 5000; iter++) {
		g_autofree char *utf8 = random_utf8(rand);
		g_autoptr(GError) error = NULL;
		g_autofree char *enc = imap_mutf7_encode(utf8, &error);

		g_assert_no_error(error);
		for (const char *p = enc; *p; p++)
			g_assert_true(*p >= 0x20 && *p <= 0x7e);

		g_autofree char *dec = imap_mutf7_decode(enc, &error);

		g_assert_no_error(error);
		g_assert_cmpstr(dec, ==, utf8);
	}
}

/* Random text built from mUTF-7 pieces, many of them wrong: whatever the
 * decoder accepts must be exactly what the encoder would write. */
static char *random_mutf7ish(GRand *rand)
{
	static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn"
				  "opqrstuvwxyz0123456789+,";
	static const char common[] = "AADD3gY2,8+";
	GString *s = g_string_new(NULL);
	gint n = g_rand_int_range(rand, 0, 6);

	for (gint i = 0; i < n; i++) {
		switch (g_rand_int_range(rand, 0, 4)) {
		case 0:
			g_string_append_c(
				s, (char)g_rand_int_range(rand, 0x20, 0x7f));
			break;
		case 1:
			g_string_append(s, "&-");
			break;
		default: {
			gint len = g_rand_int_range(rand, 1, 12);

			g_string_append_c(s, '&');
			for (gint j = 0; j < len; j++) {
				const char *set =
					g_rand_boolean(rand) ? b64 : common;
				gsize setlen = strlen(set);

				g_string_append_c(
					s, set[g_rand_int_range(rand, 0,
								(gint)setlen)]);
			}
			if (g_rand_int_range(rand, 0, 16) != 0)
				g_string_append_c(s, '-');
		}
		}
	}
	return g_string_free(s, FALSE);
}

static void test_roundtrip_mutf7(void)
{
	g_autoptr(GRand) rand = g_rand_new_with_seed(0x37);
	guint accepted = 0, with_runs = 0;

	for (int iter = 0; iter < 20000; iter++) {
		g_autofree char *text = random_mutf7ish(rand);
		g_autoptr(GError) error = NULL;
		g_autofree char *dec = imap_mutf7_decode(text, &error);

		if (dec == NULL) {
			g_assert_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL);
			continue;
		}
		g_assert_true(g_utf8_validate(dec, -1, NULL));
		accepted++;
		if (strchr(dec, '&') == NULL && strchr(text, '&') != NULL)
			with_runs++;

		g_autofree char *enc = imap_mutf7_encode(dec, &error);

		g_assert_no_error(error);
		g_assert_cmpstr(enc, ==, text);
	}
	/* Make sure the generator reaches the interesting part. */
	g_assert_cmpuint(accepted, >, 1000);
	g_assert_cmpuint(with_runs, >, 200);
}

int main(int argc, char **argv)
{
	g_test_init(&argc, &argv, NULL);
	g_test_add_func("/mutf7/valid", test_valid_pairs);
	g_test_add_func("/mutf7/invalid", test_invalid);
	g_test_add_func("/mutf7/decode-null-error", test_decode_null_error);
	g_test_add_func("/mutf7/encode-invalid", test_encode_invalid);
	g_test_add_func("/mutf7/roundtrip-utf8", test_roundtrip_utf8);
	g_test_add_func("/mutf7/roundtrip-mutf7", test_roundtrip_mutf7);
	return g_test_run();
}
