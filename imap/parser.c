/* SPDX-License-Identifier: MIT */
/*
 * Incremental IMAP response parser.
 *
 * Input is framed into line segments that end in CRLF. A segment that ends
 * in a literal announcement ({n}, {n+}, ~{n}) switches to literal mode for
 * exactly n bytes; the next segment then continues the same response. Each
 * segment is tokenized once, when its CRLF arrives, so the work per byte is
 * constant however the input is split. The state that must survive between
 * segments is small: the response being built, the stack of open lists and
 * what the tokenizer expects next.
 */
#include "imap-private.h"

#include <string.h>

#define DEFAULT_MAX_LINE (64 * 1024)
#define DEFAULT_MAX_LITERAL_MEM (G_GUINT64_CONSTANT(64) * 1024 * 1024)
#define DEFAULT_MAX_LITERAL_STREAM (G_GUINT64_CONSTANT(4) * 1024 * 1024 * 1024)
#define DEFAULT_MAX_DEPTH 32
#define DEFAULT_MAX_ITEMS 1000000

/* Server bytes quoted in error messages are capped so a hostile server
 * cannot flood the logs through us. */
#define EXCERPT_MAX 32

/* The biggest in-memory literal buffer reserved before its bytes arrive: a
 * lying announcement must not make us allocate 64 MiB up front. */
#define LITERAL_PREALLOC (64 * 1024)

typedef enum {
	EXPECT_VALUE, /* after a space (or the keyword) */
	EXPECT_VALUE_OR_CLOSE, /* just after '(' */
	EXPECT_SEP, /* after a value: space, ')' or end */
} Expect;

typedef enum {
	STEP_ERROR,
	STEP_DONE, /* the response is complete */
	STEP_LITERAL, /* a literal begins after this segment */
} Step;

struct _ImapParser {
	ImapParserLimits limits;
	ImapLiteralSink sink;
	gpointer sink_data;

	GString *line; /* current segment; tokenized when its LF arrives */
	GString *quoted; /* a quoted string being unescaped, reused */
	guint64 line_no; /* segments seen since creation, for messages */
	gboolean failed;

	ImapResponse *resp; /* under construction, or NULL */
	GPtrArray *stack; /* borrowed GPtrArray * of the open lists */
	Expect expect;
	guint items;

	gboolean in_literal;
	guint64 lit_remaining;
	ImapValue *lit_value; /* borrowed: already in the tree */
	GString *lit_buf; /* in-memory literal */
	gpointer lit_handle; /* open sink handle */
};

static char *excerpt(const char *s, gsize len)
{
	GString *out = g_string_new(NULL);
	gsize n = MIN(len, EXCERPT_MAX);

	for (gsize i = 0; i < n; i++) {
		guchar c = s[i];

		if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
			g_string_append_c(out, c);
		else
			g_string_append_printf(out, "\\x%02x", c);
	}
	if (len > n)
		g_string_append(out, "...");
	return g_string_free(out, FALSE);
}

/* Errors name the line (counted from the parser's creation) and the column
 * inside the current segment, and quote a little of what was there. */
static void G_GNUC_PRINTF(7, 8)
	fail_at(ImapParser *p, GError **error, ImapErrorCode code,
		const char *s, gsize len, gsize pos, const char *fmt, ...)
{
	g_autofree char *what = NULL;
	g_autofree char *near = NULL;
	va_list ap;

	va_start(ap, fmt);
	what = g_strdup_vprintf(fmt, ap);
	va_end(ap);
	near = excerpt(s + MIN(pos, len), len - MIN(pos, len));
	g_set_error(error, IMAP_ERROR, code,
		    "%s (line %" G_GUINT64_FORMAT ", column %" G_GSIZE_FORMAT
		    ", near \"%s\")",
		    what, p->line_no, pos + 1, near);
}

static ImapValue *value_new(ImapValueType type)
{
	ImapValue *v = g_new0(ImapValue, 1);

	v->type = type;
	return v;
}

/* A value with its bytes in the same allocation: a listing's responses
 * hold a dozen atoms and strings per message, and allocating each string
 * apart made parsing 50,000 of them 7 % slower. */
static ImapValue *value_new_bytes(ImapValueType type, const char *bytes,
				  gsize n)
{
	ImapValue *v = g_malloc(sizeof(ImapValue) + n + 1);

	*v = (ImapValue){.type = type,
			 .str_inline = TRUE,
			 .str = (char *)(v + 1),
			 .len = n};
	memcpy(v->str, bytes, n);
	v->str[n] = '\0';
	return v;
}

