/* SPDX-License-Identifier: MIT */
/*
 * Changing mail: move, delete, flags, append, and folders. Each change is
 * made on the server first and then in the index, so the two never
 * disagree; and each is ordered so that no message is ever in neither
 * place (DESIGN.md section 4):
 *  - a move is UID MOVE, or UID COPY then \Deleted + UID EXPUNGE of exactly
 *    that UID; without UIDPLUS the source is only flagged \Deleted and
 *    hidden here, never expunged (a bare EXPUNGE would take other
 *    clients' \Deleted mail with it);
 *  - a delete is \Deleted + UID EXPUNGE of that UID;
 *  - a replaced message (an editor's save) is appended before the old one
 *    is expunged.
 */
#include "cache-private.h"

#include <errno.h>
#include <stdlib.h>
#include <glib/gstdio.h>
#include <string.h>

static gboolean readonly_check(Cache *c, GError **error)
{
	if (c->cfg.readonly) {
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_READONLY,
			    "read-only mount");
		return FALSE;
	}
	return TRUE;
}

static void notify(Cache *c, guint64 folder_id, const char *removed,
		   gboolean added)
{
	CacheChangeFunc func;
	gpointer data;
	g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);

	g_mutex_lock(&c->lock);
	func = c->change_func;
	data = c->change_data;
	g_mutex_unlock(&c->lock);
	if (removed)
		g_ptr_array_add(names, g_strdup(removed));
	if (func)
		func(folder_id, names, added, data);
}

/* Replace the folder's snapshot with one without @gone and with @add. */
static void snapshot_change_locked(Cache *c, guint64 folder_id,
				   const CacheMessage *gone, CacheMessage *add)
{
	FolderState *st = g_hash_table_lookup(c->states, &folder_id);

	if (gone)
		g_hash_table_remove(c->messages, &gone->id);
	if (!st || !st->msgs)
		return;
	cache_snapshot_edit_locked(c, st, gone, add);
}

/* The highest UID the folder's snapshots have had (0 for none). */
static guint32 max_uid_locked(Cache *c, guint64 folder_id)
{
	FolderState *st = g_hash_table_lookup(c->states, &folder_id);

	return st && st->msgs ? st->max_uid : 0;
}

/*
 * The destination learns a message it has not synced yet, by the UID the
 * server gave (APPENDUID, COPYUID): only if its snapshot is of the same
 * UIDVALIDITY, and only if the UID is new. A new message's UID is above
 * every UID the folder had (RFC 3501 2.3.1.1): one at or below @above is
 * the server's mistake, and taking it would put these bytes under another
 * message's name, for good. NULL then: the next sync finds the message.
 */
static CacheMessage *add_known_locked(Cache *c, guint64 folder_id,
				      guint32 uidvalidity, guint32 above,
				      Meta *meta)
{
	FolderState *st = g_hash_table_lookup(c->states, &folder_id);
	CacheMessage *m;

	if (!st || !st->msgs || st->uidvalidity != uidvalidity)
		return NULL;
	if (meta->uid <= above) {
		g_warning("the server named UID %u for a new message, but "
			  "the folder already had UIDs up to %u; the next "
			  "sync finds the message instead",
			  meta->uid, above);
		return NULL;
	}
	m = cache_insert_message_locked(c, folder_id, uidvalidity, meta);
	snapshot_change_locked(c, folder_id, NULL, m);
	return m;
}

/* Run a command that changes @folder (and @other, 0 for none). What the
 * server reports of the change is ours: the watcher does not resync the
 * folders for it (see OWN_SETTLE_US in watch.c). */
static ImapResult *run_change(Cache *c, ImapCommand *cmd, guint64 folder,
			      guint64 other, GError **error)
{
	ImapResult *r;

	cache_note_own_change(c, folder);
	if (other)
		cache_note_own_change(c, other);
	r = imap_client_run(c->client, cmd, error);
	cache_note_own_change(c, folder);
	if (other)
		cache_note_own_change(c, other);
	return r;
}

static char *raw_of(Cache *c, guint64 folder_id, GError **error)
{
	g_autoptr(CacheFolder) f = cache_folder_get(c, folder_id);

	if (!f || !f->raw || !f->selectable) {
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_NOT_FOUND,
			    "no such folder");
		return NULL;
	}
	return g_strdup(f->raw);
}

/* The sync locks of one or two folders, taken in ascending id order: no
 * resync of them interleaves with a change being made (it would read the
 * index before the change and the server after it, or the other way). */
typedef struct {
	FolderState *a, *b;
} FolderLocks;

static void lock_folders(Cache *c, guint64 x, guint64 y, FolderLocks *l)
{
	guint64 lo = MIN(x, y), hi = MAX(x, y);

	g_mutex_lock(&c->lock);
	l->a = cache_state_get_locked(c, lo);
	l->b = hi != lo ? cache_state_get_locked(c, hi) : NULL;
	g_mutex_unlock(&c->lock);
	g_mutex_lock(&l->a->sync_lock);
	if (l->b)
		g_mutex_lock(&l->b->sync_lock);
}

static void unlock_folders(FolderLocks *l)
{
	if (l->b)
		g_mutex_unlock(&l->b->sync_lock);
	g_mutex_unlock(&l->a->sync_lock);
}

