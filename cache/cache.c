/* SPDX-License-Identifier: MIT */
/*
 * Folders and message metadata: the index on disk, the snapshot in memory,
 * and bringing a folder in step with the server.
 */
#include "cache-private.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <string.h>
#include <sys/stat.h>

G_DEFINE_QUARK(imapfs - cache - error - quark, cache_error)

#define SCHEMA_VERSION 3

/* ---- objects ---- */

static void folder_clear(CacheFolder *f)
{
	g_free(f->name);
	g_free(f->raw);
}

CacheFolder *cache_folder_ref(CacheFolder *f)
{
	return g_atomic_rc_box_acquire(f);
}

void cache_folder_unref(CacheFolder *f)
{
	if (f)
		g_atomic_rc_box_release_full(f, (GDestroyNotify)folder_clear);
}

static void message_clear(CacheMessage *m)
{
	g_free(m->name);
	g_free(m->flags);
}

CacheMessage *cache_message_ref(CacheMessage *m)
{
	return g_atomic_rc_box_acquire(m);
}

void cache_message_unref(CacheMessage *m)
{
	if (m)
		g_atomic_rc_box_release_full(m, (GDestroyNotify)message_clear);
}

static void state_free(FolderState *st)
{
	g_mutex_clear(&st->sync_lock);
	g_clear_pointer(&st->msgs, g_ptr_array_unref);
	g_clear_pointer(&st->by_name, g_hash_table_unref);
	g_clear_pointer(&st->by_id, g_ptr_array_unref);
	g_free(st);
}

/* A new snapshot: positions of the last one mean nothing in it. */
static void scan_forget(FolderState *st)
{
	for (guint o = 0; o < 2; o++) {
		st->last_index[o] = -2;
		st->streak[o] = 0;
		st->prefetched_from[o] = G_MAXUINT;
		st->prefetched_upto[o] = 0;
		st->prefetch_span[o] = 0;
	}
}

FolderState *cache_state_get_locked(Cache *c, guint64 id)
{
	FolderState *st = g_hash_table_lookup(c->states, &id);

	if (!st) {
		guint64 *key = g_new(guint64, 1);

		*key = id;
		st = g_new0(FolderState, 1);
		g_mutex_init(&st->sync_lock);
		scan_forget(st);
		g_hash_table_insert(c->states, key, st);
	}
	return st;
}

/* ---- database ---- */

gboolean cache_db_exec(Cache *c, const char *sql, GError **error)
{
	char *msg = NULL;

	if (sqlite3_exec(c->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_IO,
			    "cache index: %s", msg ? msg : "error");
		sqlite3_free(msg);
		return FALSE;
	}
	return TRUE;
}

static const char schema[] =
	"CREATE TABLE IF NOT EXISTS folders ("
	" id INTEGER PRIMARY KEY, raw BLOB UNIQUE NOT NULL,"
	" parent_id INTEGER NOT NULL, name TEXT NOT NULL,"
	" delimiter INTEGER NOT NULL, attrs INTEGER NOT NULL,"
	" listed INTEGER NOT NULL, uidvalidity INTEGER NOT NULL DEFAULT 0,"
	" uidnext INTEGER NOT NULL DEFAULT 0,"
	" highestmodseq INTEGER NOT NULL DEFAULT 0,"
	" messages INTEGER NOT NULL DEFAULT 0);"
	"CREATE TABLE IF NOT EXISTS messages ("
	" id INTEGER PRIMARY KEY, folder_id INTEGER NOT NULL,"
	" uidvalidity INTEGER NOT NULL, uid INTEGER NOT NULL,"
	" flags TEXT NOT NULL, size INTEGER NOT NULL,"
	" internaldate INTEGER NOT NULL, tz INTEGER NOT NULL,"
	" modseq INTEGER NOT NULL, subject BLOB, name TEXT NOT NULL,"
	" header BLOB, hidden INTEGER NOT NULL DEFAULT 0,"
	" UNIQUE (folder_id, uidvalidity, uid));";

static gboolean db_open_once(Cache *c, const char *path, GError **error)
{
	sqlite3_stmt *st = NULL;
	int version = -1;

	if (sqlite3_open_v2(path, &c->db,
			    SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
				    SQLITE_OPEN_NOMUTEX,
			    NULL) != SQLITE_OK)
		goto corrupt;
	sqlite3_busy_timeout(c->db, 5000);
	if (sqlite3_prepare_v2(c->db, "PRAGMA user_version", -1, &st, NULL) !=
		    SQLITE_OK ||
	    sqlite3_step(st) != SQLITE_ROW)
		goto corrupt;
	version = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	st = NULL;
	if (version != 0 && version != SCHEMA_VERSION)
		goto corrupt;
	if (!cache_db_exec(c,
			   "PRAGMA journal_mode=WAL;"
			   "PRAGMA synchronous=NORMAL;",
			   NULL) ||
	    !cache_db_exec(c, schema, NULL) ||
	    !cache_db_exec(c,
			   "PRAGMA user_version=" G_STRINGIFY(SCHEMA_VERSION),
			   NULL))
		goto corrupt;
	/* A quick look at the structure catches garbage files early. */
	if (sqlite3_prepare_v2(c->db, "PRAGMA quick_check", -1, &st, NULL) !=
		    SQLITE_OK ||
	    sqlite3_step(st) != SQLITE_ROW ||
	    g_strcmp0((const char *)sqlite3_column_text(st, 0), "ok") != 0)
		goto corrupt;
	sqlite3_finalize(st);
	return TRUE;
corrupt:
	g_set_error(error, CACHE_ERROR, CACHE_ERROR_CORRUPT,
		    "cache index %s: %s", path,
		    c->db ? sqlite3_errmsg(c->db) : "cannot open");
	if (st)
		sqlite3_finalize(st);
	sqlite3_close(c->db);
	c->db = NULL;
	return FALSE;
}

static void remove_tree(const char *path)
{
	g_autoptr(GDir) dir = g_dir_open(path, 0, NULL);
	const char *name;

	while (dir && (name = g_dir_read_name(dir))) {
		g_autofree char *p = g_build_filename(path, name, NULL);

		if (g_file_test(p, G_FILE_TEST_IS_DIR) &&
		    !g_file_test(p, G_FILE_TEST_IS_SYMLINK))
			remove_tree(p);
		else
			g_unlink(p);
	}
	g_rmdir(path);
}

/* An index that is corrupt or from another version is rebuilt from the
 * server: it only ever holds copies. */
gboolean cache_db_open(Cache *c, GError **error)
{
	g_autofree char *path =
		g_build_filename(c->cfg.dir, "index.sqlite", NULL);
	g_autoptr(GError) local = NULL;

	if (db_open_once(c, path, &local))
		return TRUE;
	g_warning("%s; rebuilding the cache", local->message);
	for (const char *suffix = ""; suffix; suffix = NULL) {
		g_autofree char *wal = g_strconcat(path, "-wal", NULL);
		g_autofree char *shm = g_strconcat(path, "-shm", NULL);

		g_unlink(path);
		g_unlink(wal);
		g_unlink(shm);
	}
	remove_tree(c->body_dir);
	g_mkdir_with_parents(c->body_dir, 0700);
	return db_open_once(c, path, error);
}

/* The statement @which, prepared on first use and kept: preparing costs
 * more than running one of these. Reset it with cache_stmt_done(). */
sqlite3_stmt *cache_stmt_locked(Cache *c, CacheStmt which, const char *sql)
{
	if (!c->stmts[which])
		sqlite3_prepare_v3(c->db, sql, -1, SQLITE_PREPARE_PERSISTENT,
				   &c->stmts[which], NULL);
	return c->stmts[which];
}

void cache_stmt_done(sqlite3_stmt *st)
{
	if (!st) /* the prepare failed; so did the step */
		return;
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
}

void cache_db_close(Cache *c)
{
	for (guint i = 0; i < CACHE_STMT_COUNT; i++)
		g_clear_pointer(&c->stmts[i], sqlite3_finalize);
	if (c->db)
		sqlite3_close(c->db);
	c->db = NULL;
}

/* ---- open / free ---- */

static gboolean make_dir(const char *path, GError **error)
{
	if (g_mkdir_with_parents(path, 0700) < 0 || chmod(path, 0700) < 0) {
		int e = errno;

		g_set_error(error, CACHE_ERROR, CACHE_ERROR_IO,
			    "cache directory %s: %s", path, g_strerror(e));
		return FALSE;
	}
	return TRUE;
}

guint64 *cache_id_key(guint64 id)
{
	guint64 *k = g_new(guint64, 1);

	*k = id;
	return k;
}