void imap_value_free(ImapValue *value)
{
	if (!value)
		return;
	if (!value->str_inline)
		g_free(value->str);
	if (value->list)
		g_ptr_array_unref(value->list);
	g_free(value);
}

static GPtrArray *value_array_new(void)
{
	return g_ptr_array_new_with_free_func((GDestroyNotify)imap_value_free);
}

void imap_response_free(ImapResponse *resp)
{
	if (!resp)
		return;
	g_free(resp->tag);
	g_free(resp->code);
	if (resp->code_args)
		g_ptr_array_unref(resp->code_args);
	g_free(resp->text);
	g_free(resp->keyword);
	if (resp->args)
		g_ptr_array_unref(resp->args);
	g_free(resp);
}

ImapParser *imap_parser_new(const ImapParserLimits *limits)
{
	ImapParser *p = g_new0(ImapParser, 1);

	if (limits)
		p->limits = *limits;
	if (!p->limits.max_line)
		p->limits.max_line = DEFAULT_MAX_LINE;
	if (!p->limits.max_literal_mem)
		p->limits.max_literal_mem = DEFAULT_MAX_LITERAL_MEM;
	if (!p->limits.max_literal_stream)
		p->limits.max_literal_stream = DEFAULT_MAX_LITERAL_STREAM;
	if (!p->limits.max_depth)
		p->limits.max_depth = DEFAULT_MAX_DEPTH;
	if (!p->limits.max_items)
		p->limits.max_items = DEFAULT_MAX_ITEMS;
	/* A segment needs room for at least its CRLF. */
	p->limits.max_line = MAX(p->limits.max_line, 3);
	p->line = g_string_new(NULL);
	p->quoted = g_string_new(NULL);
	p->stack = g_ptr_array_new();
	return p;
}

/* Drops the partial response; the sink hears about an unfinished literal
 * exactly once, here. */
static void abandon(ImapParser *p)
{
	if (p->lit_handle) {
		gpointer handle = g_steal_pointer(&p->lit_handle);

		p->sink.close(handle, FALSE, p->sink_data);
	}
	if (p->lit_buf) {
		g_string_free(p->lit_buf, TRUE);
		p->lit_buf = NULL;
	}
	p->lit_value = NULL;
	p->in_literal = FALSE;
	p->lit_remaining = 0;
	g_clear_pointer(&p->resp, imap_response_free);
	g_ptr_array_set_size(p->stack, 0);
	p->items = 0;
	g_string_truncate(p->line, 0);
}

void imap_parser_free(ImapParser *parser)
{
	if (!parser)
		return;
	abandon(parser);
	g_string_free(parser->line, TRUE);
	g_string_free(parser->quoted, TRUE);
	g_ptr_array_unref(parser->stack);
	g_free(parser);
}

void imap_parser_reset(ImapParser *parser)
{
	abandon(parser);
	parser->failed = FALSE;
}

void imap_parser_set_sink(ImapParser *parser, const ImapLiteralSink *sink,
			  gpointer user_data)
{
	/* Swapping sinks under an open handle would send its close() to the
	 * wrong sink. */
	g_return_if_fail(parser->lit_handle == NULL);
	if (sink && sink->open && sink->write && sink->close) {
		parser->sink = *sink;
		parser->sink_data = user_data;
	} else {
		memset(&parser->sink, 0, sizeof(parser->sink));
		parser->sink_data = NULL;
	}
}

/* ---- Tokenizer ---- */

/*
 * Lenient atoms: any printable ASCII except the characters that start
 * another token. '[' is handled by the caller (fetch sections); inside a
 * response code ']' ends the code instead.
 */
static gboolean is_atom_char(guchar c, gboolean in_code)
{
	if (c <= 0x20 || c >= 0x7f)
		return FALSE;
	switch (c) {
	case '(':
	case ')':
	case '{':
	case '"':
		return FALSE;
	case ']':
		return !in_code;
	default:
		return TRUE;
	}
}

static gboolean add_value(ImapParser *p, ImapValue *v, const char *s, gsize len,
			  gsize pos, GError **error)
{
	GPtrArray *top = p->stack->pdata[p->stack->len - 1];

	if (p->items >= p->limits.max_items) {
		imap_value_free(v);
		fail_at(p, error, IMAP_ERROR_LIMIT, s, len, pos,
			"response has more than %u values",
			p->limits.max_items);
		return FALSE;
	}
	p->items++;
	g_ptr_array_add(top, v);
	return TRUE;
}

