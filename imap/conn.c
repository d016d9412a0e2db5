/* SPDX-License-Identifier: MIT */
/*
 * One IMAP connection and its pipelined command engine.
 *
 * Each connection is owned by one I/O thread: only that thread touches the
 * socket, the parser and the queues below "I/O thread only". Other threads
 * hand over commands through conn->submitted (under client->lock) and wake
 * the thread with an eventfd. Completion callbacks run on the I/O thread.
 *
 * Connection setup (TCP, TLS, greeting, STARTTLS, login, ENABLE) runs as a
 * straight sequence of blocking steps under a deadline; after that the
 * thread runs a poll() loop that pipelines commands (see can_send()).
 */
#include "imap-private.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define READ_CHUNK (64 * 1024)
#define MAX_IN_FLIGHT 128
#define MAX_WBUF (1024 * 1024)
#define BACKOFF_MIN_MS 500
#define BACKOFF_MAX_MS 10000
#define CONNECT_TIMEOUT_MS 5000
#define SHORT_BACKOFF_US (1000 * 1000)
/* A connection lost this soon after it was made counts as a failure. */
#define QUICK_DEATH_US (2 * G_USEC_PER_SEC)
/* A connection the server turned away is not tried again for so long. */
#define SET_ASIDE_US (60 * G_USEC_PER_SEC)

typedef enum {
	CONN_DISCONNECTED,
	CONN_CONNECTING,
	CONN_READY,
	CONN_LOGOUT,
} ConnState;

static const char *const conn_state_names[] = {
	[CONN_DISCONNECTED] = "disconnected",
	[CONN_CONNECTING] = "connecting",
	[CONN_READY] = "ready",
	[CONN_LOGOUT] = "logout",
};

struct _ImapConn {
	ImapClient *client;
	guint id;
	GThread *thread;
	int wake_fd;

	/* Under client->lock. */
	GQueue submitted; /* ImapFlight * */
	gboolean shutdown;
	guint load; /* submitted + pending + in flight */
	guint bulk_load; /* of which bulk (prefetches) */
	ImapCounters counters; /* this connection's share */
	char *route_mailbox;
	gboolean logged_in; /* at least once */
	gint64 aside_until; /* turned away by the server: not picked */

	/* I/O thread only. */
	ConnState state;
	ImapStream *stream;
	ImapParser *parser;
	GByteArray *rbuf;
	gsize rpos;
	GByteArray *wbuf;
	gsize wpos;
	GQueue pending; /* not yet sent */
	GQueue inflight; /* sent, oldest first */
	ImapFlight *cont_flight; /* has parts waiting for a "+" */
	ImapFlight *sink_owner; /* gets the literal being parsed */
	GHashTable *caps;
	ImapLiteralMode literal_mode;
	gboolean qresync, condstore;
	char *selected; /* raw name, or NULL */
	guint32 selected_uidvalidity;
	GArray *seqmap; /* guint32 UID per sequence number - 1; 0 unknown */
	char *bye_text;
	guint tag_seq;
	gint64 last_activity;
	gint64 next_connect_at;
	gint64 connected_at;
	gboolean answered; /* a command completed on this connection */
	guint backoff_ms;
	GError *connect_error; /* why the last attempt failed */
};

static void conn_set_state(ImapConn *conn, ConnState state)
{
	if (conn->state == state)
		return;
	g_debug("conn %u: %s -> %s", conn->id, conn_state_names[conn->state],
		conn_state_names[state]);
	conn->state = state;
}

static void count(ImapConn *conn, guint64 commands, guint64 round_trips,
		  guint64 in, guint64 out)
{
	ImapClient *client = conn->client;

	g_mutex_lock(&client->lock);
	client->counters.commands += commands;
	client->counters.round_trips += round_trips;
	client->counters.bytes_in += in;
	client->counters.bytes_out += out;
	conn->counters.commands += commands;
	conn->counters.round_trips += round_trips;
	conn->counters.bytes_in += in;
	conn->counters.bytes_out += out;
	if (in)
		client->last_progress = g_get_monotonic_time();
	g_mutex_unlock(&client->lock);
}

/* ---- flights ---- */

static ImapFlight *conn_flight_new(ImapCommand *cmd)
{
	ImapFlight *f = g_new0(ImapFlight, 1);

	f->cmd = imap_command_ref(cmd);
	return f;
}

void imap_flight_finish(ImapFlight *f, ImapResult *result, const GError *error)
{
	if (f->done)
		f->done(result, error, f->user_data);
	else
		imap_result_free(result);
	if (f->cmd)
		imap_command_unref(f->cmd);
	if (f->parts)
		g_ptr_array_unref(f->parts);
	g_clear_error(&f->select_error);
	g_free(f);
}

static void conn_unload(ImapConn *conn, const ImapFlight *f)
{
	g_mutex_lock(&conn->client->lock);
	conn->load--;
	if (f->cmd && f->cmd->bulk)
		conn->bulk_load--;
	g_mutex_unlock(&conn->client->lock);
}

static void conn_fail_flight(ImapConn *conn, ImapFlight *f, const GError *error)
{
	if (f->result)
		imap_result_free(g_steal_pointer(&f->result));
	if (!f->internal)
		conn_unload(conn, f);
	imap_flight_finish(f, NULL, error);
}

static ImapResult *result_new(void)
{
	ImapResult *r = g_new0(ImapResult, 1);

	r->untagged = g_ptr_array_new_with_free_func(
		(GDestroyNotify)imap_response_free);
	return r;
}

/* ---- literal sink: forwards to the command that gets the FETCH ---- */

static gboolean flight_wants(const ImapFlight *f, const char *keyword)
{
	if (!f->cmd || !f->cmd->want || !keyword)
		return FALSE;
	for (guint i = 0; i < f->cmd->want->len; i++) {
		if (g_ascii_strcasecmp(f->cmd->want->pdata[i], keyword) == 0)
			return TRUE;
	}
	return FALSE;
}

static ImapFlight *conn_route(ImapConn *conn, const char *keyword)
{
	for (GList *l = conn->inflight.head; l; l = l->next) {
		ImapFlight *f = l->data;

		if (flight_wants(f, keyword))
			return f;
	}
	return NULL;
}

/*
 * The flight a FETCH response about @uid belongs to. Servers may run
 * pipelined FETCH commands in parallel and interleave their responses
 * (Dovecot does), so "the oldest FETCH in flight" is not enough: each
 * UID command knows the UIDs it asked about (its scope), and commands
 * sent together are given disjoint scopes. @uid 0 (not known yet) falls
 * back to the oldest.
 */
static ImapFlight *conn_route_fetch(ImapConn *conn, guint32 uid)
{
	for (GList *l = conn->inflight.head; l; l = l->next) {
		ImapFlight *f = l->data;

		if (!flight_wants(f, "FETCH"))
			continue;
		if (!uid || !f->cmd->scope ||
		    imap_uid_set_contains(f->cmd->scope, uid))
			return f;
	}
	return NULL;
}

/* The UID of a FETCH response, from what has been parsed so far. */
static guint32 fetch_uid(const ImapResponse *resp)
{
	const ImapValue *list;
	guint32 uid = 0;

	if (!resp->args || resp->args->len < 1)
		return 0;
	list = resp->args->pdata[0];
	if (list->type != IMAP_VALUE_LIST)
		return 0;
	for (guint i = 0; i + 1 < list->list->len; i += 2) {
		if (imap_value_is_atom(list->list->pdata[i], "UID") &&
		    imap_value_get_u32(list->list->pdata[i + 1], &uid))
			return uid;
	}
	return 0;
}

static gpointer sink_open(guint64 size, const char *context,
			  const ImapResponse *resp, gpointer user_data)
{
	ImapConn *conn = user_data;
	ImapFlight *f = g_strcmp0(resp->keyword, "FETCH") == 0
				? conn_route_fetch(conn, fetch_uid(resp))
				: conn_route(conn, resp->keyword);

	if (!f || !f->cmd->has_sink)
		return NULL;
	gpointer h = f->cmd->sink.open(size, context, resp, f->cmd->sink_data);

	if (h)
		conn->sink_owner = f;
	return h;
}

static gboolean sink_write(gpointer handle, const guint8 *data, gsize len,
			   gpointer user_data, GError **error)
{
	ImapConn *conn = user_data;
	ImapCommand *cmd = conn->sink_owner->cmd;

	return cmd->sink.write(handle, data, len, cmd->sink_data, error);
}

static void sink_close(gpointer handle, gboolean complete, gpointer user_data)
{
	ImapConn *conn = user_data;
	ImapCommand *cmd = conn->sink_owner->cmd;

	cmd->sink.close(handle, complete, cmd->sink_data);
	conn->sink_owner = NULL;
}

static const ImapLiteralSink conn_sink = {
	.open = sink_open,
	.write = sink_write,
	.close = sink_close,
};

/* ---- disconnect ---- */

static void conn_close_stream(ImapConn *conn)
{
	/* Reset first: it closes an open sink handle, whose owner must
	 * still be alive. */
	imap_parser_reset(conn->parser);
	g_clear_pointer(&conn->stream, imap_stream_free);
	g_byte_array_set_size(conn->rbuf, 0);
	conn->rpos = 0;
	g_byte_array_set_size(conn->wbuf, 0);
	conn->wpos = 0;
	conn->cont_flight = NULL;
	g_clear_pointer(&conn->selected, g_free);
	conn->selected_uidvalidity = 0;
	g_array_set_size(conn->seqmap, 0);
	g_clear_pointer(&conn->bye_text, g_free);
	conn_set_state(conn, CONN_DISCONNECTED);
}

