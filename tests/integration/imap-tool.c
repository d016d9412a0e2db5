/* SPDX-License-Identifier: MIT */
/*
 * A test driver for the imap/ engine: runs a script of operations on one
 * ImapClient and prints one JSON line per operation, so that Python tests
 * can compare what the engine saw with an independent client (imaplib).
 *
 *   imap-tool [--port N] [--tls MODE] [--cafile F] [--host H] [--auth M]
 *             [--timeout MS] [--password-file F] OP ARGS [, OP ARGS ...]
 *
 * Folder arguments are UTF-8 names with the server's delimiter. The
 * connection details default to the IMAPFS_TEST_* environment of the
 * Dovecot fixture.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>

#include "imap.h"

static ImapClient *client;

static void json_string(GString *out, const char *s, gssize len)
{
	if (len < 0)
		len = (gssize)strlen(s);
	g_string_append_c(out, '"');
	for (gssize i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '"' || c == '\\')
			g_string_append_printf(out, "\\%c", c);
		else if (c < 0x20 || c == 0x7f)
			g_string_append_printf(out, "\\u%04x", c);
		else
			g_string_append_c(out, (char)c);
	}
	g_string_append_c(out, '"');
}

static int emit_error(const char *op, const GError *error)
{
	g_autoptr(GString) out = g_string_new("{\"op\":");

	json_string(out, op, -1);
	g_string_append_printf(
		out, ",\"error\":{\"code\":%d,\"domain\":", error->code);
	json_string(out, g_quark_to_string(error->domain), -1);
	g_string_append(out, ",\"message\":");
	json_string(out, error->message, -1);
	g_string_append(out, "}}");
	puts(out->str);
	fflush(stdout);
	return 0;
}

static void emit(const char *op, GString *body)
{
	g_autoptr(GString) out = g_string_new("{\"op\":");

	json_string(out, op, -1);
	if (body && body->len)
		g_string_append_printf(out, ",%s", body->str);
	g_string_append_c(out, '}');
	puts(out->str);
	fflush(stdout);
}

static char *raw_name(const char *utf8)
{
	g_autoptr(GError) error = NULL;
	char *raw;

	if (g_ascii_strcasecmp(utf8, "INBOX") == 0)
		return g_strdup("INBOX");
	raw = imap_mutf7_encode(utf8, &error);
	if (!raw)
		g_error("bad folder name %s: %s", utf8, error->message);
	return raw;
}

static void flags_json(GString *out, GStrv flags)
{
	g_string_append_c(out, '[');
	for (guint i = 0; flags && flags[i]; i++) {
		if (i)
			g_string_append_c(out, ',');
		json_string(out, flags[i], -1);
	}
	g_string_append_c(out, ']');
}

static int op_list(GError **error)
{
	g_autoptr(ImapCommand) cmd = imap_cmd_list(client, FALSE);
	g_autoptr(ImapResult) r = imap_client_run(client, cmd, error);
	g_autoptr(GString) out = g_string_new("\"folders\":[");
	gboolean first = TRUE;

	if (!r)
		return -1;
	for (guint i = 0; i < r->untagged->len; i++) {
		g_autoptr(ImapListEntry) e =
			imap_decode_list(r->untagged->pdata[i], error);
		g_autofree char *utf8 = NULL;

		if (!e)
			return -1;
		utf8 = imap_mutf7_decode(e->name, error);
		if (!utf8)
			return -1;
		g_string_append_printf(out, "%s{\"name\":", first ? "" : ",");
		json_string(out, utf8, -1);
		g_string_append(out, ",\"raw\":");
		json_string(out, e->name, -1);
		g_string_append_printf(out, ",\"delim\":\"%c\",\"attrs\":%u}",
				       e->delimiter ? e->delimiter : '?',
				       e->attrs);
		first = FALSE;
	}
	g_string_append_c(out, ']');
	emit("list", out);
	return 0;
}

static int op_meta(const char *folder, GError **error)
{
	g_autofree char *raw = raw_name(folder);
	g_autoptr(ImapCommand) cmd = imap_cmd_uid_fetch(
		raw, 0, "1:*", "UID FLAGS RFC822.SIZE INTERNALDATE", 0);
	ImapCounters before = imap_client_counters(client);
	g_autoptr(ImapResult) r = imap_client_run(client, cmd, error);
	ImapCounters after = imap_client_counters(client);
	g_autoptr(GString) out = g_string_new(NULL);

	if (!r)
		return -1;
	g_string_append_printf(
		out,
		"\"uidvalidity\":%u,\"commands\":%" G_GUINT64_FORMAT
		",\"round_trips\":%" G_GUINT64_FORMAT ",\"messages\":[",
		r->uidvalidity, after.commands - before.commands,
		after.round_trips - before.round_trips);
	for (guint i = 0; i < r->untagged->len; i++) {
		g_autoptr(ImapFetchData) fd =
			imap_decode_fetch(r->untagged->pdata[i], error);

		if (!fd)
			return -1;
		g_string_append_printf(
			out,
			"%s{\"uid\":%u,\"size\":%" G_GUINT64_FORMAT
			",\"date\":%" G_GINT64_FORMAT ",\"flags\":",
			i ? "," : "", fd->uid, fd->rfc822_size,
			fd->internaldate);
		flags_json(out, fd->flags);
		g_string_append_c(out, '}');
	}
	g_string_append_c(out, ']');
	emit("meta", out);
	return 0;
}

/* A sink that streams a body straight into a file. */
typedef struct {
	FILE *fp;
	guint64 written;
	gboolean complete;
	int opens;
} FileSink;