/* Skips a quoted string starting at s[*pos] == '"'; fills @out if given. */
static gboolean scan_quoted(ImapParser *p, const char *s, gsize len,
			    gsize *pos_io, GString *out, GError **error)
{
	gsize start = *pos_io;
	gsize pos = start + 1;

	for (;;) {
		if (pos >= len) {
			fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len, start,
				"unterminated quoted string");
			return FALSE;
		}
		guchar c = s[pos];

		if (c == '"')
			break;
		if (c == '\\') {
			if (pos + 1 >= len ||
			    (s[pos + 1] != '"' && s[pos + 1] != '\\')) {
				fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len,
					pos, "invalid escape in quoted string");
				return FALSE;
			}
			pos++;
			c = s[pos];
		}
		if (out)
			g_string_append_c(out, c);
		pos++;
	}
	*pos_io = pos + 1;
	return TRUE;
}

/* The section of BODY[...]: up to the ']' that closes it, with nested
 * parentheses and quoted strings (which may contain ']') kept as text. */
static gboolean scan_section(ImapParser *p, const char *s, gsize len,
			     gsize *pos_io, GError **error)
{
	gsize start = *pos_io;
	gsize pos = start + 1;
	guint depth = 0;

	for (;;) {
		if (pos >= len) {
			fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len, start,
				"unterminated '[' section");
			return FALSE;
		}
		guchar c = s[pos];

		if (c == '"') {
			if (!scan_quoted(p, s, len, &pos, NULL, error))
				return FALSE;
			continue;
		}
		if (c == ']' && depth == 0)
			break;
		if (c == '(') {
			depth++;
		} else if (c == ')') {
			if (depth == 0) {
				fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len,
					pos, "unbalanced ')' in section");
				return FALSE;
			}
			depth--;
		} else if (c < 0x20 || c >= 0x7f) {
			fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len, pos,
				"invalid byte in section");
			return FALSE;
		}
		pos++;
	}
	*pos_io = pos + 1;
	return TRUE;
}

static gboolean parse_atom(ImapParser *p, const char *s, gsize len,
			   gsize *pos_io, gboolean in_code, GError **error)
{
	gsize start = *pos_io;
	gsize pos = start;

	/* A '}' can only be the tail of a mangled literal announcement. */
	if (s[pos] == '}') {
		fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len, pos,
			"'}' without '{'");
		return FALSE;
	}
	while (pos < len) {
		guchar c = s[pos];

		if (c == '[' && !in_code) {
			if (!scan_section(p, s, len, &pos, error))
				return FALSE;
			continue;
		}
		if (!is_atom_char(c, in_code))
			break;
		pos++;
	}
	if (pos == start) {
		fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len, pos,
			"unexpected character");
		return FALSE;
	}

	ImapValue *v;

	if (pos - start == 3 && g_ascii_strncasecmp(s + start, "NIL", 3) == 0) {
		v = value_new(IMAP_VALUE_NIL);
	} else {
		v = value_new_bytes(IMAP_VALUE_ATOM, s + start, pos - start);
	}
	*pos_io = pos;
	return add_value(p, v, s, len, start, error);
}

static gboolean parse_quoted(ImapParser *p, const char *s, gsize len,
			     gsize *pos_io, GError **error)
{
	gsize start = *pos_io;

	g_string_truncate(p->quoted, 0);
	if (!scan_quoted(p, s, len, pos_io, p->quoted, error))
		return FALSE;

	ImapValue *v = value_new_bytes(IMAP_VALUE_STRING, p->quoted->str,
				       p->quoted->len);

	return add_value(p, v, s, len, start, error);
}