/* The next connection waits: 0.5 s, doubling up to 10 s. */
static void conn_backoff(ImapConn *conn, const GError *error)
{
	conn->backoff_ms = conn->backoff_ms
				   ? MIN(conn->backoff_ms * 2, BACKOFF_MAX_MS)
				   : BACKOFF_MIN_MS;
	conn->next_connect_at =
		g_get_monotonic_time() + (gint64)conn->backoff_ms * 1000;
	g_clear_error(&conn->connect_error);
	conn->connect_error = g_error_copy(error);
}

/*
 * The connection is gone: everything in flight fails with @error, except
 * idempotent commands, which go back to the front of the queue once to be
 * sent again on a fresh connection.
 */
static void conn_lost(ImapConn *conn, const GError *error)
{
	GQueue retry = G_QUEUE_INIT;
	ImapFlight *f;
	ImapEvent ev = {.kind = IMAP_EVENT_DISCONNECTED,
			.mailbox = conn->selected,
			.text = error->message};

	g_debug("conn %u: lost: %s", conn->id, error->message);
	imap_client_emit(conn->client, &ev);
	/* A connection that dies right after it was made, before it
	 * answered anything, waits a moment before the next one, or a server
	 * that closes at once would be reconnected to as fast as it can
	 * answer. Only a moment: the server was reachable, so this never
	 * grows into the backoff that fails commands at once. One that did
	 * work was cut by the network and is made again at once; a BYE is
	 * the server's decision. */
	if (g_get_monotonic_time() - conn->connected_at < QUICK_DEATH_US &&
	    !conn->answered &&
	    !g_error_matches(error, IMAP_ERROR, IMAP_ERROR_BYE)) {
		conn->backoff_ms = 0;
		conn_backoff(conn, error);
	} else {
		conn->backoff_ms = 0;
		g_clear_error(&conn->connect_error);
	}
	conn_close_stream(conn);
	while ((f = g_queue_pop_head(&conn->inflight))) {
		if (f->internal) {
			/* The SELECT the engine put before a command: that
			 * command used its one retry (it was not sent). */
			for (GList *l = conn->pending.head; l; l = l->next) {
				ImapFlight *p = l->data;

				if (p->cmd && g_strcmp0(p->cmd->mailbox,
							f->cmd->selects) == 0)
					p->retries++;
			}
			conn_fail_flight(conn, f, error);
		} else if (f->cmd->idempotent && f->retries == 0 &&
			   !f->idling) {
			f->retries++;
			g_clear_pointer(&f->result, imap_result_free);
			g_clear_pointer(&f->parts, g_ptr_array_unref);
			f->next_part = 0;
			g_queue_push_tail(&retry, f);
		} else {
			conn_fail_flight(conn, f, error);
		}
	}
	while ((f = g_queue_pop_tail(&retry)))
		g_queue_push_head(&conn->pending, f);
	/* Commands that waited for a SELECT that failed twice fail too. */
	for (GList *l = conn->pending.head; l;) {
		GList *next = l->next;
		ImapFlight *p = l->data;

		if (p->cmd && p->retries > 1) {
			g_queue_delete_link(&conn->pending, l);
			conn_fail_flight(conn, p, error);
		}
		l = next;
	}
}

static void conn_fail_pending(ImapConn *conn, const GError *error)
{
	ImapFlight *f;

	while ((f = g_queue_pop_head(&conn->pending)))
		conn_fail_flight(conn, f, error);
}

/* ---- blocking steps, used during connection setup ---- */

static gboolean conn_wait(ImapConn *conn, short events, gint64 deadline,
			  GError **error)
{
	for (;;) {
		gint64 left = deadline - g_get_monotonic_time();
		struct pollfd pfd = {.fd = imap_stream_fd(conn->stream),
				     .events = events};
		int rc;

		if (left <= 0) {
			g_set_error(error, IMAP_ERROR, IMAP_ERROR_TIMEOUT,
				    "the server did not answer within %u s",
				    conn->client->config.timeout_ms / 1000);
			return FALSE;
		}
		rc = poll(&pfd, 1, (int)MIN(left / 1000 + 1, G_MAXINT));
		if (rc > 0)
			return TRUE;
		if (rc < 0 && errno != EINTR) {
			g_set_error(error, IMAP_ERROR, IMAP_ERROR_DISCONNECTED,
				    "poll: %s", g_strerror(errno));
			return FALSE;
		}
	}
}

static gboolean conn_sync_write(ImapConn *conn, const void *data, gsize len,
				gint64 deadline, GError **error)
{
	gsize done = 0;

	while (done < len) {
		gsize n = 0;
		ImapIoResult r = imap_stream_write(conn->stream,
						   (const char *)data + done,
						   len - done, &n, error);

		if (r == IMAP_IO_OK) {
			done += n;
			continue;
		}
		if (r == IMAP_IO_WOULD_BLOCK) {
			if (!conn_wait(conn,
				       imap_stream_poll_events(conn->stream),
				       deadline, error))
				return FALSE;
			continue;
		}
		if (r == IMAP_IO_EOF)
			g_set_error(error, IMAP_ERROR, IMAP_ERROR_DISCONNECTED,
				    "the server closed the connection");
		return FALSE;
	}
	while (imap_stream_wants_flush(conn->stream)) {
		ImapIoResult r = imap_stream_flush(conn->stream, error);

		if (r == IMAP_IO_ERROR)
			return FALSE;
		if (r == IMAP_IO_WOULD_BLOCK &&
		    !conn_wait(conn, imap_stream_poll_events(conn->stream),
			       deadline, error))
			return FALSE;
	}
	count(conn, 0, 0, 0, len);
	return TRUE;
}

/* Read at most one chunk into rbuf. */
static ImapIoResult conn_read_some(ImapConn *conn, GError **error)
{
	gsize old = conn->rbuf->len;
	gsize n = 0;
	ImapIoResult r;

	if (conn->rpos == old) {
		g_byte_array_set_size(conn->rbuf, 0);
		conn->rpos = old = 0;
	}
	g_byte_array_set_size(conn->rbuf, old + READ_CHUNK);
	r = imap_stream_read(conn->stream, conn->rbuf->data + old, READ_CHUNK,
			     &n, error);
	g_byte_array_set_size(conn->rbuf, old + n);
	if (n) {
		conn->last_activity = g_get_monotonic_time();
		count(conn, 0, 0, n, 0);
	}
	return r;
}

static void conn_eof_error(ImapConn *conn, GError **error)
{
	if (conn->bye_text)
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_BYE,
			    "the server closed the connection: %s",
			    conn->bye_text);
	else
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_DISCONNECTED,
			    "the server closed the connection");
}

/* Parse one response out of rbuf; NULL with *error, or NULL if more
 * bytes are needed. */
static ImapResponse *conn_parse(ImapConn *conn, GError **error)
{
	while (conn->rpos < conn->rbuf->len) {
		ImapResponse *resp = NULL;
		gsize used = 0;
		ImapParseResult r = imap_parser_feed(
			conn->parser, conn->rbuf->data + conn->rpos,
			conn->rbuf->len - conn->rpos, &used, &resp, error);

		conn->rpos += used;
		if (r == IMAP_PARSE_ERROR)
			return NULL;
		if (r == IMAP_PARSE_RESPONSE) {
			if (g_log_get_debug_enabled()) {
				g_autofree char *s =
					imap_response_to_string(resp, FALSE);

				g_debug("conn %u: S: %s", conn->id, s);
			}
			return resp;
		}
	}
	return NULL;
}

static ImapResponse *conn_sync_read(ImapConn *conn, gint64 deadline,
				    GError **error)
{
	for (;;) {
		GError *local = NULL;
		ImapResponse *resp = conn_parse(conn, &local);

		if (resp)
			return resp;
		if (local) {
			g_propagate_error(error, local);
			return NULL;
		}
		ImapIoResult r = conn_read_some(conn, error);

		if (r == IMAP_IO_ERROR)
			return NULL;
		if (r == IMAP_IO_EOF) {
			conn_eof_error(conn, error);
			return NULL;
		}
		if (r == IMAP_IO_WOULD_BLOCK &&
		    !conn_wait(conn, imap_stream_poll_events(conn->stream),
			       deadline, error))
			return NULL;
	}
}

static void conn_update_caps(ImapConn *conn, const GPtrArray *args)
{
	if (conn->caps)
		g_hash_table_unref(conn->caps);
	conn->caps = imap_decode_capability(args);
	if (g_hash_table_contains(conn->caps, "LITERAL+"))
		conn->literal_mode = IMAP_LITERAL_PLUS;
	else if (g_hash_table_contains(conn->caps, "LITERAL-") ||
		 g_hash_table_contains(conn->caps, "IMAP4REV2"))
		conn->literal_mode = IMAP_LITERAL_MINUS;
	else
		conn->literal_mode = IMAP_LITERAL_SYNC;
}

static gboolean has_cap(ImapConn *conn, const char *cap)
{
	return conn->caps && g_hash_table_contains(conn->caps, cap);
}