static gpointer file_open(guint64 size, const char *context,
			  const ImapResponse *resp, gpointer user_data)
{
	FileSink *fs = user_data;

	if (g_strcmp0(context, "BODY[]") != 0)
		return NULL;
	/* A retry on a fresh connection starts the body again. */
	rewind(fs->fp);
	if (ftruncate(fileno(fs->fp), 0) < 0)
		return NULL;
	fs->written = 0;
	fs->opens++;
	return fs;
}

static gboolean file_write(gpointer handle, const guint8 *data, gsize len,
			   gpointer user_data, GError **error)
{
	FileSink *fs = handle;

	if (fwrite(data, 1, len, fs->fp) != len) {
		g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_IO,
			    "write failed");
		return FALSE;
	}
	fs->written += len;
	return TRUE;
}

static void file_close(gpointer handle, gboolean complete, gpointer user_data)
{
	((FileSink *)handle)->complete = complete;
}

static const ImapLiteralSink file_sink = {
	.open = file_open,
	.write = file_write,
	.close = file_close,
};

static int op_body(const char *folder, const char *uid, const char *path,
		   GError **error)
{
	g_autofree char *raw = raw_name(folder);
	g_autoptr(ImapCommand) cmd =
		imap_cmd_uid_fetch(raw, 0, uid, "UID BODY.PEEK[]", 0);
	FileSink fs = {.fp = fopen(path, "wb")};
	g_autoptr(ImapResult) r = NULL;
	g_autoptr(GString) out = g_string_new(NULL);

	if (!fs.fp)
		g_error("cannot open %s", path);
	imap_command_set_sink(cmd, &file_sink, &fs);
	r = imap_client_run(client, cmd, error);
	fclose(fs.fp);
	if (!r)
		return -1;
	g_string_append_printf(out,
			       "\"size\":%" G_GUINT64_FORMAT
			       ",\"streamed\":%d,\"complete\":%s",
			       fs.written, fs.opens,
			       fs.complete ? "true" : "false");
	emit("body", out);
	return 0;
}

static int op_append(const char *folder, const char *path, const char *flags,
		     const char *date, GError **error)
{
	g_autofree char *raw = raw_name(folder);
	g_autofree char *data = NULL;
	gsize len;
	g_autoptr(GBytes) msg = NULL;
	g_autoptr(ImapCommand) cmd = NULL;
	g_autoptr(ImapResult) r = NULL;
	g_autoptr(ImapUidSet) uids = NULL;
	guint32 uidvalidity = 0;
	g_autoptr(GString) out = g_string_new(NULL);

	if (!g_file_get_contents(path, &data, &len, error))
		return -1;
	msg = g_bytes_new_take(g_steal_pointer(&data), len);
	cmd = imap_cmd_append(raw, *flags ? flags : NULL,
			      g_ascii_strtoll(date, NULL, 10), msg, error);
	if (!cmd)
		return -1;
	r = imap_client_run(client, cmd, error);
	if (!r)
		return -1;
	if (!imap_decode_appenduid(r->tagged, &uidvalidity, &uids, error)) {
		if (error && *error)
			return -1;
	}
	g_autofree char *set = uids ? imap_uid_set_to_string(uids) : NULL;

	g_string_append_printf(out,
			       "\"uidvalidity\":%u,\"uids\":", uidvalidity);
	json_string(out, set ? set : "", -1);
	emit("append", out);
	return 0;
}