static GBytes *subject_of_row(Cache *c, guint64 id)
{
	sqlite3_stmt *st = NULL;
	GBytes *out = NULL;

	sqlite3_prepare_v2(c->db, "SELECT subject FROM messages WHERE id = ?1",
			   -1, &st, NULL);
	sqlite3_bind_int64(st, 1, (sqlite3_int64)id);
	if (sqlite3_step(st) == SQLITE_ROW)
		out = g_bytes_new(sqlite3_column_blob(st, 0),
				  (gsize)sqlite3_column_bytes(st, 0));
	sqlite3_finalize(st);
	return out;
}

/*
 * The COPYUID of a copy or move, decoded once: source UID -> destination
 * UID. A destination UID named for two sources is left out for both (the
 * server is wrong about one of them, and we cannot tell which).
 */
static GHashTable *copyuid_map(const ImapResult *r, guint32 *uidvalidity_out)
{
	g_autoptr(GArray) pairs = NULL;
	g_autoptr(GHashTable) named = g_hash_table_new(NULL, NULL);
	GHashTable *map = g_hash_table_new(NULL, NULL);

	if (!imap_decode_copyuid(r->tagged, uidvalidity_out, &pairs, NULL)) {
		for (guint i = 0; !pairs && i < r->untagged->len; i++)
			imap_decode_copyuid(r->untagged->pdata[i],
					    uidvalidity_out, &pairs, NULL);
	}
	for (guint i = 0; pairs && i + 1 < pairs->len; i += 2) {
		gpointer dst =
			GUINT_TO_POINTER(g_array_index(pairs, guint32, i + 1));

		if (!g_hash_table_add(named, dst))
			g_hash_table_insert(named, dst, NULL); /* twice */
	}
	for (guint i = 0; pairs && i + 1 < pairs->len; i += 2) {
		gpointer dst =
			GUINT_TO_POINTER(g_array_index(pairs, guint32, i + 1));

		if (g_hash_table_lookup(named, dst))
			g_hash_table_insert(map,
					    GUINT_TO_POINTER(g_array_index(
						    pairs, guint32, i)),
					    dst);
	}
	return map;
}

/* Remove @m here after it left the server (or was hidden). */
static void forget(Cache *c, CacheMessage *m, gboolean hide_only)
{
	g_mutex_lock(&c->lock);
	if (hide_only) {
		sqlite3_stmt *st = NULL;

		sqlite3_prepare_v2(
			c->db, "UPDATE messages SET hidden = 1 WHERE id = ?1",
			-1, &st, NULL);
		sqlite3_bind_int64(st, 1, (sqlite3_int64)m->id);
		sqlite3_step(st);
		sqlite3_finalize(st);
	} else {
		cache_delete_message_locked(c, m);
	}
	snapshot_change_locked(c, m->folder_id, m, NULL);
	g_mutex_unlock(&c->lock);
}

/* \Deleted + UID EXPUNGE of exactly this UID, pipelined: one round trip.
 * Without UIDPLUS there is no safe expunge: the message stays flagged and
 * is hidden here (*hidden_out). */
static gboolean expunge_one(Cache *c, const char *raw, const CacheMessage *m,
			    gboolean *hidden_out, GError **error)
{
	char set[16];
	ImapCommand *cmds[2];
	guint n = 0;
	gboolean ok;

	g_snprintf(set, sizeof(set), "%u", m->uid);
	cmds[n++] = imap_cmd_uid_store(raw, m->uidvalidity, set,
				       "+FLAGS.SILENT", "\\Deleted", 0);
	*hidden_out = !imap_client_has_cap(c->client, "UIDPLUS");
	if (!*hidden_out)
		cmds[n++] = imap_cmd_uid_expunge(raw, m->uidvalidity, set);
	ok = cache_run_batch(c, cmds, n, error);
	for (guint i = 0; i < n; i++)
		imap_command_unref(cmds[i]);
	return ok;
}

/* \Deleted + UID EXPUNGE of exactly these UIDs, pipelined. */
static gboolean expunge_set(Cache *c, const char *raw, guint32 uidvalidity,
			    const char *set, gboolean *hidden_out,
			    GError **error)
{
	ImapCommand *cmds[2];
	guint n = 0;
	gboolean ok;

	cmds[n++] = imap_cmd_uid_store(raw, uidvalidity, set, "+FLAGS.SILENT",
				       "\\Deleted", 0);
	*hidden_out = !imap_client_has_cap(c->client, "UIDPLUS");
	if (!*hidden_out)
		cmds[n++] = imap_cmd_uid_expunge(raw, uidvalidity, set);
	ok = cache_run_batch(c, cmds, n, error);
	for (guint i = 0; i < n; i++)
		imap_command_unref(cmds[i]);
	return ok;
}

/*
 * Move messages of one folder (one UIDVALIDITY) to @dest_id with as few
 * commands as the server allows: UID MOVE of the whole set, or UID COPY
 * and then \Deleted + UID EXPUNGE of that set. The source is only touched
 * after the copy exists. @moved_out (may be NULL) gets the messages as the
 * destination knows them.
 */
static gboolean move_set_locked(Cache *c, GPtrArray *msgs, guint64 dest_id,
				const char *src, const char *dst,
				GPtrArray *moved_out, GError **error);

