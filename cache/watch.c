/* SPDX-License-Identifier: MIT */
/*
 * Seeing other clients' changes: the folder in use is watched with IDLE on
 * a connection of its own (so reads never interrupt it and its traffic is
 * counted apart, as imap.watch.*). New, expunged and re-flagged messages
 * make that folder resync (one QRESYNC SELECT) within a moment, and the
 * resync tells the file system exactly what to invalidate. The other
 * folders are left to the poll (fs/watch.c).
 */
#include "cache-private.h"

#include <string.h>

/* Changes come in bursts: one resync per folder per this interval. */
#define SETTLE_US (200 * 1000)
/* A folder this mount changed (rm, mv, flags, a new message) resyncs only
 * when it has left it alone this long: what the server reports of our own
 * changes is known already, and a resync of a big folder after each rm
 * would cost more than the rm. Other clients' changes in the meantime
 * are seen then, and at the latest OWN_DEFER_MAX_US after the first
 * report. */
#define OWN_SETTLE_US (G_USEC_PER_SEC)
#define OWN_DEFER_MAX_US (5 * G_USEC_PER_SEC)
/* After the watch connection failed, wait this long before trying again. */
#define RETRY_US (5 * G_USEC_PER_SEC)

typedef struct {
	Cache *c;
	guint generation;
} IdleCall;

static void idle_done_cb(ImapResult *result, const GError *error,
			 gpointer user_data);

static void notify_done_cb(ImapResult *result, const GError *error,
			   gpointer user_data)
{
	imap_result_free(result);
}

/* c->lock held. */
static void start_idle_locked(Cache *c)
{
	g_autoptr(ImapCommand) cmd = NULL;
	CacheFolder *f = g_hash_table_lookup(c->folders, &c->watch_id);
	IdleCall *call;

	if (c->watch_stop || !f || !f->raw || !c->watch_client ||
	    !imap_client_has_cap(c->client, "IDLE"))
		return;
	call = g_new0(IdleCall, 1);
	call->c = c;
	call->generation = ++c->idle_generation;
	if (imap_client_has_cap(c->client, "NOTIFY")) {
		/* RFC 5465: while the IDLE runs, the server also reports
		 * changes to every other folder (STATUS) and new, deleted
		 * and renamed folders (LIST). Sent before every IDLE: it
		 * costs little and survives reconnects that way. */
		g_autoptr(ImapCommand) notify_cmd = imap_command_new("NOTIFY");

		imap_command_add_raw(
			notify_cmd,
			"SET (selected (MessageNew MessageExpunge FlagChange)) "
			"(personal (MessageNew MessageExpunge MailboxName))",
			NULL);
		/* After the SELECT: Dovecot forgets it across one. */
		imap_command_set_mailbox(notify_cmd, f->raw, 0);
		imap_client_submit(c->watch_client, notify_cmd, notify_done_cb,
				   NULL);
	}
	cmd = imap_cmd_idle(f->raw);
	c->idle_running++;
	/* A new command ends the IDLE before it (the engine sends DONE):
	 * submitting the next IDLE is how the watch changes folders. */
	imap_client_submit(c->watch_client, cmd, idle_done_cb, call);
}

static void idle_done_cb(ImapResult *result, const GError *error,
			 gpointer user_data)
{
	IdleCall *call = user_data;
	Cache *c = call->c;

	imap_result_free(result);
	g_mutex_lock(&c->lock);
	c->idle_running--;
	if (call->generation == c->idle_generation && !c->watch_stop) {
		/* Ended without being replaced: the connection broke, or
		 * the server ended it. Watch again a little later. */
		c->idle_restart_at =
			g_get_monotonic_time() + (error ? RETRY_US : SETTLE_US);
		/* The folder could not be selected: gone or renamed? */
		if (g_error_matches(error, IMAP_ERROR, IMAP_ERROR_NO) ||
		    g_error_matches(error, IMAP_ERROR, IMAP_ERROR_NONEXISTENT))
			c->folders_dirty = TRUE;
	}
	g_cond_broadcast(&c->watch_cond);
	g_mutex_unlock(&c->lock);
	g_free(call);
}