/* A CAPABILITY list in a response code or as untagged data. */
static void conn_take_caps(ImapConn *conn, const ImapResponse *resp)
{
	if (resp->code && g_str_equal(resp->code, "CAPABILITY"))
		conn_update_caps(conn, resp->code_args);
	else if (resp->keyword && g_str_equal(resp->keyword, "CAPABILITY"))
		conn_update_caps(conn, resp->args);
}

static char *conn_next_tag(ImapConn *conn)
{
	return g_strdup_printf("%c%u", 'A' + (char)(conn->id % 26),
			       ++conn->tag_seq);
}

static void trace_command(ImapConn *conn, const ImapCommand *cmd,
			  const char *tag)
{
	if (!g_log_get_debug_enabled())
		return;
	g_autoptr(GPtrArray) parts =
		imap_command_render(cmd, tag, conn->literal_mode, TRUE);
	g_autoptr(GString) line = g_string_new(NULL);

	for (guint i = 0; i < parts->len; i++) {
		gsize len;
		const char *p = g_bytes_get_data(parts->pdata[i], &len);

		if (i > 0)
			g_string_append(line, " <+> ");
		if (len > 200)
			g_string_append_printf(line, "%.*s... (%zu bytes)", 200,
					       p, len);
		else
			g_string_append_len(line, p, (gssize)len);
	}
	while (line->len && (line->str[line->len - 1] == '\n' ||
			     line->str[line->len - 1] == '\r'))
		g_string_truncate(line, line->len - 1);
	g_debug("conn %u: C: %s", conn->id, line->str);
}

/*
 * Send @cmd and wait for its completion, answering "+" with the next
 * rendered part (or, for AUTHENTICATE, an empty line: the server's error
 * challenge). Untagged responses are only inspected for capabilities;
 * @untagged_out collects them if not NULL.
 */
static ImapResponse *conn_sync_command_full(ImapConn *conn, ImapCommand *cmd,
					    const ImapSecret *sasl_response,
					    GPtrArray *untagged_out,
					    gint64 deadline, GError **error)
{
	gboolean sasl_sent = FALSE;
	g_autofree char *tag = conn_next_tag(conn);
	g_autoptr(GPtrArray) parts =
		imap_command_render(cmd, tag, conn->literal_mode, FALSE);
	guint next = 1;
	gsize len;
	const void *p = g_bytes_get_data(parts->pdata[0], &len);

	trace_command(conn, cmd, tag);
	if (!conn_sync_write(conn, p, len, deadline, error))
		return NULL;
	count(conn, 1, 1, 0, 0);
	for (;;) {
		ImapResponse *resp = conn_sync_read(conn, deadline, error);

		if (!resp)
			return NULL;
		conn_take_caps(conn, resp);
		if (resp->kind == IMAP_RESP_TAGGED) {
			if (g_strcmp0(resp->tag, tag) == 0)
				return resp;
			imap_response_free(resp);
			g_set_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL,
				    "completion for a command never sent");
			return NULL;
		}
		if (resp->kind == IMAP_RESP_CONTINUATION) {
			imap_response_free(resp);
			if (next < parts->len) {
				p = g_bytes_get_data(parts->pdata[next++],
						     &len);
			} else if (sasl_response && !sasl_sent) {
				/* AUTHENTICATE without SASL-IR: the initial
				 * response goes as a line of its own. */
				g_autoptr(GString) line = g_string_new_len(
					sasl_response->data,
					(gssize)sasl_response->len);

				g_string_append(line, "\r\n");
				sasl_sent = TRUE;
				g_debug("conn %u: C: <credentials>", conn->id);
				if (!conn_sync_write(conn, line->str, line->len,
						     deadline, error)) {
					explicit_bzero(line->str, line->len);
					return NULL;
				}
				explicit_bzero(line->str, line->len);
				count(conn, 0, 1, 0, 0);
				continue;
			} else if (g_str_has_prefix(cmd->verb,
						    "AUTHENTICATE")) {
				/* A challenge after our response carries the
				 * server's error; an empty line ends it. */
				p = "\r\n";
				len = 2;
			} else {
				g_set_error(error, IMAP_ERROR,
					    IMAP_ERROR_PROTOCOL,
					    "unexpected continuation request");
				return NULL;
			}
			if (!conn_sync_write(conn, p, len, deadline, error))
				return NULL;
			count(conn, 0, 1, 0, 0);
			continue;
		}
		if (imap_response_is_bye(resp)) {
			g_free(conn->bye_text);
			conn->bye_text = g_strdup(resp->text);
		}
		if (untagged_out)
			g_ptr_array_add(untagged_out, resp);
		else
			imap_response_free(resp);
	}
}

static ImapResponse *conn_sync_command(ImapConn *conn, ImapCommand *cmd,
				       GPtrArray *untagged_out, gint64 deadline,
				       GError **error)
{
	return conn_sync_command_full(conn, cmd, NULL, untagged_out, deadline,
				      error);
}

/* Turn a tagged NO/BAD into an error. */
gboolean imap_result_check(const ImapResult *result, GError **error)
{
	const ImapResponse *t = result ? result->tagged : NULL;
	static const struct {
		const char *code;
		ImapErrorCode error;
	} codes[] = {
		{"NONEXISTENT", IMAP_ERROR_NONEXISTENT},
		{"TRYCREATE", IMAP_ERROR_NONEXISTENT},
		{"ALREADYEXISTS", IMAP_ERROR_ALREADYEXISTS},
		{"OVERQUOTA", IMAP_ERROR_OVERQUOTA},
		{"LIMIT", IMAP_ERROR_OVERQUOTA},
		{"NOPERM", IMAP_ERROR_NOPERM},
		{"READ-ONLY", IMAP_ERROR_NOPERM},
		{"INUSE", IMAP_ERROR_INUSE},
		{"UNAVAILABLE", IMAP_ERROR_INUSE},
		{"EXPUNGEISSUED", IMAP_ERROR_EXPUNGEISSUED},
		{"AUTHENTICATIONFAILED", IMAP_ERROR_AUTH},
		/* A name or operation the server cannot do (RFC 5530). */
		{"CANNOT", IMAP_ERROR_INVALID},
	};
	ImapErrorCode code;

	if (!t || t->status == IMAP_STATUS_OK)
		return TRUE;
	code = t->status == IMAP_STATUS_BAD ? IMAP_ERROR_BAD : IMAP_ERROR_NO;
	for (guint i = 0; t->code && i < G_N_ELEMENTS(codes); i++) {
		if (g_str_equal(t->code, codes[i].code))
			code = codes[i].error;
	}
	/* "NO [NONEXISTENT] Mailbox doesn't exist: x" */
	g_set_error(error, IMAP_ERROR, code, "%s%s%s%s%s%s",
		    t->status == IMAP_STATUS_BAD ? "BAD" : "NO",
		    t->code ? " [" : "", t->code ? t->code : "",
		    t->code ? "]" : "", t->text && *t->text ? " " : "",
		    t->text ? t->text : "");
	return FALSE;
}

static gboolean conn_simple(ImapConn *conn, const char *verb, gint64 deadline,
			    GError **error)
{
	g_autoptr(ImapCommand) cmd = imap_command_new(verb);
	g_autoptr(ImapResponse) resp =
		conn_sync_command(conn, cmd, NULL, deadline, error);
	ImapResult r = {.tagged = resp};

	return resp && imap_result_check(&r, error);
}

static gboolean conn_starttls(ImapConn *conn, gint64 deadline, GError **error)
{
	const ImapConfig *cfg = &conn->client->config;
	g_autoptr(ImapCommand) cmd = imap_command_new("STARTTLS");
	g_autoptr(GPtrArray) untagged = g_ptr_array_new_with_free_func(
		(GDestroyNotify)imap_response_free);
	g_autoptr(ImapResponse) resp = NULL;

	if (!has_cap(conn, "STARTTLS")) {
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_STARTTLS,
			    "the server does not offer STARTTLS "
			    "(refusing to continue without TLS)");
		return FALSE;
	}
	resp = conn_sync_command(conn, cmd, untagged, deadline, error);
	if (!resp)
		return FALSE;
	if (resp->status != IMAP_STATUS_OK) {
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_STARTTLS,
			    "the server refused STARTTLS: %s", resp->text);
		return FALSE;
	}
	/* Anything between our STARTTLS and the handshake was not protected
	 * and could be injected: refuse the connection. */
	if (untagged->len > 0 || conn->rpos < conn->rbuf->len ||
	    imap_stream_plaintext_waiting(conn->stream)) {
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_STARTTLS,
			    "the server sent data after STARTTLS before the "
			    "TLS handshake (possible injection attack)");
		return FALSE;
	}
	if (!imap_stream_start_tls(conn->stream, cfg->host, cfg->cafile,
				   cfg->timeout_ms, error)) {
		g_prefix_error(error, "STARTTLS: ");
		return FALSE;
	}
	/* Capabilities from before TLS may have been tampered with. */
	g_clear_pointer(&conn->caps, g_hash_table_unref);
	return TRUE;
}

