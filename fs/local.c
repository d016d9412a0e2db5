/* SPDX-License-Identifier: MIT */
/*
 * Files that live only in this mount: a new *.eml file until it is
 * uploaded, an editor's scratch files (swap files, "4913", "x~", "#x#",
 * "sedXXXXXX") for the life of the mount, and "shadows" - a message an
 * editor renamed to a backup name while it writes the new version. A
 * shadow reads the message's bytes and keeps the message on the server
 * until the new version is safely appended.
 */
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <string.h>
#include <unistd.h>

#include "fs.h"

#define INO_LOCAL_BASE (G_GUINT64_CONSTANT(1) << 62)

static void alias_free_cb(gpointer p);

static void local_free(LocalFile *lf)
{
	if (lf->fd >= 0)
		close(lf->fd);
	if (lf->path)
		g_unlink(lf->path);
	g_free(lf->path);
	g_free(lf->name);
	g_free(lf->shadow_name);
	g_free(lf->flags);
	g_free(lf);
}

LocalFile *fs_local_ref(LocalFile *lf)
{
	g_atomic_int_inc(&lf->ref);
	return lf;
}

void fs_local_unref(LocalFile *lf)
{
	if (lf && g_atomic_int_dec_and_test(&lf->ref))
		local_free(lf);
}

gboolean fs_ino_is_local(fuse_ino_t ino)
{
	return ino >= INO_LOCAL_BASE;
}

void fs_local_init(Fs *fs)
{
	g_mutex_init(&fs->local_lock);
	fs->locals = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free,
					   (GDestroyNotify)fs_local_unref);
	fs->hidden = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free,
					   NULL);
	fs->next_local = INO_LOCAL_BASE;
	fs->aliases = g_ptr_array_new_with_free_func(alias_free_cb);
}

void fs_local_clear(Fs *fs)
{
	g_hash_table_unref(fs->locals);
	g_hash_table_unref(fs->hidden);
	g_ptr_array_unref(fs->aliases);
	g_mutex_clear(&fs->local_lock);
}

static guint64 *key(guint64 v)
{
	guint64 *k = g_new(guint64, 1);

	*k = v;
	return k;
}

LocalFile *fs_local_get(Fs *fs, fuse_ino_t ino)
{
	guint64 k = ino;
	LocalFile *lf;

	g_mutex_lock(&fs->local_lock);
	lf = g_hash_table_lookup(fs->locals, &k);
	if (lf)
		fs_local_ref(lf);
	g_mutex_unlock(&fs->local_lock);
	return lf;
}

LocalFile *fs_local_lookup(Fs *fs, guint64 folder_id, const char *name)
{
	GHashTableIter it;
	gpointer v;
	LocalFile *found = NULL;

	g_mutex_lock(&fs->local_lock);
	g_hash_table_iter_init(&it, fs->locals);
	while (g_hash_table_iter_next(&it, NULL, &v)) {
		LocalFile *lf = v;

		if (!lf->unlinked && lf->folder_id == folder_id &&
		    strcmp(lf->name, name) == 0) {
			found = fs_local_ref(lf);
			break;
		}
	}
	g_mutex_unlock(&fs->local_lock);
	return found;
}

GPtrArray *fs_local_list(Fs *fs, guint64 folder_id)
{
	GPtrArray *out =
		g_ptr_array_new_with_free_func((GDestroyNotify)fs_local_unref);
	GHashTableIter it;
	gpointer v;

	g_mutex_lock(&fs->local_lock);
	g_hash_table_iter_init(&it, fs->locals);
	while (g_hash_table_iter_next(&it, NULL, &v)) {
		LocalFile *lf = v;

		if (!lf->unlinked && lf->folder_id == folder_id)
			g_ptr_array_add(out, fs_local_ref(lf));
	}
	g_mutex_unlock(&fs->local_lock);
	return out;
}

static LocalFile *local_new(Fs *fs, guint64 folder_id, const char *name,
			    mode_t mode)
{
	LocalFile *lf = g_new0(LocalFile, 1);

	lf->ref = 1;
	lf->fd = -1;
	lf->folder_id = folder_id;
	lf->name = g_strdup(name);
	lf->mode = mode & 07777;
	clock_gettime(CLOCK_REALTIME, &lf->mtime);
	g_mutex_lock(&fs->local_lock);
	lf->ino = fs->next_local++;
	g_hash_table_insert(fs->locals, key(lf->ino), fs_local_ref(lf));
	g_mutex_unlock(&fs->local_lock);
	return lf;
}

