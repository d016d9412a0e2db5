/* SPDX-License-Identifier: MIT */
/*
 * Message bodies on disk: bodies/<folder id>/<UIDVALIDITY>/<UID>, names
 * built from numbers only. A body file is complete or absent: it is
 * streamed from the socket into tmp/, its length checked against the
 * literal, and renamed into place; bodies are synced to the disk together
 * (see "durability"). Big bodies are read in ranges
 * into a partial file that becomes a body file once every range is there.
 */
#include "cache-private.h"

#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void cache_note_open(Cache *c, const CacheMessage *m);

char *cache_body_path(Cache *c, const CacheMessage *m)
{
	char name[64];

	g_snprintf(name, sizeof(name), "%" G_GUINT64_FORMAT "/%u/%u",
		   m->folder_id, m->uidvalidity, m->uid);
	return g_build_filename(c->body_dir, name, NULL);
}

static char *folder_dir(Cache *c, guint64 folder_id)
{
	char name[32];

	g_snprintf(name, sizeof(name), "%" G_GUINT64_FORMAT, folder_id);
	return g_build_filename(c->body_dir, name, NULL);
}

void cache_body_remove_folder(Cache *c, guint64 folder_id)
{
	g_autofree char *dir = folder_dir(c, folder_id);
	g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
	const char *gen;

	while (d && (gen = g_dir_read_name(d))) {
		g_autofree char *gdir = g_build_filename(dir, gen, NULL);
		g_autoptr(GDir) gd = g_dir_open(gdir, 0, NULL);
		const char *f;

		while (gd && (f = g_dir_read_name(gd))) {
			g_autofree char *p = g_build_filename(gdir, f, NULL);

			g_unlink(p);
		}
		g_rmdir(gdir);
	}
	g_rmdir(dir);
}

/* ---- durability ---- */

/*
 * A fsync() per body made a cold grep -r of 50,000 small messages with the
 * cache on ext4 take 20 s instead of 9. Bodies are renamed into place
 * unsynced instead and made durable together: a thread calls syncfs() at
 * most every SYNC_INTERVAL_US while bodies are being stored, then writes
 * the time it started to SYNC_MARKER (fsync'd, renamed into place). A clean
 * stop syncs once more and removes the marker. Found at startup, the
 * marker says the last run ended without that (a crash, a power loss, a
 * kill -9): every body file modified since the time it holds (less
 * SYNC_SLACK_NS, for the coarse clock of file systems) may have lost bytes
 * and is deleted, to be fetched again. So a body file is complete or
 * absent, as with a fsync per body.
 */
#define SYNC_MARKER "bodies.unsynced"
#define SYNC_INTERVAL_US (2 * G_USEC_PER_SEC)
#define SYNC_SLACK_NS G_GINT64_CONSTANT(1000000000)

static char *marker_path(Cache *c)
{
	return g_build_filename(c->cfg.dir, SYNC_MARKER, NULL);
}

/* The time (ns since the epoch) in the marker; FALSE if there is none. An
 * unreadable marker reads as 0: every body goes. */
static gboolean marker_read(Cache *c, gint64 *since)
{
	g_autofree char *path = marker_path(c);
	g_autofree char *text = NULL;

	*since = 0;
	if (!g_file_get_contents(path, &text, NULL, NULL))
		return g_file_test(path, G_FILE_TEST_EXISTS);
	*since = g_ascii_strtoll(text, NULL, 10);
	if (*since < 0)
		*since = 0;
	return TRUE;
}