static gboolean move_set(Cache *c, GPtrArray *msgs, guint64 dest_id,
			 GPtrArray *moved_out, GError **error)
{
	CacheMessage *first = msgs->pdata[0];
	g_autofree char *src = NULL;
	g_autofree char *dst = NULL;
	FolderLocks locks;
	gboolean ok;

	if (!(src = raw_of(c, first->folder_id, error)) ||
	    !(dst = raw_of(c, dest_id, error)))
		return FALSE;
	lock_folders(c, first->folder_id, dest_id, &locks);
	ok = move_set_locked(c, msgs, dest_id, src, dst, moved_out, error);
	unlock_folders(&locks);
	return ok;
}

static gboolean move_set_locked(Cache *c, GPtrArray *msgs, guint64 dest_id,
				const char *src, const char *dst,
				GPtrArray *moved_out, GError **error)
{
	CacheMessage *first = msgs->pdata[0];
	g_autoptr(ImapUidSet) uids = imap_uid_set_new();
	g_autofree char *set = NULL;
	g_autoptr(ImapCommand) cmd = NULL;
	g_autoptr(ImapResult) r = NULL;
	g_autoptr(GPtrArray) subjects =
		g_ptr_array_new_with_free_func((GDestroyNotify)g_bytes_unref);
	gboolean use_move = imap_client_has_cap(c->client, "MOVE");
	gboolean hidden = FALSE;

	for (guint i = 0; i < msgs->len; i++) {
		CacheMessage *m = msgs->pdata[i];

		imap_uid_set_add(uids, m->uid, m->uid);
	}
	set = imap_uid_set_to_string(uids);
	cmd = use_move ? imap_cmd_uid_move(src, first->uidvalidity, set, dst,
					   error)
		       : imap_cmd_uid_copy(src, first->uidvalidity, set, dst,
					   error);
	if (!cmd)
		return FALSE;
	r = run_change(c, cmd, first->folder_id, dest_id, error);
	if (!r)
		return FALSE; /* nothing happened, or only a copy did */

	g_mutex_lock(&c->lock);
	for (guint i = 0; i < msgs->len; i++) /* before the rows go */
		g_ptr_array_add(
			subjects,
			subject_of_row(c,
				       ((CacheMessage *)msgs->pdata[i])->id));
	g_mutex_unlock(&c->lock);
	if (!use_move) {
		/* The copies are there: only now may the originals go. */
		g_autoptr(GError) local = NULL;

		if (!expunge_set(c, src, first->uidvalidity, set, &hidden,
				 &local)) {
			/* Both places hold them; the next sync shows that. */
			g_warning("copied %u message(s) but could not remove "
				  "the originals: %s",
				  msgs->len, local->message);
			g_propagate_error(error, g_steal_pointer(&local));
			cache_folder_mark_stale(c, dest_id);
			return FALSE;
		}
	}
	/* The UIDs the destination had before: the copies' are above. */
	guint32 new_uv = 0;
	g_autoptr(GHashTable) copies = copyuid_map(r, &new_uv);

	g_mutex_lock(&c->lock);
	guint32 above = max_uid_locked(c, dest_id);
	g_mutex_unlock(&c->lock);
	for (guint i = 0; i < msgs->len; i++) {
		CacheMessage *m = msgs->pdata[i];
		guint32 new_uid = GPOINTER_TO_UINT(
			g_hash_table_lookup(copies, GUINT_TO_POINTER(m->uid)));
		CacheMessage *moved = NULL;

		forget(c, m, hidden);
		/* The index learns the copy, and its body moves along. */
		if (new_uid) {
			Meta meta = {.uid = new_uid,
				     .has = IMAP_FETCH_HAS_SIZE |
					    IMAP_FETCH_HAS_INTERNALDATE,
				     .flags = m->flags,
				     .size = m->size,
				     .date = m->internaldate,
				     .tz = m->tz,
				     .subject = subjects->pdata[i]};
			g_autofree char *old_path = cache_body_path(c, m);

			g_mutex_lock(&c->lock);
			moved = add_known_locked(c, dest_id, new_uv, above,
						 &meta);
			g_mutex_unlock(&c->lock);
			if (moved) {
				g_autofree char *new_path =
					cache_body_path(c, moved);
				g_autofree char *dir =
					g_path_get_dirname(new_path);

				if (g_mkdir_with_parents(dir, 0700) == 0)
					(void)rename(old_path, new_path);
			}
		}
		/* Not learnt: the next sync of the destination finds it. */
		if (!moved)
			cache_folder_mark_stale(c, dest_id);
		if (moved_out && moved)
			g_ptr_array_add(moved_out, moved);
		else if (moved)
			cache_message_unref(moved);
		notify(c, m->folder_id, m->name, FALSE);
	}
	notify(c, dest_id, NULL, TRUE);
	return TRUE;
}

CacheMessage *cache_message_move(Cache *c, guint64 message_id, guint64 dest_id,
				 GError **error)
{
	g_autoptr(CacheMessage) m = NULL;
	g_autoptr(GPtrArray) one = g_ptr_array_new_with_free_func(
		(GDestroyNotify)cache_message_unref);
	g_autoptr(GPtrArray) moved = g_ptr_array_new_with_free_func(
		(GDestroyNotify)cache_message_unref);

	if (!readonly_check(c, error))
		return NULL;
	cache_flush_moves(c);
	m = cache_message_get(c, message_id);
	if (!m) {
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_NOT_FOUND,
			    "no such message");
		return NULL;
	}
	g_ptr_array_add(one, cache_message_ref(m));
	if (!move_set(c, one, dest_id, moved, error))
		return NULL;
	return moved->len ? cache_message_ref(moved->pdata[0]) : NULL;
}