static void load_folders(Cache *c)
{
	sqlite3_stmt *st = NULL;

	if (sqlite3_prepare_v2(c->db,
			       "SELECT id, raw, parent_id, name, delimiter, "
			       "attrs, listed FROM folders",
			       -1, &st, NULL) != SQLITE_OK)
		return;
	while (sqlite3_step(st) == SQLITE_ROW) {
		CacheFolder *f = g_atomic_rc_box_new0(CacheFolder);

		f->id = (guint64)sqlite3_column_int64(st, 0);
		f->raw = g_strndup(sqlite3_column_blob(st, 1),
				   (gsize)sqlite3_column_bytes(st, 1));
		f->parent_id = (guint64)sqlite3_column_int64(st, 2);
		f->name = g_strdup((const char *)sqlite3_column_text(st, 3));
		f->delimiter = (char)sqlite3_column_int(st, 4);
		f->attrs = (guint32)sqlite3_column_int(st, 5);
		f->selectable = sqlite3_column_int(st, 6) &&
				!(f->attrs & IMAP_MBOX_NOSELECT);
		if (!sqlite3_column_int(st, 6)) {
			/* Implied by its children: no server name. */
			g_hash_table_insert(c->folder_ids, g_strdup(f->raw),
					    cache_id_key(f->id));
			g_clear_pointer(&f->raw, g_free);
		} else {
			g_hash_table_insert(c->folder_ids, g_strdup(f->raw),
					    cache_id_key(f->id));
		}
		g_hash_table_insert(c->folders, cache_id_key(f->id), f);
	}
	sqlite3_finalize(st);
}

/* The next message id: above every id in the index (one given twice
 * would replace that row, see cache_insert_message_locked). */
static gboolean next_message_id(Cache *c, GError **error)
{
	sqlite3_stmt *st = NULL;
	gboolean ok = sqlite3_prepare_v2(c->db, "SELECT MAX(id) FROM messages",
					 -1, &st, NULL) == SQLITE_OK &&
		      sqlite3_step(st) == SQLITE_ROW;

	if (ok)
		c->next_message_id = (guint64)sqlite3_column_int64(st, 0) + 1;
	else
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_IO,
			    "cannot read the cache index: %s",
			    sqlite3_errmsg(c->db));
	sqlite3_finalize(st);
	return ok;
}

Cache *cache_open(ImapClient *client, const CacheConfig *cfg, GError **error)
{
	g_autoptr(Cache) c = g_new0(Cache, 1);

	c->client = client;
	c->cfg = *cfg;
	c->cfg.dir = g_strdup(cfg->dir);
	c->body_dir = g_build_filename(cfg->dir, "bodies", NULL);
	c->tmp_dir = g_build_filename(cfg->dir, "tmp", NULL);
	g_mutex_init(&c->lock);
	g_mutex_init(&c->refresh_lock);
	g_cond_init(&c->fetch_cond);
	g_cond_init(&c->sync_cond);
	c->sync_fd = -1;
	c->folders = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free,
					   (GDestroyNotify)cache_folder_unref);
	c->folder_ids =
		g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
	c->states = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free,
					  (GDestroyNotify)state_free);
	/* Keyed by the id inside the message: no key of its own per
	 * message (insert with g_hash_table_replace, which keeps the key of
	 * the new value). */
	c->messages =
		g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL,
				      (GDestroyNotify)cache_message_unref);
	c->fetching = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free,
					    NULL);
	c->partials = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free,
					    NULL);
	c->open_paths =
		g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
	if (!make_dir(cfg->dir, error) || !make_dir(c->body_dir, error))
		return NULL;
	/* Leftovers of a crash are incomplete by definition. */
	remove_tree(c->tmp_dir);
	if (!make_dir(c->tmp_dir, error))
		return NULL;
	if (!cache_db_open(c, error))
		return NULL;
	if (cfg->keep != CACHE_KEEP_FULL) {
		remove_tree(c->body_dir);
		if (!make_dir(c->body_dir, error))
			return NULL;
	}
	load_folders(c);
	if (!next_message_id(c, error))
		return NULL;
	cache_body_scan(c);
	cache_syncer_start(c);
	cache_movers_start(c);
	cache_watch_start(c);
	return g_steal_pointer(&c);
}

void cache_stop(Cache *c)
{
	cache_watch_stop(c);
	cache_movers_stop(c);
}

void cache_free(Cache *c)
{
	if (!c)
		return;
	cache_stop(c);
	cache_syncer_stop(c);
	if (c->sync_fd >= 0)
		close(c->sync_fd);
	cache_db_close(c);
	if (c->cfg.keep == CACHE_KEEP_NONE)
		remove_tree(c->body_dir);
	remove_tree(c->tmp_dir);
	g_hash_table_unref(c->folders);
	g_hash_table_unref(c->folder_ids);
	g_hash_table_unref(c->states);
	g_hash_table_unref(c->messages);
	g_hash_table_unref(c->fetching);
	g_hash_table_unref(c->partials);
	g_hash_table_unref(c->open_paths);
	g_mutex_clear(&c->lock);
	g_mutex_clear(&c->refresh_lock);
	g_cond_clear(&c->fetch_cond);
	g_cond_clear(&c->sync_cond);
	g_free(c->body_dir);
	g_free(c->tmp_dir);
	g_free(c->cfg.dir);
	g_free(c);
}

/* ---- folders ---- */

static void split_raw(const char *raw, char delim, GPtrArray *out)
{
	const char *start = raw;

	if (!delim) {
		g_ptr_array_add(out, g_strdup(raw));
		return;
	}
	for (const char *p = raw;; p++) {
		if (*p == delim || !*p) {
			g_ptr_array_add(out,
					g_strndup(start, (gsize)(p - start)));
			if (!*p)
				break;
			start = p + 1;
		}
	}
}

/* Insert or update one folder row; returns its id. */
static guint64 upsert_folder(Cache *c, const char *raw, guint64 parent,
			     const char *name, char delim, guint32 attrs,
			     gboolean listed)
{
	sqlite3_stmt *st = NULL;
	guint64 id = 0;

	sqlite3_prepare_v2(
		c->db,
		"INSERT INTO folders (raw, parent_id, name, delimiter,"
		" attrs, listed) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
		" ON CONFLICT (raw) DO UPDATE SET parent_id = ?2,"
		" name = ?3, delimiter = ?4, attrs = ?5, listed = ?6"
		" RETURNING id",
		-1, &st, NULL);
	sqlite3_bind_blob(st, 1, raw, (int)strlen(raw), SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)parent);
	sqlite3_bind_text(st, 3, name, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int(st, 4, delim);
	sqlite3_bind_int(st, 5, (int)attrs);
	sqlite3_bind_int(st, 6, listed);
	if (sqlite3_step(st) == SQLITE_ROW)
		id = (guint64)sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return id;
}

static void delete_folder_locked(Cache *c, guint64 id)
{
	sqlite3_stmt *st = NULL;
	CacheFolder *f = g_hash_table_lookup(c->folders, &id);
	FolderState *fs = g_hash_table_lookup(c->states, &id);

	if (fs && fs->msgs) {
		for (guint i = 0; i < fs->msgs->len; i++) {
			CacheMessage *m = fs->msgs->pdata[i];

			g_hash_table_remove(c->messages, &m->id);
		}
	}
	sqlite3_prepare_v2(c->db, "DELETE FROM messages WHERE folder_id = ?1;",
			   -1, &st, NULL);
	sqlite3_bind_int64(st, 1, (sqlite3_int64)id);
	sqlite3_step(st);
	sqlite3_finalize(st);
	sqlite3_prepare_v2(c->db, "DELETE FROM folders WHERE id = ?1;", -1, &st,
			   NULL);
	sqlite3_bind_int64(st, 1, (sqlite3_int64)id);
	sqlite3_step(st);
	sqlite3_finalize(st);
	cache_body_remove_folder(c, id);
	if (f) {
		GHashTableIter it;
		gpointer k, v;

		g_hash_table_iter_init(&it, c->folder_ids);
		while (g_hash_table_iter_next(&it, &k, &v)) {
			if (*(guint64 *)v == id)
				g_hash_table_iter_remove(&it);
		}
	}
	g_hash_table_remove(c->states, &id);
	g_hash_table_remove(c->folders, &id);
}

/* A folder renamed by us: its rows (and its children's) follow, so the
 * folders keep their ids - and their inode numbers, which the kernel
 * already moved to the new name. */
void cache_rename_folder_rows(Cache *c, const char *from, const char *to,
			      char delimiter)
{
	sqlite3_stmt *st = NULL;
	g_autofree char *prefix = g_strdup_printf("%s%c", from, delimiter);

	g_mutex_lock(&c->lock);
	sqlite3_prepare_v2(
		c->db,
		"UPDATE folders SET raw = CAST(?2 || substr(raw, ?3) AS BLOB)"
		" WHERE raw = ?1 OR (?5 != '' AND"
		" substr(raw, 1, length(?4)) = ?4)",
		-1, &st, NULL);
	sqlite3_bind_blob(st, 1, from, (int)strlen(from), SQLITE_STATIC);
	sqlite3_bind_blob(st, 2, to, (int)strlen(to), SQLITE_STATIC);
	sqlite3_bind_int(st, 3, (int)strlen(from) + 1);
	sqlite3_bind_blob(st, 4, prefix, (int)strlen(prefix), SQLITE_STATIC);
	sqlite3_bind_text(st, 5, delimiter ? "x" : "", -1, SQLITE_STATIC);
	sqlite3_step(st);
	sqlite3_finalize(st);
	g_mutex_unlock(&c->lock);
}