/* The renames and unlinks in the cache directory are durable. */
static gboolean fsync_cache_dir(Cache *c)
{
	int fd = open(c->cfg.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	gboolean ok = fd >= 0 && fsync(fd) == 0;

	if (fd >= 0)
		close(fd);
	return ok;
}

/* Written to a temporary file, fsync'd and renamed over the old one. */
static gboolean marker_write(Cache *c, gint64 since)
{
	g_autofree char *path = marker_path(c);
	g_autofree char *text =
		g_strdup_printf("%" G_GINT64_FORMAT "\n", since);

	return g_file_set_contents_full(path, text, -1,
					G_FILE_SET_CONTENTS_CONSISTENT |
						G_FILE_SET_CONTENTS_DURABLE,
					0600, NULL) &&
	       fsync_cache_dir(c);
}

/* Everything written so far is on the disk: TRUE if so. Through a
 * descriptor opened before the first body was written, so that syncfs()
 * reports every write-back error since. */
static gboolean sync_bodies(Cache *c)
{
	gboolean ok = c->sync_fd >= 0 && syncfs(c->sync_fd) == 0;

	if (!ok)
		g_warning("cannot sync the cached bodies: %s",
			  c->sync_fd >= 0 ? g_strerror(errno)
					  : "bodies/ did not open");
	return ok;
}

/* A body was stored, or a cached one opened (its mtime, the eviction
 * order, moved): the next sync moves the marker past it. */
static void sync_note_locked(Cache *c)
{
	if (!c->sync_pending) {
		c->sync_pending = TRUE;
		g_cond_signal(&c->sync_cond);
	}
}

static gpointer syncer_main(gpointer data)
{
	Cache *c = data;

	g_mutex_lock(&c->lock);
	while (!c->sync_stop) {
		gint64 until, start;

		if (!c->sync_pending) {
			g_cond_wait(&c->sync_cond, &c->lock);
			continue;
		}
		until = g_get_monotonic_time() + SYNC_INTERVAL_US;
		while (!c->sync_stop &&
		       g_cond_wait_until(&c->sync_cond, &c->lock, until))
			;
		if (c->sync_stop)
			break;
		c->sync_pending = FALSE;
		if (c->sync_each)
			continue; /* each body was synced on its own */
		g_mutex_unlock(&c->lock);
		start = g_get_real_time() * 1000;
		if (sync_bodies(c) && !marker_write(c, start))
			g_warning("cannot write %s in %s", SYNC_MARKER,
				  c->cfg.dir);
		g_mutex_lock(&c->lock);
	}
	g_mutex_unlock(&c->lock);
	return NULL;
}

/* In every cache mode: bodies of cache=headers outlive a clean stop, and
 * a later mount may keep them. */
void cache_syncer_start(Cache *c)
{
	c->syncer = g_thread_new("cache-sync", syncer_main, c);
}

/* After the last body is stored (the client is gone): one more sync, and
 * the marker goes. */
void cache_syncer_stop(Cache *c)
{
	g_autofree char *path = marker_path(c);

	if (!c->syncer)
		return;
	g_mutex_lock(&c->lock);
	c->sync_stop = TRUE;
	g_cond_signal(&c->sync_cond);
	g_mutex_unlock(&c->lock);
	g_thread_join(c->syncer);
	c->syncer = NULL;
	if (sync_bodies(c) && (g_unlink(path) == 0 || errno == ENOENT))
		fsync_cache_dir(c);
}

/* ---- the size limit ---- */

/* Total bytes of body files, counted once at startup; after a run that
 * did not end cleanly, the bodies it may not have synced are deleted
 * first (see "durability"). */
void cache_body_scan(Cache *c)
{
	g_autoptr(GDir) d = g_dir_open(c->body_dir, 0, NULL);
	const char *folder;
	guint64 total = 0;
	gint64 since;
	gboolean unclean = marker_read(c, &since);
	guint dropped = 0;

	c->sync_fd = open(c->body_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	while (d && (folder = g_dir_read_name(d))) {
		g_autofree char *fdir =
			g_build_filename(c->body_dir, folder, NULL);
		g_autoptr(GDir) fd = g_dir_open(fdir, 0, NULL);
		const char *gen;

		while (fd && (gen = g_dir_read_name(fd))) {
			g_autofree char *gdir =
				g_build_filename(fdir, gen, NULL);
			g_autoptr(GDir) gd = g_dir_open(gdir, 0, NULL);
			const char *f;

			while (gd && (f = g_dir_read_name(gd))) {
				g_autofree char *p =
					g_build_filename(gdir, f, NULL);
				struct stat st;

				if (stat(p, &st) != 0)
					continue;
				if (unclean &&
				    (gint64)st.st_mtim.tv_sec * 1000000000 +
						    st.st_mtim.tv_nsec >=
					    since - SYNC_SLACK_NS) {
					if (g_unlink(p) == 0)
						dropped++;
					continue;
				}
				total += (guint64)st.st_size;
			}
		}
	}
	if (dropped)
		g_message("the last run did not end cleanly: %u cached "
			  "bodies it may not have written whole are dropped "
			  "(fetched again when read)",
			  dropped);
	/* From here every body on disk is whole: the deletions are durable
	 * before the marker says so. Without a marker, nothing would tell
	 * the next mount which bodies to distrust: sync each one then. */
	if (c->sync_fd < 0 || (unclean && !sync_bodies(c)) ||
	    !marker_write(c, g_get_real_time() * 1000)) {
		g_warning("cannot write %s in %s: every cached body is synced "
			  "on its own",
			  SYNC_MARKER, c->cfg.dir);
		c->sync_each = TRUE;
	}
	g_mutex_lock(&c->lock);
	c->body_bytes = total;
	/* A cache filled under a bigger limit shrinks at the first chance. */
	if (c->cfg.size_limit && total > c->cfg.size_limit)
		c->evict_needed = TRUE;
	g_mutex_unlock(&c->lock);
}

/* Remove a body file and take its bytes off the count. */
void cache_body_unlink_locked(Cache *c, const char *path)
{
	struct stat st;

	if (stat(path, &st) == 0 && g_unlink(path) == 0)
		c->body_bytes = c->body_bytes > (guint64)st.st_size
					? c->body_bytes - (guint64)st.st_size
					: 0;
}

static void body_stored_locked(Cache *c, guint64 size)
{
	sync_note_locked(c);
	c->body_bytes += size;
	if (c->cfg.size_limit && c->body_bytes > c->cfg.size_limit)
		c->evict_needed = TRUE;
}

typedef struct {
	char *path;
	gint64 used; /* mtime: touched on every open */
	guint64 size;
} BodyFile;

static gint compare_used(gconstpointer a, gconstpointer b)
{
	const BodyFile *x = a, *y = b;

	return x->used < y->used ? -1 : x->used > y->used;
}

static void body_file_clear(BodyFile *b)
{
	g_free(b->path);
}

/*
 * Least recently used bodies go first, down to 90% of the limit. Bodies
 * of open files stay; the index is never touched (a listing must not need
 * the network because bodies were evicted).
 */
static void evict(Cache *c)
{
	g_autoptr(GArray) files = g_array_new(FALSE, FALSE, sizeof(BodyFile));
	g_autoptr(GDir) d = g_dir_open(c->body_dir, 0, NULL);
	const char *folder;
	guint64 target = c->cfg.size_limit / 10 * 9;
	guint64 total = 0;

	g_array_set_clear_func(files, (GDestroyNotify)body_file_clear);
	while (d && (folder = g_dir_read_name(d))) {
		g_autofree char *fdir =
			g_build_filename(c->body_dir, folder, NULL);
		g_autoptr(GDir) fd = g_dir_open(fdir, 0, NULL);
		const char *gen;

		while (fd && (gen = g_dir_read_name(fd))) {
			g_autofree char *gdir =
				g_build_filename(fdir, gen, NULL);
			g_autoptr(GDir) gd = g_dir_open(gdir, 0, NULL);
			const char *f;

			while (gd && (f = g_dir_read_name(gd))) {
				BodyFile b = {.path = g_build_filename(gdir, f,
								       NULL)};
				struct stat st;

				if (stat(b.path, &st) < 0) {
					g_free(b.path);
					continue;
				}
				b.used = st.st_mtim.tv_sec *
						 G_GINT64_CONSTANT(1000000000) +
					 st.st_mtim.tv_nsec;
				b.size = (guint64)st.st_size;
				total += b.size;
				g_array_append_val(files, b);
			}
		}
	}
	g_array_sort(files, compare_used);
	for (guint i = 0; i < files->len && total > target; i++) {
		BodyFile *b = &g_array_index(files, BodyFile, i);

		/* Unlinked and uncounted in one step, so the count always
		 * matches the files. Bodies stored meanwhile by other
		 * threads counted themselves: subtract, don't overwrite. */
		g_mutex_lock(&c->lock);
		if (!g_hash_table_contains(c->open_paths, b->path) &&
		    g_unlink(b->path) == 0) {
			total -= b->size;
			c->body_bytes = c->body_bytes > b->size
						? c->body_bytes - b->size
						: 0;
		}
		g_mutex_unlock(&c->lock);
	}
	g_mutex_lock(&c->lock);
	c->counters.evictions++;
	g_mutex_unlock(&c->lock);
}

static void evict_if_needed(Cache *c)
{
	gboolean needed;

	g_mutex_lock(&c->lock);
	needed = c->evict_needed;
	c->evict_needed = FALSE;
	g_mutex_unlock(&c->lock);
	if (needed)
		evict(c);
}

gboolean cache_body_store(Cache *c, const char *path, const char *data,
			  gsize len)
{
	g_autofree char *tmp = g_build_filename(c->tmp_dir, "bodyXXXXXX", NULL);
	int fd = g_mkstemp_full(tmp, O_RDWR | O_CLOEXEC, 0600);
	gsize done = 0;

	if (fd < 0)
		return FALSE;
	while (done < len) {
		ssize_t n = write(fd, data + done, len - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		done += (gsize)n;
	}
	if (done != len || (c->sync_each && fsync(fd) < 0) ||
	    rename(tmp, path) < 0) {
		close(fd);
		g_unlink(tmp);
		return FALSE;
	}
	close(fd);
	g_mutex_lock(&c->lock);
	body_stored_locked(c, len);
	g_mutex_unlock(&c->lock);
	return TRUE;
}

/* ---- the header block ---- */

#define HEADER_MAX (64 * 1024)

/* A header block waiting to go into the index. */
typedef struct {
	guint64 message_id;
	GBytes *block;
} PendingHeader;

static void pending_header_clear(PendingHeader *p)
{
	g_bytes_unref(p->block);
}

/* Keep header blocks in the index: they outlive an evicted body, so reads
 * inside them still work (offline too). One transaction for many: an
 * update of its own per body cost more than storing the body. */
static void store_headers(Cache *c, GArray *pending)
{
	if (!pending->len)
		return;
	g_mutex_lock(&c->lock);
	cache_db_exec(c, "BEGIN", NULL);
	for (guint i = 0; i < pending->len; i++) {
		PendingHeader *p = &g_array_index(pending, PendingHeader, i);
		sqlite3_stmt *st =
			cache_stmt_locked(c, CACHE_STMT_STORE_HEADER,
					  "UPDATE messages SET header = ?1"
					  " WHERE id = ?2 AND header IS NULL");
		gsize len;
		const void *data = g_bytes_get_data(p->block, &len);

		sqlite3_bind_blob(st, 1, data, (int)len, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, (sqlite3_int64)p->message_id);
		sqlite3_step(st);
		cache_stmt_done(st);
	}
	cache_db_exec(c, "COMMIT", NULL);
	g_mutex_unlock(&c->lock);
	g_array_set_size(pending, 0);
}

/* Serve a read that lies inside the stored header block. */
static gboolean header_read(Cache *c, const CacheMessage *m, char *buf,
			    gsize size, goffset offset, gssize *n_out)
{
	sqlite3_stmt *st = NULL;
	gboolean ok = FALSE;

	g_mutex_lock(&c->lock);
	sqlite3_prepare_v2(c->db, "SELECT header FROM messages WHERE id = ?1",
			   -1, &st, NULL);
	sqlite3_bind_int64(st, 1, (sqlite3_int64)m->id);
	if (sqlite3_step(st) == SQLITE_ROW) {
		gsize len = (gsize)sqlite3_column_bytes(st, 0);
		const char *h = sqlite3_column_blob(st, 0);

		if (h && (gsize)offset + size <= len) {
			memcpy(buf, h + offset, size);
			*n_out = (gssize)size;
			c->counters.header_hits++;
			ok = TRUE;
		}
	}
	sqlite3_finalize(st);
	g_mutex_unlock(&c->lock);
	return ok;
}

/* ---- streaming a literal into a file ---- */

typedef struct {
	int fd;
	char *tmp_path; /* NULL for a partial file written in place */
	guint64 offset; /* where the literal goes in the file */
	guint64 expected; /* literal size */
	guint64 written;
	gboolean complete;
	int error; /* errno of a failed write; the rest is dropped */
	/* A whole body's first bytes, kept as they stream by (reading them
	 * back cost a tenth of the connection thread's time): the header
	 * block once its end is seen, NULL if there is none within
	 * HEADER_MAX. */
	GByteArray *head;
	gboolean head_done;
} FileHandle;

static void head_capture(FileHandle *h, const guint8 *data, gsize len)
{
	gsize from, take;
	const guint8 *end;

	if (h->head_done)
		return;
	if (!h->head)
		h->head = g_byte_array_new();
	/* The end may straddle two pieces. */
	from = h->head->len >= 3 ? h->head->len - 3 : 0;
	take = MIN(len, HEADER_MAX - h->head->len);
	g_byte_array_append(h->head, data, (guint)take);
	end = memmem(h->head->data + from, h->head->len - from, "\r\n\r\n", 4);
	if (end) {
		g_byte_array_set_size(h->head,
				      (guint)(end + 4 - h->head->data));
		h->head_done = TRUE;
	} else if (h->head->len >= HEADER_MAX) {
		g_clear_pointer(&h->head, g_byte_array_unref);
		h->head_done = TRUE;
	}
}

/* A body file not renamed into place never becomes a body. (A range's
 * descriptor, without a path, belongs to its partial.) */
static void handle_discard(FileHandle *h)
{
	if (!h->tmp_path)
		return;
	if (h->fd >= 0)
		close(h->fd);
	h->fd = -1;
	g_unlink(h->tmp_path);
	g_clear_pointer(&h->tmp_path, g_free);
}

static void file_handle_free(FileHandle *h)
{
	handle_discard(h);
	if (h->head)
		g_byte_array_unref(h->head);
	g_free(h);
}

/* One body fetch (whole bodies of several messages, or one range). */
typedef struct {
	Cache *c;
	guint64 folder_id;
	guint32 uidvalidity;
	GHashTable *ids_by_uid; /* uid -> message id, being fetched */
	GPtrArray *handles; /* FileHandle *, freed at the end */
	/* range mode */
	int range_fd;
	guint64 range_offset;
	guint64 range_got;
	gboolean range_done;
	gboolean prefetch;
	guint bodies;
	gboolean expunged; /* [EXPUNGEISSUED] or no body for a UID */
	GArray *headers; /* PendingHeader: stored in groups (store_headers) */
} Fetch;

static gpointer sink_open(guint64 size, const char *context,
			  const ImapResponse *resp, gpointer user_data)
{
	Fetch *f = user_data;
	FileHandle *h;

	if (!context || !g_str_has_prefix(context, "BODY[]"))
		return NULL;
	h = g_new0(FileHandle, 1);
	h->expected = size;
	if (f->range_fd >= 0) {
		h->fd = f->range_fd;
		h->offset = f->range_offset;
	} else {
		h->tmp_path =
			g_build_filename(f->c->tmp_dir, "bodyXXXXXX", NULL);
		h->fd = g_mkstemp_full(h->tmp_path, O_RDWR | O_CLOEXEC, 0600);
		if (h->fd < 0)
			h->error = errno;
	}
	g_ptr_array_add(f->handles, h);
	return h;
}

static gboolean sink_write(gpointer handle, const guint8 *data, gsize len,
			   gpointer user_data, GError **error)
{
	FileHandle *h = handle;

	if (h->tmp_path)
		head_capture(h, data, len);
	/* A local failure (disk full) must not tear down the connection
	 * that other commands share: drop the bytes, fail this body. */
	while (len > 0 && !h->error) {
		ssize_t n = pwrite(h->fd, data, len,
				   (off_t)(h->offset + h->written));

		if (n < 0) {
			if (errno == EINTR)
				continue;
			h->error = errno;
			break;
		}
		h->written += (guint64)n;
		data += n;
		len -= (gsize)n;
	}
	return TRUE;
}

static void sink_close(gpointer handle, gboolean complete, gpointer user_data)
{
	FileHandle *h = handle;

	h->complete = complete && !h->error && h->written == h->expected;
}

static const ImapLiteralSink file_sink = {
	.open = sink_open,
	.write = sink_write,
	.close = sink_close,
};

static void fetch_free(Fetch *f)
{
	g_array_unref(f->headers);
	g_ptr_array_unref(f->handles);
	g_hash_table_unref(f->ids_by_uid);
	g_free(f);
}

#define HEADERS_PER_TRANSACTION 64

/* rename(), creating the directory on the first body of a folder. */
static gboolean rename_into_place(const char *from, const char *to)
{
	g_autofree char *dir = NULL;

	if (rename(from, to) == 0)
		return TRUE;
	if (errno != ENOENT)
		return FALSE;
	dir = g_path_get_dirname(to);
	return g_mkdir_with_parents(dir, 0700) == 0 && rename(from, to) == 0;
}

/* Put a complete body where it belongs, if it is one we asked for. */
static void store_fetched_body(Fetch *f, const ImapFetchData *fd, FileHandle *h)
{
	if (!h->complete)
		return;
	/* An empty body is what Dovecot sends for a message another client
	 * expunged (with OK [EXPUNGEISSUED]): stored only when the server
	 * had announced an empty message, never in place of a real one. */
	if (h->written == 0) {
		guint64 mid = GPOINTER_TO_SIZE(g_hash_table_lookup(
			f->ids_by_uid, GUINT_TO_POINTER(fd->uid)));
		g_autoptr(CacheMessage) known = cache_message_get(f->c, mid);

		if (f->range_fd >= 0 || !known || known->size != 0)
			return;
	}
	if (f->range_fd >= 0) {
		if (fd->uid == GPOINTER_TO_UINT(g_hash_table_lookup(
				       f->ids_by_uid,
				       GUINT_TO_POINTER(fd->uid))) ||
		    g_hash_table_contains(f->ids_by_uid,
					  GUINT_TO_POINTER(fd->uid))) {
			f->range_got = h->written;
			f->range_done = TRUE;
		}
		return;
	}
	if (!g_hash_table_contains(f->ids_by_uid, GUINT_TO_POINTER(fd->uid)))
		return;

	CacheMessage tmp = {.folder_id = f->folder_id,
			    .uidvalidity = f->uidvalidity,
			    .uid = fd->uid};
	g_autofree char *path = cache_body_path(f->c, &tmp);
	PendingHeader ph = {
		.message_id = GPOINTER_TO_SIZE(g_hash_table_lookup(
			f->ids_by_uid, GUINT_TO_POINTER(fd->uid))),
	};

	/* Not synced (see "durability") unless no marker could be written. */
	if ((f->c->sync_each && fsync(h->fd) < 0) ||
	    !rename_into_place(h->tmp_path, path)) {
		g_warning("cannot store a body as %s: %s", path,
			  g_strerror(errno));
		return;
	}
	g_clear_pointer(&h->tmp_path, g_free);
	if (h->head_done && h->head)
		ph.block =
			g_byte_array_free_to_bytes(g_steal_pointer(&h->head));
	if (ph.block)
		g_array_append_val(f->headers, ph);
	if (f->headers->len >= HEADERS_PER_TRANSACTION)
		store_headers(f->c, f->headers);
	close(h->fd);
	h->fd = -1;
	f->bodies++;
	g_mutex_lock(&f->c->lock);
	f->c->counters.body_bytes_fetched += h->written;
	/* The literal is the truth; RFC822.SIZE was only announced. */
	guint64 id = GPOINTER_TO_SIZE(
		g_hash_table_lookup(f->ids_by_uid, GUINT_TO_POINTER(fd->uid)));
	CacheMessage *m = g_hash_table_lookup(f->c->messages, &id);
	/* Handed on to the kernel's page cache (cache_set_body_func): a
	 * prefetched body of the size shown, but not cache=none's (those go
	 * when their reader closes them: one that nobody opened because the
	 * kernel had it would stay). */
	gboolean hand_on = f->prefetch && f->c->body_func && m &&
			   m->size == h->written && h->written > 0 &&
			   f->c->cfg.keep != CACHE_KEEP_NONE;

	if (m && m->size != h->written) {
		sqlite3_stmt *st = NULL;

		g_warning("message %u: RFC822.SIZE %" G_GUINT64_FORMAT
			  " but the body has %" G_GUINT64_FORMAT " bytes",
			  m->uid, m->size, h->written);
		m->size = h->written;
		sqlite3_prepare_v2(
			f->c->db, "UPDATE messages SET size = ?1 WHERE id = ?2",
			-1, &st, NULL);
		sqlite3_bind_int64(st, 1, (sqlite3_int64)h->written);
		sqlite3_bind_int64(st, 2, (sqlite3_int64)id);
		sqlite3_step(st);
		sqlite3_finalize(st);
	}
	body_stored_locked(f->c, h->written);
	/* This body is there: its reader need not wait for the rest of a
	 * prefetch batch. */
	g_hash_table_remove(f->c->fetching, &id);
	g_cond_broadcast(&f->c->fetch_cond);
	if (hand_on)
		f->c->body_func(id, path, h->written, f->c->body_data);
	g_mutex_unlock(&f->c->lock);
}

/* A complete FETCH response: put its body where it belongs. Runs on the
 * connection's thread. */
static gboolean fetch_untagged_cb(const ImapResponse *resp, gpointer user_data)
{
	Fetch *f = user_data;
	g_autoptr(ImapFetchData) fd = NULL;
	const ImapFetchSection *sec;
	FileHandle *h;

	if (g_strcmp0(resp->keyword, "FETCH") != 0)
		return FALSE;
	fd = imap_decode_fetch(resp, NULL);
	if (!fd || !(fd->has & IMAP_FETCH_HAS_UID))
		return TRUE;
	sec = imap_fetch_data_section(fd, "");
	if (!sec || !sec->value || sec->value->type != IMAP_VALUE_STREAMED)
		return TRUE; /* flags of another client's change, or NIL */
	h = sec->value->sink_handle;
	store_fetched_body(f, fd, h);
	/* What was not kept goes now, not when the batch ends: a batch of
	 * thousands of bodies (a full disk) would hold as many files open. */
	handle_discard(h);
	return TRUE;
}

typedef struct {
	Fetch *fetch;
	GMutex lock;
	GCond cond;
	gboolean done;
	GError *error;
	gboolean async; /* prefetch: nobody waits; free on completion */
} FetchWait;

static void end_fetching(Cache *c, Fetch *f)
{
	GHashTableIter it;
	gpointer v;

	g_mutex_lock(&c->lock);
	g_hash_table_iter_init(&it, f->ids_by_uid);
	while (g_hash_table_iter_next(&it, NULL, &v)) {
		guint64 id = GPOINTER_TO_SIZE(v);

		g_hash_table_remove(c->fetching, &id);
	}
	g_cond_broadcast(&c->fetch_cond);
	g_mutex_unlock(&c->lock);
}

static void fetch_done_cb(ImapResult *result, const GError *error,
			  gpointer user_data)
{
	FetchWait *w = user_data;
	Fetch *f = w->fetch;
	GError *e = NULL;

	if (error)
		e = g_error_copy(error);
	else if (!imap_result_check(result, &e) ||
		 imap_response_has_code(result->tagged, "EXPUNGEISSUED"))
		f->expunged = TRUE;
	imap_result_free(result);
	store_headers(f->c, f->headers);
	end_fetching(f->c, f);
	if (w->async) {
		g_clear_error(&e);
		fetch_free(f);
		g_free(w);
		return;
	}
	g_mutex_lock(&w->lock);
	w->error = e;
	w->done = TRUE;
	g_cond_signal(&w->cond);
	g_mutex_unlock(&w->lock);
}

/* "3:40,42": a batch of hundreds of UIDs is mostly runs. */
static ImapCommand *body_command(Fetch *f, const char *raw, const char *set,
				 const char *items)
{
	ImapCommand *cmd =
		imap_cmd_uid_fetch(raw, f->uidvalidity, set, items, 0);

	imap_command_set_sink(cmd, &file_sink, f);
	imap_command_set_untagged(cmd, fetch_untagged_cb, f);
	return cmd;
}

static Fetch *fetch_new(Cache *c, const CacheMessage *m)
{
	Fetch *f = g_new0(Fetch, 1);

	f->c = c;
	f->folder_id = m->folder_id;
	f->uidvalidity = m->uidvalidity;
	f->range_fd = -1;
	f->ids_by_uid = g_hash_table_new(NULL, NULL);
	f->handles = g_ptr_array_new_with_free_func(
		(GDestroyNotify)file_handle_free);
	f->headers = g_array_new(FALSE, FALSE, sizeof(PendingHeader));
	g_array_set_clear_func(f->headers,
			       (GDestroyNotify)pending_header_clear);
	return f;
}

static gboolean run_fetch_wait(Cache *c, ImapCommand *cmd, Fetch *f,
			       GError **error)
{
	FetchWait w = {.fetch = f};
	gboolean ok;

	g_mutex_init(&w.lock);
	g_cond_init(&w.cond);
	imap_client_submit(c->client, cmd, fetch_done_cb, &w);
	g_mutex_lock(&w.lock);
	while (!w.done)
		g_cond_wait(&w.cond, &w.lock);
	g_mutex_unlock(&w.lock);
	g_mutex_clear(&w.lock);
	g_cond_clear(&w.cond);
	ok = w.error == NULL;
	if (w.error)
		g_propagate_error(error, w.error);
	return ok;
}

/* Mark @m as being fetched by us; FALSE if someone else already is. */
static gboolean claim_locked(Cache *c, const CacheMessage *m)
{
	guint64 *k;

	if (g_hash_table_contains(c->fetching, &m->id))
		return FALSE;
	k = g_new(guint64, 1);
	*k = m->id;
	g_hash_table_add(c->fetching, k);
	return TRUE;
}

static char *folder_raw(Cache *c, guint64 folder_id)
{
	g_autoptr(CacheFolder) f = cache_folder_get(c, folder_id);

	return f && f->raw ? g_strdup(f->raw) : NULL;
}

/* Make the whole body of @m a file; fetch it at most once at a time. */
static gboolean body_ensure(Cache *c, CacheMessage *m, GError **error)
{
	g_autofree char *path = cache_body_path(c, m);
	g_autofree char *raw = NULL;
	g_autoptr(ImapCommand) cmd = NULL;
	Fetch *f;
	gboolean ok;

	g_mutex_lock(&c->lock);
	/* Every body stored wakes every waiter: one whose body is still on
	 * its way waits again without looking at the disk. */
	while (g_hash_table_contains(c->fetching, &m->id))
		g_cond_wait(&c->fetch_cond, &c->lock);
	if (g_file_test(path, G_FILE_TEST_EXISTS)) {
		g_mutex_unlock(&c->lock);
		return TRUE;
	}
	claim_locked(c, m);
	c->counters.body_fetches++;
	g_mutex_unlock(&c->lock);
	cache_note_miss(c, m);

	raw = folder_raw(c, m->folder_id);
	if (!raw) {
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_NOT_FOUND,
			    "the folder is gone");
		return FALSE;
	}
	f = fetch_new(c, m);
	g_hash_table_insert(f->ids_by_uid, GUINT_TO_POINTER(m->uid),
			    GSIZE_TO_POINTER(m->id));
	{
		char set[16];

		g_snprintf(set, sizeof(set), "%u", m->uid);
		cmd = body_command(f, raw, set, "UID BODY.PEEK[]");
	}
	ok = run_fetch_wait(c, cmd, f, error);
	if (ok && f->bodies == 0) {
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_NOT_FOUND,
			    "message %u was expunged on the server", m->uid);
		ok = FALSE;
	}
	fetch_free(f);
	return ok;
}

/* ---- prefetch on sequential scans ---- */

void cache_prefetch_after(Cache *c, guint64 folder_id, int order, guint index)
{
	FolderState *st;
	GPtrArray *seq;
	g_autoptr(ImapUidSet) uids = imap_uid_set_new();
	g_autofree char *raw = folder_raw(c, folder_id);
	Fetch *f = NULL;
	guint64 bytes = 0;
	guint i, start, n = 0;

	if (!raw)
		return;
	g_mutex_lock(&c->lock);
	/* Looked up again: the folder may have gone since the caller's. */
	st = g_hash_table_lookup(c->states, &folder_id);
	seq = !st ? NULL : order == 0 ? st->msgs : st->by_id;
	if (!seq) {
		g_mutex_unlock(&c->lock);
		return;
	}
	i = start = MAX(index + 1, st->prefetched_upto[order]);
	/* Bounded in positions looked at, not only in bodies asked for: in
	 * a folder mostly cached the walk would stat all the rest under the
	 * lock. */
	for (; i < seq->len && i - start < CACHE_PREFETCH_MESSAGES &&
	       bytes < CACHE_PREFETCH_BYTES &&
	       uids->ranges->len < CACHE_PREFETCH_RANGES;
	     i++) {
		CacheMessage *m = seq->pdata[i];
		g_autofree char *path = NULL;

		/* A big body comes whole too: in a sequential scan it is
		 * read whole, and in ranges every chunk would wait behind
		 * the batch. Not the huge ones, nor one read in ranges. */
		if (m->size > CACHE_PREFETCH_BYTES ||
		    g_hash_table_contains(c->partials, &m->id))
			continue;
		path = cache_body_path(c, m);
		if (g_file_test(path, G_FILE_TEST_EXISTS) ||
		    !claim_locked(c, m))
			continue;
		if (!f) {
			f = fetch_new(c, m);
			f->prefetch = TRUE;
		}
		g_hash_table_insert(f->ids_by_uid, GUINT_TO_POINTER(m->uid),
				    GSIZE_TO_POINTER(m->id));
		imap_uid_set_add(uids, m->uid, m->uid);
		n++;
		bytes += m->size;
	}
	st->prefetched_from[order] = MIN(st->prefetched_from[order], start);
	st->prefetched_upto[order] = i;
	st->prefetch_span[order] = i - start;
	c->counters.prefetches += n;
	c->counters.prefetch_batches += n > 0;
	g_mutex_unlock(&c->lock);
	if (!f)
		return;

	g_autofree char *set = imap_uid_set_to_string(uids);
	g_autoptr(ImapCommand) cmd =
		body_command(f, raw, set, "UID BODY.PEEK[]");

	imap_command_set_bulk(cmd);
	FetchWait *w = g_new0(FetchWait, 1);

	w->fetch = f;
	w->async = TRUE;
	imap_client_submit(c->client, cmd, fetch_done_cb, w);
}

/* ---- ranges of big bodies ---- */

typedef struct {
	gint ref;
	GMutex lock; /* one range fetch at a time per message */
	int fd;
	char *tmp_path;
	guint nchunks;
	guint8 *have;
	guint have_count;
} Partial;

static Partial *partial_get(Cache *c, CacheMessage *m, GError **error)
{
	Partial *p;

	g_mutex_lock(&c->lock);
	p = g_hash_table_lookup(c->partials, &m->id);
	if (p) {
		p->ref++;
		g_mutex_unlock(&c->lock);
		return p;
	}
	if (m->size > CACHE_MAX_MESSAGE) {
		/* No mail is this big; a server that says so is wrong. */
		g_mutex_unlock(&c->lock);
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_CORRUPT,
			    "message %u: implausible size %" G_GUINT64_FORMAT,
			    m->uid, m->size);
		return NULL;
	}
	p = g_new0(Partial, 1);
	p->ref = 1;
	g_mutex_init(&p->lock);
	p->tmp_path = g_build_filename(c->tmp_dir, "partXXXXXX", NULL);
	p->fd = g_mkstemp_full(p->tmp_path, O_RDWR | O_CLOEXEC, 0600);
	if (p->fd < 0) {
		int e = errno;

		g_mutex_unlock(&c->lock);
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_IO,
			    "cannot create a file in %s: %s", c->tmp_dir,
			    g_strerror(e));
		g_free(p->tmp_path);
		g_free(p);
		return NULL;
	}
	p->nchunks =
		(guint)((m->size + CACHE_RANGE_CHUNK - 1) / CACHE_RANGE_CHUNK);
	p->have = g_malloc0(MAX(p->nchunks, 1));
	{
		guint64 *k = g_new(guint64, 1);

		*k = m->id;
		g_hash_table_insert(c->partials, k, p);
	}
	g_mutex_unlock(&c->lock);
	return p;
}

