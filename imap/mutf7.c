/* SPDX-License-Identifier: MIT */
/*
 * Modified UTF-7 for mailbox names (RFC 3501 section 5.1.3).
 *
 * The decoder accepts only the canonical form, the one our own encoder
 * produces. Names read from the server end up as file names and, through
 * the encoder, as names sent back; if two spellings decoded to the same
 * name, a folder could be shown under one spelling and addressed under
 * another, so non-canonical input is an error, not something to repair.
 *
 * Control characters (U+0000-U+001F, U+007F) are refused in both
 * directions: RFC 9051 section 5.1 tells servers not to allow them in
 * names, and refusing them on both sides keeps decode(encode(x)) == x for
 * everything the encoder accepts.
 */
#include "imap-private.h"

#include <string.h>

static const char b64_alphabet[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

static int b64_value(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == ',')
		return 63;
	return -1;
}

/* Characters that travel as themselves; all others need base64. */
static gboolean is_direct(gunichar c)
{
	return c >= 0x20 && c <= 0x7e;
}

static gboolean is_control(gunichar c)
{
	return c < 0x20 || c == 0x7f;
}

static gboolean fail(GError **error, gsize pos, const char *why)
{
	/* The name is hostile or broken server data: show where, not what,
	 * so a log line never carries arbitrary bytes from the server. */
	g_set_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL,
		    "invalid modified UTF-7 mailbox name at offset %zu: %s",
		    pos, why);
	return FALSE;
}

/*
 * Decode the base64 run in mutf7[start, end) (between "&" and "-", all
 * characters already checked against the alphabet) and append it to @out
 * as UTF-8.
 */
static gboolean decode_run(const char *mutf7, gsize start, gsize end,
			   GString *out, GError **error)
{
	guint32 bits = 0;
	guint nbits = 0;
	gunichar high = 0;
	gsize units = 0;

	for (gsize i = start; i < end; i++) {
		bits = (bits << 6) | (guint32)b64_value(mutf7[i]);
		nbits += 6;
		if (nbits < 16)
			continue;

		nbits -= 16;
		gunichar u = (bits >> nbits) & 0xffff;
		bits &= (1u << nbits) - 1;
		units++;

		if (u >= 0xd800 && u <= 0xdbff) {
			if (high)
				return fail(error, i,
					    "high surrogate follows a high "
					    "surrogate");
			high = u;
			continue;
		}
		if (u >= 0xdc00 && u <= 0xdfff) {
			if (!high)
				return fail(error, i,
					    "low surrogate without a high "
					    "surrogate");
			u = 0x10000 + ((high - 0xd800) << 10) + (u - 0xdc00);
			high = 0;
		} else if (high) {
			return fail(error, i,
				    "high surrogate not followed by a low "
				    "surrogate");
		}

		if (u == 0)
			return fail(error, i, "encoded NUL");
		if (is_control(u))
			return fail(error, i, "encoded control character");
		if (is_direct(u))
			return fail(error, i,
				    "printable US-ASCII must not be "
				    "base64-encoded");
		g_string_append_unichar(out, u);
	}

	if (units == 0)
		return fail(error, start - 1,
			    "empty base64 run (only \"&-\" may be empty)");
	if (high)
		return fail(error, end,
			    "high surrogate at the end of a base64 run");
	/* A canonical run stops at the first base64 character that
	 * completes the last unit, so fewer than 6 bits are left over, all
	 * of them zero. */
	if (nbits >= 6)
		return fail(error, end, "base64 run ends inside a UTF-16 unit");
	if (bits != 0)
		return fail(error, end,
			    "nonzero padding bits at the end of a base64 run");
	return TRUE;
}

