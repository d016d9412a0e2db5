/* SPDX-License-Identifier: MIT */
/*
 * The account: a bounded pool of connections, command routing, and the
 * blocking imap_client_run() on top of the asynchronous engine (conn.c).
 */
#include "imap-private.h"

#include <string.h>

static const char *const refused_verbs[] = {
	/* Removes every \Deleted message, other clients' too. */
	"EXPUNGE",
	/* Expunges as a side effect. */
	"CLOSE",
	/* Sequence-number commands: sequence numbers never leave imap/. */
	"FETCH",
	"STORE",
	"COPY",
	"MOVE",
	"SEARCH",
};

static gboolean verb_refused(const char *verb)
{
	for (guint i = 0; i < G_N_ELEMENTS(refused_verbs); i++) {
		if (g_ascii_strcasecmp(verb, refused_verbs[i]) == 0)
			return TRUE;
	}
	return FALSE;
}

ImapClient *imap_client_new(const ImapConfig *config)
{
	ImapClient *client = g_new0(ImapClient, 1);
	ImapConfig *c = &client->config;

	*c = *config;
	c->host = g_strdup(config->host);
	c->cafile = g_strdup(config->cafile);
	c->user = g_strdup(config->user);
	c->secret.command = g_strdup(config->secret.command);
	c->secret.file = g_strdup(config->secret.file);
	c->secret.env = g_strdup(config->secret.env);
	if (!c->port)
		c->port = c->tls == IMAP_TLS_IMPLICIT ? 993 : 143;
	if (!c->timeout_ms)
		c->timeout_ms = 30000;
	if (!c->keepalive_ms)
		c->keepalive_ms = 60000;
	if (!c->max_connections)
		c->max_connections = 3;
	g_mutex_init(&client->lock);
	client->conns = g_ptr_array_new();
	return client;
}

ImapClient *imap_client_new_sibling(ImapClient *client, guint max_connections)
{
	ImapConfig cfg = client->config;
	ImapClient *sib;

	cfg.max_connections = max_connections;
	sib = imap_client_new(&cfg);
	g_mutex_lock(&client->lock);
	if (client->password) {
		/* The same login without asking the password command again
		 * (it may prompt). */
		sib->password = g_new0(ImapSecret, 1);
		sib->password->data = g_strndup(client->password->data,
						client->password->len);
		sib->password->len = client->password->len;
	}
	g_mutex_unlock(&client->lock);
	return sib;
}

void imap_client_free(ImapClient *client)
{
	g_autoptr(GPtrArray) conns = NULL;

	if (!client)
		return;
	g_mutex_lock(&client->lock);
	client->shutting_down = TRUE;
	conns = g_steal_pointer(&client->conns);
	client->conns = g_ptr_array_new();
	g_mutex_unlock(&client->lock);
	for (guint i = 0; i < conns->len; i++)
		imap_conn_free(conns->pdata[i]);
	g_ptr_array_unref(client->conns);
	if (client->caps)
		g_hash_table_unref(client->caps);
	imap_secret_free(client->password);
	imap_config_clear(&client->config);
	g_mutex_clear(&client->lock);
	g_free(client);
}

void imap_client_set_event_handler(ImapClient *client, ImapEventFunc func,
				   gpointer user_data)
{
	g_mutex_lock(&client->lock);
	client->event_func = func;
	client->event_data = user_data;
	g_mutex_unlock(&client->lock);
}

void imap_client_emit(ImapClient *client, const ImapEvent *event)
{
	ImapEventFunc func;
	gpointer data;

	g_mutex_lock(&client->lock);
	func = client->event_func;
	data = client->event_data;
	g_mutex_unlock(&client->lock);
	if (func)
		func(event, data);
}

gboolean imap_client_has_cap(ImapClient *client, const char *cap)
{
	gboolean has;

	g_mutex_lock(&client->lock);
	has = client->caps && g_hash_table_contains(client->caps, cap);
	g_mutex_unlock(&client->lock);
	return has;
}