static void partial_release(Cache *c, CacheMessage *m, Partial *p)
{
	g_mutex_lock(&c->lock);
	if (--p->ref > 0) {
		g_mutex_unlock(&c->lock);
		return;
	}
	g_hash_table_remove(c->partials, &m->id);
	g_mutex_unlock(&c->lock);
	close(p->fd);
	if (p->tmp_path)
		g_unlink(p->tmp_path);
	g_free(p->tmp_path);
	g_free(p->have);
	g_mutex_clear(&p->lock);
	g_free(p);
}

/* Fetch chunks [first, last] of a big body with one pipelined batch. */
static gboolean partial_fill(Cache *c, CacheMessage *m, Partial *p, guint first,
			     guint last, GError **error)
{
	g_autofree char *raw = folder_raw(c, m->folder_id);
	gboolean ok = TRUE;

	if (!raw) {
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_NOT_FOUND,
			    "the folder is gone");
		return FALSE;
	}
	for (guint k = first; k <= last && ok; k++) {
		Fetch *f;
		g_autoptr(ImapCommand) cmd = NULL;
		char set[16];
		char items[64];

		if (p->have[k])
			continue;
		f = fetch_new(c, m);
		f->range_fd = p->fd;
		f->range_offset = (guint64)k * CACHE_RANGE_CHUNK;
		g_hash_table_insert(f->ids_by_uid, GUINT_TO_POINTER(m->uid),
				    GSIZE_TO_POINTER(m->id));
		g_snprintf(set, sizeof(set), "%u", m->uid);
		g_snprintf(items, sizeof(items),
			   "UID BODY.PEEK[]<%" G_GUINT64_FORMAT ".%u>",
			   f->range_offset, CACHE_RANGE_CHUNK);
		cmd = body_command(f, raw, set, items);
		ok = run_fetch_wait(c, cmd, f, error);
		if (ok && !f->range_done) {
			g_set_error(error, CACHE_ERROR, CACHE_ERROR_NOT_FOUND,
				    "message %u was expunged on the server",
				    m->uid);
			ok = FALSE;
		}
		if (ok) {
			guint64 want = MIN((guint64)CACHE_RANGE_CHUNK,
					   m->size - f->range_offset);

			if (f->range_got != want) {
				g_set_error(error, CACHE_ERROR,
					    CACHE_ERROR_CORRUPT,
					    "message %u: the server sent "
					    "%" G_GUINT64_FORMAT
					    " bytes of a %" G_GUINT64_FORMAT
					    "-byte range",
					    m->uid, f->range_got, want);
				ok = FALSE;
			} else {
				p->have[k] = 1;
				p->have_count++;
				g_mutex_lock(&c->lock);
				c->counters.range_fetches++;
				c->counters.body_bytes_fetched += f->range_got;
				g_mutex_unlock(&c->lock);
			}
		}
		fetch_free(f);
	}
	if (ok && p->have_count == p->nchunks && p->tmp_path) {
		/* Every range is there: it is a complete body now. */
		g_autofree char *path = cache_body_path(c, m);

		/* Synced: its ranges were written in any order into a
		 * file of full length, so a torn one would not show in its
		 * size, and with lazytime not in its mtime either. */
		if (fsync(p->fd) == 0 && rename_into_place(p->tmp_path, path)) {
			g_clear_pointer(&p->tmp_path, g_free);
			g_mutex_lock(&c->lock);
			body_stored_locked(c, m->size);
			g_mutex_unlock(&c->lock);
		}
	}
	return ok;
}