/* ---- moves in batches ----
 *
 * "mv a.eml b.eml ... Archive/" renames one file at a time. Each rename is
 * checked, the message leaves the source's listing, and the rename is
 * answered while the UID MOVE goes out at once; renames that arrive while
 * it is on the wire go out together in the next one (group commit). A
 * listing of either folder waits for what is pending. A move cut off by
 * the network is tried again (the UIDs are bound to their UIDVALIDITY, and
 * a UID MOVE of UIDs already gone does nothing); a move the server refuses
 * is logged, and both folders resync at their next look: mail is never
 * lost, at worst it stays where it was.
 */

typedef struct {
	guint64 src, dst;
	GPtrArray *msgs; /* CacheMessage * */
	guint retries;
	gint64 not_before; /* a retry: the mover waits until then */
} MoveBatch;

static void batch_free(MoveBatch *b)
{
	g_ptr_array_unref(b->msgs);
	g_free(b);
}

static void send_move_batch(Cache *c, MoveBatch *b);

/* Counted while it runs: cache.moves_pending tells when all are done. */
static void run_move_batch(Cache *c, MoveBatch *b)
{
	g_mutex_lock(&c->lock);
	c->moves_running++;
	g_mutex_unlock(&c->lock);
	send_move_batch(c, b);
	g_mutex_lock(&c->lock);
	c->moves_running--;
	g_mutex_unlock(&c->lock);
}

static void send_move_batch(Cache *c, MoveBatch *b)
{
	g_autoptr(GError) error = NULL;

	if (move_set(c, b->msgs, b->dst, NULL, &error))
		return;
	if (imap_error_is_network(error) && b->retries < CACHE_MOVE_RETRIES) {
		/* The answer may be lost, not the move: UID MOVE of UIDs
		 * that already left is harmless, so try again once the
		 * connection is back. Queued at once, so a listing of
		 * either folder (which runs what is queued) waits for it. */
		MoveBatch *again = g_new0(MoveBatch, 1);

		again->src = b->src;
		again->dst = b->dst;
		again->msgs = g_ptr_array_ref(b->msgs);
		again->retries = b->retries + 1;
		again->not_before = g_get_monotonic_time() + G_USEC_PER_SEC / 2;
		g_mutex_lock(&c->lock);
		g_ptr_array_insert(c->move_batches, 0, again);
		g_mutex_unlock(&c->lock);
		return;
	}
	/* Refused, or the server stayed away: whatever happened, both
	 * folders show what the server has at their next look. */
	g_warning("moving %u message(s) failed: %s", b->msgs->len,
		  error->message);
	cache_folder_mark_stale(c, b->src);
	cache_folder_mark_stale(c, b->dst);
	notify(c, b->src, NULL, TRUE);
	notify(c, b->dst, NULL, TRUE);
}

/* Take the batches to send: all, or those touching @folder_id. */
static GPtrArray *take_batches(Cache *c, guint64 folder_id, gboolean all)
{
	GPtrArray *out =
		g_ptr_array_new_with_free_func((GDestroyNotify)batch_free);

	g_mutex_lock(&c->lock);
	for (guint i = 0; i < c->move_batches->len; i++) {
		MoveBatch *b = c->move_batches->pdata[i];

		if (all || (folder_id &&
			    (b->src == folder_id || b->dst == folder_id))) {
			g_ptr_array_add(out, b);
			g_ptr_array_remove_index(c->move_batches, i--);
		}
	}
	g_mutex_unlock(&c->lock);
	return out;
}

void cache_flush_moves_of(Cache *c, guint64 folder_id)
{
	g_autoptr(GPtrArray) todo = take_batches(c, folder_id, folder_id == 0);

	for (guint i = 0; i < todo->len; i++)
		run_move_batch(c, todo->pdata[i]);
}

void cache_flush_moves(Cache *c)
{
	cache_flush_moves_of(c, 0);
}

/* Sends what is waiting at once; renames arriving while a UID MOVE is on
 * the wire wait for it and go out together in the next one. */
static gpointer mover_thread(gpointer data)
{
	Cache *c = data;

	g_mutex_lock(&c->lock);
	while (!c->mover_stop) {
		MoveBatch *next;

		if (c->move_batches->len == 0) {
			g_cond_wait(&c->mover_cond, &c->lock);
			continue;
		}
		/* A retry waits a moment (listings run it sooner). */
		next = c->move_batches->pdata[0];
		if (next->not_before > g_get_monotonic_time()) {
			g_cond_wait_until(&c->mover_cond, &c->lock,
					  next->not_before);
			continue;
		}
		g_mutex_unlock(&c->lock);
		g_autoptr(GPtrArray) todo = take_batches(c, 0, TRUE);

		for (guint i = 0; i < todo->len; i++)
			run_move_batch(c, todo->pdata[i]);
		g_mutex_lock(&c->lock);
	}
	g_mutex_unlock(&c->lock);
	return NULL;
}