static gboolean begin_literal(ImapParser *p, guint64 size, const char *s,
			      gsize len, gsize pos, GError **error)
{
	GPtrArray *top = p->stack->pdata[p->stack->len - 1];
	const char *context = NULL;
	gpointer handle = NULL;

	if (p->items >= p->limits.max_items) {
		fail_at(p, error, IMAP_ERROR_LIMIT, s, len, pos,
			"response has more than %u values",
			p->limits.max_items);
		return FALSE;
	}
	if (top->len > 0) {
		const ImapValue *prev = top->pdata[top->len - 1];

		if (prev->type == IMAP_VALUE_ATOM)
			context = prev->str;
	}
	if (p->sink.open && size <= p->limits.max_literal_stream)
		handle = p->sink.open(size, context, p->resp, p->sink_data);
	if (!handle && size > p->limits.max_literal_mem) {
		fail_at(p, error, IMAP_ERROR_LIMIT, s, len, pos,
			"literal of %" G_GUINT64_FORMAT
			" bytes is over the limit",
			size);
		return FALSE;
	}

	ImapValue *v =
		value_new(handle ? IMAP_VALUE_STREAMED : IMAP_VALUE_STRING);

	v->literal = TRUE;
	if (handle) {
		v->len = size;
		v->sink_handle = handle;
		p->lit_handle = handle;
	} else {
		p->lit_buf = g_string_sized_new(MIN(size, LITERAL_PREALLOC));
	}
	/* Cannot fail: the item count was checked above. */
	add_value(p, v, s, len, pos, error);
	p->lit_value = v;
	p->lit_remaining = size;
	p->in_literal = TRUE;
	return TRUE;
}

/* "{123}", "{123+}" or "~{123}", which must end the segment. */
static gboolean parse_literal_announce(ImapParser *p, const char *s, gsize len,
				       gsize *pos_io, GError **error)
{
	gsize start = *pos_io;
	gsize pos = start;
	guint64 size = 0;
	gsize digits = 0;

	if (s[pos] == '~')
		pos++;
	pos++; /* '{' */
	while (pos < len && g_ascii_isdigit(s[pos])) {
		guint d = s[pos] - '0';

		if (size > ((guint64)G_MAXINT64 - d) / 10) {
			fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len, start,
				"literal size out of range");
			return FALSE;
		}
		size = size * 10 + d;
		digits++;
		pos++;
	}
	if (pos < len && s[pos] == '+')
		pos++;
	if (digits == 0 || pos >= len || s[pos] != '}') {
		fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len, start,
			"malformed literal announcement");
		return FALSE;
	}
	pos++;
	if (pos != len) {
		fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len, start,
			"literal announcement in the middle of a line");
		return FALSE;
	}
	*pos_io = pos;
	return begin_literal(p, size, s, len, start, error);
}

static gboolean push_list(ImapParser *p, const char *s, gsize len, gsize pos,
			  GError **error)
{
	/* stack[0] is the response's own argument array, not a list. */
	if (p->stack->len > p->limits.max_depth) {
		fail_at(p, error, IMAP_ERROR_LIMIT, s, len, pos,
			"lists nested deeper than %u", p->limits.max_depth);
		return FALSE;
	}

	ImapValue *v = value_new(IMAP_VALUE_LIST);

	v->list = value_array_new();
	if (!add_value(p, v, s, len, pos, error))
		return FALSE;
	g_ptr_array_add(p->stack, v->list);
	return TRUE;
}

/*
 * Tokenizes values from s[*pos] until the segment ends (or, in a response
 * code, until its closing ']', left at *pos). Lists stay open across
 * segments through p->stack.
 */
static Step parse_values(ImapParser *p, const char *s, gsize len, gsize *pos_io,
			 gboolean in_code, GError **error)
{
	gsize pos = *pos_io;

	for (;;) {
		if (pos == len) {
			if (in_code) {
				fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len,
					pos, "unterminated response code");
				return STEP_ERROR;
			}
			if (p->stack->len > 1) {
				fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len,
					pos, "unterminated list");
				return STEP_ERROR;
			}
			/* A trailing space is tolerated ("* SEARCH "). */
			*pos_io = pos;
			return STEP_DONE;
		}

		guchar c = s[pos];

		if (in_code && c == ']') {
			if (p->stack->len > 1) {
				fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len,
					pos, "unterminated list in code");
				return STEP_ERROR;
			}
			*pos_io = pos;
			return STEP_DONE;
		}

		if (p->expect == EXPECT_SEP) {
			if (c == ' ') {
				p->expect = EXPECT_VALUE;
				pos++;
				continue;
			}
			if (c != ')') {
				fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len,
					pos, "expected space or ')'");
				return STEP_ERROR;
			}
		}
		if (c == ')') {
			if (p->expect == EXPECT_VALUE) {
				fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len,
					pos, "unexpected ')'");
				return STEP_ERROR;
			}
			if (p->stack->len <= 1) {
				fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len,
					pos, "unbalanced ')'");
				return STEP_ERROR;
			}
			g_ptr_array_set_size(p->stack, p->stack->len - 1);
			p->expect = EXPECT_SEP;
			pos++;
			continue;
		}

		gboolean ok;

		switch (c) {
		case '(':
			ok = push_list(p, s, len, pos, error);
			pos++;
			p->expect = EXPECT_VALUE_OR_CLOSE;
			if (!ok)
				return STEP_ERROR;
			continue;
		case '"':
			ok = parse_quoted(p, s, len, &pos, error);
			break;
		case '{':
		case '~':
			if (c == '~' && (pos + 1 >= len || s[pos + 1] != '{')) {
				ok = parse_atom(p, s, len, &pos, in_code,
						error);
				break;
			}
			if (in_code) {
				fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len,
					pos, "literal inside a response code");
				return STEP_ERROR;
			}
			if (!parse_literal_announce(p, s, len, &pos, error))
				return STEP_ERROR;
			*pos_io = pos;
			return STEP_LITERAL;
		default:
			ok = parse_atom(p, s, len, &pos, in_code, error);
			break;
		}
		if (!ok)
			return STEP_ERROR;
		p->expect = EXPECT_SEP;
	}
}