/* ---- open bodies ---- */

struct _CacheBody {
	Cache *c;
	CacheMessage *m;
	char *path;
	int fd; /* complete body file, or -1 */
	Partial *partial;
	guint last_chunk;
};

CacheBody *cache_body_open(Cache *c, guint64 message_id, GError **error)
{
	CacheMessage *m = cache_message_get(c, message_id);
	CacheBody *b;

	if (!m) {
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_NOT_FOUND,
			    "no such message");
		return NULL;
	}
	b = g_new0(CacheBody, 1);
	b->c = c;
	b->m = m;
	b->fd = -1;
	b->last_chunk = G_MAXUINT;
	b->path = cache_body_path(c, m);
	g_mutex_lock(&c->lock);
	g_hash_table_insert(
		c->open_paths, g_strdup(b->path),
		GUINT_TO_POINTER(GPOINTER_TO_UINT(g_hash_table_lookup(
					 c->open_paths, b->path)) +
				 1));
	g_mutex_unlock(&c->lock);
	cache_note_open(c, m);
	evict_if_needed(c);
	return b;
}

void cache_body_close(CacheBody *b)
{
	if (!b)
		return;
	if (b->fd >= 0)
		close(b->fd);
	if (b->partial)
		partial_release(b->c, b->m, b->partial);
	g_mutex_lock(&b->c->lock);
	guint n = GPOINTER_TO_UINT(
		g_hash_table_lookup(b->c->open_paths, b->path));

	if (n > 1)
		g_hash_table_insert(b->c->open_paths, g_strdup(b->path),
				    GUINT_TO_POINTER(n - 1));
	else
		g_hash_table_remove(b->c->open_paths, b->path);
	/* Off the count too: uncounted, the bytes of cache=none bodies
	 * piled up until every close walked bodies/ to evict. */
	if (b->c->cfg.keep == CACHE_KEEP_NONE && n <= 1)
		cache_body_unlink_locked(b->c, b->path);
	/* An eviction may have skipped this body while it was open. */
	if (n <= 1 && b->c->cfg.size_limit &&
	    b->c->body_bytes > b->c->cfg.size_limit)
		b->c->evict_needed = TRUE;
	g_mutex_unlock(&b->c->lock);
	evict_if_needed(b->c);
	cache_message_unref(b->m);
	g_free(b->path);
	g_free(b);
}

