/* SPDX-License-Identifier: MIT */
/*
 * Modified UTF-7 in both directions. Whatever the decoder accepts must be
 * canonical (encode(decode(x)) == x); whatever valid UTF-8 the encoder
 * accepts must come back unchanged (decode(encode(x)) == x), and it may
 * refuse only names with control characters.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "imap-private.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_decode(const char *text)
{
	g_autoptr(GError) error = NULL;
	g_autofree char *utf8 = imap_mutf7_decode(text, &error);

	if (utf8 == NULL) {
		if (error == NULL || error->domain != IMAP_ERROR ||
		    error->code != IMAP_ERROR_PROTOCOL)
			abort();
		return;
	}
	if (!g_utf8_validate(utf8, -1, NULL))
		abort();

	g_autofree char *again = imap_mutf7_encode(utf8, NULL);

	if (again == NULL || strcmp(again, text) != 0)
		abort();
}

static gboolean has_control(const char *utf8)
{
	for (const char *p = utf8; *p != '\0'; p++)
		if ((guchar)*p < 0x20 || *p == 0x7f)
			return TRUE;
	return FALSE;
}

static void check_encode(const char *text)
{
	g_autoptr(GError) error = NULL;
	g_autofree char *mutf7 = imap_mutf7_encode(text, &error);

	if (mutf7 == NULL) {
		if (!has_control(text) || error == NULL ||
		    error->code != IMAP_ERROR_INVALID)
			abort();
		return;
	}

	g_autofree char *back = imap_mutf7_decode(mutf7, NULL);

	if (back == NULL || strcmp(back, text) != 0)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* The decoder reads a C string, so it sees the input up to the
	 * first NUL, exactly as it would see a name from the parser. */
	g_autofree char *text = g_strndup((const char *)data, size);

	check_decode(text);
	if (g_utf8_validate((const char *)data, (gssize)size, NULL))
		check_encode(text);
	return 0;
}