/* ---- Response header ---- */

static gsize scan_word(const char *s, gsize len, gsize pos)
{
	/* Keywords and code names: atom characters, no brackets. */
	while (pos < len && is_atom_char(s[pos], TRUE) && s[pos] != '[')
		pos++;
	return pos;
}

static ImapStatus status_from_keyword(const char *kw)
{
	static const struct {
		const char *name;
		ImapStatus status;
	} table[] = {
		{"OK", IMAP_STATUS_OK},	  {"NO", IMAP_STATUS_NO},
		{"BAD", IMAP_STATUS_BAD}, {"PREAUTH", IMAP_STATUS_PREAUTH},
		{"BYE", IMAP_STATUS_BYE},
	};

	for (gsize i = 0; i < G_N_ELEMENTS(table); i++) {
		if (strcmp(kw, table[i].name) == 0)
			return table[i].status;
	}
	return IMAP_STATUS_NONE;
}

/* "[CODE args] text" or "text": the text is never tokenized, servers put
 * anything in it. */

/* Status text is for people and ends up in messages on terminals: no
 * control characters (escape sequences), valid UTF-8. */
static char *human_text(const char *s, gsize len)
{
	g_autofree char *valid = g_utf8_make_valid(s, (gssize)len);
	GString *out = g_string_sized_new(strlen(valid));

	for (const char *p = valid; *p; p = g_utf8_next_char(p)) {
		gunichar c = g_utf8_get_char(p);

		if (c < 0x20 || (c >= 0x7f && c < 0xa0))
			g_string_append_c(out, '?');
		else
			g_string_append_len(out, p, g_utf8_next_char(p) - p);
	}
	return g_string_free(out, FALSE);
}

static gboolean parse_resp_text(ImapParser *p, const char *s, gsize len,
				gsize pos, GError **error)
{
	ImapResponse *r = p->resp;

	if (pos < len) {
		if (s[pos] != ' ') {
			fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len, pos,
				"expected space after status");
			return FALSE;
		}
		pos++;
	}
	if (pos < len && s[pos] == '[') {
		gsize start = ++pos;

		pos = scan_word(s, len, pos);
		if (pos == start) {
			fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len, pos,
				"empty response code");
			return FALSE;
		}
		r->code = g_ascii_strup(s + start, pos - start);
		r->code_args = value_array_new();
		if (pos < len && s[pos] == ' ') {
			pos++;
			g_ptr_array_set_size(p->stack, 0);
			g_ptr_array_add(p->stack, r->code_args);
			p->expect = EXPECT_VALUE;
			if (parse_values(p, s, len, &pos, TRUE, error) !=
			    STEP_DONE)
				return FALSE;
		}
		if (pos >= len || s[pos] != ']') {
			fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len, pos,
				"unterminated response code");
			return FALSE;
		}
		pos++;
		if (pos < len && s[pos] == ' ')
			pos++;
	}
	r->text = human_text(s + pos, len - pos);
	return TRUE;
}

/* The first segment of a response. Returns STEP_DONE for responses that
 * are complete in this line, STEP_LITERAL when values follow at *pos_io
 * (the caller tokenizes them). */