static gboolean refresh_folders(Cache *c, GError **error);

gboolean cache_refresh_folders(Cache *c, GError **error)
{
	gboolean ok;

	g_mutex_lock(&c->refresh_lock);
	ok = refresh_folders(c, error);
	g_mutex_unlock(&c->refresh_lock);
	return ok;
}

static gboolean refresh_folders(Cache *c, GError **error)
{
	g_autoptr(ImapCommand) cmd = imap_cmd_list(c->client, FALSE);
	g_autoptr(ImapResult) r = imap_client_run(c->client, cmd, error);
	g_autoptr(GHashTable) seen = g_hash_table_new_full(
		g_int64_hash, g_int64_equal, g_free, NULL);
	/* Parents whose listing changed: where folders came, where they
	 * went and the names that went. */
	g_autoptr(GArray) changed = g_array_new(FALSE, FALSE, sizeof(guint64));
	g_autoptr(GArray) gone_parents =
		g_array_new(FALSE, FALSE, sizeof(guint64));
	g_autoptr(GPtrArray) gone_names =
		g_ptr_array_new_with_free_func(g_free);
	CacheChangeFunc func;
	gpointer data;

	if (!r)
		return FALSE;
	g_mutex_lock(&c->lock);
	cache_db_exec(c, "BEGIN", NULL);
	/* Names are rebuilt from what the server lists now; ids come from
	 * the index (keyed by raw name), so they stay. */
	g_hash_table_remove_all(c->folder_ids);
	for (guint i = 0; i < r->untagged->len; i++) {
		g_autoptr(ImapListEntry) e =
			imap_decode_list(r->untagged->pdata[i], NULL);
		g_autoptr(GPtrArray) raws = NULL;
		g_autoptr(GPtrArray) names = NULL;
		g_autoptr(GString) prefix = g_string_new(NULL);
		guint64 parent = 0;

		if (!e || (e->attrs & IMAP_MBOX_NONEXISTENT))
			continue;
		raws = g_ptr_array_new_with_free_func(g_free);
		split_raw(e->name, e->delimiter, raws);
		names = cache_folder_components(e->name, e->delimiter);
		if (names->len != raws->len)
			continue;
		for (guint j = 0; j < raws->len; j++) {
			gboolean last = j + 1 == raws->len;
			guint64 *known;
			guint64 id;

			if (j)
				g_string_append_c(prefix, e->delimiter);
			g_string_append(prefix, raws->pdata[j]);
			known = g_hash_table_lookup(c->folder_ids, prefix->str);
			if (!last && known &&
			    g_hash_table_contains(seen, known)) {
				parent = *known;
				continue;
			}
			id = upsert_folder(c, prefix->str, parent,
					   names->pdata[j], e->delimiter,
					   last ? e->attrs : IMAP_MBOX_NOSELECT,
					   last);
			if (!id)
				break;
			CacheFolder *f = g_atomic_rc_box_new0(CacheFolder);

			f->id = id;
			f->parent_id = parent;
			f->name = g_strdup(names->pdata[j]);
			f->raw = last ? g_strdup(prefix->str) : NULL;
			f->delimiter = e->delimiter;
			f->attrs = last ? e->attrs : IMAP_MBOX_NOSELECT;
			f->selectable =
				last && !(e->attrs & IMAP_MBOX_NOSELECT);
			/* A folder listed later keeps its place when an
			 * earlier child implied it. */
			if (!last && g_hash_table_contains(seen, &id)) {
				cache_folder_unref(f);
			} else {
				if (!g_hash_table_contains(c->folders, &id))
					g_array_append_val(changed, parent);
				g_hash_table_insert(c->folders,
						    cache_id_key(id), f);
				g_hash_table_insert(c->folder_ids,
						    g_strdup(prefix->str),
						    cache_id_key(id));
			}
			g_hash_table_add(seen, cache_id_key(id));
			parent = id;
		}
	}
	/* Folders deleted or renamed on the server leave the tree and the
	 * cache. */
	GHashTableIter it;
	gpointer k;
	g_autoptr(GArray) gone = g_array_new(FALSE, FALSE, sizeof(guint64));

	g_hash_table_iter_init(&it, c->folders);
	while (g_hash_table_iter_next(&it, &k, NULL)) {
		if (!g_hash_table_contains(seen, k))
			g_array_append_val(gone, *(guint64 *)k);
	}
	for (guint i = 0; i < gone->len; i++) {
		guint64 id = g_array_index(gone, guint64, i);
		CacheFolder *f = g_hash_table_lookup(c->folders, &id);

		g_array_append_val(gone_parents, f->parent_id);
		g_ptr_array_add(gone_names, g_strdup(f->name));
		delete_folder_locked(c, id);
	}
	cache_db_exec(c, "COMMIT", NULL);
	/* The first listing of a mount is no change. */
	if (!c->folders_listed) {
		g_array_set_size(changed, 0);
		g_array_set_size(gone_parents, 0);
	}
	c->folders_listed = TRUE;
	func = c->change_func;
	data = c->change_data;
	g_mutex_unlock(&c->lock);
	/* Folders created, deleted or renamed by another client: the
	 * parents' listings and the names that went. */
	for (guint i = 0; func && i < gone_parents->len; i++) {
		g_autoptr(GPtrArray) names = g_ptr_array_new();

		g_ptr_array_add(names, gone_names->pdata[i]);
		func(g_array_index(gone_parents, guint64, i), names, FALSE,
		     data);
	}
	if (func && changed->len) {
		g_autoptr(GPtrArray) none = g_ptr_array_new();

		for (guint i = 0; i < changed->len; i++)
			func(g_array_index(changed, guint64, i), none, TRUE,
			     data);
	}
	return TRUE;
}

gboolean cache_has_folders(Cache *c)
{
	gboolean has;

	g_mutex_lock(&c->lock);
	has = g_hash_table_size(c->folders) > 0;
	g_mutex_unlock(&c->lock);
	return has;
}

CacheFolder *cache_folder_get(Cache *c, guint64 id)
{
	CacheFolder *f;

	g_mutex_lock(&c->lock);
	f = g_hash_table_lookup(c->folders, &id);
	if (f)
		cache_folder_ref(f);
	g_mutex_unlock(&c->lock);
	return f;
}

static gint compare_folder_names(gconstpointer a, gconstpointer b)
{
	const CacheFolder *fa = *(CacheFolder *const *)a;
	const CacheFolder *fb = *(CacheFolder *const *)b;

	return strcmp(fa->name, fb->name);
}

GPtrArray *cache_folder_children(Cache *c, guint64 parent_id)
{
	GPtrArray *out = g_ptr_array_new_with_free_func(
		(GDestroyNotify)cache_folder_unref);
	GHashTableIter it;
	gpointer v;

	g_mutex_lock(&c->lock);
	g_hash_table_iter_init(&it, c->folders);
	while (g_hash_table_iter_next(&it, NULL, &v)) {
		CacheFolder *f = v;

		if (f->parent_id == parent_id)
			g_ptr_array_add(out, cache_folder_ref(f));
	}
	g_mutex_unlock(&c->lock);
	g_ptr_array_sort(out, compare_folder_names);
	return out;
}

CacheFolder *cache_folder_lookup(Cache *c, guint64 parent_id, const char *name)
{
	GHashTableIter it;
	gpointer v;
	CacheFolder *found = NULL;

	g_mutex_lock(&c->lock);
	g_hash_table_iter_init(&it, c->folders);
	while (g_hash_table_iter_next(&it, NULL, &v)) {
		CacheFolder *f = v;

		if (f->parent_id == parent_id && strcmp(f->name, name) == 0) {
			found = cache_folder_ref(f);
			break;
		}
	}
	g_mutex_unlock(&c->lock);
	return found;
}

/* ---- messages ---- */

void cache_meta_free(Meta *m)
{
	g_free(m->flags);
	if (m->subject)
		g_bytes_unref(m->subject);
	g_free(m->name);
	g_free(m);
}

typedef struct {
	GHashTable *by_uid; /* uid -> Meta * (the last one wins) */
	guint32 min_uid; /* "n:*" also returns the highest UID below n */
	ImapUidSet *alive; /* if set: every UID seen */
} MetaSink;