void cache_movers_start(Cache *c)
{
	c->move_batches = g_ptr_array_new();
	g_cond_init(&c->mover_cond);
	c->mover = g_thread_new("mover", mover_thread, c);
}

void cache_movers_stop(Cache *c)
{
	if (!c->mover)
		return;
	g_mutex_lock(&c->lock);
	c->mover_stop = TRUE;
	g_cond_signal(&c->mover_cond);
	g_mutex_unlock(&c->lock);
	g_thread_join(c->mover);
	c->mover = NULL;
	cache_flush_moves(c);
	g_ptr_array_unref(c->move_batches);
	g_cond_clear(&c->mover_cond);
}

gboolean cache_message_move_later(Cache *c, guint64 message_id, guint64 dest_id,
				  GError **error)
{
	g_autoptr(CacheMessage) m = cache_message_get(c, message_id);
	g_autoptr(CacheFolder) d = cache_folder_get(c, dest_id);
	MoveBatch *b = NULL;

	if (!readonly_check(c, error))
		return FALSE;
	if (!m || !d || !d->selectable || !d->raw) {
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_NOT_FOUND,
			    m ? "no such folder" : "no such message");
		return FALSE;
	}
	g_mutex_lock(&c->lock);
	for (guint i = 0; i < c->move_batches->len; i++) {
		MoveBatch *x = c->move_batches->pdata[i];
		CacheMessage *f = x->msgs->pdata[0];

		if (x->src == m->folder_id && x->dst == dest_id &&
		    f->uidvalidity == m->uidvalidity &&
		    x->msgs->len < CACHE_MOVE_BATCH_MAX)
			b = x;
	}
	if (!b) {
		b = g_new0(MoveBatch, 1);
		b->src = m->folder_id;
		b->dst = dest_id;
		b->msgs = g_ptr_array_new_with_free_func(
			(GDestroyNotify)cache_message_unref);
		g_ptr_array_add(c->move_batches, b);
	}
	g_ptr_array_add(b->msgs, cache_message_ref(m));
	/* Gone from the source's listing now; back if the move fails. */
	snapshot_change_locked(c, m->folder_id, m, NULL);
	g_cond_signal(&c->mover_cond);
	g_mutex_unlock(&c->lock);
	return TRUE;
}

/* The folder with this special-use attribute, or 0. */
guint64 cache_special_folder(Cache *c, guint32 attr)
{
	GHashTableIter it;
	gpointer v;
	guint64 id = 0;

	g_mutex_lock(&c->lock);
	g_hash_table_iter_init(&it, c->folders);
	while (g_hash_table_iter_next(&it, NULL, &v)) {
		CacheFolder *f = v;

		if ((f->attrs & attr) && f->selectable)
			id = f->id;
	}
	g_mutex_unlock(&c->lock);
	return id;
}

gboolean cache_message_delete(Cache *c, guint64 message_id, gboolean to_trash,
			      GError **error)
{
	FolderLocks locks;
	gboolean ok;
	g_autoptr(CacheMessage) m = cache_message_get(c, message_id);
	g_autofree char *raw = NULL;
	gboolean hidden = FALSE;

	if (!readonly_check(c, error))
		return FALSE;
	if (!m) {
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_NOT_FOUND,
			    "no such message");
		return FALSE;
	}
	if (to_trash) {
		guint64 trash = cache_special_folder(c, IMAP_MBOX_TRASH);

		if (trash && trash != m->folder_id) {
			g_autoptr(GError) local = NULL;
			g_autoptr(CacheMessage) moved = cache_message_move(
				c, message_id, trash, &local);

			if (local) {
				g_propagate_error(error,
						  g_steal_pointer(&local));
				return FALSE;
			}
			return TRUE;
		}
	}
	if (!(raw = raw_of(c, m->folder_id, error)))
		return FALSE;
	lock_folders(c, m->folder_id, m->folder_id, &locks);
	cache_note_own_change(c, m->folder_id);
	ok = expunge_one(c, raw, m, &hidden, error);
	cache_note_own_change(c, m->folder_id);
	if (ok)
		forget(c, m, hidden);
	unlock_folders(&locks);
	if (ok)
		notify(c, m->folder_id, m->name, FALSE);
	return ok;
}

/* Flags as the user writes them: atoms separated by spaces, system flags
 * with a backslash. \Recent cannot be set by anyone. */
static gboolean flags_valid(const char *flags, GError **error)
{
	g_auto(GStrv) words = g_strsplit_set(flags, " \t\n", -1);

	for (guint i = 0; words[i]; i++) {
		const char *w = words[i];

		if (!*w)
			continue;
		if (g_ascii_strcasecmp(w, "\\Recent") == 0)
			goto bad;
		for (const char *p = *w == '\\' ? w + 1 : w; *p; p++) {
			if ((unsigned char)*p <= 0x20 ||
			    (unsigned char)*p >= 0x7f ||
			    strchr("(){%*\"\\]", *p))
				goto bad;
		}
		if (*w == '\\' && !w[1])
			goto bad;
		continue;
	bad:
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_INVALID,
			    "not a flag: %s", w);
		return FALSE;
	}
	return TRUE;
}

