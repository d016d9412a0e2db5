/* SPDX-License-Identifier: MIT */
/* Declarations shared between the files of imap/ (and its unit tests). */
#pragma once

#include "imap.h"

G_BEGIN_DECLS

#define G_LOG_DOMAIN_IMAP "imapfs-imap"

/* ---- command.c ---- */

typedef enum {
	IMAP_ARG_RAW, /* trusted protocol text */
	IMAP_ARG_STRING, /* astring: atom, quoted or literal */
	IMAP_ARG_LITERAL, /* always a literal */
} ImapArgKind;

typedef struct {
	ImapArgKind kind;
	GBytes *data;
	gboolean secret;
} ImapCommandArg;

struct _ImapCommand {
	gint ref;
	char *verb;
	GArray *args; /* ImapCommandArg, cleared with imap_command_arg_clear */
	gboolean secret_mode; /* imap_command_begin_secret() was called */
};

/* How an astring of these bytes goes on the wire. */
typedef enum {
	IMAP_FORM_ATOM,
	IMAP_FORM_QUOTED,
	IMAP_FORM_LITERAL,
	IMAP_FORM_REFUSED, /* contains NUL */
} ImapStringForm;

ImapStringForm imap_string_form(const char *data, gsize len);

G_END_DECLS