static gboolean meta_untagged_cb(const ImapResponse *resp, gpointer user_data)
{
	MetaSink *s = user_data;
	g_autoptr(ImapFetchData) fd = NULL;
	Meta *m;

	if (g_strcmp0(resp->keyword, "FETCH") != 0)
		return FALSE;
	fd = imap_decode_fetch(resp, NULL);
	if (!fd || !(fd->has & IMAP_FETCH_HAS_UID) || fd->uid < s->min_uid)
		return TRUE;
	if (s->alive)
		imap_uid_set_add(s->alive, fd->uid, fd->uid);
	m = g_hash_table_lookup(s->by_uid, GUINT_TO_POINTER(fd->uid));
	if (!m) {
		m = g_new0(Meta, 1);
		m->uid = fd->uid;
		g_hash_table_insert(s->by_uid, GUINT_TO_POINTER(fd->uid), m);
	}
	if (fd->has & IMAP_FETCH_HAS_FLAGS) {
		g_autoptr(GStrvBuilder) b = g_strv_builder_new();
		g_auto(GStrv) flags = NULL;

		/* \Recent belongs to a session, not to the message. */
		for (guint i = 0; fd->flags && fd->flags[i]; i++) {
			if (g_ascii_strcasecmp(fd->flags[i], "\\Recent") != 0)
				g_strv_builder_add(b, fd->flags[i]);
		}
		flags = g_strv_builder_end(b);
		g_free(m->flags);
		m->flags = g_strjoinv(" ", flags);
	}
	if (fd->has & IMAP_FETCH_HAS_SIZE)
		m->size = fd->rfc822_size;
	if (fd->has & IMAP_FETCH_HAS_INTERNALDATE) {
		m->date = fd->internaldate;
		m->tz = fd->internaldate_tz;
	}
	if (fd->has & IMAP_FETCH_HAS_MODSEQ)
		m->modseq = fd->modseq;
	m->has |= fd->has;
	for (guint i = 0; fd->sections && i < fd->sections->len; i++) {
		const ImapFetchSection *sec =
			&g_array_index(fd->sections, ImapFetchSection, i);

		if (!g_str_has_prefix(sec->section, "HEADER.FIELDS"))
			continue;
		if (m->subject)
			g_bytes_unref(m->subject);
		if (sec->value && sec->value->type == IMAP_VALUE_STRING)
			m->subject =
				g_bytes_new(sec->value->str, sec->value->len);
		else
			m->subject = g_bytes_new(NULL, 0);
	}
	/* The name now, on the connection's thread while the rest of a big
	 * listing streams in, rather than all at once when it is applied. */
	if (m->subject && (m->has & IMAP_FETCH_HAS_INTERNALDATE)) {
		gsize slen = 0;
		const char *subj = g_bytes_get_data(m->subject, &slen);

		g_free(m->name);
		m->name = cache_message_name(m->date, subj, slen, m->uid);
	}
	return TRUE;
}

/* Run commands concurrently (they pipeline) and wait for all of them. */
typedef struct {
	GMutex lock;
	GCond cond;
	guint left;
	GError *error;
} Batch;

static void batch_done_cb(ImapResult *result, const GError *error,
			  gpointer user_data)
{
	Batch *b = user_data;
	GError *e = NULL;

	if (!error)
		imap_result_check(result, &e);
	g_mutex_lock(&b->lock);
	if (!b->error && (error || e))
		b->error = error ? g_error_copy(error) : g_steal_pointer(&e);
	b->left--;
	g_cond_signal(&b->cond);
	g_mutex_unlock(&b->lock);
	g_clear_error(&e);
	imap_result_free(result);
}

gboolean cache_run_batch(Cache *c, ImapCommand **cmds, guint n, GError **error)
{
	Batch b = {.left = n};

	g_mutex_init(&b.lock);
	g_cond_init(&b.cond);
	for (guint i = 0; i < n; i++)
		imap_client_submit(c->client, cmds[i], batch_done_cb, &b);
	g_mutex_lock(&b.lock);
	while (b.left > 0)
		g_cond_wait(&b.cond, &b.lock);
	g_mutex_unlock(&b.lock);
	g_mutex_clear(&b.lock);
	g_cond_clear(&b.cond);
	if (b.error) {
		g_propagate_error(error, b.error);
		return FALSE;
	}
	return TRUE;
}

static gint compare_message_ids(gconstpointer a, gconstpointer b)
{
	const CacheMessage *ma = *(CacheMessage *const *)a;
	const CacheMessage *mb = *(CacheMessage *const *)b;

	return ma->id < mb->id ? -1 : ma->id > mb->id;
}

static gint compare_message_names(gconstpointer a, gconstpointer b)
{
	const CacheMessage *ma = *(CacheMessage *const *)a;
	const CacheMessage *mb = *(CacheMessage *const *)b;

	return strcmp(ma->name, mb->name);
}

/* Load the folder's messages of this UIDVALIDITY from the index. */
static GHashTable *load_messages_locked(Cache *c, guint64 folder_id,
					guint32 uidvalidity)
{
	GHashTable *out = g_hash_table_new_full(
		NULL, NULL, NULL, (GDestroyNotify)cache_message_unref);
	sqlite3_stmt *st = NULL;

	sqlite3_prepare_v2(c->db,
			   "SELECT id, uid, flags, size, internaldate, tz,"
			   " modseq, name, hidden FROM messages"
			   " WHERE folder_id = ?1 AND uidvalidity = ?2",
			   -1, &st, NULL);
	sqlite3_bind_int64(st, 1, (sqlite3_int64)folder_id);
	sqlite3_bind_int64(st, 2, uidvalidity);
	while (sqlite3_step(st) == SQLITE_ROW) {
		CacheMessage *m = g_atomic_rc_box_new0(CacheMessage);

		m->id = (guint64)sqlite3_column_int64(st, 0);
		m->folder_id = folder_id;
		m->uidvalidity = uidvalidity;
		m->uid = (guint32)sqlite3_column_int64(st, 1);
		m->flags = g_strdup((const char *)sqlite3_column_text(st, 2));
		m->size = (guint64)sqlite3_column_int64(st, 3);
		m->internaldate = sqlite3_column_int64(st, 4);
		m->tz = sqlite3_column_int(st, 5);
		m->modseq = (guint64)sqlite3_column_int64(st, 6);
		m->name = g_strdup((const char *)sqlite3_column_text(st, 7));
		m->hidden = sqlite3_column_int(st, 8) != 0;
		g_hash_table_insert(out, GUINT_TO_POINTER(m->uid), m);
	}
	sqlite3_finalize(st);
	return out;
}

static void drop_generation_locked(Cache *c, guint64 folder_id,
				   guint32 keep_uidvalidity)
{
	sqlite3_stmt *st = NULL;

	sqlite3_prepare_v2(c->db,
			   "DELETE FROM messages WHERE folder_id = ?1"
			   " AND uidvalidity != ?2",
			   -1, &st, NULL);
	sqlite3_bind_int64(st, 1, (sqlite3_int64)folder_id);
	sqlite3_bind_int64(st, 2, keep_uidvalidity);
	sqlite3_step(st);
	sqlite3_finalize(st);
}

CacheMessage *cache_insert_message_locked(Cache *c, guint64 folder_id,
					  guint32 uidvalidity, Meta *m)
{
	sqlite3_stmt *st;
	gsize slen = 0;
	const char *subj =
		m->subject ? g_bytes_get_data(m->subject, &slen) : NULL;
	CacheMessage *cm = g_atomic_rc_box_new0(CacheMessage);

	cm->folder_id = folder_id;
	cm->uidvalidity = uidvalidity;
	cm->uid = m->uid;
	cm->flags = g_strdup(m->flags ? m->flags : "");
	cm->size = m->size;
	cm->internaldate = m->date;
	cm->tz = m->tz;
	cm->modseq = m->modseq;
	/* Taken, not copied: for a big listing, every name at once. */
	cm->name = m->name ? g_steal_pointer(&m->name)
			   : cache_message_name(m->date, subj, slen, m->uid);
	st = cache_stmt_locked(
		c, CACHE_STMT_INSERT_MESSAGE,
		"INSERT OR REPLACE INTO messages (folder_id,"
		" uidvalidity, uid, flags, size, internaldate,"
		" tz, modseq, subject, name, id) VALUES"
		" (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)");
	sqlite3_bind_int64(st, 1, (sqlite3_int64)folder_id);
	sqlite3_bind_int64(st, 2, uidvalidity);
	sqlite3_bind_int64(st, 3, cm->uid);
	sqlite3_bind_text(st, 4, cm->flags, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 5, (sqlite3_int64)cm->size);
	sqlite3_bind_int64(st, 6, cm->internaldate);
	sqlite3_bind_int(st, 7, cm->tz);
	sqlite3_bind_int64(st, 8, (sqlite3_int64)cm->modseq);
	sqlite3_bind_blob(st, 9, subj ? subj : "", (int)slen, SQLITE_STATIC);
	sqlite3_bind_text(st, 10, cm->name, -1, SQLITE_STATIC);
	/* Never an id given before in this run: SQLite's own would be the
	 * highest plus one, that of a message just expunged, and the id is
	 * the inode number, which the kernel may still hold (a file open
	 * on the expunged message) with its pages and attributes. */
	sqlite3_bind_int64(st, 11, (sqlite3_int64)c->next_message_id);
	if (st && sqlite3_step(st) == SQLITE_DONE)
		cm->id = c->next_message_id++;
	cache_stmt_done(st);
	return cm;
}