static gboolean flag_listed(const char *flags, const char *flag)
{
	g_auto(GStrv) words = g_strsplit(flags ? flags : "", " ", -1);

	for (guint i = 0; words[i]; i++) {
		if (g_ascii_strcasecmp(words[i], flag) == 0)
			return TRUE;
	}
	return FALSE;
}

typedef struct {
	guint32 uid;
	char *flags;
	guint64 modseq;
} StoreSeen;

static gboolean store_untagged_cb(const ImapResponse *resp, gpointer user_data)
{
	StoreSeen *s = user_data;
	g_autoptr(ImapFetchData) fd = NULL;

	if (g_strcmp0(resp->keyword, "FETCH") != 0)
		return FALSE;
	fd = imap_decode_fetch(resp, NULL);
	if (fd && (fd->has & IMAP_FETCH_HAS_UID) && fd->uid == s->uid &&
	    (fd->has & IMAP_FETCH_HAS_FLAGS)) {
		g_autoptr(GStrvBuilder) b = g_strv_builder_new();
		g_auto(GStrv) kept = NULL;

		for (guint i = 0; fd->flags[i]; i++) {
			if (g_ascii_strcasecmp(fd->flags[i], "\\Recent") != 0)
				g_strv_builder_add(b, fd->flags[i]);
		}
		kept = g_strv_builder_end(b);
		g_free(s->flags);
		s->flags = g_strjoinv(" ", kept);
		if (fd->has & IMAP_FETCH_HAS_MODSEQ)
			s->modseq = fd->modseq;
	}
	return TRUE;
}

gboolean cache_message_set_flags(Cache *c, guint64 message_id,
				 const char *flags, GError **error)
{
	g_autoptr(CacheMessage) m = cache_message_get(c, message_id);
	g_autofree char *raw = NULL;
	g_autofree char *clean = NULL;
	g_autoptr(ImapCommand) cmd = NULL;
	g_autoptr(ImapResult) r = NULL;
	gboolean condstore = imap_client_has_cap(c->client, "CONDSTORE");
	StoreSeen seen = {0};
	FolderLocks locks;
	char set[16];

	if (!readonly_check(c, error))
		return FALSE;
	if (!m) {
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_NOT_FOUND,
			    "no such message");
		return FALSE;
	}
	if (!flags_valid(flags, error) ||
	    !(raw = raw_of(c, m->folder_id, error)))
		return FALSE;
	{
		g_auto(GStrv) words = g_strsplit_set(flags, " \t\n", -1);
		g_autoptr(GStrvBuilder) b = g_strv_builder_new();
		g_auto(GStrv) kept = NULL;

		for (guint i = 0; words[i]; i++) {
			if (*words[i])
				g_strv_builder_add(b, words[i]);
		}
		kept = g_strv_builder_end(b);
		clean = g_strjoinv(" ", kept);
	}
	g_snprintf(set, sizeof(set), "%u", m->uid);
	/* UNCHANGEDSINCE: another client's change in between wins and we
	 * report a conflict instead of overwriting it. */
	cmd = imap_cmd_uid_store(raw, m->uidvalidity, set, "FLAGS", clean,
				 condstore && m->modseq ? m->modseq : 0);
	seen.uid = m->uid;
	imap_command_set_untagged(cmd, store_untagged_cb, &seen);
	lock_folders(c, m->folder_id, m->folder_id, &locks);
	r = run_change(c, cmd, m->folder_id, 0, error);
	unlock_folders(&locks);
	if (!r) {
		g_free(seen.flags);
		return FALSE;
	}
	if (imap_response_has_code(r->tagged, "MODIFIED")) {
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_CONFLICT,
			    "the flags were changed by another client");
		g_free(seen.flags);
		return FALSE;
	}
	if (!seen.flags)
		seen.flags = g_strdup(clean);
	/* A keyword the mailbox does not keep is dropped silently by the
	 * server (PERMANENTFLAGS without \*): say so. */
	{
		g_auto(GStrv) want = g_strsplit(clean, " ", -1);

		for (guint i = 0; want[i]; i++) {
			if (*want[i] && !flag_listed(seen.flags, want[i])) {
				g_set_error(error, CACHE_ERROR,
					    CACHE_ERROR_INVALID,
					    "the server does not keep the flag "
					    "%s in this folder",
					    want[i]);
				g_free(seen.flags);
				return FALSE;
			}
		}
	}
	g_mutex_lock(&c->lock);
	{
		CacheMessage *n = g_atomic_rc_box_dup(sizeof(*m), m);

		n->name = g_strdup(m->name);
		n->flags = seen.flags;
		n->modseq = seen.modseq ? seen.modseq : m->modseq;
		cache_update_flags_locked(c, n);
		snapshot_change_locked(c, m->folder_id, m, n);
		cache_message_unref(n);
	}
	g_mutex_unlock(&c->lock);
	return TRUE;
}

/* ---- append ---- */