static gboolean local_open_temp(Fs *fs, LocalFile *lf, GError **error)
{
	lf->path = g_build_filename(fs->cache_dir, "tmp", "localXXXXXX", NULL);
	lf->fd = g_mkstemp_full(lf->path, O_RDWR | O_CLOEXEC, 0600);
	if (lf->fd < 0) {
		int e = errno;

		g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(e),
			    "cannot create a local file: %s", g_strerror(e));
		return FALSE;
	}
	return TRUE;
}

LocalFile *fs_local_create(Fs *fs, guint64 folder_id, const char *name,
			   mode_t mode, GError **error)
{
	LocalFile *lf = local_new(fs, folder_id, name, mode);

	if (!local_open_temp(fs, lf, error)) {
		fs_local_unlink(fs, lf);
		fs_local_unref(lf);
		return NULL;
	}
	return lf;
}

LocalFile *fs_local_shadow(Fs *fs, guint64 folder_id, const char *name,
			   const CacheMessage *m)
{
	LocalFile *lf = local_new(fs, folder_id, name, 0644);

	lf->shadow_of = m->id;
	lf->shadow_name = g_strdup(m->name);
	lf->mtime.tv_sec = m->internaldate;
	lf->mtime.tv_nsec = 0;
	g_mutex_lock(&fs->local_lock);
	g_hash_table_add(fs->hidden, key(m->id));
	g_mutex_unlock(&fs->local_lock);
	return lf;
}

/* Copy the bytes of message @message_id into a new temp file of @lf. */
gboolean fs_local_fill(Fs *fs, LocalFile *lf, guint64 message_id,
		       GError **error)
{
	CacheBody *body = cache_body_open(fs->cache, message_id, error);
	g_autofree char *buf = g_malloc(1 << 20);
	goffset off = 0;

	if (!body)
		return FALSE;
	if (lf->fd < 0 && !local_open_temp(fs, lf, error)) {
		cache_body_close(body);
		return FALSE;
	}
	for (;;) {
		gssize n = cache_body_read(body, buf, 1 << 20, off, error);

		if (n < 0 ||
		    (n > 0 && pwrite(lf->fd, buf, (size_t)n, off) != n)) {
			if (n >= 0)
				g_set_error(error, G_FILE_ERROR,
					    G_FILE_ERROR_IO,
					    "cannot write a local copy");
			cache_body_close(body);
			return FALSE;
		}
		if (n == 0)
			break;
		off += n;
	}
	cache_body_close(body);
	return TRUE;
}

/* Give a shadow bytes of its own, so its message can leave the server. */
gboolean fs_local_materialize(Fs *fs, LocalFile *lf, GError **error)
{
	if (!lf->shadow_of || lf->fd >= 0)
		return TRUE;
	if (fs_local_fill(fs, lf, lf->shadow_of, error))
		return TRUE;
	if (lf->fd >= 0)
		close(lf->fd);
	lf->fd = -1;
	if (lf->path)
		g_unlink(lf->path);
	g_clear_pointer(&lf->path, g_free);
	return FALSE;
}

void fs_local_forget_shadow(Fs *fs, LocalFile *lf)
{
	guint64 id = lf->shadow_of;

	g_mutex_lock(&fs->local_lock);
	g_hash_table_remove(fs->hidden, &id);
	lf->shadow_of = 0;
	g_mutex_unlock(&fs->local_lock);
}

void fs_local_unlink(Fs *fs, LocalFile *lf)
{
	guint64 k = lf->ino;

	g_mutex_lock(&fs->local_lock);
	lf->unlinked = TRUE;
	if (lf->shadow_of) {
		guint64 id = lf->shadow_of;

		g_hash_table_remove(fs->hidden, &id);
	}
	g_hash_table_remove(fs->locals, &k);
	g_mutex_unlock(&fs->local_lock);
}

void fs_local_rename(Fs *fs, LocalFile *lf, guint64 folder_id, const char *name)
{
	g_mutex_lock(&fs->local_lock);
	lf->folder_id = folder_id;
	g_free(lf->name);
	lf->name = g_strdup(name);
	g_mutex_unlock(&fs->local_lock);
}

gboolean fs_local_is_hidden(Fs *fs, guint64 message_id)
{
	gboolean hidden;

	g_mutex_lock(&fs->local_lock);
	hidden = g_hash_table_contains(fs->hidden, &message_id);
	g_mutex_unlock(&fs->local_lock);
	return hidden;
}