void cache_update_flags_locked(Cache *c, CacheMessage *m)
{
	sqlite3_stmt *st = cache_stmt_locked(
		c, CACHE_STMT_UPDATE_FLAGS,
		"UPDATE messages SET flags = ?1, modseq = ?2 WHERE id = ?3");

	sqlite3_bind_text(st, 1, m->flags, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)m->modseq);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)m->id);
	sqlite3_step(st);
	cache_stmt_done(st);
}

void cache_delete_message_locked(Cache *c, CacheMessage *m)
{
	sqlite3_stmt *st = NULL;
	g_autofree char *path = cache_body_path(c, m);

	sqlite3_prepare_v2(c->db, "DELETE FROM messages WHERE id = ?1", -1, &st,
			   NULL);
	sqlite3_bind_int64(st, 1, (sqlite3_int64)m->id);
	sqlite3_step(st);
	sqlite3_finalize(st);
	cache_body_unlink_locked(c, path);
}

#define META_ITEMS "UID FLAGS RFC822.SIZE INTERNALDATE"
#define NAME_ITEMS " BODY.PEEK[HEADER.FIELDS (SUBJECT)]"

/* What the index remembers of a folder's last sync. */
typedef struct {
	guint32 uidvalidity;
	guint32 uidnext;
	guint64 highestmodseq;
} FolderRow;

static FolderRow folder_row_locked(Cache *c, guint64 id)
{
	FolderRow row = {0};
	sqlite3_stmt *st = NULL;

	sqlite3_prepare_v2(c->db,
			   "SELECT uidvalidity, uidnext, highestmodseq"
			   " FROM folders WHERE id = ?1",
			   -1, &st, NULL);
	sqlite3_bind_int64(st, 1, (sqlite3_int64)id);
	if (sqlite3_step(st) == SQLITE_ROW) {
		row.uidvalidity = (guint32)sqlite3_column_int64(st, 0);
		row.uidnext = (guint32)sqlite3_column_int64(st, 1);
		row.highestmodseq = (guint64)sqlite3_column_int64(st, 2);
	}
	sqlite3_finalize(st);
	return row;
}

gboolean cache_folder_in_step_locked(Cache *c, guint64 id, const ImapEvent *sel)
{
	FolderRow row = folder_row_locked(c, id);
	sqlite3_stmt *st = NULL;
	gboolean same_count = FALSE;

	if (row.uidvalidity != sel->uidvalidity || !sel->uidnext ||
	    row.uidnext != sel->uidnext)
		return FALSE;
	if (row.highestmodseq && sel->highestmodseq)
		return row.highestmodseq == sel->highestmodseq;
	sqlite3_prepare_v2(c->db, "SELECT messages FROM folders WHERE id = ?1",
			   -1, &st, NULL);
	sqlite3_bind_int64(st, 1, (sqlite3_int64)id);
	if (sqlite3_step(st) == SQLITE_ROW)
		same_count = sqlite3_column_int64(st, 0) == sel->exists;
	sqlite3_finalize(st);
	return same_count;
}