static ImapSecret *conn_get_secret(ImapConn *conn, gboolean cacheable,
				   GError **error)
{
	ImapClient *client = conn->client;
	ImapSecret *copy;

	if (!cacheable)
		return imap_secret_fetch(&client->config.secret, error);

	g_mutex_lock(&client->lock);
	if (!client->password) {
		g_mutex_unlock(&client->lock);
		ImapSecret *s =
			imap_secret_fetch(&client->config.secret, error);

		if (!s)
			return NULL;
		g_mutex_lock(&client->lock);
		if (!client->password)
			client->password = s;
		else
			imap_secret_free(s);
	}
	copy = g_new0(ImapSecret, 1);
	copy->data = g_strndup(client->password->data, client->password->len);
	copy->len = client->password->len;
	g_mutex_unlock(&client->lock);
	return copy;
}

static gboolean conn_authenticate(ImapConn *conn, gint64 deadline,
				  GError **error)
{
	const ImapConfig *cfg = &conn->client->config;
	ImapAuthMech mech = cfg->auth;
	g_autoptr(ImapCommand) cmd = NULL;
	g_autoptr(ImapResponse) resp = NULL;
	g_autoptr(ImapSecret) secret = NULL;
	g_autoptr(ImapSecret) ir = NULL;
	const char *sasl = NULL;

	if (mech == IMAP_AUTH_AUTO)
		mech = has_cap(conn, "AUTH=PLAIN") ? IMAP_AUTH_PLAIN
						   : IMAP_AUTH_LOGIN;
	switch (mech) {
	case IMAP_AUTH_PLAIN:
		sasl = "PLAIN";
		break;
	case IMAP_AUTH_XOAUTH2:
		sasl = "XOAUTH2";
		break;
	case IMAP_AUTH_OAUTHBEARER:
		sasl = "OAUTHBEARER";
		break;
	default:
		if (has_cap(conn, "LOGINDISABLED")) {
			g_set_error(error, IMAP_ERROR, IMAP_ERROR_AUTH,
				    "the server does not allow LOGIN here "
				    "(LOGINDISABLED)%s",
				    cfg->tls == IMAP_TLS_NONE ? "; use TLS"
							      : "");
			return FALSE;
		}
		break;
	}
	if (sasl) {
		g_autofree char *cap = g_strconcat("AUTH=", sasl, NULL);

		if (!has_cap(conn, cap)) {
			g_set_error(error, IMAP_ERROR, IMAP_ERROR_UNSUPPORTED,
				    "the server does not offer %s", cap);
			return FALSE;
		}
	}

	/* OAuth tokens expire: ask the command again for each login. */
	secret = conn_get_secret(
		conn,
		!(mech == IMAP_AUTH_XOAUTH2 || mech == IMAP_AUTH_OAUTHBEARER),
		error);
	if (!secret)
		return FALSE;

	if (!sasl) {
		cmd = imap_command_new("LOGIN");
		imap_command_begin_secret(cmd);
		if (!imap_command_add_string(cmd, cfg->user, strlen(cfg->user),
					     error) ||
		    !imap_command_add_string(cmd, secret->data, secret->len,
					     error))
			return FALSE;
	} else {
		g_autofree char *verb =
			g_strconcat("AUTHENTICATE ", sasl, NULL);
		guint16 port = cfg->port;

		if (mech == IMAP_AUTH_PLAIN)
			ir = imap_sasl_plain(cfg->user, secret);
		else if (mech == IMAP_AUTH_XOAUTH2)
			ir = imap_sasl_xoauth2(cfg->user, secret);
		else
			ir = imap_sasl_oauthbearer(cfg->user, cfg->host, port,
						   secret);
		cmd = imap_command_new(verb);
		imap_command_begin_secret(cmd);
		if (has_cap(conn, "SASL-IR")) {
			imap_command_add_raw(cmd, ir->data, NULL);
			g_clear_pointer(&ir, imap_secret_free);
		}
	}
	resp = conn_sync_command_full(conn, cmd, ir, NULL, deadline, error);
	if (!resp)
		return FALSE;
	if (resp->status != IMAP_STATUS_OK) {
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_AUTH,
			    "login as %s failed: %s%s%s%s", cfg->user,
			    resp->code ? "[" : "", resp->code ? resp->code : "",
			    resp->code ? "] " : "", resp->text);
		return FALSE;
	}
	/* Servers announce more after login, usually in this OK. */
	if (!resp->code || !g_str_equal(resp->code, "CAPABILITY"))
		return conn_simple(conn, "CAPABILITY", deadline, error);
	return TRUE;
}

/* COMPRESS=DEFLATE (RFC 4978) when asked for and offered. A NO is no
 * error: the connection goes on uncompressed. */
static gboolean conn_compress(ImapConn *conn, gint64 deadline, GError **error)
{
	g_autoptr(ImapCommand) cmd = NULL;
	g_autoptr(ImapResponse) resp = NULL;

	if (!conn->client->config.compress ||
	    !has_cap(conn, "COMPRESS=DEFLATE"))
		return TRUE;
	cmd = imap_command_new("COMPRESS DEFLATE");
	resp = conn_sync_command_full(conn, cmd, NULL, NULL, deadline, error);
	if (!resp)
		return FALSE;
	if (resp->status != IMAP_STATUS_OK)
		return TRUE;
	/* The server compresses from the byte after its OK: nothing may be
	 * left over in what was read (it sends nothing unasked). */
	if (conn->rpos < conn->rbuf->len) {
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL,
			    "data after the answer to COMPRESS");
		return FALSE;
	}
	return imap_stream_start_deflate(conn->stream, error);
}

static gboolean conn_enable(ImapConn *conn, gint64 deadline, GError **error)
{
	g_autoptr(ImapCommand) cmd = NULL;
	g_autoptr(GPtrArray) untagged = g_ptr_array_new_with_free_func(
		(GDestroyNotify)imap_response_free);
	g_autoptr(ImapResponse) resp = NULL;

	if (conn->client->config.no_enable || !has_cap(conn, "ENABLE"))
		return TRUE;
	if (has_cap(conn, "QRESYNC"))
		cmd = imap_command_new("ENABLE QRESYNC CONDSTORE");
	else if (has_cap(conn, "CONDSTORE"))
		cmd = imap_command_new("ENABLE CONDSTORE");
	else
		return TRUE;
	resp = conn_sync_command(conn, cmd, untagged, deadline, error);
	if (!resp)
		return FALSE;
	for (guint i = 0; i < untagged->len; i++) {
		const ImapResponse *u = untagged->pdata[i];

		if (!u->keyword || !g_str_equal(u->keyword, "ENABLED"))
			continue;
		for (guint j = 0; j < u->args->len; j++) {
			if (imap_value_is_atom(u->args->pdata[j], "QRESYNC"))
				conn->qresync = TRUE;
			if (imap_value_is_atom(u->args->pdata[j], "CONDSTORE"))
				conn->condstore = TRUE;
		}
	}
	return TRUE;
}

/* TCP, TLS, greeting, STARTTLS, login, capabilities, ENABLE. */
static gboolean conn_setup(ImapConn *conn, GError **error)
{
	const ImapConfig *cfg = &conn->client->config;
	gint64 deadline =
		g_get_monotonic_time() + (gint64)cfg->timeout_ms * 1000;
	g_autoptr(ImapResponse) greeting = NULL;
	gboolean preauth;

	conn_set_state(conn, CONN_CONNECTING);
	conn->qresync = conn->condstore = FALSE;
	g_clear_pointer(&conn->caps, g_hash_table_unref);
	conn->literal_mode = IMAP_LITERAL_SYNC;
	/* A host that does not answer at all should not hold a reader for
	 * the whole command timeout. */
	conn->stream = imap_stream_connect(
		cfg->host, cfg->port, MIN(cfg->timeout_ms, CONNECT_TIMEOUT_MS),
		error);
	if (!conn->stream)
		return FALSE;
	if (cfg->tls == IMAP_TLS_IMPLICIT &&
	    !imap_stream_start_tls(conn->stream, cfg->host, cfg->cafile,
				   cfg->timeout_ms, error))
		return FALSE;

	greeting = conn_sync_read(conn, deadline, error);
	if (!greeting)
		return FALSE;
	if (greeting->kind != IMAP_RESP_UNTAGGED ||
	    (greeting->status != IMAP_STATUS_OK &&
	     greeting->status != IMAP_STATUS_PREAUTH &&
	     greeting->status != IMAP_STATUS_BYE)) {
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL,
			    "%s:%u does not greet like an IMAP server",
			    cfg->host, cfg->port);
		return FALSE;
	}
	if (greeting->status == IMAP_STATUS_BYE) {
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_BYE,
			    "the server refused the connection: %s",
			    greeting->text);
		return FALSE;
	}
	preauth = greeting->status == IMAP_STATUS_PREAUTH;
	conn_take_caps(conn, greeting);

	if (cfg->tls == IMAP_TLS_STARTTLS) {
		if (preauth) {
			/* RFC 3501 forbids STARTTLS after PREAUTH: the
			 * session could only continue in plaintext. */
			g_set_error(error, IMAP_ERROR, IMAP_ERROR_STARTTLS,
				    "the server sent PREAUTH on a connection "
				    "that must use STARTTLS (refusing)");
			return FALSE;
		}
		if (!conn->caps &&
		    !conn_simple(conn, "CAPABILITY", deadline, error))
			return FALSE;
		if (!conn_starttls(conn, deadline, error))
			return FALSE;
	}
	if (!conn->caps && !conn_simple(conn, "CAPABILITY", deadline, error))
		return FALSE;
	if (!preauth && !conn_authenticate(conn, deadline, error))
		return FALSE;
	if (!conn_enable(conn, deadline, error) ||
	    !conn_compress(conn, deadline, error))
		return FALSE;

	g_mutex_lock(&conn->client->lock);
	if (conn->client->caps)
		g_hash_table_unref(conn->client->caps);
	conn->client->caps = g_hash_table_ref(conn->caps);
	conn->client->counters.connects++;
	conn->counters.connects++;
	g_mutex_unlock(&conn->client->lock);
	conn_set_state(conn, CONN_READY);
	return TRUE;
}

