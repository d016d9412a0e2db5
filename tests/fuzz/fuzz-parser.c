/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target for the response parser and every decoder.
 *
 * The input is a server transcript. It is parsed three times:
 *   A. default limits, fed whole;
 *   B. default limits, fed in chunks whose sizes come from a hash of the
 *      input (one byte to a few KB);
 *   C. tiny limits, chunked, with a sink that sometimes refuses data.
 * A and B must agree exactly (responses, errors and where they happened):
 * how TCP splits the stream must never matter. After an error the parser
 * is reset and continues with the rest, so one input exercises recovery
 * too. Every response goes through every decoder, whose contract (a result
 * or an error, never both) is checked. The sink checks the open/write/close
 * protocol and that no handle is left open.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imap-private.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
	guint64 size;
	guint64 written;
	gboolean closed;
} FuzzHandle;

typedef struct {
	GPtrArray *handles; /* FuzzHandle *, live until the run ends */
	gboolean refuse_fe; /* write() fails on data holding 0xfe */
} FuzzSink;

#define CHECK(cond)                                                          \
	do {                                                                 \
		if (!(cond)) {                                               \
			fprintf(stderr, "check failed: %s (%s:%d)\n", #cond, \
				__FILE__, __LINE__);                         \
			abort();                                             \
		}                                                            \
	} while (0)

static gpointer sink_open(guint64 size, const char *context,
			  const ImapResponse *resp, gpointer user_data)
{
	FuzzSink *fs = user_data;

	CHECK(resp != NULL);
	if (!context || (!g_str_has_prefix(context, "BODY") &&
			 !g_str_has_prefix(context, "BINARY") &&
			 !g_str_has_prefix(context, "RFC822")))
		return NULL;

	FuzzHandle *h = g_new0(FuzzHandle, 1);

	h->size = size;
	g_ptr_array_add(fs->handles, h);
	return h;
}

static gboolean sink_write(gpointer handle, const guint8 *data, gsize len,
			   gpointer user_data, GError **error)
{
	FuzzSink *fs = user_data;
	FuzzHandle *h = handle;

	CHECK(!h->closed);
	CHECK(len > 0 && h->written + len <= h->size);
	h->written += len;
	if (fs->refuse_fe && memchr(data, 0xfe, len)) {
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_LIMIT, "sink full");
		return FALSE;
	}
	return TRUE;
}

static void sink_close(gpointer handle, gboolean complete, gpointer user_data)
{
	FuzzHandle *h = handle;

	CHECK(!h->closed);
	CHECK(!complete || h->written == h->size);
	h->closed = TRUE;
}

static const ImapLiteralSink sink_funcs = {
	.open = sink_open,
	.write = sink_write,
	.close = sink_close,
};

static void decode_uid_sets(const GPtrArray *args)
{
	for (guint i = 0; args && i < args->len; i++) {
		const ImapValue *v = args->pdata[i];

		if (v->type != IMAP_VALUE_ATOM)
			continue;

		g_autoptr(ImapUidSet) set =
			imap_uid_set_parse(v->str, 100, NULL);

		if (!set)
			continue;

		g_autofree char *s = imap_uid_set_to_string(set);
		g_autoptr(ImapUidSet) again = imap_uid_set_parse(s, 0, NULL);
		g_autofree char *s2 = imap_uid_set_to_string(again);
		guint64 n = imap_uid_set_count(set);
		guint32 uid;

		/* Canonical form survives a round trip. */
		CHECK(again && strcmp(s, s2) == 0);
		CHECK(imap_uid_set_nth(set, n - 1, &uid));
		CHECK(imap_uid_set_contains(set, uid));
		CHECK(!imap_uid_set_nth(set, n, &uid));
	}
}

static void run_decoders(const ImapResponse *r)
{
	g_autoptr(GError) e1 = NULL;
	g_autoptr(GError) e2 = NULL;
	g_autoptr(GError) e3 = NULL;
	g_autoptr(GError) e4 = NULL;
	g_autoptr(GError) e5 = NULL;
	g_autoptr(GError) e6 = NULL;
	g_autoptr(GError) e7 = NULL;
	g_autoptr(GError) e8 = NULL;

	g_autofree char *s1 = imap_response_to_string(r, FALSE);
	g_autofree char *s2 = imap_response_to_string(r, TRUE);

	CHECK(s1 && s2);

	g_hash_table_unref(imap_decode_capability(r->args));
	g_hash_table_unref(imap_decode_capability(r->code_args));

	g_autoptr(ImapListEntry) l = imap_decode_list(r, &e1);
	CHECK(!l != !e1);
	g_autoptr(ImapStatusData) st = imap_decode_status(r, &e2);
	CHECK(!st != !e2);

	g_autoptr(ImapFetchData) fd = imap_decode_fetch(r, &e3);
	CHECK(!fd != !e3);
	if (fd) {
		const ImapFetchSection *sec = imap_fetch_data_section(fd, "");

		if (sec)
			CHECK(sec->value->type == IMAP_VALUE_STRING ||
			      sec->value->type == IMAP_VALUE_NIL ||
			      sec->value->type == IMAP_VALUE_STREAMED);
		imap_fetch_data_section(fd, "HEADER");
		/* Dates near year 1 or 9999 leave the 4-digit range once
		 * moved to UTC; everything else must round-trip. */
		if ((fd->has & IMAP_FETCH_HAS_INTERNALDATE) &&
		    fd->internaldate >
			    G_GINT64_CONSTANT(-62135596800) + 86400 &&
		    fd->internaldate <
			    G_GINT64_CONSTANT(253402300799) - 86400) {
			g_autofree char *d =
				imap_format_internaldate(fd->internaldate);
			gint64 back;

			CHECK(imap_parse_internaldate(d, &back, NULL));
			CHECK(back == fd->internaldate);
		}
	}

	gboolean earlier = FALSE;
	g_autoptr(ImapUidSet) v = imap_decode_vanished(r, &earlier, &e4);
	CHECK(!v != !e4);
	g_autoptr(ImapEsearchData) es = imap_decode_esearch(r, &e5);
	CHECK(!es != !e5);
	g_autoptr(ImapUidSet) se = imap_decode_search(r, &e6);
	CHECK(!se != !e6);

	guint32 uidvalidity;
	g_autoptr(ImapUidSet) appended = NULL;
	g_autoptr(GArray) pairs = NULL;

	if (imap_decode_appenduid(r, &uidvalidity, &appended, &e7))
		CHECK(appended && !e7);
	else
		CHECK(!appended);
	if (imap_decode_copyuid(r, &uidvalidity, &pairs, &e8))
		CHECK(pairs && pairs->len % 2 == 0 && !e8);
	else
		CHECK(!pairs);

	ImapSelectData sd = {0};

	imap_select_data_update(&sd, r);
	imap_select_data_clear(&sd);
	imap_response_has_code(r, "ALERT");
	imap_response_is_bye(r);
	imap_response_is_alert(r);
	decode_uid_sets(r->args);
	decode_uid_sets(r->code_args);
}