static Step parse_header(ImapParser *p, const char *s, gsize len, gsize *pos_io,
			 GError **error)
{
	ImapResponse *r = g_new0(ImapResponse, 1);
	gsize pos = 0;

	p->resp = r;
	if (len == 0) {
		fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len, 0, "empty line");
		return STEP_ERROR;
	}
	if (s[0] == '+') {
		r->kind = IMAP_RESP_CONTINUATION;
		pos = 1;
		if (pos < len) {
			if (s[pos] != ' ') {
				fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len,
					pos, "expected space after '+'");
				return STEP_ERROR;
			}
			pos++;
		}
		r->text = g_strndup(s + pos, len - pos);
		return STEP_DONE;
	}
	if (s[0] == '*') {
		r->kind = IMAP_RESP_UNTAGGED;
		pos = 1;
	} else {
		while (pos < len && is_atom_char(s[pos], FALSE))
			pos++;
		if (pos == 0) {
			fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len, 0,
				"invalid tag");
			return STEP_ERROR;
		}
		r->kind = IMAP_RESP_TAGGED;
		r->tag = g_strndup(s, pos);
	}
	if (pos == len) {
		fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len, pos,
			"response has nothing but a tag");
		return STEP_ERROR;
	}
	if (s[pos] != ' ') {
		fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len, pos,
			"expected space after tag");
		return STEP_ERROR;
	}
	pos++;

	if (r->kind == IMAP_RESP_UNTAGGED && pos < len &&
	    g_ascii_isdigit(s[pos])) {
		guint64 n = 0;
		gsize start = pos;

		while (pos < len && g_ascii_isdigit(s[pos])) {
			n = n * 10 + (s[pos] - '0');
			if (n > G_MAXUINT32) {
				fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len,
					start, "message number out of range");
				return STEP_ERROR;
			}
			pos++;
		}
		if (pos >= len || s[pos] != ' ') {
			fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len, pos,
				"expected space after message number");
			return STEP_ERROR;
		}
		pos++;
		r->has_number = TRUE;
		r->number = n;
	}

	gsize kw_start = pos;

	pos = scan_word(s, len, pos);
	if (pos == kw_start) {
		fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len, pos,
			"missing response keyword");
		return STEP_ERROR;
	}

	g_autofree char *kw = g_ascii_strup(s + kw_start, pos - kw_start);
	ImapStatus status =
		r->has_number ? IMAP_STATUS_NONE : status_from_keyword(kw);

	if (r->kind == IMAP_RESP_TAGGED && status != IMAP_STATUS_OK &&
	    status != IMAP_STATUS_NO && status != IMAP_STATUS_BAD) {
		fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len, kw_start,
			"tagged response is not OK, NO or BAD");
		return STEP_ERROR;
	}
	if (status != IMAP_STATUS_NONE) {
		r->status = status;
		if (!parse_resp_text(p, s, len, pos, error))
			return STEP_ERROR;
		return STEP_DONE;
	}

	r->keyword = g_steal_pointer(&kw);
	r->args = value_array_new();
	if (pos < len) {
		if (s[pos] != ' ') {
			fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len, pos,
				"expected space after keyword");
			return STEP_ERROR;
		}
		pos++;
	}
	g_ptr_array_set_size(p->stack, 0);
	g_ptr_array_add(p->stack, r->args);
	p->expect = EXPECT_VALUE;
	*pos_io = pos;
	return STEP_LITERAL;
}

/* ---- Framing ---- */

static Step end_of_segment(ImapParser *p, GError **error)
{
	const char *s = p->line->str;
	gsize n = p->line->len;
	gsize len, pos = 0;
	const char *bad;

	p->line_no++;
	if (n < 2 || s[n - 2] != '\r') {
		fail_at(p, error, IMAP_ERROR_PROTOCOL, s, n, n - 1,
			"line ends in a bare LF");
		return STEP_ERROR;
	}
	len = n - 2;
	/* Segments never carry NUL or bare CR legitimately (literal8 data is
	 * not a segment), so refusing them here covers atoms, quoted strings
	 * and text at once. */
	if ((bad = memchr(s, '\0', len))) {
		fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len, bad - s,
			"NUL byte in line");
		return STEP_ERROR;
	}
	if ((bad = memchr(s, '\r', len))) {
		fail_at(p, error, IMAP_ERROR_PROTOCOL, s, len, bad - s,
			"bare CR in line");
		return STEP_ERROR;
	}

	if (!p->resp) {
		Step st = parse_header(p, s, len, &pos, error);

		if (st != STEP_LITERAL)
			return st;
	}
	return parse_values(p, s, len, &pos, FALSE, error);
}

