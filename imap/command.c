/* SPDX-License-Identifier: MIT */
/*
 * Command builder and renderer. Arguments keep their raw bytes; the wire
 * form (atom, quoted, literal, redacted) is chosen only when rendering, so
 * one command can be rendered for the socket and again, redacted, for the
 * log.
 */
#include "imap-private.h"

#include <glib/gprintf.h>
#include <string.h>

/* Largest literal that LITERAL- (RFC 7888) lets us send without waiting. */
#define LITERAL_MINUS_MAX 4096

static void imap_command_arg_clear(ImapCommandArg *arg)
{
	g_clear_pointer(&arg->data, g_bytes_unref);
}

ImapCommand *imap_command_new(const char *verb)
{
	g_return_val_if_fail(verb != NULL && *verb != '\0', NULL);
	g_return_val_if_fail(strpbrk(verb, "\r\n") == NULL, NULL);

	ImapCommand *cmd = g_new0(ImapCommand, 1);

	cmd->ref = 1;
	cmd->verb = g_strdup(verb);
	cmd->args = g_array_new(FALSE, TRUE, sizeof(ImapCommandArg));
	g_array_set_clear_func(cmd->args,
			       (GDestroyNotify)imap_command_arg_clear);
	return cmd;
}

ImapCommand *imap_command_ref(ImapCommand *cmd)
{
	g_return_val_if_fail(cmd != NULL, NULL);

	g_atomic_int_inc(&cmd->ref);
	return cmd;
}

void imap_command_unref(ImapCommand *cmd)
{
	if (cmd == NULL)
		return;
	if (!g_atomic_int_dec_and_test(&cmd->ref))
		return;
	g_array_unref(cmd->args);
	g_free(cmd->verb);
	imap_command_engine_clear(cmd);
	g_free(cmd);
}

const char *imap_command_verb(const ImapCommand *cmd)
{
	g_return_val_if_fail(cmd != NULL, NULL);

	return cmd->verb;
}

void imap_command_begin_secret(ImapCommand *cmd)
{
	g_return_if_fail(cmd != NULL);

	cmd->secret_mode = TRUE;
}

static void push_arg(ImapCommand *cmd, ImapArgKind kind, GBytes *data)
{
	ImapCommandArg arg = {
		.kind = kind,
		.data = data,
		.secret = cmd->secret_mode,
	};

	g_array_append_val(cmd->args, arg);
}

/* ASTRING-CHAR of RFC 3501/9051: ATOM-CHAR or "]". */
static gboolean is_astring_char(guchar c)
{
	if (c <= 0x20 || c >= 0x7f)
		return FALSE;
	return strchr("(){%*\"\\", c) == NULL;
}

/* TEXT-CHAR. 8-bit bytes are left out on purpose: quoting them needs
 * UTF8=ACCEPT, which we do not assume, while a literal always works. */
static gboolean is_text_char(guchar c)
{
	return c >= 0x01 && c <= 0x7f && c != '\r' && c != '\n';
}

ImapStringForm imap_string_form(const char *data, gsize len)
{
	gboolean atom = TRUE;
	gboolean quoted = TRUE;

	g_return_val_if_fail(data != NULL || len == 0, IMAP_FORM_REFUSED);

	/* An empty atom does not exist; "" is the empty string. */
	if (len == 0)
		return IMAP_FORM_QUOTED;
	if (memchr(data, '\0', len) != NULL)
		return IMAP_FORM_REFUSED;

	/* A byte that cannot be quoted cannot be in an atom either, so the
	 * scan may stop there. */
	for (gsize i = 0; i < len && quoted; i++) {
		guchar c = (guchar)data[i];

		if (!is_astring_char(c))
			atom = FALSE;
		if (!is_text_char(c))
			quoted = FALSE;
	}
	if (atom)
		return IMAP_FORM_ATOM;
	return quoted ? IMAP_FORM_QUOTED : IMAP_FORM_LITERAL;
}

gboolean imap_command_add_raw(ImapCommand *cmd, const char *text,
			      GError **error)
{
	g_return_val_if_fail(cmd != NULL, FALSE);
	g_return_val_if_fail(text != NULL, FALSE);

	if (strpbrk(text, "\r\n") != NULL) {
		g_set_error_literal(error, IMAP_ERROR, IMAP_ERROR_INVALID,
				    "protocol text must not contain CR or LF");
		return FALSE;
	}
	push_arg(cmd, IMAP_ARG_RAW, g_bytes_new(text, strlen(text)));
	return TRUE;
}

void imap_command_add_printf(ImapCommand *cmd, const char *fmt, ...)
{
	g_autofree char *text = NULL;
	va_list ap;
	gint len;

	g_return_if_fail(cmd != NULL);
	g_return_if_fail(fmt != NULL);

	va_start(ap, fmt);
	len = g_vasprintf(&text, fmt, ap);
	va_end(ap);

	g_return_if_fail(len >= 0);
	/* Formatted text is trusted like add_raw() text, so a CR, LF or NUL
	 * (which "%c" can produce) is a programming error, not bad input. */
	g_return_if_fail(memchr(text, '\0', (gsize)len) == NULL);
	g_return_if_fail(strpbrk(text, "\r\n") == NULL);
	imap_command_add_raw(cmd, text, NULL);
}

gboolean imap_command_add_string(ImapCommand *cmd, const char *data, gsize len,
				 GError **error)
{
	g_return_val_if_fail(cmd != NULL, FALSE);
	g_return_val_if_fail(data != NULL || len == 0, FALSE);

	if (imap_string_form(data, len) == IMAP_FORM_REFUSED) {
		g_set_error_literal(error, IMAP_ERROR, IMAP_ERROR_INVALID,
				    "a string argument cannot contain NUL");
		return FALSE;
	}
	push_arg(cmd, IMAP_ARG_STRING, g_bytes_new(data, len));
	return TRUE;
}

