/* SPDX-License-Identifier: MIT */
/*
 * Incremental, pure IMAP response parser and the generic response tree.
 *
 * The parser never does I/O: bytes go in through imap_parser_feed(), and
 * each call yields "need more", "error" or exactly one complete response.
 * Literals that the caller wants on disk (message bodies) go to an
 * ImapLiteralSink instead of memory; the parser only hands it the bytes.
 *
 * Threading: an ImapParser is used by one thread at a time.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef enum {
	IMAP_VALUE_ATOM, /* str is NUL-terminated, never contains NUL */
	IMAP_VALUE_NIL,
	IMAP_VALUE_STRING, /* quoted string or in-memory literal; may hold NUL */
	IMAP_VALUE_STREAMED, /* literal that went to a sink; see sink_handle */
	IMAP_VALUE_LIST,
} ImapValueType;

typedef struct _ImapValue ImapValue;
struct _ImapValue {
	ImapValueType type;
	gboolean literal; /* STRING/STREAMED: it arrived as a literal */
	gboolean str_inline; /* str is in this value's allocation */
	char *str; /* ATOM, STRING: always NUL-terminated (extra byte) */
	gsize len; /* ATOM, STRING: bytes in str; STREAMED: literal size */
	GPtrArray *list; /* LIST: ImapValue *, owned */
	gpointer sink_handle; /* STREAMED: what the sink's open() returned */
};

typedef enum {
	IMAP_RESP_UNTAGGED, /* "* ..." */
	IMAP_RESP_TAGGED, /* "A12 OK ..." */
	IMAP_RESP_CONTINUATION, /* "+ ..." */
} ImapRespKind;

typedef enum {
	IMAP_STATUS_NONE, /* not a status response (e.g. "* 3 EXISTS") */
	IMAP_STATUS_OK,
	IMAP_STATUS_NO,
	IMAP_STATUS_BAD,
	IMAP_STATUS_PREAUTH,
	IMAP_STATUS_BYE,
} ImapStatus;

/*
 * One response. Fields that do not apply are NULL / 0.
 *
 * Status responses (tagged, or untagged OK/NO/BAD/PREAUTH/BYE):
 *   status, code (upper-cased atom inside [...], or NULL), code_args
 *   (values after the code atom, never NULL when code is set), text.
 * Numbered data ("* 23 EXISTS", "* 5 FETCH (...)"):
 *   has_number, number, keyword (upper-cased), args.
 * Other data ("* LIST ...", "* CAPABILITY ..."): keyword, args.
 * Continuation ("+ text"): text (may be empty, never NULL).
 */
typedef struct {
	ImapRespKind kind;
	char *tag;
	ImapStatus status;
	char *code;
	GPtrArray *code_args;
	char *text;
	gboolean has_number;
	guint32 number;
	char *keyword;
	GPtrArray *args;
} ImapResponse;

void imap_response_free(ImapResponse *resp);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ImapResponse, imap_response_free)
void imap_value_free(ImapValue *value);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ImapValue, imap_value_free)

/* Human-readable one-line rendering for logs and tests; literals are
 * shown as {n} with their content only when @show_literals. */
char *imap_response_to_string(const ImapResponse *resp, gboolean show_literals);

/*
 * Literal sink: lets big literals bypass memory.
 *
 * open() is called when a literal of @size bytes begins. @context is the
 * atom that precedes the literal inside its list (e.g. "BODY[]",
 * "BODY[]<0>", "BODY[HEADER]"), or NULL. @resp is the response parsed so
 * far (tag, keyword, number are set). Return a handle to stream the
 * literal, or NULL to keep it in memory (subject to max_literal_mem).
 * write() receives the bytes in order; returning FALSE fails the parse
 * with @error. close() is called exactly once for every handle that
 * open() returned: with @complete TRUE after the last byte, FALSE if the
 * parse is abandoned (error, reset, free) before that. A handle stays
 * referenced from the ImapValue after close(); the sink owns its memory.
 */
typedef struct {
	gpointer (*open)(guint64 size, const char *context,
			 const ImapResponse *resp, gpointer user_data);
	gboolean (*write)(gpointer handle, const guint8 *data, gsize len,
			  gpointer user_data, GError **error);
	void (*close)(gpointer handle, gboolean complete, gpointer user_data);
} ImapLiteralSink;

typedef struct {
	gsize max_line; /* bytes of one line between literals; default 64 KiB */
	guint64 max_literal_mem; /* in-memory literal; default 64 MiB */
	guint64 max_literal_stream; /* streamed literal; default 4 GiB */
	guint max_depth; /* list nesting; default 32 */
	guint max_items; /* values in one response; default 1,000,000 */
} ImapParserLimits;

typedef struct _ImapParser ImapParser;

typedef enum {
	IMAP_PARSE_NEED_MORE,
	IMAP_PARSE_RESPONSE,
	IMAP_PARSE_ERROR,
} ImapParseResult;

/* @limits may be NULL for the defaults; zero fields take defaults too. */
ImapParser *imap_parser_new(const ImapParserLimits *limits);
void imap_parser_free(ImapParser *parser);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ImapParser, imap_parser_free)

/* @sink may be NULL (all literals in memory). The sink struct is copied. */
void imap_parser_set_sink(ImapParser *parser, const ImapLiteralSink *sink,
			  gpointer user_data);

/*
 * Consume bytes from @data. Stops after at most one complete response.
 * *consumed_out is always set to the number of bytes used (the caller
 * feeds the rest again). Returns:
 *   IMAP_PARSE_NEED_MORE: all @len bytes consumed, response incomplete;
 *   IMAP_PARSE_RESPONSE: *resp_out holds a new response (caller owns);
 *   IMAP_PARSE_ERROR: @error set (IMAP_ERROR_PROTOCOL or IMAP_ERROR_LIMIT,
 *     or the error of the sink's write()); the parser is
 *     unusable until imap_parser_reset() (the connection should be closed).
 */
ImapParseResult imap_parser_feed(ImapParser *parser, const guint8 *data,
				 gsize len, gsize *consumed_out,
				 ImapResponse **resp_out, GError **error);

/* Drop any partial response (closing open sink handles as incomplete). */
void imap_parser_reset(ImapParser *parser);

/* Value helpers for decoders: all return NULL / FALSE on type mismatch. */
gboolean imap_value_is_atom(const ImapValue *v,
			    const char *atom); /* case-insensitive */
const char *
imap_value_get_string(const ImapValue *v); /* ATOM or STRING; NULL for NIL */
gboolean imap_value_get_u32(const ImapValue *v,
			    guint32 *out); /* ATOM of 1..10 digits */
gboolean imap_value_get_u64(const ImapValue *v,
			    guint64 *out); /* ATOM, <= 2^63-1 */
const GPtrArray *imap_value_get_list(const ImapValue *v);

G_END_DECLS
