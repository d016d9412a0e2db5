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

	/* Engine metadata, set with the imap.h setters (conn.c), freed by
	 * imap_command_engine_clear(). */
	GPtrArray *want; /* upper-cased untagged keywords */
	ImapUntaggedFunc untagged_func;
	gpointer untagged_data;
	ImapLiteralSink sink;
	gboolean has_sink;
	gpointer sink_data;
	char *mailbox; /* raw name the command needs selected */
	guint32 uidvalidity;
	gboolean idempotent;
	gboolean is_idle;
	gboolean bulk; /* may wait: never put an interactive one behind it */
	char *selects; /* SELECT/EXAMINE: the raw name it selects */
	ImapUidSet *scope; /* UIDs its FETCH responses can be about */
	char *unselects; /* DELETE/RENAME: must not run with this selected */
	gboolean deselects; /* UNSELECT */
};

void imap_command_engine_clear(ImapCommand *cmd);

/* How an astring of these bytes goes on the wire. */
typedef enum {
	IMAP_FORM_ATOM,
	IMAP_FORM_QUOTED,
	IMAP_FORM_LITERAL,
	IMAP_FORM_REFUSED, /* contains NUL */
} ImapStringForm;

ImapStringForm imap_string_form(const char *data, gsize len);

/* ---- tls.c: the byte stream (TCP, optionally TLS) ---- */

typedef struct _ImapStream ImapStream;

typedef enum {
	IMAP_IO_OK,
	IMAP_IO_WOULD_BLOCK, /* poll for imap_stream_poll_events() */
	IMAP_IO_EOF,
	IMAP_IO_ERROR,
} ImapIoResult;

ImapStream *imap_stream_connect(const char *host, guint16 port,
				guint timeout_ms, GError **error);
gboolean imap_stream_start_tls(ImapStream *s, const char *host,
			       const char *cafile, guint timeout_ms,
			       GError **error);
void imap_stream_free(ImapStream *s);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ImapStream, imap_stream_free)
int imap_stream_fd(const ImapStream *s);
gboolean imap_stream_is_tls(const ImapStream *s);
short imap_stream_poll_events(const ImapStream *s);
ImapIoResult imap_stream_read(ImapStream *s, void *buf, gsize len, gsize *n_out,
			      GError **error);
ImapIoResult imap_stream_write(ImapStream *s, const void *buf, gsize len,
			       gsize *n_out, GError **error);
gboolean imap_stream_has_buffered(const ImapStream *s);
/* COMPRESS=DEFLATE from now on, both ways (after the server's OK). */
gboolean imap_stream_start_deflate(ImapStream *s, GError **error);
/* Compressed bytes still to be written: flush when the socket allows. */
gboolean imap_stream_wants_flush(const ImapStream *s);
ImapIoResult imap_stream_flush(ImapStream *s, GError **error);
gboolean imap_stream_plaintext_waiting(const ImapStream *s);

/* ---- auth.c: SASL initial responses (base64, secret) ---- */

ImapSecret *imap_sasl_plain(const char *user, const ImapSecret *password);
ImapSecret *imap_sasl_xoauth2(const char *user, const ImapSecret *token);
ImapSecret *imap_sasl_oauthbearer(const char *user, const char *host,
				  guint16 port, const ImapSecret *token);

/* ---- conn.c / client.c: the engine ---- */

/* One submitted command on its way through a connection. */
typedef struct {
	ImapCommand *cmd;
	ImapDoneFunc done;
	gpointer user_data;
	char tag[16];
	GPtrArray *parts; /* rendered; part i > 0 waits for a "+" */
	guint next_part;
	ImapResult *result;
	guint retries;
	gboolean internal; /* a SELECT the engine inserted */
	gboolean done_sent; /* IDLE: "DONE" written */
	gboolean idling; /* IDLE: the server said "+" */
	GError *select_error; /* queued when its mailbox's SELECT failed */
} ImapFlight;

typedef struct _ImapConn ImapConn;

struct _ImapClient {
	ImapConfig config;
	GMutex lock; /* protects everything below */
	GPtrArray *conns; /* ImapConn *, at most config.max_connections */
	ImapEventFunc event_func;
	gpointer event_data;
	GHashTable *caps; /* of the last login */
	ImapSecret *password; /* fetched once; OAuth tokens are not kept */
	ImapCounters counters; /* summed over all connections */
	gint64 last_progress; /* monotonic time of the last byte read */
	gboolean shutting_down;
};

/* Starts the connection's I/O thread; the connection opens lazily. */
ImapConn *imap_conn_new(ImapClient *client, guint id);
/* Queue a flight. Call with client->lock held. */
void imap_conn_enqueue_locked(ImapConn *conn, ImapFlight *flight);
ImapCounters imap_conn_counters_locked(const ImapConn *conn);
/* Commands queued or in flight (client->lock held). */
guint imap_conn_load_locked(const ImapConn *conn);
guint imap_conn_bulk_load_locked(const ImapConn *conn);
/* The mailbox the connection will have selected once its queue has run
 * (client->lock held); NULL for none. */
const char *imap_conn_route_mailbox_locked(const ImapConn *conn);
/* Not set aside after the server turned it away (client->lock held). */
gboolean imap_conn_usable_locked(const ImapConn *conn, gint64 now);
/* The connection for @cmd (client.c; client->lock held). */
ImapConn *imap_client_pick_locked(ImapClient *client, const ImapCommand *cmd);
/* Fail everything with IMAP_ERROR_CANCELLED, log out, join the thread. */
void imap_conn_free(ImapConn *conn);

void imap_flight_finish(ImapFlight *flight, ImapResult *result,
			const GError *error);
void imap_client_emit(ImapClient *client, const ImapEvent *event);

G_END_DECLS