/* The engine's events: on an I/O thread, no lock held. */
static void event_cb(const ImapEvent *ev, gpointer user_data)
{
	Cache *c = user_data;
	guint64 *id;

	if (ev->kind == IMAP_EVENT_MAILBOXES) {
		/* A folder appeared, went or was renamed elsewhere. */
		g_mutex_lock(&c->lock);
		c->folders_dirty = TRUE;
		g_cond_broadcast(&c->watch_cond);
		g_mutex_unlock(&c->lock);
		return;
	}
	if (!ev->mailbox)
		return;
	switch (ev->kind) {
	case IMAP_EVENT_EXISTS:
	case IMAP_EVENT_EXPUNGED:
	case IMAP_EVENT_VANISHED:
	case IMAP_EVENT_FETCH:
	case IMAP_EVENT_MAILBOX_CHANGED:
		break;
	default:
		return;
	}
	g_mutex_lock(&c->lock);
	id = g_hash_table_lookup(c->folder_ids, ev->mailbox);
	if (id && !g_hash_table_contains(c->dirty, id)) {
		/* Since when: see OWN_DEFER_MAX_US. */
		g_hash_table_insert(c->dirty, g_memdup2(id, sizeof(*id)),
				    g_memdup2(&(gint64){g_get_monotonic_time()},
					      sizeof(gint64)));
		g_cond_broadcast(&c->watch_cond);
	}
	g_mutex_unlock(&c->lock);
}

/* The watch connection's events: a change between the folder's last sync
 * and the watch's SELECT (a new folder watched, a reconnect) would be
 * reported by no one, so a SELECT that finds the folder other than the
 * last sync left it resyncs the folder once. */
static void watch_event_cb(const ImapEvent *ev, gpointer user_data)
{
	Cache *c = user_data;
	ImapEvent changed = *ev;
	gboolean in_step = TRUE;
	guint64 *id;

	if (ev->kind != IMAP_EVENT_SELECTED) {
		event_cb(ev, c);
		return;
	}
	g_mutex_lock(&c->lock);
	id = g_hash_table_lookup(c->folder_ids, ev->mailbox);
	if (id)
		in_step = cache_folder_in_step_locked(c, *id, ev);
	g_mutex_unlock(&c->lock);
	if (!in_step) {
		changed.kind = IMAP_EVENT_MAILBOX_CHANGED;
		event_cb(&changed, c);
	}
}

static gpointer watcher_thread(gpointer data)
{
	Cache *c = data;

	g_mutex_lock(&c->lock);
	while (!c->watch_stop) {
		GHashTableIter it;
		gpointer k, v;
		g_autoptr(GArray) ids = NULL;
		gint64 now = g_get_monotonic_time();

		if (c->idle_restart_at && now >= c->idle_restart_at) {
			c->idle_restart_at = 0;
			start_idle_locked(c);
		}
		if (c->folders_dirty) {
			c->folders_dirty = FALSE;
			g_mutex_unlock(&c->lock);
			/* It reports what changed itself. */
			cache_refresh_folders(c, NULL);
			g_mutex_lock(&c->lock);
			continue;
		}
		if (g_hash_table_size(c->dirty) == 0) {
			if (c->idle_restart_at)
				g_cond_wait_until(&c->watch_cond, &c->lock,
						  c->idle_restart_at);
			else
				g_cond_wait(&c->watch_cond, &c->lock);
			continue;
		}
		/* Let the burst settle: the whole interval, though every
		 * event of the burst wakes us (our own UID MOVEs report
		 * each message they take away). */
		while (!c->watch_stop &&
		       g_cond_wait_until(&c->watch_cond, &c->lock,
					 now + SETTLE_US))
			;
		if (c->watch_stop)
			break;
		ids = g_array_new(FALSE, FALSE, sizeof(guint64));
		now = g_get_monotonic_time();
		gint64 later = G_MAXINT64;

		g_hash_table_iter_init(&it, c->dirty);
		while (g_hash_table_iter_next(&it, &k, &v)) {
			gint64 *own = g_hash_table_lookup(c->own_changes, k);
			gint64 until = *(gint64 *)v + OWN_DEFER_MAX_US;

			if (own && now < *own + OWN_SETTLE_US && now < until) {
				later = MIN(later,
					    MIN(*own + OWN_SETTLE_US, until));
				continue;
			}
			g_array_append_val(ids, *(guint64 *)k);
			g_hash_table_iter_remove(&it);
		}
		if (ids->len == 0) {
			if (c->idle_restart_at)
				later = MIN(later, c->idle_restart_at);
			g_cond_wait_until(&c->watch_cond, &c->lock, later);
			continue;
		}
		g_mutex_unlock(&c->lock);
		for (guint i = 0; i < ids->len; i++) {
			g_autoptr(GError) error = NULL;

			if (!cache_folder_revalidate(
				    c, g_array_index(ids, guint64, i), &error))
				g_debug("resync after a change: %s",
					error->message);
		}
		g_mutex_lock(&c->lock);
	}
	g_mutex_unlock(&c->lock);
	return NULL;
}