static int op_move(const char *verb, const char *folder, const char *uids,
		   const char *dest, GError **error)
{
	g_autofree char *raw = raw_name(folder);
	g_autofree char *rdest = raw_name(dest);
	g_autoptr(ImapCommand) cmd =
		g_str_equal(verb, "move")
			? imap_cmd_uid_move(raw, 0, uids, rdest, error)
			: imap_cmd_uid_copy(raw, 0, uids, rdest, error);
	g_autoptr(ImapResult) r = NULL;
	g_autoptr(GArray) pairs = NULL;
	guint32 uidvalidity = 0;
	g_autoptr(GString) out = g_string_new(NULL);

	if (!cmd)
		return -1;
	r = imap_client_run(client, cmd, error);
	if (!r)
		return -1;
	/* COPYUID comes on the tagged OK (COPY) or an untagged OK (MOVE). */
	if (!imap_decode_copyuid(r->tagged, &uidvalidity, &pairs, error)) {
		for (guint i = 0; !pairs && i < r->untagged->len; i++)
			imap_decode_copyuid(r->untagged->pdata[i], &uidvalidity,
					    &pairs, NULL);
	}
	g_string_append_printf(out, "\"uidvalidity\":%u,\"pairs\":[",
			       uidvalidity);
	for (guint i = 0; pairs && i + 1 < pairs->len; i += 2)
		g_string_append_printf(out, "%s[%u,%u]", i ? "," : "",
				       g_array_index(pairs, guint32, i),
				       g_array_index(pairs, guint32, i + 1));
	g_string_append_c(out, ']');
	emit(verb, out);
	return 0;
}

static int run_simple(const char *op, ImapCommand *cmd, GError **error)
{
	g_autoptr(ImapResult) r = NULL;

	if (!cmd)
		return -1;
	r = imap_client_run(client, cmd, error);
	imap_command_unref(cmd);
	if (!r)
		return -1;
	emit(op, NULL);
	return 0;
}

static int op_counters(void)
{
	ImapCounters c = imap_client_counters(client);
	g_autoptr(GString) out = g_string_new(NULL);

	g_string_append_printf(out,
			       "\"commands\":%" G_GUINT64_FORMAT
			       ",\"round_trips\":%" G_GUINT64_FORMAT
			       ",\"bytes_in\":%" G_GUINT64_FORMAT
			       ",\"bytes_out\":%" G_GUINT64_FORMAT
			       ",\"connects\":%" G_GUINT64_FORMAT,
			       c.commands, c.round_trips, c.bytes_in,
			       c.bytes_out, c.connects);
	emit("counters", out);
	return 0;
}

/* Many commands at once through imap_client_submit(): they pipeline. With
 * more than one folder, command i goes to folder i modulo their number
 * (commands for other mailboxes make the pool open more connections). */
typedef struct {
	gint left;
	gint failed;
	GMutex lock;
	GCond cond;
} Batch;

static void batch_done_cb(ImapResult *result, const GError *error,
			  gpointer user_data)
{
	Batch *b = user_data;

	g_mutex_lock(&b->lock);
	if (error || !imap_result_check(result, NULL))
		b->failed++;
	b->left--;
	g_cond_signal(&b->cond);
	g_mutex_unlock(&b->lock);
	imap_result_free(result);
}