guint64 cache_body_size(CacheBody *b)
{
	CacheMessage *m = cache_message_get(b->c, b->m->id);
	guint64 size = m ? m->size : b->m->size;

	cache_message_unref(m);
	return size;
}

static gssize pread_all(int fd, char *buf, gsize size, goffset off,
			GError **error)
{
	gsize done = 0;

	while (done < size) {
		ssize_t n = pread(fd, buf + done, size - done,
				  (off_t)off + (off_t)done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int e = errno;

			g_set_error(error, CACHE_ERROR, CACHE_ERROR_IO,
				    "reading the cached body: %s",
				    g_strerror(e));
			return -1;
		}
		if (n == 0)
			break;
		done += (gsize)n;
	}
	return (gssize)done;
}

#define TOUCH_SLACK_S 2

/* Open the body file if there is one that can be trusted. */
static gboolean body_open_file(CacheBody *b)
{
	struct stat st;
	g_autoptr(CacheMessage) now = NULL;

	if (b->fd >= 0)
		return TRUE;
	b->fd = open(b->path, O_RDONLY | O_CLOEXEC);
	if (b->fd < 0)
		return FALSE;
	/* A file of another length was damaged outside of us (its length
	 * is checked when stored): fetch it again rather than serve it. */
	now = cache_message_get(b->c, b->m->id);
	if (fstat(b->fd, &st) < 0 ||
	    (guint64)st.st_size != (now ? now->size : b->m->size)) {
		g_warning(
			"cached body %s has the wrong size; fetching it again",
			b->path);
		close(b->fd);
		b->fd = -1;
		g_unlink(b->path);
		return FALSE;
	}
	/* Recently used: the eviction order is the mtime. One stored or
	 * touched in the last seconds (a body a prefetch just brought) is
	 * as recent as that order needs. */
	if (st.st_mtime >= time(NULL) - TOUCH_SLACK_S)
		return TRUE;
	futimens(b->fd, (const struct timespec[2]){{.tv_nsec = UTIME_OMIT},
						   {.tv_nsec = UTIME_NOW}});
	g_mutex_lock(&b->c->lock);
	sync_note_locked(b->c);
	g_mutex_unlock(&b->c->lock);
	return TRUE;
}