char *imap_mutf7_decode(const char *mutf7, GError **error)
{
	g_return_val_if_fail(mutf7 != NULL, NULL);
	g_return_val_if_fail(error == NULL || *error == NULL, NULL);

	g_autoptr(GString) out = g_string_sized_new(strlen(mutf7));
	gsize i = 0;

	while (mutf7[i] != '\0') {
		guchar c = (guchar)mutf7[i];

		if (c >= 0x80) {
			fail(error, i, "8-bit byte");
			return NULL;
		}
		if (is_control(c)) {
			fail(error, i, "control character");
			return NULL;
		}
		if (c != '&') {
			g_string_append_c(out, (char)c);
			i++;
			continue;
		}
		if (mutf7[i + 1] == '-') {
			g_string_append_c(out, '&');
			i += 2;
			continue;
		}

		gsize start = i + 1;
		gsize end = start;

		/* Find the "-" first so that an unterminated run gets its
		 * own message rather than a complaint about the padding. */
		while (mutf7[end] != '\0' && mutf7[end] != '-' &&
		       b64_value(mutf7[end]) >= 0)
			end++;
		if (mutf7[end] == '\0') {
			fail(error, i, "base64 run not terminated by \"-\"");
			return NULL;
		}
		if (mutf7[end] != '-') {
			fail(error, end,
			     "character not allowed in a base64 run");
			return NULL;
		}
		if (!decode_run(mutf7, start, end, out, error))
			return NULL;
		i = end + 1;

		/* The encoder makes each run as long as possible, so two
		 * runs in a row have only one canonical spelling: one run. */
		if (mutf7[i] == '&' && mutf7[i + 1] != '-') {
			fail(error, i,
			     "base64 run directly follows another one");
			return NULL;
		}
	}

	return g_string_free(g_steal_pointer(&out), FALSE);
}

typedef struct {
	GString *out;
	guint32 bits;
	guint nbits;
	gboolean open;
} B64Writer;

static void b64_put_unit(B64Writer *w, guint16 unit)
{
	if (!w->open) {
		g_string_append_c(w->out, '&');
		w->open = TRUE;
	}
	w->bits = (w->bits << 16) | unit;
	w->nbits += 16;
	while (w->nbits >= 6) {
		w->nbits -= 6;
		g_string_append_c(w->out,
				  b64_alphabet[(w->bits >> w->nbits) & 0x3f]);
	}
	w->bits &= (1u << w->nbits) - 1;
}

static void b64_close(B64Writer *w)
{
	if (!w->open)
		return;
	if (w->nbits > 0)
		g_string_append_c(
			w->out,
			b64_alphabet[(w->bits << (6 - w->nbits)) & 0x3f]);
	g_string_append_c(w->out, '-');
	w->bits = 0;
	w->nbits = 0;
	w->open = FALSE;
}

char *imap_mutf7_encode(const char *utf8, GError **error)
{
	g_return_val_if_fail(utf8 != NULL, NULL);
	g_return_val_if_fail(error == NULL || *error == NULL, NULL);

	if (!g_utf8_validate(utf8, -1, NULL)) {
		g_set_error_literal(error, IMAP_ERROR, IMAP_ERROR_INVALID,
				    "mailbox name is not valid UTF-8");
		return NULL;
	}

	g_autoptr(GString) out = g_string_sized_new(strlen(utf8) + 8);
	B64Writer w = {.out = out};

	for (const char *p = utf8; *p != '\0'; p = g_utf8_next_char(p)) {
		gunichar c = g_utf8_get_char(p);

		if (is_control(c)) {
			g_set_error(error, IMAP_ERROR, IMAP_ERROR_INVALID,
				    "mailbox name contains control character "
				    "U+%04X",
				    c);
			return NULL;
		}
		if (is_direct(c)) {
			b64_close(&w);
			if (c == '&')
				g_string_append(out, "&-");
			else
				g_string_append_c(out, (char)c);
			continue;
		}
		if (c >= 0x10000) {
			c -= 0x10000;
			b64_put_unit(&w, (guint16)(0xd800 + (c >> 10)));
			b64_put_unit(&w, (guint16)(0xdc00 + (c & 0x3ff)));
		} else {
			b64_put_unit(&w, (guint16)c);
		}
	}
	b64_close(&w);

	return g_string_free(g_steal_pointer(&out), FALSE);
}