/* "Date:" of the header block, RFC 5322 (obsolete forms too), or 0. */
static gint64 header_date(const char *msg, gsize len)
{
	static const char *const months[] = {"jan", "feb", "mar", "apr",
					     "may", "jun", "jul", "aug",
					     "sep", "oct", "nov", "dec"};
	const char *end = g_strstr_len(msg, (gssize)len, "\r\n\r\n");
	gsize hlen = end ? (gsize)(end - msg) : len;
	const char *p = msg;

	while (p && p < msg + hlen) {
		if ((p == msg || p[-1] == '\n') &&
		    g_ascii_strncasecmp(p, "Date:", 5) == 0)
			break;
		p = memchr(p, '\n', (gsize)(msg + hlen - p));
		if (p)
			p++;
	}
	if (!p || p >= msg + hlen)
		return 0;

	g_autofree char *line =
		g_strndup(p + 5, MIN((gsize)200, (gsize)(msg + hlen - p - 5)));
	char *nl = strpbrk(line, "\r\n");
	char mon[4] = {0};
	int day, year, h, mi, s = 0, consumed = 0;
	char zone[16] = {0};
	char *q;

	if (nl)
		*nl = '\0';
	q = strchr(line, ',');
	q = q ? q + 1 : line;
	if (sscanf(q, " %d %3s %d %d:%d%n", &day, mon, &year, &h, &mi,
		   &consumed) != 5)
		return 0;
	q += consumed;
	if (*q == ':')
		sscanf(q, ":%d%n", &s, &consumed), q += consumed;
	sscanf(q, " %15s", zone);
	if (year < 100)
		year += year < 50 ? 2000 : 1900;
	for (int i = 0; i < 12; i++) {
		if (g_ascii_strcasecmp(mon, months[i]) == 0) {
			int off = 0;

			if ((zone[0] == '+' || zone[0] == '-') &&
			    strlen(zone) >= 5) {
				int z = atoi(zone + 1);

				off = (z / 100) * 60 + z % 100;
				if (zone[0] == '-')
					off = -off;
			}
			g_autoptr(GDateTime) dt =
				g_date_time_new_utc(year, i + 1, day, h, mi, s);

			return dt ? g_date_time_to_unix(dt) - off * 60 : 0;
		}
	}
	return 0;
}

static CacheMessage *append_locked(Cache *c, guint64 folder_id,
				   ImapCommand *cmd, const char *data,
				   gsize len, gint64 date, const char *flags,
				   GError **error);

CacheMessage *cache_message_append(Cache *c, guint64 folder_id, GBytes *msg,
				   const char *flags, GError **error)
{
	g_autofree char *raw = NULL;
	g_autoptr(ImapCommand) cmd = NULL;
	gsize len;
	const char *data = g_bytes_get_data(msg, &len);
	gint64 date = header_date(data, len);
	CacheMessage *m = NULL;
	FolderLocks locks;

	if (!readonly_check(c, error))
		return NULL;
	if (flags && !flags_valid(flags, error))
		return NULL;
	if (!(raw = raw_of(c, folder_id, error)))
		return NULL;
	if (!date)
		date = g_get_real_time() / G_USEC_PER_SEC;
	cmd = imap_cmd_append(raw, flags && *flags ? flags : NULL, date, msg,
			      error);
	if (!cmd)
		return NULL;
	lock_folders(c, folder_id, folder_id, &locks);
	m = append_locked(c, folder_id, cmd, data, len, date, flags, error);
	unlock_folders(&locks);
	if (m || !(error && *error))
		notify(c, folder_id, NULL, TRUE);
	return m;
}

static CacheMessage *append_locked(Cache *c, guint64 folder_id,
				   ImapCommand *cmd, const char *data,
				   gsize len, gint64 date, const char *flags,
				   GError **error)
{
	g_autoptr(ImapResult) r = NULL;
	g_autoptr(ImapUidSet) uids = NULL;
	guint32 uidvalidity = 0, uid = 0;
	CacheMessage *m = NULL;

	r = run_change(c, cmd, folder_id, 0, error);
	if (!r)
		return NULL;
	if (imap_decode_appenduid(r->tagged, &uidvalidity, &uids, NULL) &&
	    uids && imap_uid_set_count(uids) == 1)
		imap_uid_set_nth(uids, 0, &uid);
	if (uid) {
		const char *hend = g_strstr_len(data, (gssize)len, "\r\n\r\n");
		Meta meta = {.uid = uid,
			     .has = IMAP_FETCH_HAS_SIZE |
				    IMAP_FETCH_HAS_INTERNALDATE,
			     .flags = (char *)(flags ? flags : ""),
			     .size = len,
			     .date = date};

		meta.subject = g_bytes_new(data, hend ? (gsize)(hend - data) + 4
						      : len);
		g_mutex_lock(&c->lock);
		m = add_known_locked(c, folder_id, uidvalidity,
				     max_uid_locked(c, folder_id), &meta);
		g_mutex_unlock(&c->lock);
		g_bytes_unref(meta.subject);
		if (!m) {
			cache_folder_mark_stale(c, folder_id);
		} else {
			/* We have the bytes: the body is cached at once. */
			g_autofree char *path = cache_body_path(c, m);
			g_autofree char *dir = g_path_get_dirname(path);

			if (g_mkdir_with_parents(dir, 0700) == 0)
				cache_body_store(c, path, data, len);
		}
	} else {
		/* No APPENDUID: the next sync finds the message. */
		cache_folder_mark_stale(c, folder_id);
	}
	return m;
}

/* ---- folders ---- */