/* Whether the stored header block (at most HEADER_MAX bytes, never more
 * than the message) may hold a whole read: the kernel asks for more than
 * is left in a file, and a read reaching past the header is not worth an
 * index lookup. */
static gboolean header_may_cover(const CacheMessage *m, gsize size,
				 goffset offset)
{
	return (guint64)offset + size <= MIN(m->size, (guint64)HEADER_MAX);
}

/* Fetch the whole body if it is not there, and open its file. */
static gboolean body_fetch_open(CacheBody *b, GError **error)
{
	if (!body_ensure(b->c, b->m, error))
		return FALSE;
	if (!body_open_file(b)) {
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_IO,
			    "the body of message %u vanished from the cache",
			    b->m->uid);
		return FALSE;
	}
	return TRUE;
}

int cache_body_fetch_fd(CacheBody *b, gsize size, goffset offset,
			GError **error)
{
	int fd = cache_body_file_fd(b);

	if (fd >= 0 || b->m->size > CACHE_RANGE_THRESHOLD ||
	    header_may_cover(b->m, size, offset))
		return fd;
	return body_fetch_open(b, error) ? b->fd : -1;
}

int cache_body_file_fd(CacheBody *b)
{
	if (!body_open_file(b))
		return -1;
	g_mutex_lock(&b->c->lock);
	b->c->counters.body_hits++;
	g_mutex_unlock(&b->c->lock);
	return b->fd;
}