static int compare_strv(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

GStrv imap_client_dup_caps(ImapClient *client)
{
	g_autoptr(GStrvBuilder) b = g_strv_builder_new();
	GStrv caps;

	g_mutex_lock(&client->lock);
	if (client->caps) {
		GHashTableIter it;
		gpointer key;

		g_hash_table_iter_init(&it, client->caps);
		while (g_hash_table_iter_next(&it, &key, NULL))
			g_strv_builder_add(b, key);
	}
	g_mutex_unlock(&client->lock);
	caps = g_strv_builder_end(b);
	qsort(caps, g_strv_length(caps), sizeof(char *), compare_strv);
	return caps;
}

ImapCounters imap_client_counters(ImapClient *client)
{
	ImapCounters c;

	g_mutex_lock(&client->lock);
	c = client->counters;
	g_mutex_unlock(&client->lock);
	return c;
}

guint imap_client_n_connections(ImapClient *client)
{
	guint n;

	g_mutex_lock(&client->lock);
	n = client->conns->len;
	g_mutex_unlock(&client->lock);
	return n;
}

ImapCounters imap_client_connection_counters(ImapClient *client, guint index)
{
	ImapCounters c = {0};

	g_mutex_lock(&client->lock);
	if (index < client->conns->len)
		c = imap_conn_counters_locked(client->conns->pdata[index]);
	g_mutex_unlock(&client->lock);
	return c;
}

/*
 * Pick a connection: one that will have the command's mailbox selected,
 * else an idle one, else a new one while under the limit, else the least
 * loaded. Commands without a mailbox go to the least loaded. Connections
 * the server turned away (set aside for a while) only when there is no
 * other.
 */
ImapConn *imap_client_pick_locked(ImapClient *client, const ImapCommand *cmd)
{
	const char *mailbox =
		cmd ? (cmd->mailbox ? cmd->mailbox : cmd->selects) : NULL;
	/* What someone waits for (a read, a listing) does not queue behind
	 * prefetched bodies: it takes a connection without bulk work, even
	 * if that costs a SELECT there. */
	gboolean avoid_bulk = cmd && !cmd->bulk;
	gint64 now = g_get_monotonic_time();
	ImapConn *best = NULL;

	if (mailbox) {
		for (guint i = 0; i < client->conns->len; i++) {
			ImapConn *c = client->conns->pdata[i];

			if (g_strcmp0(imap_conn_route_mailbox_locked(c),
				      mailbox) == 0 &&
			    imap_conn_usable_locked(c, now) &&
			    !(avoid_bulk && imap_conn_bulk_load_locked(c)))
				return c;
		}
	}
	for (guint i = 0; i < client->conns->len; i++) {
		ImapConn *c = client->conns->pdata[i];

		if ((avoid_bulk && imap_conn_bulk_load_locked(c)) ||
		    !imap_conn_usable_locked(c, now))
			continue;
		if (!best ||
		    imap_conn_load_locked(c) < imap_conn_load_locked(best))
			best = c;
	}
	if (!best && client->conns->len >= client->config.max_connections) {
		/* Every connection has bulk work or was set aside: the least
		 * loaded, a usable one first. */
		for (guint i = 0; i < client->conns->len; i++) {
			ImapConn *c = client->conns->pdata[i];
			gboolean usable = imap_conn_usable_locked(c, now);
			gboolean best_usable =
				best && imap_conn_usable_locked(best, now);

			if (!best || (usable && !best_usable) ||
			    (usable == best_usable &&
			     imap_conn_load_locked(c) <
				     imap_conn_load_locked(best)))
				best = c;
		}
	}
	if ((!best || (imap_conn_load_locked(best) > 0 && mailbox)) &&
	    client->conns->len < client->config.max_connections) {
		best = imap_conn_new(client, client->conns->len + 1);
		g_ptr_array_add(client->conns, best);
	}
	return best;
}

static void client_submit_flight(ImapClient *client, ImapFlight *f)
{
	g_mutex_lock(&client->lock);
	if (client->shutting_down) {
		g_mutex_unlock(&client->lock);
		g_autoptr(GError) e =
			g_error_new(IMAP_ERROR, IMAP_ERROR_CANCELLED,
				    "the client is shutting down");
		imap_flight_finish(f, NULL, e);
		return;
	}
	imap_conn_enqueue_locked(imap_client_pick_locked(client, f->cmd), f);
	g_mutex_unlock(&client->lock);
}

void imap_client_submit(ImapClient *client, ImapCommand *cmd, ImapDoneFunc done,
			gpointer user_data)
{
	ImapFlight *f = g_new0(ImapFlight, 1);

	f->cmd = imap_command_ref(cmd);
	f->done = done;
	f->user_data = user_data;
	if (verb_refused(cmd->verb)) {
		g_autoptr(GError) e = g_error_new(
			IMAP_ERROR, IMAP_ERROR_INVALID,
			"%s is not offered: use the UID form", cmd->verb);
		imap_flight_finish(f, NULL, e);
		return;
	}
	client_submit_flight(client, f);
}

/* A blocking caller waiting for one flight. Shared with the I/O thread,
 * hence the reference count: whoever lets go last frees it. */
typedef struct {
	gint ref;
	GMutex lock;
	GCond cond;
	gboolean finished;
	ImapResult *result;
	GError *error;
} Waiter;

static void waiter_unref(Waiter *w)
{
	if (!g_atomic_int_dec_and_test(&w->ref))
		return;
	imap_result_free(w->result);
	g_clear_error(&w->error);
	g_mutex_clear(&w->lock);
	g_cond_clear(&w->cond);
	g_free(w);
}

static void waiter_done_cb(ImapResult *result, const GError *error,
			   gpointer user_data)
{
	Waiter *w = user_data;

	g_mutex_lock(&w->lock);
	w->result = result;
	w->error = error ? g_error_copy(error) : NULL;
	w->finished = TRUE;
	g_cond_signal(&w->cond);
	g_mutex_unlock(&w->lock);
	waiter_unref(w);
}

/*
 * Wait for a flight. The engine fails a command once the server has been
 * silent for the timeout, so this normally returns through the callback;
 * the waiter's own deadline (twice the timeout without any byte from the
 * server) is a backstop that keeps a caller from hanging forever.
 */
static ImapResult *client_wait(ImapClient *client, ImapFlight *f, Waiter *w,
			       GError **error)
{
	gint64 patience = (gint64)client->config.timeout_ms * 2000;
	ImapResult *result = NULL;

	client_submit_flight(client, f);
	g_mutex_lock(&w->lock);
	while (!w->finished) {
		gint64 now = g_get_monotonic_time();

		g_cond_wait_until(&w->cond, &w->lock, now + patience);
		if (w->finished)
			break;
		g_mutex_lock(&client->lock);
		gint64 quiet = g_get_monotonic_time() -
			       MAX(client->last_progress, now);
		g_mutex_unlock(&client->lock);
		if (quiet >= patience) {
			g_mutex_unlock(&w->lock);
			g_set_error(error, IMAP_ERROR, IMAP_ERROR_TIMEOUT,
				    "no answer from the server");
			waiter_unref(w);
			return NULL;
		}
	}
	g_mutex_unlock(&w->lock);
	if (w->error) {
		g_propagate_error(error, g_steal_pointer(&w->error));
	} else if (w->result && !imap_result_check(w->result, error)) {
		/* NO / BAD: the error says why. */
	} else {
		result = g_steal_pointer(&w->result);
	}
	waiter_unref(w);
	return result;
}

static Waiter *waiter_new(ImapFlight *f)
{
	Waiter *w = g_new0(Waiter, 1);

	w->ref = 2; /* the caller and the callback */
	g_mutex_init(&w->lock);
	g_cond_init(&w->cond);
	f->done = waiter_done_cb;
	f->user_data = w;
	return w;
}

ImapResult *imap_client_run(ImapClient *client, ImapCommand *cmd,
			    GError **error)
{
	ImapFlight *f;

	if (verb_refused(cmd->verb)) {
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_INVALID,
			    "%s is not offered: use the UID form", cmd->verb);
		return NULL;
	}
	f = g_new0(ImapFlight, 1);
	f->cmd = imap_command_ref(cmd);
	return client_wait(client, f, waiter_new(f), error);
}

gboolean imap_client_connect(ImapClient *client, GError **error)
{
	ImapFlight *f = g_new0(ImapFlight, 1);
	g_autoptr(ImapResult) r = client_wait(client, f, waiter_new(f), error);

	return r != NULL;
}