static int op_pipeline(char **folders, int nfolders, const char *n_str)
{
	int n = atoi(n_str);
	Batch b = {.left = n};
	ImapCounters before = imap_client_counters(client);
	g_autoptr(GString) out = g_string_new(NULL);

	g_mutex_init(&b.lock);
	g_cond_init(&b.cond);
	for (int i = 0; i < n; i++) {
		g_autofree char *raw = raw_name(folders[i % nfolders]);
		g_autofree char *uid = g_strdup_printf("%d", i / nfolders + 1);
		g_autoptr(ImapCommand) cmd =
			imap_cmd_uid_fetch(raw, 0, uid, "UID FLAGS", 0);

		imap_client_submit(client, cmd, batch_done_cb, &b);
	}
	g_mutex_lock(&b.lock);
	while (b.left > 0)
		g_cond_wait(&b.cond, &b.lock);
	g_mutex_unlock(&b.lock);
	ImapCounters after = imap_client_counters(client);

	g_string_append_printf(out,
			       "\"failed\":%d,\"commands\":%" G_GUINT64_FORMAT
			       ",\"round_trips\":%" G_GUINT64_FORMAT,
			       b.failed, after.commands - before.commands,
			       after.round_trips - before.round_trips);
	emit("pipeline", out);
	g_mutex_clear(&b.lock);
	g_cond_clear(&b.cond);
	return 0;
}

static int op_search(const char *folder, const char *criteria, GError **error)
{
	g_autofree char *raw = raw_name(folder);
	g_autoptr(ImapCommand) cmd =
		imap_cmd_uid_search(raw, 0, client, criteria);
	g_autoptr(ImapResult) r = imap_client_run(client, cmd, error);
	g_autoptr(ImapUidSet) all = NULL;
	g_autofree char *set = NULL;
	g_autoptr(GString) out = g_string_new(NULL);
	gboolean esearch = FALSE;

	if (!r)
		return -1;
	for (guint i = 0; i < r->untagged->len; i++) {
		const ImapResponse *u = r->untagged->pdata[i];

		if (g_strcmp0(u->keyword, "ESEARCH") == 0) {
			g_autoptr(ImapEsearchData) es =
				imap_decode_esearch(u, error);

			if (!es)
				return -1;
			esearch = TRUE;
			if (es->all)
				all = g_steal_pointer(&es->all);
		} else if (g_strcmp0(u->keyword, "SEARCH") == 0) {
			all = imap_decode_search(u, error);
			if (!all)
				return -1;
		}
	}
	set = all ? imap_uid_set_to_string(all) : g_strdup("");
	g_string_append_printf(
		out, "\"esearch\":%s,\"uids\":", esearch ? "true" : "false");
	json_string(out, set, -1);
	emit("search", out);
	return 0;
}

static int op_status(const char *folder, GError **error)
{
	g_autofree char *raw = raw_name(folder);
	g_autoptr(ImapCommand) cmd = imap_cmd_status(
		raw, "MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ");
	g_autoptr(ImapResult) r = imap_client_run(client, cmd, error);
	g_autoptr(ImapStatusData) st = NULL;
	g_autoptr(GString) out = g_string_new(NULL);

	if (!r)
		return -1;
	if (r->untagged->len < 1 ||
	    !(st = imap_decode_status(r->untagged->pdata[0], error)))
		return -1;
	g_string_append_printf(
		out,
		"\"messages\":%u,\"uidnext\":%u,"
		"\"uidvalidity\":%u,\"highestmodseq\":%" G_GUINT64_FORMAT,
		st->messages, st->uidnext, st->uidvalidity, st->highestmodseq);
	emit("status", out);
	return 0;
}

/* IDLE on a folder for @ms milliseconds, counting the events; then a NOOP
 * (which has to end the IDLE with DONE first). */
static gint idle_events;

static void idle_event_cb(const ImapEvent *ev, gpointer user_data)
{
	if (ev->kind == IMAP_EVENT_EXISTS || ev->kind == IMAP_EVENT_FETCH ||
	    ev->kind == IMAP_EVENT_EXPUNGED || ev->kind == IMAP_EVENT_VANISHED)
		g_atomic_int_inc(&idle_events);
}

static void idle_done_cb(ImapResult *result, const GError *error,
			 gpointer user_data)
{
	gboolean *ok = user_data;

	*ok = !error && imap_result_check(result, NULL);
	imap_result_free(result);
}