gssize cache_body_read(CacheBody *b, char *buf, gsize size, goffset offset,
		       GError **error)
{
	Cache *c = b->c;
	CacheMessage *m = b->m;
	guint first, last;

	if (body_open_file(b)) {
		g_mutex_lock(&c->lock);
		c->counters.body_hits++;
		g_mutex_unlock(&c->lock);
		return pread_all(b->fd, buf, size, offset, error);
	}
	if (header_may_cover(m, size, offset)) {
		gssize n;

		if (header_read(c, m, buf, size, offset, &n))
			return n;
	}
	if (m->size <= CACHE_RANGE_THRESHOLD)
		return body_fetch_open(b, error)
			       ? pread_all(b->fd, buf, size, offset, error)
			       : -1;

	/* A big body that a prefetch is bringing whole: wait for it. */
	if (!b->partial) {
		g_mutex_lock(&c->lock);
		while (g_hash_table_contains(c->fetching, &m->id))
			g_cond_wait(&c->fetch_cond, &c->lock);
		g_mutex_unlock(&c->lock);
		if (body_open_file(b))
			return pread_all(b->fd, buf, size, offset, error);
	}
	/* A big body: fetch only the ranges this read needs, plus a few
	 * ahead when the reader goes sequentially. */
	if ((guint64)offset >= m->size || size == 0)
		return 0;
	size = (gsize)MIN((guint64)size, m->size - (guint64)offset);
	if (!b->partial && !(b->partial = partial_get(c, m, error)))
		return -1;
	first = (guint)((guint64)offset / CACHE_RANGE_CHUNK);
	last = (guint)(((guint64)offset + size - 1) / CACHE_RANGE_CHUNK);
	if (b->last_chunk != G_MAXUINT && first <= b->last_chunk + 1)
		last = MIN(last + 2, b->partial->nchunks - 1);
	g_mutex_lock(&b->partial->lock);
	gboolean ok = partial_fill(c, m, b->partial, first, last, error);

	g_mutex_unlock(&b->partial->lock);
	if (!ok)
		return -1;
	b->last_chunk = last;
	return pread_all(b->partial->fd, buf, size, offset, error);
}