gboolean imap_command_add_mailbox(ImapCommand *cmd, const char *utf8,
				  GError **error)
{
	g_return_val_if_fail(cmd != NULL, FALSE);
	g_return_val_if_fail(utf8 != NULL, FALSE);

	/* INBOX is case-insensitive (RFC 3501 5.1) and never encoded; the
	 * canonical spelling avoids a server treating "Inbox" as a
	 * different folder below some namespace. */
	if (g_ascii_strcasecmp(utf8, "INBOX") == 0)
		return imap_command_add_string(cmd, "INBOX", 5, error);

	g_autofree char *mutf7 = imap_mutf7_encode(utf8, error);

	if (mutf7 == NULL)
		return FALSE;
	return imap_command_add_string(cmd, mutf7, strlen(mutf7), error);
}

gboolean imap_command_add_mailbox_raw(ImapCommand *cmd, const char *mutf7,
				      GError **error)
{
	g_return_val_if_fail(cmd != NULL, FALSE);
	g_return_val_if_fail(mutf7 != NULL, FALSE);

	return imap_command_add_string(cmd, mutf7, strlen(mutf7), error);
}

void imap_command_add_literal(ImapCommand *cmd, GBytes *data)
{
	g_return_if_fail(cmd != NULL);
	g_return_if_fail(data != NULL);

	push_arg(cmd, IMAP_ARG_LITERAL, g_bytes_ref(data));
}

typedef struct {
	GPtrArray *parts;
	GByteArray *cur;
} Renderer;

static void renderer_append(Renderer *r, const void *data, gsize len)
{
	g_byte_array_append(r->cur, data, (guint)len);
}

static void renderer_puts(Renderer *r, const char *s)
{
	renderer_append(r, s, strlen(s));
}

/* The bytes so far go out now; the rest waits for the server's "+". */
static void renderer_split(Renderer *r)
{
	g_ptr_array_add(r->parts, g_byte_array_free_to_bytes(r->cur));
	r->cur = g_byte_array_new();
}

static void render_literal(Renderer *r, const char *data, gsize len,
			   ImapLiteralMode mode)
{
	gboolean sync;
	char announce[48];

	switch (mode) {
	case IMAP_LITERAL_PLUS:
		sync = FALSE;
		break;
	case IMAP_LITERAL_MINUS:
		sync = len > LITERAL_MINUS_MAX;
		break;
	case IMAP_LITERAL_SYNC:
	default:
		sync = TRUE;
		break;
	}

	g_snprintf(announce, sizeof(announce), "{%" G_GSIZE_FORMAT "%s}\r\n",
		   len, sync ? "" : "+");
	renderer_puts(r, announce);
	if (sync)
		renderer_split(r);
	renderer_append(r, data, len);
}

static void render_quoted(Renderer *r, const char *data, gsize len)
{
	renderer_puts(r, "\"");
	for (gsize i = 0; i < len; i++) {
		if (data[i] == '"' || data[i] == '\\')
			renderer_puts(r, "\\");
		renderer_append(r, &data[i], 1);
	}
	renderer_puts(r, "\"");
}

static void render_arg(Renderer *r, const ImapCommandArg *arg,
		       ImapLiteralMode mode)
{
	gsize len;
	const char *data = g_bytes_get_data(arg->data, &len);

	switch (arg->kind) {
	case IMAP_ARG_RAW:
		renderer_append(r, data, len);
		break;
	case IMAP_ARG_LITERAL:
		render_literal(r, data, len, mode);
		break;
	case IMAP_ARG_STRING:
		switch (imap_string_form(data, len)) {
		case IMAP_FORM_ATOM:
			renderer_append(r, data, len);
			break;
		case IMAP_FORM_QUOTED:
			render_quoted(r, data, len);
			break;
		case IMAP_FORM_LITERAL:
			render_literal(r, data, len, mode);
			break;
		case IMAP_FORM_REFUSED:
		default:
			/* add_string() refuses these. */
			g_assert_not_reached();
		}
		break;
	default:
		g_assert_not_reached();
	}
}

GPtrArray *imap_command_render(const ImapCommand *cmd, const char *tag,
			       ImapLiteralMode mode, gboolean redact)
{
	g_return_val_if_fail(cmd != NULL, NULL);
	g_return_val_if_fail(tag != NULL && *tag != '\0', NULL);
	g_return_val_if_fail(strpbrk(tag, " \r\n") == NULL, NULL);

	Renderer r = {
		.parts = g_ptr_array_new_with_free_func(
			(GDestroyNotify)g_bytes_unref),
		.cur = g_byte_array_new(),
	};

	renderer_puts(&r, tag);
	renderer_puts(&r, " ");
	renderer_puts(&r, cmd->verb);
	for (guint i = 0; i < cmd->args->len; i++) {
		const ImapCommandArg *arg =
			&g_array_index(cmd->args, ImapCommandArg, i);

		renderer_puts(&r, " ");
		/* A redacted literal is not announced either: its length
		 * would tell the log how long the password is. */
		if (redact && arg->secret)
			renderer_puts(&r, "***");
		else
			render_arg(&r, arg, mode);
	}
	renderer_puts(&r, "\r\n");
	g_ptr_array_add(r.parts, g_byte_array_free_to_bytes(r.cur));
	return r.parts;
}