static int op_idle(const char *folder, const char *ms, GError **error)
{
	g_autofree char *raw = raw_name(folder);
	g_autoptr(ImapCommand) sel =
		imap_cmd_select(client, raw, FALSE, 0, 0, NULL);
	g_autoptr(ImapResult) r = imap_client_run(client, sel, error);
	g_autoptr(ImapCommand) idle = imap_cmd_idle(raw);
	g_autoptr(ImapCommand) noop = imap_cmd_simple("NOOP");
	g_autoptr(ImapResult) nr = NULL;
	g_autoptr(GString) out = g_string_new(NULL);
	gboolean idle_ok = FALSE;
	gint64 start;

	if (!r)
		return -1;
	imap_client_set_event_handler(client, idle_event_cb, NULL);
	imap_client_submit(client, idle, idle_done_cb, &idle_ok);
	emit("idling", NULL);
	g_usleep((gulong)atol(ms) * 1000);
	start = g_get_monotonic_time();
	imap_command_set_mailbox(noop, raw, 0);
	nr = imap_client_run(client, noop, error);
	if (!nr)
		return -1;
	g_string_append_printf(
		out,
		"\"events\":%d,\"idle_ok\":%s,\"noop_ms\":%" G_GINT64_FORMAT,
		g_atomic_int_get(&idle_events), idle_ok ? "true" : "false",
		(g_get_monotonic_time() - start) / 1000);
	emit("idle", out);
	return 0;
}

static int run_op(char **a, int n)
{
	g_autoptr(GError) error = NULL;
	const char *op = a[0];
	int rc = -2;

#define NEED(k)                                                    \
	do {                                                       \
		if (n != (k) + 1)                                  \
			g_error("%s takes %d arguments", op, (k)); \
	} while (0)

	if (g_str_equal(op, "connect")) {
		NEED(0);
		rc = imap_client_connect(client, &error) ? 0 : -1;
		if (!rc)
			emit(op, NULL);
	} else if (g_str_equal(op, "caps")) {
		g_auto(GStrv) caps = imap_client_dup_caps(client);
		g_autoptr(GString) out = g_string_new(NULL);

		g_string_append(out, "\"caps\":");
		flags_json(out, caps);
		emit(op, out);
		rc = 0;
	} else if (g_str_equal(op, "list")) {
		rc = op_list(&error);
	} else if (g_str_equal(op, "meta")) {
		NEED(1);
		rc = op_meta(a[1], &error);
	} else if (g_str_equal(op, "body")) {
		NEED(3);
		rc = op_body(a[1], a[2], a[3], &error);
	} else if (g_str_equal(op, "append")) {
		NEED(4);
		rc = op_append(a[1], a[2], a[3], a[4], &error);
	} else if (g_str_equal(op, "move") || g_str_equal(op, "copy")) {
		NEED(3);
		rc = op_move(op, a[1], a[2], a[3], &error);
	} else if (g_str_equal(op, "store")) {
		g_autofree char *raw = NULL;

		NEED(4);
		raw = raw_name(a[1]);
		rc = run_simple(op,
				imap_cmd_uid_store(raw, 0, a[2], a[3], a[4], 0),
				&error);
	} else if (g_str_equal(op, "expunge")) {
		g_autofree char *raw = NULL;

		NEED(2);
		raw = raw_name(a[1]);
		rc = run_simple(op, imap_cmd_uid_expunge(raw, 0, a[2]), &error);
	} else if (g_str_equal(op, "expunge-stale")) {
		/* UID EXPUNGE bound to a UIDVALIDITY that may be old. */
		g_autofree char *raw = NULL;

		NEED(3);
		raw = raw_name(a[1]);
		rc = run_simple(
			op,
			imap_cmd_uid_expunge(raw, (guint32)atol(a[3]), a[2]),
			&error);
	} else if (g_str_equal(op, "create") || g_str_equal(op, "delete")) {
		g_autofree char *raw = NULL;

		NEED(1);
		raw = raw_name(a[1]);
		rc = run_simple(op,
				g_str_equal(op, "create")
					? imap_cmd_create(raw, &error)
					: imap_cmd_delete(raw, &error),
				&error);
	} else if (g_str_equal(op, "rename")) {
		g_autofree char *from = NULL, *to = NULL;

		NEED(2);
		from = raw_name(a[1]);
		to = raw_name(a[2]);
		rc = run_simple(op, imap_cmd_rename(from, to, &error), &error);
	} else if (g_str_equal(op, "raw")) {
		NEED(1);
		rc = run_simple(op, imap_cmd_simple(a[1]), &error);
	} else if (g_str_equal(op, "pipeline")) {
		/* pipeline FOLDER N [FOLDER...] */
		g_autoptr(GPtrArray) folders = g_ptr_array_new();

		if (n < 3)
			g_error("pipeline takes FOLDER N [FOLDER...]");
		g_ptr_array_add(folders, a[1]);
		for (int k = 3; k < n; k++)
			g_ptr_array_add(folders, a[k]);
		rc = op_pipeline((char **)folders->pdata, (int)folders->len,
				 a[2]);
	} else if (g_str_equal(op, "search")) {
		NEED(2);
		rc = op_search(a[1], a[2], &error);
	} else if (g_str_equal(op, "status")) {
		NEED(1);
		rc = op_status(a[1], &error);
	} else if (g_str_equal(op, "idle")) {
		NEED(2);
		rc = op_idle(a[1], a[2], &error);
	} else if (g_str_equal(op, "counters")) {
		rc = op_counters();
	} else if (g_str_equal(op, "sleep")) {
		NEED(1);
		g_usleep((gulong)atol(a[1]) * 1000);
		emit(op, NULL);
		rc = 0;
	} else {
		g_error("unknown operation %s", op);
	}
	if (rc == -1)
		emit_error(op, error);
	return rc;
}