/* ---- the pipelined engine ---- */

static gboolean is_select_verb(const ImapCommand *cmd)
{
	return cmd && cmd->selects != NULL;
}

static gboolean inflight_busy(ImapConn *conn)
{
	return !g_queue_is_empty(&conn->inflight);
}

static gboolean select_in_flight(ImapConn *conn)
{
	for (GList *l = conn->inflight.head; l; l = l->next) {
		ImapFlight *f = l->data;

		if (is_select_verb(f->cmd))
			return TRUE;
	}
	return FALSE;
}

typedef enum {
	SEND_NOW,
	SEND_WAIT,
	SEND_SELECT_FIRST, /* insert a SELECT of the command's mailbox */
	SEND_UNSELECT_FIRST, /* leave the selected mailbox first */
	SEND_FAIL, /* fail the command (f->select_error) */
	SEND_FAIL_UIDVALIDITY, /* built for another generation of UIDs */
} SendVerdict;

/*
 * The one rule for what may go on the wire now (compare isync's
 * cmd_sendable()). Everything is sent in queue order; the head waits when:
 *  1. a command in flight still waits for a "+" (synchronizing literal)
 *     or is an IDLE: the server takes what follows as data;
 *  2. the pipeline is full (MAX_IN_FLIGHT, or MAX_WBUF bytes unwritten);
 *  3. it is an IDLE, a SELECT/EXAMINE, or needs a mailbox other than the
 *     selected one: these go only into an empty pipeline, so untagged
 *     EXPUNGE/FETCH data is never attributed to the wrong mailbox;
 *  4. it needs a mailbox while a SELECT is in flight: it must not run
 *     against no mailbox if the SELECT fails, nor against another
 *     UIDVALIDITY than the one it was built for.
 */
static SendVerdict can_send(ImapConn *conn, ImapFlight *f)
{
	ImapCommand *cmd = f->cmd;

	if (conn->cont_flight)
		return SEND_WAIT;
	for (GList *l = conn->inflight.head; l; l = l->next) {
		ImapFlight *x = l->data;

		/* After DONE the server reads commands again (RFC 2177):
		 * they may follow it at once. */
		if (x->cmd->is_idle && !x->done_sent)
			return SEND_WAIT;
	}
	if (g_queue_get_length(&conn->inflight) >= MAX_IN_FLIGHT ||
	    conn->wbuf->len - conn->wpos > MAX_WBUF)
		return SEND_WAIT;
	if (is_select_verb(cmd))
		return inflight_busy(conn) ? SEND_WAIT : SEND_NOW;
	if (cmd->is_idle) {
		if (inflight_busy(conn))
			return SEND_WAIT;
		/* Without this, an IDLE on a mailbox that is gone would
		 * SELECT it again and again. */
		if (f->select_error)
			return SEND_FAIL;
		if (cmd->mailbox &&
		    g_strcmp0(conn->selected, cmd->mailbox) != 0)
			return SEND_SELECT_FIRST;
		return SEND_NOW;
	}
	if (cmd->unselects && conn->selected &&
	    g_str_has_prefix(conn->selected, cmd->unselects) &&
	    (has_cap(conn, "UNSELECT") ||
	     !g_str_has_prefix("INBOX", cmd->unselects))) {
		/* DELETE or RENAME of the selected mailbox (or, by prefix,
		 * of a parent: leaving one too many costs a SELECT): some
		 * servers (Dovecot) disconnect a session whose selected
		 * mailbox goes. Leave it first. Without UNSELECT we leave
		 * by examining INBOX, which cannot help when INBOX itself
		 * matches. */
		return inflight_busy(conn) ? SEND_WAIT : SEND_UNSELECT_FIRST;
	}
	if (!cmd->mailbox)
		return SEND_NOW;
	if (select_in_flight(conn))
		return SEND_WAIT;
	if (f->select_error)
		return SEND_FAIL;
	if (g_strcmp0(conn->selected, cmd->mailbox) != 0)
		return inflight_busy(conn) ? SEND_WAIT : SEND_SELECT_FIRST;
	if (cmd->uidvalidity && cmd->uidvalidity != conn->selected_uidvalidity)
		return SEND_FAIL_UIDVALIDITY;
	return SEND_NOW;
}

static void conn_write(ImapConn *conn, const void *data, gsize len)
{
	if (conn->wpos == conn->wbuf->len) {
		g_byte_array_set_size(conn->wbuf, 0);
		conn->wpos = 0;
	}
	g_byte_array_append(conn->wbuf, data, (guint)len);
}

static void conn_send_part(ImapConn *conn, ImapFlight *f)
{
	gsize len;
	const void *p = g_bytes_get_data(f->parts->pdata[f->next_part++], &len);

	conn_write(conn, p, len);
	conn->cont_flight = f->next_part < f->parts->len ? f : NULL;
}

static void conn_start_flight(ImapConn *conn, ImapFlight *f)
{
	g_autofree char *tag = conn_next_tag(conn);
	gboolean was_idle = !inflight_busy(conn);

	g_strlcpy(f->tag, tag, sizeof(f->tag));
	f->parts = imap_command_render(f->cmd, tag, conn->literal_mode, FALSE);
	f->next_part = 0;
	f->result = result_new();
	trace_command(conn, f->cmd, tag);
	conn_send_part(conn, f);
	g_queue_push_tail(&conn->inflight, f);
	if (was_idle)
		conn->last_activity = g_get_monotonic_time();
	count(conn, 1, was_idle ? 1 : 0, 0, 0);
}

static ImapFlight *conn_internal_select(ImapConn *conn, const char *mailbox)
{
	g_autoptr(ImapCommand) cmd = imap_command_new("SELECT");
	ImapFlight *f;

	/* Raw names come from LIST and contain no NUL: this cannot fail. */
	imap_command_add_mailbox_raw(cmd, mailbox, NULL);
	cmd->selects = g_strdup(mailbox);
	f = conn_flight_new(cmd);
	f->internal = TRUE;
	return f;
}

static ImapFlight *conn_internal_unselect(ImapConn *conn)
{
	g_autoptr(ImapCommand) cmd = NULL;
	ImapFlight *f;

	if (has_cap(conn, "UNSELECT")) {
		cmd = imap_command_new("UNSELECT");
		cmd->deselects = TRUE;
	} else {
		/* Without UNSELECT, selecting another mailbox leaves it
		 * (CLOSE would expunge). */
		cmd = imap_command_new("EXAMINE");
		imap_command_add_mailbox_raw(cmd, "INBOX", NULL);
		cmd->selects = g_strdup("INBOX");
	}
	f = conn_flight_new(cmd);
	f->internal = TRUE;
	return f;
}

static void conn_schedule(ImapConn *conn)
{
	ImapFlight *f;

	while ((f = g_queue_peek_head(&conn->pending))) {
		if (!f->cmd) {
			/* imap_client_connect(): being here means ready. */
			g_queue_pop_head(&conn->pending);
			conn_unload(conn, f);
			imap_flight_finish(f, result_new(), NULL);
			continue;
		}
		switch (can_send(conn, f)) {
		case SEND_WAIT:
			return;
		case SEND_FAIL:
			g_queue_pop_head(&conn->pending);
			conn_fail_flight(conn, f, f->select_error);
			continue;
		case SEND_FAIL_UIDVALIDITY: {
			g_autoptr(GError) e = g_error_new(
				IMAP_ERROR, IMAP_ERROR_UIDVALIDITY,
				"UIDVALIDITY of %s changed (%u, expected %u)",
				f->cmd->mailbox, conn->selected_uidvalidity,
				f->cmd->uidvalidity);

			g_queue_pop_head(&conn->pending);
			conn_fail_flight(conn, f, e);
			continue;
		}
		case SEND_SELECT_FIRST:
			conn_start_flight(conn, conn_internal_select(
							conn, f->cmd->mailbox));
			return;
		case SEND_UNSELECT_FIRST:
			conn_start_flight(conn, conn_internal_unselect(conn));
			return;
		case SEND_NOW:
			g_queue_pop_head(&conn->pending);
			conn_start_flight(conn, f);
			continue;
		}
	}
}

static ImapFlight *conn_find_tag(ImapConn *conn, const char *tag)
{
	for (GList *l = conn->inflight.head; l; l = l->next) {
		ImapFlight *f = l->data;

		if (g_strcmp0(f->tag, tag) == 0)
			return f;
	}
	return NULL;
}

static ImapFlight *conn_select_flight(ImapConn *conn)
{
	for (GList *l = conn->inflight.head; l; l = l->next) {
		ImapFlight *f = l->data;

		if (is_select_verb(f->cmd))
			return f;
	}
	return NULL;
}