/* The first position in @seq (sorted by @cmp) not before @m. */
static guint lower_bound(GPtrArray *seq, GCompareFunc cmp,
			 const CacheMessage *m)
{
	guint lo = 0, hi = seq->len;

	while (lo < hi) {
		guint mid = lo + (hi - lo) / 2;

		if (cmp(&seq->pdata[mid], &m) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* @seq without @gone, with @add at its place by @cmp. */
static void copy_edited(GPtrArray *out, GPtrArray *seq, GCompareFunc cmp,
			const CacheMessage *gone, CacheMessage *add,
			gboolean take_refs)
{
	guint at = add ? lower_bound(seq, cmp, add) : G_MAXUINT;

	for (guint i = 0; i <= seq->len; i++) {
		if (i == at)
			g_ptr_array_add(out, take_refs ? cache_message_ref(add)
						       : add);
		if (i == seq->len)
			break;

		CacheMessage *m = seq->pdata[i];

		if (gone && m->id == gone->id)
			continue;
		g_ptr_array_add(out, take_refs ? cache_message_ref(m) : m);
	}
}

void cache_snapshot_edit_locked(Cache *c, FolderState *st,
				const CacheMessage *gone, CacheMessage *add)
{
	CacheMessage *was =
		gone ? g_hash_table_lookup(st->by_name, gone->name) : NULL;
	gboolean there = was && was->id == gone->id;
	GPtrArray *msgs;
	GPtrArray *by_id;

	if (add && (add->hidden || add->uidvalidity != st->uidvalidity))
		add = NULL;
	/* A replacement (new flags) of a message a resync or an rm took
	 * out in the meantime must not bring it back. */
	if (gone && !there)
		add = NULL;
	/* New arrays (a listing may hold the old one), made in order: a
	 * change in a folder of 50,000 messages is a copy, not a sort. */
	msgs = g_ptr_array_new_full(st->msgs->len + 1,
				    (GDestroyNotify)cache_message_unref);
	copy_edited(msgs, st->msgs, compare_message_names, gone, add, TRUE);
	by_id = g_ptr_array_sized_new(st->msgs->len + 1);
	copy_edited(by_id, st->by_id, compare_message_ids, gone, add, FALSE);
	if (there)
		g_hash_table_remove(st->by_name, gone->name);
	if (gone)
		g_hash_table_remove(c->messages, &gone->id);
	if (add) {
		st->max_uid = MAX(st->max_uid, add->uid);
		g_hash_table_replace(st->by_name, add->name, add);
		g_hash_table_replace(c->messages, &add->id,
				     cache_message_ref(add));
	}
	g_ptr_array_unref(st->msgs);
	st->msgs = msgs;
	g_ptr_array_unref(st->by_id);
	st->by_id = by_id;
	scan_forget(st);
}

/* What a sync learned, applied in one transaction by apply_sync(). */
typedef struct {
	guint32 uidvalidity;
	guint32 uidnext;
	guint64 highestmodseq;
	gboolean empty; /* EXISTS 0: nothing is left */
	GHashTable *updates; /* uid -> Meta: new flags of known messages */
	ImapUidSet *alive; /* when set: known UIDs not in it are gone */
	ImapUidSet *vanished; /* when set: these UIDs are gone */
	GHashTable *fresh; /* uid -> Meta: messages new to the index */
	GPtrArray *dropped; /* names of an old generation, gone */
} SyncResult;

static void sync_result_clear(SyncResult *sr)
{
	g_clear_pointer(&sr->updates, g_hash_table_unref);
	g_clear_pointer(&sr->fresh, g_hash_table_unref);
	g_clear_pointer(&sr->alive, imap_uid_set_free);
	g_clear_pointer(&sr->vanished, imap_uid_set_free);
	g_clear_pointer(&sr->dropped, g_ptr_array_unref);
}

void cache_install_messages_locked(Cache *c, FolderState *st, GPtrArray *msgs,
				   guint32 uidvalidity)
{
	g_ptr_array_sort(msgs, compare_message_names);
	if (st->uidvalidity != uidvalidity)
		st->max_uid = 0;
	for (guint i = 0; i < msgs->len; i++)
		st->max_uid =
			MAX(st->max_uid, ((CacheMessage *)msgs->pdata[i])->uid);
	if (st->msgs) {
		for (guint i = 0; i < st->msgs->len; i++) {
			CacheMessage *m = st->msgs->pdata[i];

			g_hash_table_remove(c->messages, &m->id);
		}
		g_ptr_array_unref(st->msgs);
		g_hash_table_unref(st->by_name);
	}
	st->msgs = g_ptr_array_ref(msgs);
	st->by_name = g_hash_table_new(g_str_hash, g_str_equal);
	g_clear_pointer(&st->by_id, g_ptr_array_unref);
	for (guint i = 0; i < msgs->len; i++) {
		CacheMessage *m = msgs->pdata[i];

		if (m->hidden) {
			/* Still on the server, flagged \Deleted by us:
			 * known (not fetched again), never shown. */
			g_ptr_array_remove_index(msgs, i--);
			continue;
		}
		g_hash_table_insert(st->by_name, m->name, m);
		g_hash_table_replace(c->messages, &m->id, cache_message_ref(m));
	}
	/* The same messages in inode (row id) order: cp -a reads that way. */
	/* Borrowed pointers, no free function of its own. */
	st->by_id = g_ptr_array_sized_new(msgs->len);
	for (guint i = 0; i < msgs->len; i++)
		g_ptr_array_add(st->by_id, msgs->pdata[i]);
	g_ptr_array_sort(st->by_id, compare_message_ids);
	st->uidvalidity = uidvalidity;
	scan_forget(st);
}

static gint compare_uid_keys(gconstpointer a, gconstpointer b)
{
	guint32 x = GPOINTER_TO_UINT(a), y = GPOINTER_TO_UINT(b);

	return x < y ? -1 : x > y;
}

/* Apply a sync to the index and the snapshot; tell the file system what
 * disappeared (for the kernel's caches). */
static void apply_sync(Cache *c, CacheFolder *f, FolderState *st,
		       GHashTable *known, SyncResult *sr)
{
	g_autoptr(GPtrArray) msgs = g_ptr_array_new_with_free_func(
		(GDestroyNotify)cache_message_unref);
	g_autoptr(GPtrArray) removed = g_ptr_array_new_with_free_func(g_free);
	GHashTableIter it;
	gpointer k, v;
	gboolean added = FALSE;
	CacheChangeFunc notify;
	gpointer notify_data;

	for (guint i = 0; sr->dropped && i < sr->dropped->len; i++)
		g_ptr_array_add(removed, g_strdup(sr->dropped->pdata[i]));
	g_mutex_lock(&c->lock);
	cache_db_exec(c, "BEGIN", NULL);
	g_hash_table_iter_init(&it, known);
	while (g_hash_table_iter_next(&it, &k, &v)) {
		CacheMessage *m = v;
		guint32 uid = GPOINTER_TO_UINT(k);
		Meta *u = g_hash_table_lookup(sr->updates, k);

		if (sr->empty ||
		    (sr->alive && !imap_uid_set_contains(sr->alive, uid)) ||
		    (sr->vanished &&
		     imap_uid_set_contains(sr->vanished, uid))) {
			g_ptr_array_add(removed, g_strdup(m->name));
			cache_delete_message_locked(c, m);
			continue;
		}
		if (u && u->flags && g_strcmp0(u->flags, m->flags) != 0) {
			/* Objects are immutable: replace. */
			CacheMessage *n = g_atomic_rc_box_dup(sizeof(*m), m);

			n->name = g_strdup(m->name);
			n->flags = g_strdup(u->flags);
			n->modseq = u->modseq;
			cache_update_flags_locked(c, n);
			g_ptr_array_add(msgs, n);
		} else {
			g_ptr_array_add(msgs, cache_message_ref(m));
		}
	}
	/* In UID order: row ids (and so inode numbers) follow arrival, and
	 * tools that read in inode order (cp -a) read in arrival order. */
	g_autoptr(GList) fresh_uids = g_hash_table_get_keys(sr->fresh);

	fresh_uids = g_list_sort(fresh_uids, compare_uid_keys);
	for (GList *l = fresh_uids; l; l = l->next) {
		k = l->data;
		v = g_hash_table_lookup(sr->fresh, k);
		Meta *m = v;

		if ((m->has &
		     (IMAP_FETCH_HAS_SIZE | IMAP_FETCH_HAS_INTERNALDATE)) !=
			    (IMAP_FETCH_HAS_SIZE |
			     IMAP_FETCH_HAS_INTERNALDATE) ||
		    g_hash_table_contains(known, k))
			continue;
		g_ptr_array_add(msgs, cache_insert_message_locked(
					      c, f->id, sr->uidvalidity, m));
		added = TRUE;
	}
	sqlite3_stmt *up = NULL;

	sqlite3_prepare_v2(c->db,
			   "UPDATE folders SET uidvalidity = ?1, uidnext = ?2,"
			   " highestmodseq = ?3, messages = ?4 WHERE id = ?5",
			   -1, &up, NULL);
	sqlite3_bind_int64(up, 1, sr->uidvalidity);
	sqlite3_bind_int64(up, 2, sr->uidnext);
	sqlite3_bind_int64(up, 3, (sqlite3_int64)sr->highestmodseq);
	sqlite3_bind_int64(up, 4, msgs->len);
	sqlite3_bind_int64(up, 5, (sqlite3_int64)f->id);
	sqlite3_step(up);
	sqlite3_finalize(up);
	cache_db_exec(c, "COMMIT", NULL);
	cache_install_messages_locked(c, st, msgs, sr->uidvalidity);
	c->counters.folder_syncs++;
	notify = c->change_func;
	notify_data = c->change_data;
	g_mutex_unlock(&c->lock);
	if (notify && (removed->len || added))
		notify(f->id, removed, added, notify_data);
}

/* The SELECT brought QRESYNC data: VANISHED (EARLIER) and changed flags. */
static void take_qresync(SyncResult *sr, const ImapResult *r)
{
	MetaSink sink = {.by_uid = sr->updates};

	for (guint i = 0; i < r->untagged->len; i++) {
		const ImapResponse *u = r->untagged->pdata[i];

		if (g_strcmp0(u->keyword, "VANISHED") == 0) {
			g_autoptr(ImapUidSet) set =
				imap_decode_vanished(u, NULL, NULL);

			for (guint j = 0; set && j < set->ranges->len; j++) {
				ImapUidRange *rg = &g_array_index(
					set->ranges, ImapUidRange, j);

				imap_uid_set_add(sr->vanished, rg->lo, rg->hi);
			}
		} else if (g_strcmp0(u->keyword, "FETCH") == 0) {
			meta_untagged_cb(u, &sink);
		}
	}
}

/* UIDs of the index as a compact set, for QRESYNC's known-uids. */
static char *known_uid_set(GHashTable *known)
{
	g_autoptr(ImapUidSet) set = imap_uid_set_new();
	GHashTableIter it;
	gpointer k;

	g_hash_table_iter_init(&it, known);
	while (g_hash_table_iter_next(&it, &k, NULL))
		imap_uid_set_add(set, GPOINTER_TO_UINT(k), GPOINTER_TO_UINT(k));
	return imap_uid_set_to_string(set);
}

static gboolean search_untagged_cb(const ImapResponse *resp, gpointer user_data)
{
	ImapUidSet **alive = user_data;
	g_autoptr(ImapUidSet) set = NULL;

	if (g_strcmp0(resp->keyword, "ESEARCH") == 0) {
		g_autoptr(ImapEsearchData) es = imap_decode_esearch(resp, NULL);

		if (es && es->all)
			set = g_steal_pointer(&es->all);
		else if (es)
			set = imap_uid_set_new();
	} else if (g_strcmp0(resp->keyword, "SEARCH") == 0) {
		set = imap_decode_search(resp, NULL);
	}
	if (!set)
		return FALSE;
	for (guint j = 0; j < set->ranges->len; j++) {
		ImapUidRange *rg = &g_array_index(set->ranges, ImapUidRange, j);

		imap_uid_set_add(*alive, rg->lo, rg->hi);
	}
	return TRUE;
}

/*
 * Bring one folder in step with the server, cheaply when the index knows
 * it already:
 *  - QRESYNC: SELECT (QRESYNC (uidvalidity modseq known-uids)) reports
 *    what vanished and what changed; one round trip when nothing is new;
 *  - CONDSTORE: UID FETCH 1:* (FLAGS) (CHANGEDSINCE modseq) and a UID
 *    SEARCH for what is still there, pipelined;
 *  - otherwise: the flags of every message.
 * New messages are fetched from UIDNEXT on: metadata and the Subject only,
 * never bodies. A new UIDVALIDITY drops the old generation first.
 */
static gboolean folder_sync(Cache *c, CacheFolder *f, FolderState *st,
			    GError **error)
{
	g_autoptr(ImapCommand) sel = NULL;
	g_autoptr(ImapResult) r = NULL;
	g_autoptr(GHashTable) known = NULL;
	g_autofree char *known_set = NULL;
	SyncResult sr = {0};
	MetaSink all = {0}, fresh = {0};
	ImapCommand *cmds[3];
	guint ncmds = 0;
	guint32 max_known = 0, first_new = 1;
	gboolean condstore = imap_client_has_cap(c->client, "CONDSTORE");
	gboolean qresync = imap_client_has_cap(c->client, "QRESYNC");
	gboolean ok;
	FolderRow row;
	GHashTableIter it;
	gpointer k;

	g_mutex_lock(&c->lock);
	row = folder_row_locked(c, f->id);
	known = load_messages_locked(c, f->id, row.uidvalidity);
	g_mutex_unlock(&c->lock);
	if (!row.highestmodseq || !g_hash_table_size(known))
		qresync = FALSE;
	if (qresync)
		known_set = known_uid_set(known);

	sel = imap_cmd_select(c->client, f->raw, FALSE,
			      qresync ? row.uidvalidity : 0,
			      qresync ? row.highestmodseq : 0, known_set);
	r = imap_client_run(c->client, sel, error);
	if (!r)
		return FALSE;
	sr.uidvalidity = r->select.uidvalidity;
	sr.uidnext = r->select.uidnext;
	sr.highestmodseq = r->select.highestmodseq;
	sr.empty = (r->select.has & IMAP_STATUS_HAS_MESSAGES) &&
		   r->select.exists == 0;
	sr.updates = g_hash_table_new_full(NULL, NULL, NULL,
					   (GDestroyNotify)cache_meta_free);
	sr.fresh = g_hash_table_new_full(NULL, NULL, NULL,
					 (GDestroyNotify)cache_meta_free);
	if (!sr.uidvalidity) {
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_CORRUPT,
			    "the server gave %s no UIDVALIDITY", f->raw);
		sync_result_clear(&sr);
		return FALSE;
	}
	if (sr.uidvalidity != row.uidvalidity) {
		/* A new generation: nothing of the old one may be served
		 * under these UIDs. */
		gpointer v;

		g_mutex_lock(&c->lock);
		drop_generation_locked(c, f->id, sr.uidvalidity);
		g_mutex_unlock(&c->lock);
		cache_body_remove_folder(c, f->id);
		/* Their names go too: the kernel must forget them. */
		sr.dropped = g_ptr_array_new_with_free_func(g_free);
		g_hash_table_iter_init(&it, known);
		while (g_hash_table_iter_next(&it, NULL, &v))
			g_ptr_array_add(sr.dropped,
					g_strdup(((CacheMessage *)v)->name));
		g_hash_table_remove_all(known);
		row.highestmodseq = 0;
		qresync = FALSE;
	}

	g_hash_table_iter_init(&it, known);
	while (g_hash_table_iter_next(&it, &k, NULL))
		max_known = MAX(max_known, GPOINTER_TO_UINT(k));

	if (qresync) {
		sr.vanished = imap_uid_set_new();
		take_qresync(&sr, r);
	} else if (g_hash_table_size(known) && !sr.empty) {
		gboolean changedsince = condstore && row.highestmodseq;

		all.by_uid = sr.updates;
		/* Up to max_known only: the scopes of FETCH commands in
		 * flight together must not overlap (see conn_route_fetch). */
		g_autofree char *upto = g_strdup_printf("1:%u", max_known);

		cmds[ncmds] = imap_cmd_uid_fetch(
			f->raw, sr.uidvalidity, upto,
			condstore ? "UID FLAGS MODSEQ" : "UID FLAGS",
			changedsince ? row.highestmodseq : 0);
		imap_command_set_untagged(cmds[ncmds++], meta_untagged_cb,
					  &all);
		sr.alive = imap_uid_set_new();
		if (changedsince) {
			/* Only changes come back: ask what still exists. */
			cmds[ncmds] = imap_cmd_uid_search(
				f->raw, sr.uidvalidity, c->client, "UID 1:*");
			imap_command_set_untagged(
				cmds[ncmds++], search_untagged_cb, &sr.alive);
		} else {
			/* Every message answers: the answers are the set. */
			all.alive = sr.alive;
		}
	}
	/* New messages have UIDs above every known one and at or above the
	 * UIDNEXT of the last sync. (Asking "n:*" when nothing is there
	 * would bring back the last message, RFC 3501 6.4.8, every time.) */
	if (row.uidvalidity == sr.uidvalidity)
		first_new = MAX(first_new, row.uidnext);
	first_new = MAX(first_new, max_known + 1);
	if (!sr.empty && (!sr.uidnext || sr.uidnext > first_new)) {
		g_autofree char *set = g_strdup_printf("%u:*", first_new);

		fresh.by_uid = sr.fresh;
		fresh.min_uid = first_new;
		cmds[ncmds] = imap_cmd_uid_fetch(
			f->raw, sr.uidvalidity, set,
			condstore ? META_ITEMS " MODSEQ" NAME_ITEMS
				  : META_ITEMS NAME_ITEMS,
			0);
		imap_command_set_untagged(cmds[ncmds++], meta_untagged_cb,
					  &fresh);
	}
	ok = cache_run_batch(c, cmds, ncmds, error);
	for (guint i = 0; i < ncmds; i++)
		imap_command_unref(cmds[i]);
	if (ok)
		apply_sync(c, f, st, known, &sr);
	sync_result_clear(&sr);
	return ok;
}

/* The server is out of reach: serve the folder as the index has it. */
static gboolean folder_load_offline(Cache *c, CacheFolder *f, FolderState *st)
{
	g_autoptr(GPtrArray) msgs = g_ptr_array_new_with_free_func(
		(GDestroyNotify)cache_message_unref);
	g_autoptr(GHashTable) known = NULL;
	FolderRow row;
	GHashTableIter it;
	gpointer v;

	g_mutex_lock(&c->lock);
	row = folder_row_locked(c, f->id);
	if (!row.uidvalidity) {
		g_mutex_unlock(&c->lock);
		return FALSE;
	}
	known = load_messages_locked(c, f->id, row.uidvalidity);
	g_hash_table_iter_init(&it, known);
	while (g_hash_table_iter_next(&it, NULL, &v))
		g_ptr_array_add(msgs, cache_message_ref(v));
	cache_install_messages_locked(c, st, msgs, row.uidvalidity);
	g_mutex_unlock(&c->lock);
	return TRUE;
}

FolderState *cache_folder_fresh(Cache *c, guint64 folder_id,
				CacheFolder **folder_out, GError **error)
{
	g_autoptr(CacheFolder) f = cache_folder_get(c, folder_id);
	FolderState *st;

	if (!f || !f->selectable) {
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_NOT_FOUND,
			    "no such folder");
		return NULL;
	}
	g_mutex_lock(&c->lock);
	st = cache_state_get_locked(c, folder_id);
	g_mutex_unlock(&c->lock);
	/* A sync reads the index: moves waiting to be sent must be in it
	 * first, or their messages would come back. (Outside sync_lock:
	 * a move takes the sync locks of its folders.) */
	if (!st->fresh)
		cache_flush_moves_of(c, folder_id);
	g_mutex_lock(&st->sync_lock);
	if (!st->fresh && g_get_monotonic_time() >= st->retry_at) {
		g_autoptr(GError) local = NULL;

		if (folder_sync(c, f, st, &local)) {
			st->fresh = TRUE;
		} else if (imap_error_is_network(local) &&
			   (st->msgs || folder_load_offline(c, f, st))) {
			/* Serve what we have; try the server again later. */
			st->retry_at =
				g_get_monotonic_time() + CACHE_OFFLINE_RETRY_US;
		} else {
			g_mutex_unlock(&st->sync_lock);
			g_propagate_error(error, g_steal_pointer(&local));
			return NULL;
		}
	}
	g_mutex_unlock(&st->sync_lock);
	if (folder_out)
		*folder_out = g_steal_pointer(&f);
	return st;
}

gboolean cache_folder_revalidate(Cache *c, guint64 folder_id, GError **error)
{
	g_autoptr(CacheFolder) f = cache_folder_get(c, folder_id);
	FolderState *st;
	gboolean ok = TRUE;

	if (!f || !f->selectable)
		return TRUE;
	g_mutex_lock(&c->lock);
	st = g_hash_table_lookup(c->states, &folder_id);
	g_mutex_unlock(&c->lock);
	if (!st)
		return TRUE; /* never looked at: nothing to keep in step */
	cache_flush_moves_of(c, folder_id);
	g_mutex_lock(&st->sync_lock);
	if (st->msgs) {
		ok = folder_sync(c, f, st, error);
		st->fresh = ok;
	}
	g_mutex_unlock(&st->sync_lock);
	return ok;
}

GArray *cache_watched_folders(Cache *c)
{
	GArray *out = g_array_new(FALSE, FALSE, sizeof(guint64));
	GHashTableIter it;
	gpointer k, v;

	g_mutex_lock(&c->lock);
	g_hash_table_iter_init(&it, c->states);
	while (g_hash_table_iter_next(&it, &k, &v)) {
		if (((FolderState *)v)->msgs)
			g_array_append_val(out, *(guint64 *)k);
	}
	g_mutex_unlock(&c->lock);
	return out;
}

void cache_folder_mark_stale(Cache *c, guint64 folder_id)
{
	FolderState *st;

	g_mutex_lock(&c->lock);
	st = g_hash_table_lookup(c->states, &folder_id);
	if (st)
		st->fresh = FALSE;
	g_mutex_unlock(&c->lock);
}

GPtrArray *cache_folder_messages(Cache *c, guint64 folder_id, GError **error)
{
	FolderState *st;

	/* A listing shows moved messages under their new names. */
	cache_flush_moves_of(c, folder_id);
	st = cache_folder_fresh(c, folder_id, NULL, error);
	GPtrArray *out;

	if (!st)
		return NULL;
	g_mutex_lock(&c->lock);
	out = g_ptr_array_ref(st->msgs);
	g_mutex_unlock(&c->lock);
	return out;
}

CacheMessage *cache_message_get(Cache *c, guint64 id)
{
	CacheMessage *m;

	g_mutex_lock(&c->lock);
	m = g_hash_table_lookup(c->messages, &id);
	if (m)
		cache_message_ref(m);
	g_mutex_unlock(&c->lock);
	return m;
}

CacheMessage *cache_message_lookup(Cache *c, guint64 folder_id,
				   const char *name, GError **error)
{
	FolderState *st = cache_folder_fresh(c, folder_id, NULL, error);
	CacheMessage *m = NULL;

	if (!st)
		return NULL;
	g_mutex_lock(&c->lock);
	m = g_hash_table_lookup(st->by_name, name);
	if (m)
		cache_message_ref(m);
	g_mutex_unlock(&c->lock);
	if (!m)
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_NOT_FOUND,
			    "no such message");
	return m;
}