static gboolean literal_take(ImapParser *p, const guint8 *data, gsize n,
			     GError **error)
{
	p->lit_remaining -= n;
	if (!p->lit_handle) {
		g_string_append_len(p->lit_buf, (const char *)data, n);
		return TRUE;
	}

	g_autoptr(GError) local = NULL;

	if (p->sink.write(p->lit_handle, data, n, p->sink_data, &local))
		return TRUE;
	if (local)
		g_propagate_error(error, g_steal_pointer(&local));
	else
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL,
			    "literal sink refused data (line %" G_GUINT64_FORMAT
			    ")",
			    p->line_no);
	return FALSE;
}

static void finish_literal(ImapParser *p)
{
	ImapValue *v = p->lit_value;

	if (p->lit_handle) {
		gpointer handle = g_steal_pointer(&p->lit_handle);

		p->sink.close(handle, TRUE, p->sink_data);
	} else {
		v->len = p->lit_buf->len;
		v->str = g_string_free(p->lit_buf, FALSE);
		p->lit_buf = NULL;
	}
	p->lit_value = NULL;
	p->in_literal = FALSE;
	p->expect = EXPECT_SEP;
}

ImapParseResult imap_parser_feed(ImapParser *parser, const guint8 *data,
				 gsize len, gsize *consumed_out,
				 ImapResponse **resp_out, GError **error)
{
	ImapParser *p = parser;
	gsize used = 0;

	*consumed_out = 0;
	*resp_out = NULL;
	if (p->failed) {
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL,
			    "parser used after an error without a reset");
		return IMAP_PARSE_ERROR;
	}

	for (;;) {
		if (p->in_literal) {
			if (p->lit_remaining > 0) {
				if (used == len)
					break;

				gsize n = MIN(len - used, p->lit_remaining);

				if (!literal_take(p, data + used, n, error)) {
					used += n;
					goto fail;
				}
				used += n;
				if (p->lit_remaining > 0)
					continue;
			}
			finish_literal(p);
			continue;
		}
		if (used == len)
			break;

		const guint8 *lf = memchr(data + used, '\n', len - used);
		gsize take = lf ? (gsize)(lf - (data + used)) + 1 : len - used;

		if (p->line->len + take > p->limits.max_line) {
			/* Stop at the first byte past the limit: a hostile
			 * line must cost us no more than the limit. */
			used += p->limits.max_line - p->line->len + 1;
			g_set_error(error, IMAP_ERROR, IMAP_ERROR_LIMIT,
				    "line longer than %" G_GSIZE_FORMAT
				    " bytes (line %" G_GUINT64_FORMAT ")",
				    p->limits.max_line, p->line_no + 1);
			goto fail;
		}
		g_string_append_len(p->line, (const char *)data + used, take);
		used += take;
		if (!lf)
			break;

		Step st = end_of_segment(p, error);

		if (st == STEP_ERROR)
			goto fail;
		g_string_truncate(p->line, 0);
		if (st == STEP_DONE) {
			*resp_out = g_steal_pointer(&p->resp);
			g_ptr_array_set_size(p->stack, 0);
			p->items = 0;
			*consumed_out = used;
			return IMAP_PARSE_RESPONSE;
		}
	}
	*consumed_out = used;
	return IMAP_PARSE_NEED_MORE;

fail:
	*consumed_out = used;
	abandon(p);
	p->failed = TRUE;
	return IMAP_PARSE_ERROR;
}

/* ---- Rendering ---- */

static void append_values(GString *out, const GPtrArray *values,
			  gboolean show_literals);

static void append_bytes(GString *out, const char *s, gsize len)
{
	g_string_append_c(out, '"');
	for (gsize i = 0; i < len; i++) {
		guchar c = s[i];

		if (c == '"' || c == '\\') {
			g_string_append_c(out, '\\');
			g_string_append_c(out, c);
		} else if (c < 0x20 || c >= 0x7f) {
			g_string_append_printf(out, "\\x%02x", c);
		} else {
			g_string_append_c(out, c);
		}
	}
	g_string_append_c(out, '"');
}