static void conn_selected(ImapConn *conn, ImapFlight *f, ImapResult *result)
{
	const ImapResponse *t = result->tagged;

	g_clear_pointer(&conn->selected, g_free);
	conn->selected_uidvalidity = 0;
	g_array_set_size(conn->seqmap, 0);
	if (t->status == IMAP_STATUS_OK) {
		conn->selected = g_strdup(f->cmd->selects);
		conn->selected_uidvalidity = result->select.uidvalidity;
		g_array_set_size(conn->seqmap, result->select.exists);
		if (result->select.exists)
			memset(conn->seqmap->data, 0,
			       sizeof(guint32) * result->select.exists);
		ImapEvent ev = {.kind = IMAP_EVENT_SELECTED,
				.mailbox = conn->selected,
				.uidvalidity = conn->selected_uidvalidity,
				.exists = result->select.exists,
				.uidnext = result->select.uidnext,
				.highestmodseq = result->select.highestmodseq};

		imap_client_emit(conn->client, &ev);
	} else {
		/* The server has now no mailbox selected (RFC 3501 6.3.1);
		 * the commands queued for that mailbox fail with this error.
		 * Those that come later try again: the mailbox may be back. */
		g_autoptr(GError) error = NULL;

		if (imap_result_check(result, &error))
			error = g_error_new(IMAP_ERROR, IMAP_ERROR_NO,
					    "SELECT %s failed",
					    f->cmd->selects);
		for (GList *l = conn->pending.head; l; l = l->next) {
			ImapFlight *p = l->data;

			if (p->cmd && !p->select_error &&
			    g_strcmp0(p->cmd->mailbox, f->cmd->selects) == 0)
				p->select_error = g_error_copy(error);
		}
	}
}

static void conn_complete(ImapConn *conn, ImapFlight *f, ImapResponse *resp)
{
	ImapResult *result = g_steal_pointer(&f->result);

	g_queue_remove(&conn->inflight, f);
	conn->answered = TRUE;
	result->tagged = resp;
	if (is_select_verb(f->cmd)) {
		imap_select_data_update(&result->select, resp);
		conn_selected(conn, f, result);
	} else if (f->cmd->deselects && resp->status == IMAP_STATUS_OK) {
		g_clear_pointer(&conn->selected, g_free);
		conn->selected_uidvalidity = 0;
		g_array_set_size(conn->seqmap, 0);
	}
	result->uidvalidity = conn->selected_uidvalidity;
	if (!f->internal)
		conn_unload(conn, f);
	imap_flight_finish(f, result, NULL);
}

/* Keep the sequence-number map in step; return the UID an EXPUNGE
 * removed (0 if unknown). */
static guint32 conn_track(ImapConn *conn, const ImapResponse *resp)
{
	GArray *map = conn->seqmap;

	if (!resp->has_number || !resp->keyword)
		return 0;
	if (g_str_equal(resp->keyword, "EXISTS")) {
		guint old = map->len;

		if (resp->number > 10000000)
			return 0;
		g_array_set_size(map, resp->number);
		if (resp->number > old)
			memset(&g_array_index(map, guint32, old), 0,
			       sizeof(guint32) * (resp->number - old));
	} else if (g_str_equal(resp->keyword, "EXPUNGE")) {
		guint32 uid = 0;

		if (resp->number >= 1 && resp->number <= map->len) {
			uid = g_array_index(map, guint32, resp->number - 1);
			g_array_remove_index(map, resp->number - 1);
		}
		return uid;
	} else if (g_str_equal(resp->keyword, "FETCH")) {
		g_autoptr(ImapFetchData) fd = imap_decode_fetch(resp, NULL);

		if (fd && (fd->has & IMAP_FETCH_HAS_UID) && resp->number >= 1 &&
		    resp->number <= map->len)
			g_array_index(map, guint32, resp->number - 1) = fd->uid;
	}
	return 0;
}

static void conn_untracked_vanished(ImapConn *conn, const ImapUidSet *uids)
{
	GArray *map = conn->seqmap;

	for (guint i = map->len; i-- > 0;) {
		if (imap_uid_set_contains(uids, g_array_index(map, guint32, i)))
			g_array_remove_index(map, i);
	}
}

/* Data nobody asked for: tell the owner what changed in the mailbox. */
static void conn_event(ImapConn *conn, const ImapResponse *resp,
		       guint32 expunged_uid)
{
	ImapEvent ev = {.mailbox = conn->selected,
			.uidvalidity = conn->selected_uidvalidity};
	const char *kw = resp->keyword;

	if (!kw)
		return;
	if (g_str_equal(kw, "STATUS")) {
		/* NOTIFY reports changes of other mailboxes this way. */
		g_autoptr(ImapStatusData) st = imap_decode_status(resp, NULL);

		if (!st)
			return;
		ev.kind = IMAP_EVENT_MAILBOX_CHANGED;
		ev.mailbox = st->mailbox;
		imap_client_emit(conn->client, &ev);
	} else if (g_str_equal(kw, "LIST")) {
		ev.kind = IMAP_EVENT_MAILBOXES;
		imap_client_emit(conn->client, &ev);
	} else if (g_str_equal(kw, "EXISTS")) {
		ev.kind = IMAP_EVENT_EXISTS;
		ev.exists = resp->number;
		imap_client_emit(conn->client, &ev);
	} else if (g_str_equal(kw, "EXPUNGE")) {
		ev.kind = IMAP_EVENT_EXPUNGED;
		ev.uid = expunged_uid;
		imap_client_emit(conn->client, &ev);
	} else if (g_str_equal(kw, "VANISHED")) {
		gboolean earlier = FALSE;
		g_autoptr(ImapUidSet) set =
			imap_decode_vanished(resp, &earlier, NULL);

		if (!set)
			return;
		ev.kind = IMAP_EVENT_VANISHED;
		ev.uids = set;
		imap_client_emit(conn->client, &ev);
	} else if (g_str_equal(kw, "FETCH")) {
		g_autoptr(ImapFetchData) fd = imap_decode_fetch(resp, NULL);

		if (!fd || !(fd->has & IMAP_FETCH_HAS_UID))
			return;
		ev.kind = IMAP_EVENT_FETCH;
		ev.uid = fd->uid;
		ev.fetch = fd;
		imap_client_emit(conn->client, &ev);
	}
}

static gboolean conn_untagged(ImapConn *conn, ImapResponse *resp,
			      GError **error)
{
	ImapFlight *sel = conn_select_flight(conn);
	ImapFlight *f = NULL;
	guint32 expunged;

	conn_take_caps(conn, resp);
	if (imap_response_is_bye(resp)) {
		g_free(conn->bye_text);
		conn->bye_text = g_strdup(resp->text);
	}
	if (imap_response_is_alert(resp)) {
		ImapEvent ev = {.kind = IMAP_EVENT_ALERT, .text = resp->text};

		g_warning("server alert: %s", resp->text);
		imap_client_emit(conn->client, &ev);
	}
	expunged = conn_track(conn, resp);
	if (resp->keyword && g_str_equal(resp->keyword, "VANISHED")) {
		gboolean earlier = FALSE;
		g_autoptr(ImapUidSet) set =
			imap_decode_vanished(resp, &earlier, NULL);

		if (set && !earlier)
			conn_untracked_vanished(conn, set);
	}

	if (sel) {
		if (imap_select_data_update(&sel->result->select, resp)) {
			if (!sel->internal)
				f = sel;
			else {
				imap_response_free(resp);
				return TRUE;
			}
		} else if (!sel->internal && resp->keyword &&
			   (g_str_equal(resp->keyword, "VANISHED") ||
			    g_str_equal(resp->keyword, "FETCH"))) {
			/* QRESYNC data belongs to the SELECT that asked. */
			f = sel;
		}
	}
	if (!f && resp->keyword && g_str_equal(resp->keyword, "ESEARCH")) {
		g_autoptr(ImapEsearchData) es = imap_decode_esearch(resp, NULL);

		if (es && es->tag)
			f = conn_find_tag(conn, es->tag);
	}
	if (!f && g_strcmp0(resp->keyword, "FETCH") == 0)
		f = conn_route_fetch(conn, fetch_uid(resp));
	else if (!f && resp->keyword && !g_str_equal(resp->keyword, "EXPUNGE"))
		f = conn_route(conn, resp->keyword);
	if (!f && resp->status == IMAP_STATUS_OK && resp->code)
		f = conn_route(conn, "OK"); /* e.g. COPYUID during UID MOVE */
	if (!f) {
		conn_event(conn, resp, expunged);
		imap_response_free(resp);
		return TRUE;
	}
	if (f->cmd->untagged_func &&
	    f->cmd->untagged_func(resp, f->cmd->untagged_data)) {
		imap_response_free(resp);
		return TRUE;
	}
	g_ptr_array_add(f->result->untagged, resp);
	(void)error;
	return TRUE;
}

static gboolean conn_dispatch(ImapConn *conn, ImapResponse *resp,
			      GError **error)
{
	ImapFlight *f;

	switch (resp->kind) {
	case IMAP_RESP_CONTINUATION:
		imap_response_free(resp);
		for (GList *l = conn->inflight.head; l; l = l->next) {
			f = l->data;
			if (f->cmd->is_idle && !f->idling) {
				f->idling = TRUE;
				return TRUE;
			}
		}
		if (!conn->cont_flight) {
			g_set_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL,
				    "the server sent a continuation request "
				    "nobody asked for");
			return FALSE;
		}
		count(conn, 0, 1, 0, 0);
		conn_send_part(conn, conn->cont_flight);
		return TRUE;
	case IMAP_RESP_TAGGED:
		f = conn_find_tag(conn, resp->tag);
		if (!f) {
			g_set_error(
				error, IMAP_ERROR, IMAP_ERROR_PROTOCOL,
				"the server completed a command never sent");
			imap_response_free(resp);
			return FALSE;
		}
		conn_take_caps(conn, resp);
		if (conn->cont_flight == f)
			conn->cont_flight = NULL; /* NO to a literal */
		conn_complete(conn, f, resp);
		return TRUE;
	case IMAP_RESP_UNTAGGED:
		return conn_untagged(conn, resp, error);
	}
	return TRUE;
}

