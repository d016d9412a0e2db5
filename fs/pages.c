/* SPDX-License-Identifier: MIT */
/*
 * Bodies a prefetch brings go into the kernel's page cache as they arrive
 * (FUSE_NOTIFY_STORE), ahead of the reader the prefetch runs for. A grep -r
 * or cp -a then reads them from there: no READ, no round trip through this
 * daemon per file, and no later GETATTR either (the kernel forgets a
 * file's atime after each READ it sends, not after a store). Messages
 * never change, so the pages stay valid.
 *
 * Only files nobody has open get a store, and an open of a file waits for
 * the store of its body to end. A store waits for every page of the file
 * that someone else has locked, a READ's for instance, and a READ needs
 * an open file: so no store ever waits for a request of ours. (libfuse
 * drops requests that arrive as the daemon stops; a store waiting for one
 * would wait for good, holding the device.) That takes the opens: on a
 * read-only mount the kernel opens files without us (see fs_open), so
 * there are no stores there.
 *
 * The connection thread only queues (it holds the cache lock then); a
 * thread of its own does the stores. The queue is bounded: when the kernel
 * is slower than the server, bodies are simply left to be read.
 */
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fs.h"

#define PAGES_QUEUE_MAX 4096
/* Bigger bodies take a few READs anyway; this is the store's buffer. */
#define PAGES_MAX_BODY (512 * 1024)

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

	if (size > PAGES_MAX_BODY || size == 0 ||
	    g_async_queue_length(fs->stores) >= PAGES_QUEUE_MAX)
		return;
	s = g_new0(Store, 1);
	s->ino = fs_message_ino(message_id);
	s->path = g_strdup(path);
	s->size = size;
	g_async_queue_push(fs->stores, s);
}

/* pread() all of it; FALSE at a short file or an error. */
static gboolean read_whole(int fd, char *buf, gsize size)
{
	gsize done = 0;

	while (done < size) {
		ssize_t n = pread(fd, buf + done, size - done, (off_t)done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return FALSE;
		done += (gsize)n;
	}
	return TRUE;
}

/* Claims @ino for a store: FALSE when the file is open (a READ may hold
 * its pages, see above). */
static gboolean store_claim(Fs *fs, fuse_ino_t ino)
{
	gboolean ok;

	g_mutex_lock(&fs->pages_lock);
	ok = !g_hash_table_contains(fs->pages_open, &ino);
	if (ok)
		fs->pages_storing = ino;
	g_mutex_unlock(&fs->pages_lock);
	return ok;
}

static void store_done(Fs *fs)
{
	g_mutex_lock(&fs->pages_lock);
	fs->pages_storing = 0;
	g_cond_broadcast(&fs->pages_cond);
	g_mutex_unlock(&fs->pages_lock);
}

static void store_one(Fs *fs, const Store *s, char *buf)
{
	int fd = open(s->path, O_RDONLY | O_CLOEXEC);
	struct stat st;

	/* Evicted or replaced since: the reader will fetch what it needs. */
	if (fd < 0)
		return;
	/* From memory, not spliced from the file: libfuse complains aloud
	 * of a failed splice, and ENOENT is common here (an inode the
	 * kernel never looked up, or forgot). */
	if (fstat(fd, &st) == 0 && (guint64)st.st_size == s->size &&
	    read_whole(fd, buf, s->size) && store_claim(fs, s->ino)) {
		struct fuse_bufvec bv = FUSE_BUFVEC_INIT(s->size);

		bv.buf[0].mem = buf;
		if (fuse_lowlevel_notify_store(fs->se, s->ino, 0, &bv, 0) == 0)
			g_atomic_int_inc(&fs->pages_stored);
		store_done(fs);
	}
	close(fd);
}

static gpointer pages_thread(gpointer data)
{
	Fs *fs = data;
	g_autofree char *buf = g_malloc(PAGES_MAX_BODY);

	/* Stores only save round trips: when the CPUs are short, the
	 * threads that someone waits for (a read in another folder during a
	 * copy) go first, and a store that comes late is a READ instead. */
	(void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10);
	for (;;) {
		Store *s = g_async_queue_pop(fs->stores);
		gboolean stop = s->stop;

		if (!stop && !g_atomic_int_get(&fs->pages_stopping))
			store_one(fs, s, buf);
		store_free(s);
		if (stop)
			return NULL;
	}
}

/* FUSE OPEN and RELEASE of message @ino (read-write mounts). */
void fs_pages_open(Fs *fs, fuse_ino_t ino)
{
	gint *n;

	if (!fs->pages_open)
		return;
	g_mutex_lock(&fs->pages_lock);
	while (fs->pages_storing == ino)
		g_cond_wait(&fs->pages_cond, &fs->pages_lock);
	n = g_hash_table_lookup(fs->pages_open, &ino);
	if (!n) {
		n = g_new0(gint, 1);
		g_hash_table_insert(fs->pages_open,
				    g_memdup2(&ino, sizeof(ino)), n);
	}
	(*n)++;
	g_mutex_unlock(&fs->pages_lock);
}

void fs_pages_release(Fs *fs, fuse_ino_t ino)
{
	gint *n;

	if (!fs->pages_open)
		return;
	g_mutex_lock(&fs->pages_lock);
	n = g_hash_table_lookup(fs->pages_open, &ino);
	if (n && --(*n) == 0)
		g_hash_table_remove(fs->pages_open, &ino);
	g_mutex_unlock(&fs->pages_lock);
}

void fs_pages_start(Fs *fs)
{
	if (fs->ro)
		return;
	g_mutex_init(&fs->pages_lock);
	g_cond_init(&fs->pages_cond);
	fs->pages_open = g_hash_table_new_full(g_int64_hash, g_int64_equal,
					       g_free, g_free);
	fs->stores = g_async_queue_new_full((GDestroyNotify)store_free);
	fs->pages_thread = g_thread_new("pages", pages_thread, fs);
	cache_set_body_func(fs->cache, body_cb, fs);
}

void fs_pages_stop(Fs *fs)
{
	Store *stop;

	if (!fs->pages_thread)
		return;
	/* No more from the connections; what is queued is dropped. */
	cache_set_body_func(fs->cache, NULL, NULL);
	g_atomic_int_set(&fs->pages_stopping, 1);
	stop = g_new0(Store, 1);
	stop->stop = TRUE;
	g_async_queue_push(fs->stores, stop);
	g_thread_join(fs->pages_thread);
	g_async_queue_unref(fs->stores);
}

/* After the last request: opens and releases count until then. */
void fs_pages_clear(Fs *fs)
{
	if (!fs->pages_open)
		return;
	g_clear_pointer(&fs->pages_open, g_hash_table_unref);
	g_mutex_clear(&fs->pages_lock);
	g_cond_clear(&fs->pages_cond);
}