static char delimiter_of(Cache *c, guint64 parent_id)
{
	GHashTableIter it;
	gpointer v;
	char d = 0;

	g_mutex_lock(&c->lock);
	g_hash_table_iter_init(&it, c->folders);
	while (g_hash_table_iter_next(&it, NULL, &v)) {
		CacheFolder *f = v;

		if (f->delimiter && (!d || f->id == parent_id))
			d = f->delimiter;
	}
	g_mutex_unlock(&c->lock);
	return d;
}

/* The raw prefix of a folder (its own raw name, or the implied one). */
static char *raw_prefix(Cache *c, guint64 id)
{
	GHashTableIter it;
	gpointer k, v;
	char *out = NULL;

	g_mutex_lock(&c->lock);
	g_hash_table_iter_init(&it, c->folder_ids);
	while (g_hash_table_iter_next(&it, &k, &v)) {
		if (*(guint64 *)v == id) {
			out = g_strdup(k);
			break;
		}
	}
	g_mutex_unlock(&c->lock);
	return out;
}

static char *raw_child(Cache *c, guint64 parent_id, const char *name,
		       GError **error)
{
	char delim = delimiter_of(c, parent_id);
	const char *comp[] = {name};
	g_autofree char *leaf = cache_folder_raw_name(comp, 1, delim, error);
	g_autofree char *prefix = NULL;

	if (!leaf)
		return NULL;
	if (!parent_id)
		return g_steal_pointer(&leaf);
	prefix = raw_prefix(c, parent_id);
	if (!prefix || !delim) {
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_INVALID,
			    "the server has no folder hierarchy");
		return NULL;
	}
	return g_strdup_printf("%s%c%s", prefix, delim, leaf);
}

CacheFolder *cache_folder_create(Cache *c, guint64 parent_id, const char *name,
				 GError **error)
{
	g_autofree char *raw = NULL;
	g_autoptr(ImapCommand) cmd = NULL;
	g_autoptr(ImapResult) r = NULL;

	if (!readonly_check(c, error))
		return NULL;
	raw = raw_child(c, parent_id, name, error);
	if (!raw || !(cmd = imap_cmd_create(raw, error)))
		return NULL;
	r = imap_client_run(c->client, cmd, error);
	if (!r || !cache_refresh_folders(c, error))
		return NULL;
	notify(c, parent_id, NULL, TRUE);
	return cache_folder_lookup(c, parent_id, name);
}

gboolean cache_folder_delete(Cache *c, guint64 folder_id, GError **error)
{
	g_autoptr(CacheFolder) f = cache_folder_get(c, folder_id);
	g_autoptr(GPtrArray) children = NULL;
	g_autoptr(ImapCommand) cmd = NULL;
	g_autoptr(ImapResult) r = NULL;

	if (!readonly_check(c, error))
		return FALSE;
	if (!f) {
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_NOT_FOUND,
			    "no such folder");
		return FALSE;
	}
	children = cache_folder_children(c, folder_id);
	if (children->len > 0) {
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_NOT_EMPTY,
			    "the folder has subfolders");
		return FALSE;
	}
	if (f->selectable) {
		g_autoptr(GPtrArray) msgs =
			cache_folder_messages(c, folder_id, error);

		if (!msgs)
			return FALSE;
		if (msgs->len > 0) {
			g_set_error(error, CACHE_ERROR, CACHE_ERROR_NOT_EMPTY,
				    "the folder holds messages");
			return FALSE;
		}
	}
	if (!f->raw) {
		/* Only implied by children that are gone now. */
		return cache_refresh_folders(c, error);
	}
	cmd = imap_cmd_delete(f->raw, error);
	if (!cmd || !(r = imap_client_run(c->client, cmd, error)))
		return FALSE;
	if (!cache_refresh_folders(c, error))
		return FALSE;
	notify(c, f->parent_id, f->name, FALSE);
	return TRUE;
}

gboolean cache_folder_rename(Cache *c, guint64 folder_id, guint64 new_parent,
			     const char *new_name, GError **error)
{
	g_autoptr(CacheFolder) f = cache_folder_get(c, folder_id);
	g_autofree char *to = NULL;
	g_autoptr(ImapCommand) cmd = NULL;
	g_autoptr(ImapResult) r = NULL;

	if (!readonly_check(c, error))
		return FALSE;
	if (!f || !f->raw) {
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_NOT_FOUND,
			    "no such folder");
		return FALSE;
	}
	if (g_ascii_strcasecmp(f->raw, "INBOX") == 0) {
		/* RENAME INBOX moves its messages and leaves an empty
		 * INBOX: not what mv means. */
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_PERMISSION,
			    "INBOX cannot be renamed");
		return FALSE;
	}
	to = raw_child(c, new_parent, new_name, error);
	if (!to || !(cmd = imap_cmd_rename(f->raw, to, error)))
		return FALSE;
	cache_flush_moves(c);
	r = imap_client_run(c->client, cmd, error);
	if (!r) {
		/* A cut connection leaves us unsure: ask the server. */
		cache_refresh_folders(c, NULL);
		return FALSE;
	}
	cache_rename_folder_rows(c, f->raw, to, f->delimiter);
	if (!cache_refresh_folders(c, error))
		return FALSE;
	notify(c, f->parent_id, f->name, TRUE);
	notify(c, new_parent, NULL, TRUE);
	return TRUE;
}
