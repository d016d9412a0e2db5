/* SPDX-License-Identifier: MIT */
/*
 * Bodies a prefetch brings go into the kernel's page cache as they arrive
 * (FUSE_NOTIFY_STORE), ahead of the reader the prefetch runs for. A grep -r
 * or cp -a then reads them from there: no READ, no round trip through this
 * daemon per file, and on a read-write mount no later GETATTR either (the
 * kernel forgets a file's atime after each READ it sends, not after a
 * store). Messages never change, so the pages stay valid; a file read
 * before its body was handed on is read the usual way, and a store that
 * comes after changes nothing.
 *
 * The connection thread only queues (it holds the cache lock then); a
 * thread of its own does the stores. A store waits for any page of the
 * file that a READ has locked, and a READ may wait for the connection
 * thread: never the other way round. The queue is bounded: when the kernel
 * is slower than the server, bodies are simply left to be read.
 */
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs.h"

#define PAGES_QUEUE_MAX 4096
/* Bigger bodies take a READ or two anyway; a store this size still goes
 * through a pipe of libfuse's (splice) rather than a copy in memory. */
#define PAGES_MAX_BODY (1024 * 1024)

typedef struct {
	fuse_ino_t ino;
	char *path;
	guint64 size;
	gboolean stop;
} Store;

static void store_free(Store *s)
{
	g_free(s->path);
	g_free(s);
}

static void body_cb(guint64 message_id, const char *path, guint64 size,
		    gpointer user_data)
{
	Fs *fs = user_data;
	Store *s;

	if (size > PAGES_MAX_BODY ||
	    g_async_queue_length(fs->stores) >= PAGES_QUEUE_MAX)
		return;
	s = g_new0(Store, 1);
	s->ino = fs_message_ino(message_id);
	s->path = g_strdup(path);
	s->size = size;
	g_async_queue_push(fs->stores, s);
}

static void store_one(Fs *fs, const Store *s)
{
	int fd = open(s->path, O_RDONLY | O_CLOEXEC);
	struct stat st;

	/* Evicted or replaced since: the reader will fetch what it needs. */
	if (fd < 0)
		return;
	if (fstat(fd, &st) == 0 && (guint64)st.st_size == s->size) {
		struct fuse_bufvec buf = FUSE_BUFVEC_INIT(s->size);

		buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
		buf.buf[0].fd = fd;
		buf.buf[0].pos = 0;
		/* ENOENT: the kernel has no inode for it (never looked up,
		 * or forgotten); it will be read if it is looked up. */
		if (fuse_lowlevel_notify_store(fs->se, s->ino, 0, &buf, 0) == 0)
			g_atomic_int_inc(&fs->pages_stored);
	}
	close(fd);
}

static gpointer pages_thread(gpointer data)
{
	Fs *fs = data;

	for (;;) {
		Store *s = g_async_queue_pop(fs->stores);
		gboolean stop = s->stop;

		if (!stop && !g_atomic_int_get(&fs->pages_stopping))
			store_one(fs, s);
		store_free(s);
		if (stop) {
			g_atomic_int_set(&fs->pages_done, 1);
			return NULL;
		}
	}
}

void fs_pages_start(Fs *fs)
{
	fs->stores = g_async_queue_new_full((GDestroyNotify)store_free);
	fs->pages_thread = g_thread_new("pages", pages_thread, fs);
	cache_set_body_func(fs->cache, body_cb, fs);
}

void fs_pages_stop(Fs *fs)
{
	Store *stop = g_new0(Store, 1);

	/* No more from the connections; what is queued is dropped. */
	cache_set_body_func(fs->cache, NULL, NULL);
	g_atomic_int_set(&fs->pages_stopping, 1);
	stop->stop = TRUE;
	g_async_queue_push(fs->stores, stop);
	/* A store may wait for a page that a READ holds. */
	fs_serve_until(fs, &fs->pages_done);
	g_thread_join(fs->pages_thread);
	g_async_queue_unref(fs->stores);
}