int main(int argc, char **argv)
{
	ImapConfig cfg = {0};
	g_autofree char *tls = NULL, *auth = NULL, *port = NULL;
	g_autofree char *timeout = NULL;
	int i;

	cfg.host = g_strdup(g_getenv("IMAPFS_TEST_HOST"));
	cfg.user = g_strdup(g_getenv("IMAPFS_TEST_USER"));
	cfg.cafile = g_strdup(g_getenv("IMAPFS_TEST_CAFILE"));
	cfg.secret.file = g_strdup(g_getenv("IMAPFS_TEST_PASSWORD_FILE"));
	port = g_strdup(g_getenv("IMAPFS_TEST_PORT_IMAPS"));
	for (i = 1; i + 1 < argc && g_str_has_prefix(argv[i], "--"); i += 2) {
		const char *k = argv[i] + 2, *v = argv[i + 1];

		if (g_str_equal(k, "port"))
			g_free(port), port = g_strdup(v);
		else if (g_str_equal(k, "host"))
			g_free(cfg.host), cfg.host = g_strdup(v);
		else if (g_str_equal(k, "tls"))
			g_free(tls), tls = g_strdup(v);
		else if (g_str_equal(k, "auth"))
			g_free(auth), auth = g_strdup(v);
		else if (g_str_equal(k, "cafile"))
			g_free(cfg.cafile),
				cfg.cafile = *v ? g_strdup(v) : NULL;
		else if (g_str_equal(k, "password-file"))
			g_free(cfg.secret.file), cfg.secret.file = g_strdup(v);
		else if (g_str_equal(k, "user"))
			g_free(cfg.user), cfg.user = g_strdup(v);
		else if (g_str_equal(k, "timeout"))
			g_free(timeout), timeout = g_strdup(v);
		else if (g_str_equal(k, "connections"))
			cfg.max_connections = (guint)atoi(v);
		else if (g_str_equal(k, "compress"))
			cfg.compress = g_str_equal(v, "yes");
		else
			g_error("unknown option %s", argv[i]);
	}
	if (!cfg.host || !port) {
		fprintf(stderr, "imap-tool: run me under "
				"tests/fixture/dovecot.py run\n");
		return 77;
	}
	if (tls && !imap_tls_mode_from_string(tls, &cfg.tls))
		g_error("bad --tls");
	if (auth && !imap_auth_mech_from_string(auth, &cfg.auth))
		g_error("bad --auth");
	cfg.port = (guint16)atoi(port);
	cfg.timeout_ms = timeout ? (guint)atoi(timeout) : 10000;
	if (g_getenv("IMAP_TOOL_DEBUG"))
		g_log_set_debug_enabled(TRUE);
	client = imap_client_new(&cfg);
	imap_config_clear(&cfg);

	while (i < argc) {
		int j = i;

		while (j < argc && strcmp(argv[j], ",") != 0)
			j++;
		if (j > i)
			run_op(argv + i, j - i);
		i = j + 1;
	}
	imap_client_free(client);
	return 0;
}
