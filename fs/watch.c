/* SPDX-License-Identifier: MIT */
/*
 * Keeping the kernel's caches honest. Names, attributes and pages are
 * cached for long (messages never change); when a revalidation finds that
 * a folder changed, exactly those entries are invalidated.
 *
 * Invalidations run on a thread of their own: the kernel may hold the
 * directory's lock while it waits for one of our replies, so notifying
 * from a request handler could deadlock.
 */
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"

typedef struct {
	fuse_ino_t parent;
	GPtrArray *names; /* removed entries */
	gboolean stop;
	gint64 not_before; /* inval_later: when it is due */
} Inval;

static void inval_free(Inval *j)
{
	if (j->names)
		g_ptr_array_unref(j->names);
	g_free(j);
}

/*
 * A listing that changed gets a new mtime before the kernel hears of it.
 * The kernel keeps a directory's listing (cache_readdir) with the mtime it
 * had when the listing was read, and reads it again at the next opendir
 * if the mtime differs. That closes a race the invalidation alone leaves
 * open: a listing read just before the change but put into the kernel's
 * cache just after the invalidation would otherwise stay there, stale,
 * until the next change.
 */
static void dir_touch(Fs *fs, fuse_ino_t ino)
{
	gint64 now = g_get_real_time() * 1000;
	gint64 *last;

	g_mutex_lock(&fs->mtime_lock);
	last = g_hash_table_lookup(fs->dir_mtimes, &ino);
	if (!last) {
		last = g_new(gint64, 1);
		*last = 0;
		g_hash_table_insert(fs->dir_mtimes,
				    g_memdup2(&ino, sizeof(ino)), last);
	}
	/* Strictly later, even within the clock's resolution. */
	*last = MAX(now, *last + 1);
	g_mutex_unlock(&fs->mtime_lock);
}

void fs_dir_mtime(Fs *fs, fuse_ino_t ino, struct timespec *ts)
{
	gint64 ns = (gint64)fs->mount_time * 1000000000;
	const gint64 *last;

	if (fs->dir_mtimes) {
		g_mutex_lock(&fs->mtime_lock);
		last = g_hash_table_lookup(fs->dir_mtimes, &ino);
		if (last)
			ns = *last;
		g_mutex_unlock(&fs->mtime_lock);
	}
	ts->tv_sec = (time_t)(ns / 1000000000);
	ts->tv_nsec = (long)(ns % 1000000000);
}

static gpointer inval_thread(gpointer data)
{
	Fs *fs = data;

	for (;;) {
		Inval *j = g_async_queue_pop(fs->inval);

		if (j->stop) {
			inval_free(j);
			g_atomic_int_set(&fs->inval_done, 1);
			return NULL;
		}
		for (guint i = 0; j->names && i < j->names->len; i++) {
			const char *name = j->names->pdata[i];

			fuse_lowlevel_notify_inval_entry(fs->se, j->parent,
							 name, strlen(name));
		}
		/* The listing itself (cached with cache_readdir). */
		dir_touch(fs, j->parent);
		fuse_lowlevel_notify_inval_inode(fs->se, j->parent, 0, 0);
		inval_free(j);
	}
}

static void changed_cb(guint64 folder_id, const GPtrArray *removed,
		       gboolean added, gpointer user_data)
{
	Fs *fs = user_data;
	Inval *j = g_new0(Inval, 1);

	if (!fs->se)
		return inval_free(j);
	j->parent = fs_folder_ino(folder_id);
	j->names = g_ptr_array_new_with_free_func(g_free);
	for (guint i = 0; i < removed->len; i++)
		g_ptr_array_add(j->names, g_strdup(removed->pdata[i]));
	g_async_queue_push(fs->inval, j);
}

void fs_invalidate(Fs *fs, guint64 folder_id, const char *name)
{
	Inval *j = g_new0(Inval, 1);

	if (!fs->se)
		return inval_free(j);
	j->parent = fs_folder_ino(folder_id);
	j->names = g_ptr_array_new_with_free_func(g_free);
	if (name)
		g_ptr_array_add(j->names, g_strdup(name));
	g_async_queue_push(fs->inval, j);
}

void fs_invalidate_later(Fs *fs, guint64 folder_id, const char *name)
{
	Inval *j = g_new0(Inval, 1);

	j->parent = fs_folder_ino(folder_id);
	j->names = g_ptr_array_new_with_free_func(g_free);
	g_ptr_array_add(j->names, g_strdup(name));
	j->not_before = g_get_monotonic_time() + FS_ALIAS_TTL_US;
	g_async_queue_push(fs->inval_later, j);
}