static void append_value(GString *out, const ImapValue *v,
			 gboolean show_literals)
{
	switch (v->type) {
	case IMAP_VALUE_ATOM:
		g_string_append(out, v->str);
		break;
	case IMAP_VALUE_NIL:
		g_string_append(out, "NIL");
		break;
	case IMAP_VALUE_STRING:
		if (v->literal) {
			g_string_append_printf(out, "{%" G_GSIZE_FORMAT "}",
					       v->len);
			if (show_literals)
				append_bytes(out, v->str, v->len);
		} else {
			append_bytes(out, v->str, v->len);
		}
		break;
	case IMAP_VALUE_STREAMED:
		g_string_append_printf(out, "{%" G_GSIZE_FORMAT "}", v->len);
		if (show_literals)
			g_string_append(out, "<streamed>");
		break;
	case IMAP_VALUE_LIST:
		g_string_append_c(out, '(');
		append_values(out, v->list, show_literals);
		g_string_append_c(out, ')');
		break;
	}
}

static void append_values(GString *out, const GPtrArray *values,
			  gboolean show_literals)
{
	for (guint i = 0; values && i < values->len; i++) {
		if (i > 0)
			g_string_append_c(out, ' ');
		append_value(out, values->pdata[i], show_literals);
	}
}

char *imap_response_to_string(const ImapResponse *resp, gboolean show_literals)
{
	static const char *const status_names[] = {
		[IMAP_STATUS_OK] = "OK",   [IMAP_STATUS_NO] = "NO",
		[IMAP_STATUS_BAD] = "BAD", [IMAP_STATUS_PREAUTH] = "PREAUTH",
		[IMAP_STATUS_BYE] = "BYE",
	};
	GString *out = g_string_new(NULL);

	if (resp->kind == IMAP_RESP_CONTINUATION) {
		g_string_append_c(out, '+');
		if (resp->text && *resp->text)
			g_string_append_printf(out, " %s", resp->text);
		return g_string_free(out, FALSE);
	}
	g_string_append(out, resp->kind == IMAP_RESP_TAGGED && resp->tag
				     ? resp->tag
				     : "*");
	if (resp->status != IMAP_STATUS_NONE) {
		g_string_append_printf(out, " %s", status_names[resp->status]);
		if (resp->code) {
			g_string_append_printf(out, " [%s", resp->code);
			if (resp->code_args && resp->code_args->len) {
				g_string_append_c(out, ' ');
				append_values(out, resp->code_args,
					      show_literals);
			}
			g_string_append_c(out, ']');
		}
		if (resp->text && *resp->text)
			g_string_append_printf(out, " %s", resp->text);
		return g_string_free(out, FALSE);
	}
	if (resp->has_number)
		g_string_append_printf(out, " %u", resp->number);
	if (resp->keyword)
		g_string_append_printf(out, " %s", resp->keyword);
	if (resp->args && resp->args->len) {
		g_string_append_c(out, ' ');
		append_values(out, resp->args, show_literals);
	}
	return g_string_free(out, FALSE);
}

/* ---- Value helpers ---- */

gboolean imap_value_is_atom(const ImapValue *v, const char *atom)
{
	return v && v->type == IMAP_VALUE_ATOM &&
	       g_ascii_strcasecmp(v->str, atom) == 0;
}

const char *imap_value_get_string(const ImapValue *v)
{
	if (v && (v->type == IMAP_VALUE_ATOM || v->type == IMAP_VALUE_STRING))
		return v->str;
	return NULL;
}

static gboolean parse_digits(const ImapValue *v, gsize max_digits, guint64 max,
			     guint64 *out)
{
	guint64 n = 0;

	if (!v || v->type != IMAP_VALUE_ATOM || v->len == 0 ||
	    v->len > max_digits)
		return FALSE;
	for (gsize i = 0; i < v->len; i++) {
		if (!g_ascii_isdigit(v->str[i]))
			return FALSE;
		/* max_digits keeps this from overflowing 64 bits. */
		n = n * 10 + (v->str[i] - '0');
	}
	if (n > max)
		return FALSE;
	*out = n;
	return TRUE;
}

gboolean imap_value_get_u32(const ImapValue *v, guint32 *out)
{
	guint64 n;

	if (!parse_digits(v, 10, G_MAXUINT32, &n))
		return FALSE;
	if (out)
		*out = n;
	return TRUE;
}

gboolean imap_value_get_u64(const ImapValue *v, guint64 *out)
{
	guint64 n;

	if (!parse_digits(v, 19, G_MAXINT64, &n))
		return FALSE;
	if (out)
		*out = n;
	return TRUE;
}

const GPtrArray *imap_value_get_list(const ImapValue *v)
{
	if (v && v->type == IMAP_VALUE_LIST)
		return v->list;
	return NULL;
}