/* Shadows in @folder_id that stand for the message once named @name. */
GPtrArray *fs_local_shadows_of(Fs *fs, guint64 folder_id, const char *name)
{
	GPtrArray *out =
		g_ptr_array_new_with_free_func((GDestroyNotify)fs_local_unref);
	GHashTableIter it;
	gpointer v;

	g_mutex_lock(&fs->local_lock);
	g_hash_table_iter_init(&it, fs->locals);
	while (g_hash_table_iter_next(&it, NULL, &v)) {
		LocalFile *lf = v;

		if (lf->shadow_of && lf->folder_id == folder_id &&
		    g_strcmp0(lf->shadow_name, name) == 0)
			g_ptr_array_add(out, fs_local_ref(lf));
	}
	g_mutex_unlock(&fs->local_lock);
	return out;
}

void fs_local_stat(Fs *fs, LocalFile *lf, struct stat *st)
{
	struct stat real;

	memset(st, 0, sizeof(*st));
	st->st_ino = lf->ino;
	st->st_mode = S_IFREG | lf->mode;
	st->st_nlink = lf->unlinked ? 0 : 1;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	if (lf->fd >= 0 && fstat(lf->fd, &real) == 0) {
		st->st_size = real.st_size;
	} else if (lf->shadow_of) {
		g_autoptr(CacheMessage) m =
			cache_message_get(fs->cache, lf->shadow_of);

		st->st_size = m ? (off_t)m->size : 0;
	}
	st->st_blocks = (st->st_size + 511) / 512;
	st->st_blksize = 65536;
	st->st_mtim = lf->mtime;
	st->st_ctim = lf->mtime;
	st->st_atim = lf->mtime;
}

gboolean fs_is_scratch_name(const char *name)
{
	return !cache_is_message_name(name);
}

/* ---- aliases ----
 * After `mv a.eml Folder/`, the kernel holds the name the user gave, and
 * tools check it at once (mv stats every destination it made). The message
 * shows in Folder under its own name (a new UID); the given name stays an
 * alias of the moved message for a short while, then is invalidated. */

typedef struct {
	guint64 folder_id;
	char *name;
	CacheMessage *m;
	gint64 expires;
} Alias;

static void alias_free(Alias *a)
{
	g_free(a->name);
	cache_message_unref(a->m);
	g_free(a);
}

static void aliases_prune_locked(Fs *fs)
{
	gint64 now = g_get_monotonic_time();

	for (guint i = 0; i < fs->aliases->len; i++) {
		Alias *a = fs->aliases->pdata[i];

		if (a->expires <= now)
			g_ptr_array_remove_index(fs->aliases, i--);
	}
}

void fs_alias_add(Fs *fs, guint64 folder_id, const char *name, CacheMessage *m)
{
	Alias *a = g_new0(Alias, 1);

	a->folder_id = folder_id;
	a->name = g_strdup(name);
	a->m = cache_message_ref(m);
	a->expires = g_get_monotonic_time() + FS_ALIAS_TTL_US;
	g_mutex_lock(&fs->local_lock);
	aliases_prune_locked(fs);
	g_ptr_array_add(fs->aliases, a);
	g_mutex_unlock(&fs->local_lock);
	fs_invalidate_later(fs, folder_id, name);
}

CacheMessage *fs_alias_lookup(Fs *fs, guint64 folder_id, const char *name)
{
	CacheMessage *m = NULL;

	g_mutex_lock(&fs->local_lock);
	aliases_prune_locked(fs);
	for (guint i = 0; i < fs->aliases->len; i++) {
		Alias *a = fs->aliases->pdata[i];

		if (a->folder_id == folder_id && strcmp(a->name, name) == 0)
			m = cache_message_ref(a->m);
	}
	g_mutex_unlock(&fs->local_lock);
	return m;
}

CacheMessage *fs_alias_by_id(Fs *fs, guint64 message_id)
{
	CacheMessage *m = NULL;

	g_mutex_lock(&fs->local_lock);
	aliases_prune_locked(fs);
	for (guint i = 0; i < fs->aliases->len; i++) {
		Alias *a = fs->aliases->pdata[i];

		if (a->m->id == message_id)
			m = cache_message_ref(a->m);
	}
	g_mutex_unlock(&fs->local_lock);
	return m;
}

static void alias_free_cb(gpointer p)
{
	alias_free(p);
}