/* Where @m is in @seq, sorted by @cmp. */
static gboolean snapshot_index(GPtrArray *seq, GCompareFunc cmp,
			       const CacheMessage *m, guint *index)
{
	guint lo = 0, hi = seq->len;

	while (lo < hi) {
		guint mid = lo + (hi - lo) / 2;
		gint r = cmp(&seq->pdata[mid], &m);

		if (r == 0) {
			*index = mid;
			return ((CacheMessage *)seq->pdata[mid])->id == m->id;
		}
		if (r < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return FALSE;
}

/* Sequential-scan detection, called when a body is opened. */
void cache_note_open(Cache *c, const CacheMessage *m)
{
	FolderState *st;
	int order = -1;
	guint index[2] = {0, 0};

	g_mutex_lock(&c->lock);
	st = g_hash_table_lookup(c->states, &m->folder_id);
	/* Two orders count as sequential: the listing's (ls, grep -r, tar,
	 * rsync) and the inodes' (cp -a sorts by inode number). */
	for (int o = 0; st && st->msgs && o < 2; o++) {
		guint i;

		if (!snapshot_index(o == 0 ? st->msgs : st->by_id,
				    o == 0 ? compare_message_names
					   : compare_message_ids,
				    m, &i))
			continue;
		if ((gint)i == st->last_index[o] + 1)
			st->streak[o]++;
		else if ((gint)i != st->last_index[o])
			st->streak[o] = 0;
		st->last_index[o] = (gint)i;
		index[o] = i;
		/* One order leads, the longer streak (the listing's when
		 * they are the same order): two would each queue their own
		 * batches of the same messages' successors. */
		if (st->streak[o] >= 1 &&
		    (order < 0 || st->streak[o] > st->streak[order]))
			order = o;
	}
	/* Keep a whole batch queued behind the one arriving, so the server
	 * never waits for our next request: the next batch goes out when
	 * the reader is into the last one. */
	if (order >= 0 && (st->prefetched_upto[order] >= st->msgs->len ||
			   index[order] + st->prefetch_span[order] <
				   st->prefetched_upto[order]))
		order = -1;
	g_mutex_unlock(&c->lock);
	if (order >= 0)
		cache_prefetch_after(c, m->folder_id, order, index[order]);
}

/*
 * A read waits for a body that a sequential scan had passed over: evicted
 * since, or gone with cache=none, and now read again by a second scan
 * (pages the kernel still holds are not read at all, so those are not
 * fetched again for nothing). Prefetch from there again.
 */
void cache_note_miss(Cache *c, const CacheMessage *m)
{
	FolderState *st;
	int order = -1;
	guint index = 0;

	g_mutex_lock(&c->lock);
	st = g_hash_table_lookup(c->states, &m->folder_id);
	for (int o = 0; st && st->msgs && o < 2; o++) {
		GPtrArray *seq = o == 0 ? st->msgs : st->by_id;
		gint i = st->last_index[o];

		/* The scan's latest open, where a prefetch had been. */
		if (i < 0 || (guint)i >= seq->len ||
		    ((CacheMessage *)seq->pdata[i])->id != m->id ||
		    st->streak[o] < 1 || (guint)i < st->prefetched_from[o] ||
		    (guint)i >= st->prefetched_upto[o])
			continue;
		if (order < 0 || st->streak[o] > st->streak[order]) {
			order = o;
			index = (guint)i;
		}
	}
	if (order >= 0) {
		st->prefetched_upto[order] = index + 1;
		st->prefetch_span[order] = 0;
	}
	g_mutex_unlock(&c->lock);
	if (order >= 0)
		cache_prefetch_after(c, m->folder_id, order, index);
}

CacheStats cache_stats(Cache *c)
{
	CacheStats s = {0};

	g_mutex_lock(&c->lock);
	s.messages = g_hash_table_size(c->messages);
	s.cached_bytes = c->body_bytes;
	s.quota_used_kib = c->quota_used;
	s.quota_limit_kib = c->quota_limit;
	g_mutex_unlock(&c->lock);
	return s;
}

void cache_append_counters(Cache *c, GString *out)
{
	ImapCounters ic = imap_client_counters(c->client);
	CacheCounters cc;
	guint64 bytes_on_disk;
	guint moves_pending;

	g_mutex_lock(&c->lock);
	cc = c->counters;
	bytes_on_disk = c->body_bytes;
	moves_pending =
		c->moves_running + (c->move_batches ? c->move_batches->len : 0);
	g_mutex_unlock(&c->lock);
	g_string_append_printf(
		out,
		"imap.commands %" G_GUINT64_FORMAT "\n"
		"imap.round_trips %" G_GUINT64_FORMAT "\n"
		"imap.bytes_in %" G_GUINT64_FORMAT "\n"
		"imap.bytes_out %" G_GUINT64_FORMAT "\n"
		"imap.connects %" G_GUINT64_FORMAT "\n"
		"imap.timeouts %" G_GUINT64_FORMAT "\n"
		"cache.folder_syncs %" G_GUINT64_FORMAT "\n"
		"cache.body_hits %" G_GUINT64_FORMAT "\n"
		"cache.body_fetches %" G_GUINT64_FORMAT "\n"
		"cache.range_fetches %" G_GUINT64_FORMAT "\n"
		"cache.prefetches %" G_GUINT64_FORMAT "\n"
		"cache.prefetch_batches %" G_GUINT64_FORMAT "\n"
		"cache.body_bytes_fetched %" G_GUINT64_FORMAT "\n"
		"cache.evictions %" G_GUINT64_FORMAT "\n"
		"cache.header_hits %" G_GUINT64_FORMAT "\n"
		"cache.bytes_on_disk %" G_GUINT64_FORMAT "\n"
		"cache.moves_pending %u\n",
		ic.commands, ic.round_trips, ic.bytes_in, ic.bytes_out,
		ic.connects, ic.timeouts, cc.folder_syncs, cc.body_hits,
		cc.body_fetches, cc.range_fetches, cc.prefetches,
		cc.prefetch_batches, cc.body_bytes_fetched, cc.evictions,
		cc.header_hits, bytes_on_disk, moves_pending);
	cache_append_watch_counters(c, out);
	for (guint i = 0; i < imap_client_n_connections(c->client); i++) {
		ImapCounters k = imap_client_connection_counters(c->client, i);

		g_string_append_printf(
			out,
			"imap.conn%u.commands %" G_GUINT64_FORMAT "\n"
			"imap.conn%u.round_trips %" G_GUINT64_FORMAT "\n"
			"imap.conn%u.bytes_in %" G_GUINT64_FORMAT "\n"
			"imap.conn%u.bytes_out %" G_GUINT64_FORMAT "\n",
			i + 1, k.commands, i + 1, k.round_trips, i + 1,
			k.bytes_in, i + 1, k.bytes_out);
	}
}

void cache_set_change_func(Cache *c, CacheChangeFunc func, gpointer user_data)
{
	g_mutex_lock(&c->lock);
	c->change_func = func;
	c->change_data = user_data;
	g_mutex_unlock(&c->lock);
}

void cache_set_body_func(Cache *c, CacheBodyFunc func, gpointer user_data)
{
	g_mutex_lock(&c->lock);
	c->body_func = func;
	c->body_data = user_data;
	g_mutex_unlock(&c->lock);
}

/* QUOTA (RFC 9208): the STORAGE resource of INBOX's quota root, in KiB. */
gboolean cache_refresh_quota(Cache *c, GError **error)
{
	g_autoptr(ImapCommand) cmd = NULL;
	g_autoptr(ImapResult) r = NULL;

	if (!imap_client_has_cap(c->client, "QUOTA"))
		return TRUE;
	cmd = imap_command_new("GETQUOTAROOT");
	imap_command_add_raw(cmd, "INBOX", NULL);
	imap_command_want(cmd, "QUOTA");
	imap_command_want(cmd, "QUOTAROOT");
	imap_command_set_idempotent(cmd, TRUE);
	r = imap_client_run(c->client, cmd, error);
	if (!r)
		return FALSE;
	for (guint i = 0; i < r->untagged->len; i++) {
		const ImapResponse *u = r->untagged->pdata[i];
		const GPtrArray *res;

		if (g_strcmp0(u->keyword, "QUOTA") != 0 || u->args->len < 2)
			continue;
		res = imap_value_get_list(u->args->pdata[1]);
		for (guint j = 0; res && j + 2 < res->len; j += 3) {
			guint64 used, limit;

			if (imap_value_is_atom(res->pdata[j], "STORAGE") &&
			    imap_value_get_u64(res->pdata[j + 1], &used) &&
			    imap_value_get_u64(res->pdata[j + 2], &limit)) {
				g_mutex_lock(&c->lock);
				c->quota_used = used;
				c->quota_limit = limit;
				g_mutex_unlock(&c->lock);
			}
		}
	}
	return TRUE;
}