/* Delayed invalidations all wait the same time: first in, first due. */
static gpointer later_thread(gpointer data)
{
	Fs *fs = data;

	for (;;) {
		Inval *j = g_async_queue_pop(fs->inval_later);
		gboolean stopping;

		if (j->stop) {
			g_async_queue_push(fs->inval, j);
			return NULL;
		}
		/* Waits end early at unmount (what is left is dropped). */
		g_mutex_lock(&fs->poll_lock);
		while (!fs->stopping &&
		       g_cond_wait_until(&fs->poll_cond, &fs->poll_lock,
					 j->not_before))
			;
		stopping = fs->stopping;
		g_mutex_unlock(&fs->poll_lock);
		if (fs->se && !stopping)
			g_async_queue_push(fs->inval, j);
		else
			inval_free(j);
	}
}

/* Every poll interval, bring the folder tree (one LIST) and the folders in
 * use (a QRESYNC SELECT each when nothing changed) in step. */
static gpointer poll_thread(gpointer data)
{
	Fs *fs = data;

	g_mutex_lock(&fs->poll_lock);
	while (!fs->stopping) {
		gint64 until = g_get_monotonic_time() +
			       (gint64)fs->poll_s * G_USEC_PER_SEC;

		if (g_cond_wait_until(&fs->poll_cond, &fs->poll_lock, until) ||
		    fs->stopping)
			continue;
		g_mutex_unlock(&fs->poll_lock);

		g_autoptr(GArray) ids = NULL;
		g_autoptr(GError) error = NULL;

		cache_refresh_quota(fs->cache, NULL);
		/* Folders created, deleted or renamed elsewhere (one LIST). */
		if (!cache_refresh_folders(fs->cache, &error))
			g_debug("folder list: %s", error->message);
		ids = cache_watched_folders(fs->cache);

		for (guint i = 0; i < ids->len; i++) {
			g_clear_error(&error);
			if (!cache_folder_revalidate(
				    fs->cache, g_array_index(ids, guint64, i),
				    &error))
				g_debug("revalidation: %s", error->message);
		}
		g_mutex_lock(&fs->poll_lock);
	}
	g_mutex_unlock(&fs->poll_lock);
	return NULL;
}

/*
 * An entry's invalidation waits, in the kernel, for its directory while a
 * LOOKUP there is in flight. Once the FUSE loop has ended nobody would
 * answer a LOOKUP the kernel had queued, and the invalidation thread would
 * wait for ever: so at the end this thread answers requests until it is
 * done. (Not those libfuse had read as the loop ended: it drops them.)
 */
void fs_serve_until(Fs *fs, const gint *done)
{
	struct fuse_buf buf = {0};

	while (!g_atomic_int_get(done)) {
		struct pollfd p = {.fd = fuse_session_fd(fs->se),
				   .events = POLLIN};

		if (poll(&p, 1, 20) <= 0)
			continue;
		/* Unmounted: what the thread waits for fails too. */
		if (!(p.revents & POLLIN))
			break;
		fuse_session_reset(fs->se);
		if (fuse_session_receive_buf(fs->se, &buf) > 0)
			fuse_session_process_buf(fs->se, &buf);
		fuse_session_exit(fs->se);
	}
	free(buf.mem);
}

void fs_watch_start(Fs *fs)
{
	g_mutex_init(&fs->mtime_lock);
	fs->dir_mtimes = g_hash_table_new_full(g_int64_hash, g_int64_equal,
					       g_free, g_free);
	/* What requests answered at the end queue is dropped. */
	fs->inval = g_async_queue_new_full((GDestroyNotify)inval_free);
	fs->inval_later = g_async_queue_new_full((GDestroyNotify)inval_free);
	g_mutex_init(&fs->poll_lock);
	g_cond_init(&fs->poll_cond);
	cache_set_change_func(fs->cache, changed_cb, fs);
	fs->inval_thread = g_thread_new("inval", inval_thread, fs);
	fs->later_thread = g_thread_new("inval-later", later_thread, fs);
	if (fs->poll_s)
		fs->poll_thread = g_thread_new("poll", poll_thread, fs);
}

void fs_watch_stop(Fs *fs)
{
	Inval *stop = g_new0(Inval, 1);

	cache_set_change_func(fs->cache, NULL, NULL);
	g_mutex_lock(&fs->poll_lock);
	fs->stopping = TRUE;
	g_cond_broadcast(&fs->poll_cond);
	g_mutex_unlock(&fs->poll_lock);
	if (fs->poll_thread)
		g_thread_join(fs->poll_thread);
	/* The stop goes through the delayed queue, which hands it on. */
	stop->stop = TRUE;
	g_async_queue_push(fs->inval_later, stop);
	/* An invalidation may wait for a directory that a LOOKUP holds. */
	fs_serve_until(fs, &fs->inval_done);
	g_thread_join(fs->later_thread);
	g_thread_join(fs->inval_thread);
	g_async_queue_unref(fs->inval_later);
	g_async_queue_unref(fs->inval);
	g_mutex_clear(&fs->poll_lock);
	g_cond_clear(&fs->poll_cond);
	g_clear_pointer(&fs->dir_mtimes, g_hash_table_unref);
	g_mutex_clear(&fs->mtime_lock);
}