static gboolean conn_flush(ImapConn *conn, GError **error)
{
	while (conn->wpos < conn->wbuf->len) {
		gsize n = 0;
		ImapIoResult r = imap_stream_write(
			conn->stream, conn->wbuf->data + conn->wpos,
			conn->wbuf->len - conn->wpos, &n, error);

		if (r == IMAP_IO_OK) {
			conn->wpos += n;
			count(conn, 0, 0, 0, n);
			continue;
		}
		if (r == IMAP_IO_WOULD_BLOCK)
			return TRUE;
		if (r == IMAP_IO_EOF)
			conn_eof_error(conn, error);
		return FALSE;
	}
	/* Compressed bytes the socket did not take yet. */
	return imap_stream_flush(conn->stream, error) != IMAP_IO_ERROR;
}

static gboolean conn_read_dispatch(ImapConn *conn, GError **error)
{
	for (;;) {
		ImapResponse *resp;
		GError *local = NULL;

		while ((resp = conn_parse(conn, &local))) {
			if (!conn_dispatch(conn, resp, error))
				return FALSE;
		}
		if (local) {
			g_propagate_error(error, local);
			return FALSE;
		}
		ImapIoResult r = conn_read_some(conn, error);

		if (r == IMAP_IO_WOULD_BLOCK)
			return TRUE;
		if (r == IMAP_IO_ERROR)
			return FALSE;
		if (r == IMAP_IO_EOF) {
			conn_eof_error(conn, error);
			return FALSE;
		}
	}
}

/* Take what other threads submitted. */
static gboolean conn_take_submitted(ImapConn *conn)
{
	ImapFlight *f;
	gboolean shutdown;
	guint64 v;

	while (read(conn->wake_fd, &v, sizeof(v)) > 0)
		;
	g_mutex_lock(&conn->client->lock);
	while ((f = g_queue_pop_head(&conn->submitted)))
		g_queue_push_tail(&conn->pending, f);
	shutdown = conn->shutdown;
	g_mutex_unlock(&conn->client->lock);
	return shutdown;
}

/*
 * The server turned this connection away (a limit of connections per user
 * that other clients have used up, say: Dovecot answers NO [LIMIT]) while
 * another connection of the account has logged in: that is no reason to
 * fail what waited for this one. The slot is set aside for a while and
 * its commands go to the connections that work. FALSE when it cannot be
 * (no other connection, or the network is the problem).
 */
static gboolean conn_set_aside(ImapConn *conn, const GError *error)
{
	ImapClient *client = conn->client;
	gint64 now = g_get_monotonic_time();
	gboolean other = FALSE;
	ImapFlight *f;

	if (imap_error_is_network(error) &&
	    !g_error_matches(error, IMAP_ERROR, IMAP_ERROR_BYE))
		return FALSE;
	g_mutex_lock(&client->lock);
	for (guint i = 0; i < client->conns->len; i++) {
		ImapConn *c = client->conns->pdata[i];

		if (c != conn && c->logged_in &&
		    imap_conn_usable_locked(c, now))
			other = TRUE;
	}
	if (!other || client->shutting_down) {
		g_mutex_unlock(&client->lock);
		return FALSE;
	}
	g_debug("conn %u: set aside for %d s: %s", conn->id,
		(int)(SET_ASIDE_US / G_USEC_PER_SEC), error->message);
	conn->aside_until = now + SET_ASIDE_US;
	g_clear_pointer(&conn->route_mailbox, g_free);
	while ((f = g_queue_pop_head(&conn->submitted)))
		g_queue_push_tail(&conn->pending, f);
	while ((f = g_queue_pop_head(&conn->pending))) {
		conn->load--;
		if (f->cmd && f->cmd->bulk)
			conn->bulk_load--;
		imap_conn_enqueue_locked(
			imap_client_pick_locked(client, f->cmd), f);
	}
	g_mutex_unlock(&client->lock);
	return TRUE;
}

static gboolean conn_ensure_connected(ImapConn *conn)
{
	g_autoptr(GError) error = NULL;
	gint64 now = g_get_monotonic_time();

	if (conn->state == CONN_READY)
		return TRUE;
	if (now < conn->next_connect_at && conn->connect_error) {
		/* One failure may be a blip: wait out a short backoff and
		 * try again. After repeated failures the server is known to
		 * be unreachable: fail fast until the next attempt. */
		if (conn->next_connect_at - now > SHORT_BACKOFF_US) {
			if (!conn_set_aside(conn, conn->connect_error))
				conn_fail_pending(conn, conn->connect_error);
			return FALSE;
		}
		g_usleep((gulong)(conn->next_connect_at - now));
		now = g_get_monotonic_time();
	}
	for (guint attempt = 0;; attempt++) {
		if (conn_setup(conn, &error)) {
			g_mutex_lock(&conn->client->lock);
			conn->logged_in = TRUE;
			conn->aside_until = 0;
			g_mutex_unlock(&conn->client->lock);
			conn->connected_at = g_get_monotonic_time();
			conn->answered = FALSE;
			conn->backoff_ms = 0;
			g_clear_error(&conn->connect_error);
			return TRUE;
		}
		g_debug("conn %u: connect failed: %s", conn->id,
			error->message);
		conn_close_stream(conn);
		conn_backoff(conn, error);
		/* A network failure right after the server was reachable
		 * may be a blip (a cut that caught the new connection too):
		 * one more attempt after the first backoff. Not after a
		 * timeout (that would double the wait), and credentials and
		 * certificates don't fix themselves. */
		if (attempt > 0 ||
		    !(g_error_matches(error, IMAP_ERROR,
				      IMAP_ERROR_DISCONNECTED) ||
		      g_error_matches(error, IMAP_ERROR, IMAP_ERROR_CONNECT)))
			break;
		g_usleep(BACKOFF_MIN_MS * 1000);
		g_clear_error(&error);
	}
	/* No retry of the idempotent ones either: the server is out of
	 * reach or refuses us. */
	if (!conn_set_aside(conn, error))
		conn_fail_pending(conn, error);
	return FALSE;
}

/* The IDLE running on @conn that has not been ended, or NULL. */
static ImapFlight *conn_idle_flight(ImapConn *conn)
{
	for (GList *l = conn->inflight.head; l; l = l->next) {
		ImapFlight *f = l->data;

		if (f->idling && !f->done_sent)
			return f;
	}
	return NULL;
}

/* The server owes the answer to DONE from now on: an IDLE may have been
 * silent for longer than the timeout. */
static void conn_end_idle(ImapConn *conn, ImapFlight *f)
{
	conn_write(conn, "DONE\r\n", 6);
	f->done_sent = TRUE;
	conn->last_activity = g_get_monotonic_time();
}

/* Microseconds until the next deadline of @conn, or -1 for none: the
 * timeout while an answer is owed (an IDLE that was ended owes one too),
 * and the keepalive while only an IDLE runs. */
static gint64 conn_next_deadline(ImapConn *conn, gboolean *keepalive)
{
	const ImapConfig *cfg = &conn->client->config;
	gboolean waiting = FALSE;
	gint64 span;

	for (GList *l = conn->inflight.head; l; l = l->next) {
		ImapFlight *f = l->data;

		if (!f->idling || f->done_sent)
			waiting = TRUE;
	}
	*keepalive = !waiting && conn_idle_flight(conn);
	if (waiting)
		span = (gint64)cfg->timeout_ms * 1000;
	else if (*keepalive)
		span = (gint64)cfg->keepalive_ms * 1000;
	else
		return -1;
	return MAX(conn->last_activity + span - g_get_monotonic_time(), 0);
}

static int conn_poll_timeout(ImapConn *conn)
{
	gboolean keepalive;
	gint64 left = conn_next_deadline(conn, &keepalive);

	return left < 0 ? -1 : (int)MIN((left + 999) / 1000, G_MAXINT);
}

/* A deadline passed: an answer that did not come loses the connection; an
 * IDLE that was silent for the keepalive is ended, and the server must
 * answer the DONE within the timeout. A server that forgot us (a laptop
 * that slept, a NAT that dropped the mapping) never answers: that is how
 * a dead IDLE is noticed. The watch starts the next IDLE. */
static void conn_check_deadline(ImapConn *conn)
{
	g_autoptr(GError) error = NULL;
	gboolean keepalive;

	if (!conn->stream || conn_next_deadline(conn, &keepalive) != 0)
		return;
	if (keepalive) {
		ImapFlight *f = conn_idle_flight(conn);

		g_debug("conn %u: IDLE silent for %u s: ending it to check the "
			"server is there",
			conn->id, conn->client->config.keepalive_ms / 1000);
		conn_end_idle(conn, f);
		g_mutex_lock(&conn->client->lock);
		conn->client->counters.keepalives++;
		conn->counters.keepalives++;
		g_mutex_unlock(&conn->client->lock);
		return;
	}
	g_set_error(&error, IMAP_ERROR, IMAP_ERROR_TIMEOUT,
		    "no answer from the server for %u s",
		    conn->client->config.timeout_ms / 1000);
	g_mutex_lock(&conn->client->lock);
	conn->client->counters.timeouts++;
	conn->counters.timeouts++;
	g_mutex_unlock(&conn->client->lock);
	conn_lost(conn, error);
}