void cache_watch_start(Cache *c)
{
	g_cond_init(&c->watch_cond);
	c->dirty = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free,
					 g_free);
	c->own_changes = g_hash_table_new_full(g_int64_hash, g_int64_equal,
					       g_free, g_free);
	imap_client_set_event_handler(c->client, event_cb, c);
	c->watcher = g_thread_new("watcher", watcher_thread, c);
}

void cache_watch_stop(Cache *c)
{
	ImapClient *wc;
	GHashTable *own;

	if (!c->watcher)
		return;
	g_mutex_lock(&c->lock);
	c->watch_stop = TRUE;
	wc = g_steal_pointer(&c->watch_client);
	g_cond_broadcast(&c->watch_cond);
	g_mutex_unlock(&c->lock);
	/* Ends the IDLE (DONE, LOGOUT) and runs its callback. */
	if (wc)
		imap_client_free(wc);
	imap_client_set_event_handler(c->client, NULL, NULL);
	g_thread_join(c->watcher);
	c->watcher = NULL;
	g_hash_table_unref(c->dirty);
	/* The mover may still send a move (cache_movers_stop comes after
	 * us) and note it: take the table away under the lock. */
	g_mutex_lock(&c->lock);
	own = g_steal_pointer(&c->own_changes);
	g_mutex_unlock(&c->lock);
	g_hash_table_unref(own);
	g_cond_clear(&c->watch_cond);
}

void cache_note_own_change(Cache *c, guint64 folder_id)
{
	g_mutex_lock(&c->lock);
	if (c->own_changes)
		g_hash_table_replace(
			c->own_changes,
			g_memdup2(&folder_id, sizeof(folder_id)),
			g_memdup2(&(gint64){g_get_monotonic_time()},
				  sizeof(gint64)));
	g_mutex_unlock(&c->lock);
}

void cache_watch_folder(Cache *c, guint64 folder_id)
{
	g_mutex_lock(&c->lock);
	/* Running, or to be started again by the watcher (after a failure:
	 * a listing must not turn into a SELECT each time). */
	if (c->watch_stop || (c->watch_id == folder_id &&
			      (c->idle_running || c->idle_restart_at))) {
		g_mutex_unlock(&c->lock);
		return;
	}
	c->watch_id = folder_id;
	if (!c->watch_client) {
		c->watch_client = imap_client_new_sibling(c->client, 1);
		imap_client_set_event_handler(c->watch_client, watch_event_cb,
					      c);
	}
	start_idle_locked(c);
	g_mutex_unlock(&c->lock);
}

void cache_append_watch_counters(Cache *c, GString *out)
{
	ImapClient *wc;
	ImapCounters k = {0};

	g_mutex_lock(&c->lock);
	wc = c->watch_client;
	if (wc)
		k = imap_client_counters(wc);
	g_mutex_unlock(&c->lock);
	g_string_append_printf(out,
			       "imap.watch.commands %" G_GUINT64_FORMAT "\n"
			       "imap.watch.bytes_in %" G_GUINT64_FORMAT "\n"
			       "imap.watch.bytes_out %" G_GUINT64_FORMAT "\n"
			       "imap.watch.connects %" G_GUINT64_FORMAT "\n"
			       "imap.watch.timeouts %" G_GUINT64_FORMAT "\n"
			       "imap.watch.keepalives %" G_GUINT64_FORMAT "\n",
			       k.commands, k.bytes_in, k.bytes_out, k.connects,
			       k.timeouts, k.keepalives);
}