typedef struct {
	guint64 state;
} Rng;

static guint32 rng_next(Rng *rng)
{
	/* xorshift64*: any deterministic sequence will do. */
	rng->state ^= rng->state >> 12;
	rng->state ^= rng->state << 25;
	rng->state ^= rng->state >> 27;
	return (rng->state * G_GUINT64_CONSTANT(2685821657736338717)) >> 32;
}

static gsize next_chunk(Rng *rng)
{
	guint32 r = rng_next(rng);

	return r % 4 == 0 ? 1 + (r >> 8) % 4096 : 1 + (r >> 8) % 16;
}

/* Returns the log of what happened: one line per response or error. */
static GString *run(const uint8_t *data, size_t size, gboolean chunked,
		    const ImapParserLimits *limits, gboolean refuse,
		    guint64 seed)
{
	FuzzSink fs = {.refuse_fe = refuse};
	g_autoptr(ImapParser) p = imap_parser_new(limits);
	GString *log = g_string_new(NULL);
	Rng rng = {seed | 1};
	gsize off = 0;
	gsize chunk_end = 0;

	fs.handles = g_ptr_array_new_with_free_func(g_free);
	imap_parser_set_sink(p, &sink_funcs, &fs);
	g_autoptr(GPtrArray) responses = g_ptr_array_new_with_free_func(
		(GDestroyNotify)imap_response_free);

	while (off < size) {
		if (off >= chunk_end) {
			gsize n = chunked ? next_chunk(&rng) : size;

			chunk_end = MIN(size, off + n);
		}

		ImapResponse *resp = NULL;
		g_autoptr(GError) error = NULL;
		gsize used = 0;
		ImapParseResult res = imap_parser_feed(
			p, data + off, chunk_end - off, &used, &resp, &error);

		CHECK(used <= chunk_end - off);
		off += used;
		switch (res) {
		case IMAP_PARSE_NEED_MORE:
			CHECK(!resp && !error && off == chunk_end);
			break;
		case IMAP_PARSE_RESPONSE: {
			CHECK(resp && !error && used > 0);
			g_autofree char *s =
				imap_response_to_string(resp, TRUE);

			g_string_append_printf(log, "R@%zu %s\n", off, s);
			run_decoders(resp);
			/* Kept alive: streamed values reference handles. */
			g_ptr_array_add(responses, resp);
			break;
		}
		case IMAP_PARSE_ERROR:
			CHECK(!resp && error && error->domain == IMAP_ERROR);
			CHECK(error->code == IMAP_ERROR_PROTOCOL ||
			      error->code == IMAP_ERROR_LIMIT);
			g_string_append_printf(log, "E@%zu %d %s\n", off,
					       error->code, error->message);
			imap_parser_reset(p);
			/* Recovery continues after the failure point. */
			if (used == 0 && off < size)
				off++;
			break;
		}
	}
	g_clear_pointer(&p, imap_parser_free);
	for (guint i = 0; i < fs.handles->len; i++)
		CHECK(((FuzzHandle *)fs.handles->pdata[i])->closed);
	g_clear_pointer(&responses, g_ptr_array_unref);
	g_ptr_array_unref(fs.handles);
	return log;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* Keep literals and lines small enough that the fuzzer spends its
	 * time on structure, not on copying megabytes. */
	static const ImapParserLimits normal = {
		.max_literal_mem = 1 << 20,
		.max_literal_stream = 1 << 20,
	};
	static const ImapParserLimits tiny = {
		.max_line = 200,
		.max_literal_mem = 64,
		.max_literal_stream = 512,
		.max_depth = 4,
		.max_items = 40,
	};
	guint64 hash = G_GUINT64_CONSTANT(14695981039346656037);

	for (size_t i = 0; i < size; i++)
		hash = (hash ^ data[i]) * G_GUINT64_CONSTANT(1099511628211);

	GString *whole = run(data, size, FALSE, &normal, FALSE, hash);
	GString *chunked = run(data, size, TRUE, &normal, FALSE, hash);

	if (strcmp(whole->str, chunked->str) != 0) {
		fprintf(stderr,
			"split changed the result:\n--- whole\n%s"
			"--- chunked\n%s",
			whole->str, chunked->str);
		abort();
	}
	g_string_free(whole, TRUE);
	g_string_free(chunked, TRUE);
	g_string_free(run(data, size, TRUE, &tiny, TRUE, hash >> 7), TRUE);
	return 0;
}