static void conn_logout(ImapConn *conn)
{
	g_autoptr(ImapCommand) cmd = imap_command_new("LOGOUT");
	g_autoptr(GError) error = NULL;
	g_autoptr(ImapResponse) resp = NULL;
	gint64 deadline = g_get_monotonic_time() + G_USEC_PER_SEC;

	if (conn->state != CONN_READY || inflight_busy(conn))
		return;
	conn_set_state(conn, CONN_LOGOUT);
	resp = conn_sync_command(conn, cmd, NULL, deadline, &error);
}

static gpointer conn_thread(gpointer data)
{
	ImapConn *conn = data;
	sigset_t pipe;

	/* OpenSSL writes with write(): a peer that hangs up would kill the
	 * process with SIGPIPE. Blocked in this thread, the write fails with
	 * EPIPE instead, and the connection ends with an error. */
	sigemptyset(&pipe);
	sigaddset(&pipe, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe, NULL);
	g_autoptr(GError) cancelled =
		g_error_new(IMAP_ERROR, IMAP_ERROR_CANCELLED,
			    "the connection was shut down");

	for (;;) {
		g_autoptr(GError) error = NULL;
		struct pollfd pfd[2];
		int timeout;

		if (conn_take_submitted(conn))
			break;
		if (!g_queue_is_empty(&conn->pending) &&
		    conn_ensure_connected(conn)) {
			/* New work ends an IDLE. */
			for (GList *l = conn->inflight.head; l; l = l->next) {
				ImapFlight *f = l->data;

				if (f->idling && !f->done_sent)
					conn_end_idle(conn, f);
			}
			conn_schedule(conn);
		}
		if (conn->stream && !conn_flush(conn, &error)) {
			conn_lost(conn, error);
			continue;
		}

		pfd[0] = (struct pollfd){.fd = conn->wake_fd, .events = POLLIN};
		pfd[1] = (struct pollfd){.fd = -1};
		if (conn->stream) {
			pfd[1].fd = imap_stream_fd(conn->stream);
			pfd[1].events =
				imap_stream_poll_events(conn->stream) | POLLIN;
			if (conn->wpos < conn->wbuf->len ||
			    imap_stream_wants_flush(conn->stream))
				pfd[1].events |= POLLOUT;
		}
		timeout = conn->stream ? conn_poll_timeout(conn) : -1;
		if (poll(pfd, 2, timeout) < 0 && errno != EINTR) {
			g_error("poll: %s", g_strerror(errno));
		}
		if (conn->stream && (pfd[1].revents ||
				     imap_stream_has_buffered(conn->stream))) {
			if (!conn_read_dispatch(conn, &error)) {
				conn_lost(conn, error);
				continue;
			}
		}
		conn_check_deadline(conn);
	}

	/* Shutdown: nothing new starts; finish politely if we can. */
	conn_fail_pending(conn, cancelled);
	for (GList *l = conn->inflight.head; l; l = l->next) {
		ImapFlight *f = l->data;

		if (f->idling && !f->done_sent && conn->stream) {
			g_autoptr(GError) e = NULL;

			conn_end_idle(conn, f);
			conn_flush(conn, &e);
		}
	}
	if (!inflight_busy(conn))
		conn_logout(conn);
	if (conn->stream || inflight_busy(conn)) {
		ImapFlight *f;

		imap_parser_reset(conn->parser);
		while ((f = g_queue_pop_head(&conn->inflight)))
			conn_fail_flight(conn, f, cancelled);
		conn_close_stream(conn);
	}
	return NULL;
}

ImapConn *imap_conn_new(ImapClient *client, guint id)
{
	ImapConn *conn = g_new0(ImapConn, 1);
	g_autofree char *name = g_strdup_printf("imap-conn-%u", id);

	conn->client = client;
	conn->id = id;
	conn->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (conn->wake_fd < 0)
		g_error("eventfd: %s", g_strerror(errno));
	g_queue_init(&conn->submitted);
	g_queue_init(&conn->pending);
	g_queue_init(&conn->inflight);
	conn->parser = imap_parser_new(NULL);
	imap_parser_set_sink(conn->parser, &conn_sink, conn);
	conn->rbuf = g_byte_array_new();
	conn->wbuf = g_byte_array_new();
	conn->seqmap = g_array_new(FALSE, TRUE, sizeof(guint32));
	conn->thread = g_thread_new(name, conn_thread, conn);
	return conn;
}

static void conn_wake(ImapConn *conn)
{
	guint64 one = 1;

	if (write(conn->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		g_warning("eventfd write: %s", g_strerror(errno));
}

void imap_conn_enqueue_locked(ImapConn *conn, ImapFlight *flight)
{
	g_queue_push_tail(&conn->submitted, flight);
	conn->load++;
	if (flight->cmd && flight->cmd->bulk)
		conn->bulk_load++;
	if (flight->cmd && flight->cmd->mailbox) {
		g_free(conn->route_mailbox);
		conn->route_mailbox = g_strdup(flight->cmd->mailbox);
	} else if (flight->cmd && flight->cmd->selects) {
		g_free(conn->route_mailbox);
		conn->route_mailbox = g_strdup(flight->cmd->selects);
	}
	conn_wake(conn);
}

ImapCounters imap_conn_counters_locked(const ImapConn *conn)
{
	return conn->counters;
}

guint imap_conn_load_locked(const ImapConn *conn)
{
	return conn->load;
}

guint imap_conn_bulk_load_locked(const ImapConn *conn)
{
	return conn->bulk_load;
}

const char *imap_conn_route_mailbox_locked(const ImapConn *conn)
{
	return conn->route_mailbox;
}

gboolean imap_conn_usable_locked(const ImapConn *conn, gint64 now)
{
	return now >= conn->aside_until;
}

void imap_conn_free(ImapConn *conn)
{
	g_mutex_lock(&conn->client->lock);
	conn->shutdown = TRUE;
	conn_wake(conn);
	g_mutex_unlock(&conn->client->lock);
	g_thread_join(conn->thread);

	ImapFlight *f;
	g_autoptr(GError) cancelled = g_error_new(
		IMAP_ERROR, IMAP_ERROR_CANCELLED, "the client was shut down");

	while ((f = g_queue_pop_head(&conn->submitted)))
		imap_flight_finish(f, NULL, cancelled);
	close(conn->wake_fd);
	imap_parser_free(conn->parser);
	g_byte_array_unref(conn->rbuf);
	g_byte_array_unref(conn->wbuf);
	g_array_unref(conn->seqmap);
	if (conn->caps)
		g_hash_table_unref(conn->caps);
	g_free(conn->route_mailbox);
	g_clear_error(&conn->connect_error);
	g_free(conn);
}

/* ---- command engine metadata ---- */

void imap_command_want(ImapCommand *cmd, const char *keyword)
{
	if (!cmd->want)
		cmd->want = g_ptr_array_new_with_free_func(g_free);
	g_ptr_array_add(cmd->want, g_ascii_strup(keyword, -1));
}

void imap_command_set_untagged(ImapCommand *cmd, ImapUntaggedFunc func,
			       gpointer user_data)
{
	cmd->untagged_func = func;
	cmd->untagged_data = user_data;
}

void imap_command_set_sink(ImapCommand *cmd, const ImapLiteralSink *sink,
			   gpointer user_data)
{
	cmd->has_sink = sink != NULL;
	if (sink)
		cmd->sink = *sink;
	cmd->sink_data = user_data;
}

void imap_command_set_mailbox(ImapCommand *cmd, const char *mailbox,
			      guint32 uidvalidity)
{
	g_free(cmd->mailbox);
	cmd->mailbox = g_strdup(mailbox);
	cmd->uidvalidity = uidvalidity;
}

void imap_command_set_bulk(ImapCommand *cmd)
{
	cmd->bulk = TRUE;
}

void imap_command_set_idempotent(ImapCommand *cmd, gboolean idempotent)
{
	cmd->idempotent = idempotent;
}

void imap_command_set_scope(ImapCommand *cmd, const char *uids)
{
	g_clear_pointer(&cmd->scope, imap_uid_set_free);
	cmd->scope = imap_uid_set_parse(uids, G_MAXUINT32, NULL);
}

void imap_command_engine_clear(ImapCommand *cmd)
{
	g_clear_pointer(&cmd->scope, imap_uid_set_free);
	g_clear_pointer(&cmd->want, g_ptr_array_unref);
	g_clear_pointer(&cmd->mailbox, g_free);
	g_clear_pointer(&cmd->selects, g_free);
	g_clear_pointer(&cmd->unselects, g_free);
}

void imap_result_free(ImapResult *result)
{
	if (!result)
		return;
	g_clear_pointer(&result->tagged, imap_response_free);
	g_clear_pointer(&result->untagged, g_ptr_array_unref);
	imap_select_data_clear(&result->select);
	g_free(result);
}
