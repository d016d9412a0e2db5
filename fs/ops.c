/* SPDX-License-Identifier: MIT */
/*
 * The FUSE operations. Each is a thin translation: unpack, call one cache_
 * function, map the error with errno_from_error(), reply exactly once -
 * the shape of libfuse's example/passthrough_ll.c.
 *
 * Inode numbers are derived from the cache's stable ids, so nothing needs
 * to be remembered per lookup and forget has nothing to free.
 */
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include <errno.h>
#include <linux/fs.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "fs.h"

#define INO_FOLDER_BASE (G_GUINT64_CONSTANT(1) << 32)
#define INO_MSG_BASE (G_GUINT64_CONSTANT(1) << 48)

/* Messages never change: let the kernel keep names, attributes and pages
 * for long. Changes found by a revalidation are pushed out precisely with
 * fuse_lowlevel_notify_inval_*(). */
#define ENTRY_TIMEOUT 86400.0
#define ATTR_TIMEOUT 86400.0

static const char *const op_names[] = {
	[FS_OP_LOOKUP] = "lookup",     [FS_OP_GETATTR] = "getattr",
	[FS_OP_OPENDIR] = "opendir",   [FS_OP_READDIR] = "readdir",
	[FS_OP_OPEN] = "open",	       [FS_OP_READ] = "read",
	[FS_OP_GETXATTR] = "getxattr", [FS_OP_LISTXATTR] = "listxattr",
	[FS_OP_STATFS] = "statfs",     [FS_OP_MODIFY] = "modify",
};

static void count_op(Fs *fs, FsOp op)
{
	g_atomic_int_inc(&fs->ops[op]);
}

/* The one table from errors to errno values. */
int errno_from_error(const GError *error)
{
	if (!error)
		return EIO;
	if (error->domain == CACHE_ERROR) {
		switch ((CacheErrorCode)error->code) {
		case CACHE_ERROR_NOT_FOUND:
			return ENOENT;
		case CACHE_ERROR_READONLY:
			return EROFS;
		case CACHE_ERROR_IO:
		case CACHE_ERROR_CORRUPT:
			return EIO;
		case CACHE_ERROR_INVALID:
			return EINVAL;
		case CACHE_ERROR_CONFLICT:
			return EAGAIN;
		case CACHE_ERROR_NOT_EMPTY:
			return ENOTEMPTY;
		case CACHE_ERROR_PERMISSION:
			return EPERM;
		}
	}
	if (error->domain == CACHE_NAME_ERROR)
		return EINVAL;
	if (error->domain == IMAP_ERROR) {
		switch ((ImapErrorCode)error->code) {
		case IMAP_ERROR_CONNECT:
		case IMAP_ERROR_DISCONNECTED:
		case IMAP_ERROR_BYE:
			return ENETDOWN;
		case IMAP_ERROR_TIMEOUT:
			return ETIMEDOUT;
		case IMAP_ERROR_NONEXISTENT:
		case IMAP_ERROR_EXPUNGEISSUED:
			return ENOENT;
		case IMAP_ERROR_ALREADYEXISTS:
			return EEXIST;
		case IMAP_ERROR_OVERQUOTA:
			return EDQUOT;
		case IMAP_ERROR_NOPERM:
		case IMAP_ERROR_AUTH:
			return EACCES;
		case IMAP_ERROR_INUSE:
			return EBUSY;
		case IMAP_ERROR_UIDVALIDITY:
			return ESTALE;
		case IMAP_ERROR_INVALID:
			return EINVAL;
		case IMAP_ERROR_UNSUPPORTED:
			return ENOTSUP;
		default:
			return EIO;
		}
	}
	return EIO;
}

static Fs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static fuse_ino_t folder_ino(guint64 id)
{
	return INO_FOLDER_BASE + id;
}

fuse_ino_t fs_folder_ino(guint64 folder_id)
{
	return folder_id ? folder_ino(folder_id) : FUSE_ROOT_ID;
}

/* The folder id of a directory inode (0 for the root), or -1. */
static gint64 dir_folder(fuse_ino_t ino)
{
	if (ino == FUSE_ROOT_ID)
		return 0;
	if (ino >= INO_FOLDER_BASE && ino < INO_MSG_BASE)
		return (gint64)(ino - INO_FOLDER_BASE);
	return -1;
}

static fuse_ino_t message_ino(guint64 id)
{
	return INO_MSG_BASE + id;
}

fuse_ino_t fs_message_ino(guint64 message_id)
{
	return message_ino(message_id);
}

static void folder_stat(Fs *fs, const CacheFolder *f, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = f ? folder_ino(f->id) : FUSE_ROOT_ID;
	st->st_mode = S_IFDIR | (fs->ro ? 0555 : 0755);
	st->st_nlink = 2;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	st->st_size = 4096;
	st->st_blocks = 8;
	fs_dir_mtime(fs, (fuse_ino_t)st->st_ino, &st->st_mtim);
	st->st_ctim = st->st_atim = st->st_mtim;
}

static void message_stat(Fs *fs, const CacheMessage *m, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = message_ino(m->id);
	st->st_mode = S_IFREG | (fs->ro ? 0444 : 0644);
	st->st_nlink = 1;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	st->st_size = (off_t)m->size;
	st->st_blocks = (blkcnt_t)((m->size + 511) / 512);
	st->st_blksize = 65536;
	st->st_mtime = st->st_ctime = st->st_atime = (time_t)m->internaldate;
}

/*
 * A message the server calls empty, in a read-only mount: the kernel takes
 * the size it is told for the file's length, and with no open to answer
 * (see SharedHandle) nothing would have it read past that. Its body is
 * fetched to know (RFC822.SIZE is only what the server announced, the
 * literal is the truth); offline, 0 stays.
 */
static gboolean size_in_doubt(const Fs *fs, guint64 size)
{
	return fs->ro && size == 0;
}

static CacheMessage *message_sized(Fs *fs, CacheMessage *m)
{
	CacheBody *b = cache_body_open(fs->cache, m->id, NULL);
	CacheMessage *now;
	char c;

	if (!b)
		return m;
	cache_body_read(b, &c, 1, 0, NULL);
	cache_body_close(b);
	if (!(now = cache_message_get(fs->cache, m->id)))
		return m;
	cache_message_unref(m);
	return now;
}

static void reply_error(fuse_req_t req, const GError *error)
{
	int err = errno_from_error(error);

	g_debug("error %s: %s", g_strerror(err),
		error ? error->message : "(none)");
	fuse_reply_err(req, err);
}

/* ---- inodes ---- */

static gboolean ino_is_folder(fuse_ino_t ino)
{
	return ino >= INO_FOLDER_BASE && ino < INO_MSG_BASE;
}

static gboolean ino_is_message(fuse_ino_t ino)
{
	return ino >= INO_MSG_BASE;
}

static void local_entry(Fs *fs, LocalFile *lf, struct fuse_entry_param *e)
{
	e->ino = lf->ino;
	fs_local_stat(fs, lf, &e->attr);
	/* Local files change under the kernel's nose: no caching. */
	e->attr_timeout = 0;
	e->entry_timeout = 0;
}

static void fs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	Fs *fs = fs_of(req);
	gint64 parent_id = dir_folder(parent);
	struct fuse_entry_param e = {.attr_timeout = ATTR_TIMEOUT,
				     .entry_timeout = ENTRY_TIMEOUT};
	g_autoptr(CacheFolder) f = NULL;
	g_autoptr(CacheFolder) pf = NULL;
	g_autoptr(CacheMessage) m = NULL;
	g_autoptr(LocalFile) lf = NULL;
	g_autoptr(GError) error = NULL;

	count_op(fs, FS_OP_LOOKUP);
	if (parent_id < 0)
		return (void)fuse_reply_err(req, ENOTDIR);
	lf = fs_local_lookup(fs, (guint64)parent_id, name);
	if (lf) {
		local_entry(fs, lf, &e);
		return (void)fuse_reply_entry(req, &e);
	}
	f = cache_folder_lookup(fs->cache, (guint64)parent_id, name);
	if (f) {
		e.ino = folder_ino(f->id);
		folder_stat(fs, f, &e.attr);
		return (void)fuse_reply_entry(req, &e);
	}
	if (!parent_id || !cache_is_message_name(name))
		return (void)fuse_reply_err(req, ENOENT);
	m = fs_alias_lookup(fs, (guint64)parent_id, name);
	if (m) {
		e.ino = message_ino(m->id);
		message_stat(fs, m, &e.attr);
		e.attr_timeout = e.entry_timeout = 0;
		return (void)fuse_reply_entry(req, &e);
	}
	pf = cache_folder_get(fs->cache, (guint64)parent_id);
	if (!pf || !pf->selectable)
		return (void)fuse_reply_err(req, ENOENT);
	m = cache_message_lookup(fs->cache, (guint64)parent_id, name, &error);
	if (!m)
		return reply_error(req, error);
	if (fs_local_is_hidden(fs, m->id))
		return (void)fuse_reply_err(req, ENOENT);
	if (size_in_doubt(fs, m->size))
		m = message_sized(fs, m);
	e.ino = message_ino(m->id);
	message_stat(fs, m, &e.attr);
	fuse_reply_entry(req, &e);
}

static void fs_getattr(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	Fs *fs = fs_of(req);
	struct stat st;
	double timeout = ATTR_TIMEOUT;

	count_op(fs, FS_OP_GETATTR);
	if (ino == FUSE_ROOT_ID) {
		folder_stat(fs, NULL, &st);
	} else if (fs_ino_is_local(ino)) {
		g_autoptr(LocalFile) lf = fs_local_get(fs, ino);

		if (!lf)
			return (void)fuse_reply_err(req, ENOENT);
		fs_local_stat(fs, lf, &st);
		timeout = 0;
	} else if (ino_is_folder(ino)) {
		g_autoptr(CacheFolder) f =
			cache_folder_get(fs->cache, ino - INO_FOLDER_BASE);

		if (!f)
			return (void)fuse_reply_err(req, ENOENT);
		folder_stat(fs, f, &st);
	} else {
		g_autoptr(CacheMessage) m =
			cache_message_get(fs->cache, ino - INO_MSG_BASE);

		if (!m && (m = fs_alias_by_id(fs, ino - INO_MSG_BASE)))
			timeout = 0;
		if (!m)
			return (void)fuse_reply_err(req, ENOENT);
		if (size_in_doubt(fs, m->size))
			m = message_sized(fs, m);
		message_stat(fs, m, &st);
	}
	fuse_reply_attr(req, &st, timeout);
}

/* ---- open handles ---- */

/* Give the kernel @handle as @fi's file handle. */
static void handle_open(Fs *fs, GHashTable *set, struct fuse_file_info *fi,
			gpointer handle)
{
	g_mutex_lock(&fs->handles_lock);
	g_hash_table_add(set, handle);
	g_mutex_unlock(&fs->handles_lock);
	fi->fh = (uint64_t)(uintptr_t)handle;
}

/* The kernel let go of @fi's file handle: free it (outside the lock). */
static void handle_release(Fs *fs, GHashTable *set, struct fuse_file_info *fi,
			   GDestroyNotify free_func)
{
	gpointer handle = (gpointer)(uintptr_t)fi->fh;

	g_mutex_lock(&fs->handles_lock);
	g_hash_table_steal(set, handle);
	g_mutex_unlock(&fs->handles_lock);
	free_func(handle);
}

/* ---- directories ---- */

typedef struct {
	char *name;
	struct stat st;
} DirEntry;

/*
 * An open directory: the listing taken at its first read (offset 0, again
 * after a rewind), so that offsets stay valid however the folder changes
 * while it is read. Taken at the read, not at opendir: the kernel checks
 * the directory's mtime just before it reads, and a listing older than
 * that mtime could stay in its cache (see dir_touch() in watch.c). The
 * messages are the folder's own immutable snapshot, held by reference: a
 * copy of 50,000 names and stats would be a quarter of the daemon's
 * memory.
 */
typedef struct {
	guint64 id; /* the folder; 0 for the root */
	GArray *head; /* DirEntry: ".", "..", the subfolders */
	GPtrArray *msgs; /* CacheMessage; NULL for the root */
	GArray *tail; /* DirEntry: local files */
} DirHandle;

static void dir_entry_clear(DirEntry *d)
{
	g_free(d->name);
}

static GArray *dir_entries_new(void)
{
	GArray *a = g_array_new(FALSE, FALSE, sizeof(DirEntry));

	g_array_set_clear_func(a, (GDestroyNotify)dir_entry_clear);
	return a;
}

static void dir_add(GArray *a, const char *name, const struct stat *st)
{
	DirEntry d = {.name = g_strdup(name), .st = *st};

	g_array_append_val(a, d);
}

static void dir_handle_empty(DirHandle *d)
{
	g_clear_pointer(&d->head, g_array_unref);
	g_clear_pointer(&d->msgs, g_ptr_array_unref);
	g_clear_pointer(&d->tail, g_array_unref);
}

static void dir_handle_free(DirHandle *d)
{
	dir_handle_empty(d);
	g_free(d);
}

G_DEFINE_AUTOPTR_CLEANUP_FUNC(DirHandle, dir_handle_free)

/* Take the listing of the open directory @d now. */
static gboolean dir_fill(Fs *fs, DirHandle *d, GError **error)
{
	g_autoptr(GPtrArray) children = NULL;
	g_autoptr(GPtrArray) locals = NULL;
	g_autoptr(CacheFolder) self = NULL;
	struct stat st;

	dir_handle_empty(d);
	d->head = dir_entries_new();
	d->tail = dir_entries_new();
	if (d->id) {
		self = cache_folder_get(fs->cache, d->id);
		/* Gone since opendir: an empty listing, as for a removed
		 * directory that is still open. */
		if (!self)
			return TRUE;
	}
	folder_stat(fs, self, &st);
	dir_add(d->head, ".", &st);
	dir_add(d->head, "..", &st);
	children = cache_folder_children(fs->cache, d->id);
	for (guint i = 0; i < children->len; i++) {
		folder_stat(fs, children->pdata[i], &st);
		dir_add(d->head, ((CacheFolder *)children->pdata[i])->name,
			&st);
	}
	if (self && self->selectable) {
		d->msgs = cache_folder_messages(fs->cache, d->id, error);
		if (!d->msgs) {
			dir_handle_empty(d);
			return FALSE;
		}
	}
	locals = fs_local_list(fs, d->id);
	for (guint i = 0; i < locals->len; i++) {
		LocalFile *lf = locals->pdata[i];

		fs_local_stat(fs, lf, &st);
		dir_add(d->tail, lf->name, &st);
	}
	return TRUE;
}

static void fs_opendir(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	Fs *fs = fs_of(req);
	g_autoptr(DirHandle) d = g_new0(DirHandle, 1);
	g_autoptr(GPtrArray) locals = NULL;
	g_autoptr(CacheFolder) self = NULL;

	count_op(fs, FS_OP_OPENDIR);
	if (ino_is_folder(ino)) {
		d->id = ino - INO_FOLDER_BASE;
		self = cache_folder_get(fs->cache, d->id);
		if (!self)
			return (void)fuse_reply_err(req, ENOENT);
		/* The folder is brought in step here (a SELECT the first
		 * time), then watched; readdir takes the listing. */
		if (self->selectable) {
			g_autoptr(GPtrArray) msgs = NULL;
			g_autoptr(GError) error = NULL;

			msgs = cache_folder_messages(fs->cache, d->id, &error);
			if (!msgs)
				return reply_error(req, error);
			cache_watch_folder(fs->cache, d->id);
		}
	} else if (ino != FUSE_ROOT_ID) {
		return (void)fuse_reply_err(req, ENOTDIR);
	}
	/* Local files come and go (and hide the messages they stand for):
	 * don't let the kernel keep the listing of a folder that has some. */
	locals = fs_local_list(fs, d->id);
	fi->cache_readdir = locals->len == 0;
	fi->keep_cache = fi->cache_readdir;
	handle_open(fs, fs->open_dirs, fi, g_steal_pointer(&d));
	fuse_reply_open(req, fi);
}

/* Entry i of an open directory (an offset); FALSE past the end. A message
 * that a local file now hides gives an entry without a name. */
static gboolean dir_entry_at(Fs *fs, const DirHandle *d, gsize i,
			     const char **name, struct stat *st)
{
	gsize nmsgs = d->msgs ? d->msgs->len : 0;

	*name = NULL;
	if (i < d->head->len) {
		const DirEntry *e = &g_array_index(d->head, DirEntry, i);

		*name = e->name;
		*st = e->st;
		return TRUE;
	}
	i -= d->head->len;
	if (i < nmsgs) {
		const CacheMessage *m = d->msgs->pdata[i];

		if (fs_local_is_hidden(fs, m->id))
			return TRUE;
		*name = m->name;
		message_stat(fs, m, st);
		return TRUE;
	}
	i -= nmsgs;
	if (i < d->tail->len) {
		const DirEntry *e = &g_array_index(d->tail, DirEntry, i);

		*name = e->name;
		*st = e->st;
		return TRUE;
	}
	return FALSE;
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi, gboolean plus)
{
	Fs *fs = fs_of(req);
	DirHandle *d = (DirHandle *)(uintptr_t)fi->fh;
	g_autofree char *buf = NULL;
	size_t used = 0;
	const char *name;
	struct stat st;

	count_op(fs, FS_OP_READDIR);
	/* The kernel reads one open directory one request at a time. */
	if (off == 0 || !d->head) {
		g_autoptr(GError) error = NULL;

		if (!dir_fill(fs, d, &error))
			return reply_error(req, error);
	}
	buf = g_malloc(size);
	for (gsize i = (gsize)off; dir_entry_at(fs, d, i, &name, &st); i++) {
		size_t n;

		if (!name)
			continue;
		if (plus) {
			struct fuse_entry_param e = {
				.ino = st.st_ino,
				.attr = st,
				.attr_timeout = ATTR_TIMEOUT,
				.entry_timeout = ENTRY_TIMEOUT,
			};

			/* "." and ".." must not take a lookup count. A
			 * message of doubtful size gets no attributes here:
			 * its lookup learns the size. */
			if (i < 2 || (ino_is_message(st.st_ino) &&
				      size_in_doubt(fs, (guint64)st.st_size)))
				e.ino = 0;
			n = fuse_add_direntry_plus(req, buf + used, size - used,
						   name, &e, (off_t)i + 1);
		} else {
			n = fuse_add_direntry(req, buf + used, size - used,
					      name, &st, (off_t)i + 1);
		}
		if (n > size - used)
			break;
		used += n;
	}
	fuse_reply_buf(req, buf, used);
}

static void fs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, fi, FALSE);
}

static void fs_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size,
			   off_t off, struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, fi, TRUE);
}

static void fs_releasedir(fuse_req_t req, fuse_ino_t ino,
			  struct fuse_file_info *fi)
{
	Fs *fs = fs_of(req);

	handle_release(fs, fs->open_dirs, fi, (GDestroyNotify)dir_handle_free);
	fuse_reply_err(req, 0);
}

/* ---- files ---- */

/* What an open file handle points at. */
typedef struct {
	CacheBody *body; /* a message, or a shadow's message */
	LocalFile *local; /* a local file */
	guint64 size_shown; /* the message size the kernel was told */
} Handle;

static Handle *handle_of(struct fuse_file_info *fi)
{
	return (Handle *)(uintptr_t)fi->fh;
}

static void handle_free(Handle *h)
{
	cache_body_close(h->body);
	fs_local_unref(h->local);
	g_free(h);
}

/* A handle to read message @ino. */
static Handle *message_handle(Fs *fs, fuse_ino_t ino, GError **error)
{
	CacheBody *body = cache_body_open(fs->cache, ino - INO_MSG_BASE, error);
	Handle *h;

	if (!body)
		return NULL;
	h = g_new0(Handle, 1);
	h->body = body;
	h->size_shown = cache_body_size(body);
	return h;
}

/*
 * A read-only mount does without OPEN and RELEASE: its first open is
 * answered ENOSYS, and from then on the kernel opens and closes files on
 * its own, keeping their page cache (the bytes of a message never change),
 * and sends FLUSH once, which gets ENOSYS too. A second grep -r over cached
 * mail then costs no request at all; with opens it cost two per file, a
 * round trip through this daemon each time (30 us here against 3 us for a
 * local open). A read-write mount needs them: saving a message is an open
 * for writing and a close.
 *
 * Reads then come without a handle of ours: they find one here by inode.
 * The last few files read stay open, the oldest is closed when another
 * comes in; a read holds a reference, so a handle closed meanwhile lives
 * until that read is answered.
 */
#define SHARED_HANDLES 16

typedef struct {
	fuse_ino_t ino;
	gint ref;
	GMutex lock; /* one read at a time: a CacheBody is not shared */
	Handle *h;
} SharedHandle;

static void shared_handle_unref(SharedHandle *sh)
{
	if (!sh || !g_atomic_int_dec_and_test(&sh->ref))
		return;
	handle_free(sh->h);
	g_mutex_clear(&sh->lock);
	g_free(sh);
}

/* The handle of @ino, made the latest, with a reference for the caller. */
static SharedHandle *shared_handle_find_locked(Fs *fs, fuse_ino_t ino)
{
	for (GList *l = fs->shared->head; l; l = l->next) {
		SharedHandle *sh = l->data;

		if (sh->ino != ino)
			continue;
		g_queue_unlink(fs->shared, l);
		g_queue_push_head_link(fs->shared, l);
		g_atomic_int_inc(&sh->ref);
		return sh;
	}
	return NULL;
}

static SharedHandle *shared_handle_get(Fs *fs, fuse_ino_t ino, GError **error)
{
	SharedHandle *sh, *found, *oldest = NULL;
	Handle *h;

	g_mutex_lock(&fs->handles_lock);
	sh = shared_handle_find_locked(fs, ino);
	g_mutex_unlock(&fs->handles_lock);
	if (sh)
		return sh;
	/* No local files here: a read-only mount makes none. */
	if (!ino_is_message(ino)) {
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_NOT_FOUND,
			    "no such message");
		return NULL;
	}
	if (!(h = message_handle(fs, ino, error)))
		return NULL;
	sh = g_new0(SharedHandle, 1);
	sh->ino = ino;
	sh->ref = 2; /* the list's and the caller's */
	g_mutex_init(&sh->lock);
	sh->h = h;
	g_mutex_lock(&fs->handles_lock);
	found = shared_handle_find_locked(fs, ino);
	if (!found) {
		g_queue_push_head(fs->shared, sh);
		if (fs->shared->length > SHARED_HANDLES)
			oldest = g_queue_pop_tail(fs->shared);
	}
	g_mutex_unlock(&fs->handles_lock);
	shared_handle_unref(oldest);
	if (found) {
		/* Another read made one first. */
		sh->ref = 1;
		shared_handle_unref(sh);
		return found;
	}
	return sh;
}

/*
 * Open files and directories are also kept here, for the end: a RELEASE
 * the kernel had no time to send before an unmount by signal would leave
 * them behind.
 */
void fs_handles_init(Fs *fs)
{
	g_mutex_init(&fs->handles_lock);
	fs->open_dirs = g_hash_table_new_full(
		NULL, NULL, (GDestroyNotify)dir_handle_free, NULL);
	fs->open_files = g_hash_table_new_full(
		NULL, NULL, (GDestroyNotify)handle_free, NULL);
	fs->shared = g_queue_new();
}

void fs_handles_clear(Fs *fs)
{
	g_hash_table_unref(fs->open_dirs);
	g_hash_table_unref(fs->open_files);
	g_queue_free_full(fs->shared, (GDestroyNotify)shared_handle_unref);
	g_mutex_clear(&fs->handles_lock);
}

/*
 * A message opened for writing (nano saves in place) becomes a local file
 * that replaces the message once it is uploaded: until then the message
 * stays on the server untouched.
 */
static LocalFile *rewrite_message(Fs *fs, guint64 message_id, gboolean trunc,
				  GError **error)
{
	g_autoptr(CacheMessage) m = cache_message_get(fs->cache, message_id);
	g_autoptr(LocalFile) lf = NULL;

	if (!m) {
		g_set_error(error, CACHE_ERROR, CACHE_ERROR_NOT_FOUND,
			    "no such message");
		return NULL;
	}
	lf = fs_local_create(fs, m->folder_id, m->name, 0644, error);
	if (!lf)
		return NULL;
	if (!trunc && !fs_local_fill(fs, lf, m->id, error)) {
		fs_local_unlink(fs, lf);
		return NULL;
	}
	lf->replaces = m->id;
	lf->flags = g_strdup(m->flags);
	lf->dirty = trunc;
	return g_steal_pointer(&lf);
}

static void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	Fs *fs = fs_of(req);
	g_autoptr(GError) error = NULL;
	gboolean writing =
		(fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC);
	Handle *h;

	count_op(fs, FS_OP_OPEN);
	/* No handles: see SharedHandle. */
	if (fs->ro)
		return (void)fuse_reply_err(req, writing ? EROFS : ENOSYS);
	if (fs_ino_is_local(ino)) {
		h = g_new0(Handle, 1);
		h->local = fs_local_get(fs, ino);
		if (!h->local) {
			g_free(h);
			return (void)fuse_reply_err(req, ENOENT);
		}
		if (h->local->shadow_of && !writing) {
			h->body = cache_body_open(fs->cache,
						  h->local->shadow_of, NULL);
		} else if (h->local->shadow_of &&
			   !fs_local_materialize(fs, h->local, &error)) {
			handle_free(h);
			return reply_error(req, error);
		}
		if ((fi->flags & O_TRUNC) && h->local->fd >= 0) {
			if (ftruncate(h->local->fd, 0) == 0)
				h->local->dirty = TRUE;
		}
		fi->direct_io = 1;
	} else if (ino_is_message(ino) && writing) {
		LocalFile *lf =
			rewrite_message(fs, ino - INO_MSG_BASE,
					(fi->flags & O_TRUNC) != 0, &error);

		if (!lf)
			return reply_error(req, error);
		h = g_new0(Handle, 1);
		h->local = lf;
		fi->direct_io = 1;
	} else if (ino_is_message(ino)) {
		if (!(h = message_handle(fs, ino, &error)))
			return reply_error(req, error);
		/* The bytes of a message never change: keep the page cache. */
		fi->keep_cache = 1;
		/* No message is empty: a size of 0 is a server's mistake, and
		 * the kernel would not even ask. */
		if (h->size_shown == 0)
			fi->direct_io = 1;
		fi->noflush = 1;
	} else {
		return (void)fuse_reply_err(req, EISDIR);
	}
	/* No store of its body into the kernel's cache while it is open. */
	if (ino_is_message(ino))
		fs_pages_open(fs, ino);
	handle_open(fs, fs->open_files, fi, h);
	fuse_reply_open(req, fi);
}

/* A buffer per FUSE thread for replies to reads: a fresh one of up to
 * 1 MiB per read would be mapped and faulted in each time. */
static GPrivate read_buffer_key =
	G_PRIVATE_INIT((GDestroyNotify)g_byte_array_unref);

static char *read_buffer(size_t size)
{
	GByteArray *b = g_private_get(&read_buffer_key);

	if (!b) {
		b = g_byte_array_sized_new((guint)size);
		g_private_set(&read_buffer_key, b);
	}
	if (b->len < size)
		g_byte_array_set_size(b, (guint)size);
	return (char *)b->data;
}

static void read_reply(fuse_req_t req, fuse_ino_t ino, Handle *h, size_t size,
		       off_t off)
{
	g_autoptr(GError) error = NULL;
	char *buf;
	gssize n;

	if (h->local && h->local->fd >= 0) {
		buf = read_buffer(size);
		n = pread(h->local->fd, buf, size, off);
		if (n < 0)
			return (void)fuse_reply_err(req, errno);
		return (void)fuse_reply_buf(req, buf, (size_t)n);
	}
	if (!h->body)
		return (void)fuse_reply_err(req, EIO);
	/* A complete body file (fetched now if need be): the kernel moves
	 * its pages to the reply (splice), nothing is copied through us. */
	int fd = cache_body_fetch_fd(h->body, size, off, &error);

	if (fd < 0 && error)
		return reply_error(req, error);
	if (fd >= 0 && cache_body_size(h->body) == h->size_shown) {
		/* No more than the file holds: libfuse takes a short splice
		 * for a pipe that may hold more, and reads the rest into a
		 * fresh buffer of the whole request's size to make sure. */
		size_t left =
			(guint64)off < h->size_shown
				? (size_t)MIN((guint64)size,
					      h->size_shown - (guint64)off)
				: 0;
		struct fuse_bufvec bv = FUSE_BUFVEC_INIT(left);

		if (!left)
			return (void)fuse_reply_buf(req, NULL, 0);
		bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
		bv.buf[0].fd = fd;
		bv.buf[0].pos = off;
		fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE);
		return;
	}
	buf = read_buffer(size);
	n = cache_body_read(h->body, buf, size, off, &error);
	if (n < 0)
		return reply_error(req, error);
	if (cache_body_size(h->body) > h->size_shown) {
		/* The body is bigger than the server announced: the kernel
		 * must ask for the size again (attributes only), or it would
		 * stop reading at the old one. (A smaller body needs
		 * nothing: the short read tells the kernel.) */
		h->size_shown = cache_body_size(h->body);
		fuse_lowlevel_notify_inval_inode(fs_of(req)->se, ino, -1, 0);
	}
	fuse_reply_buf(req, buf, (size_t)n);
}

static void fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	Fs *fs = fs_of(req);
	g_autoptr(GError) error = NULL;
	SharedHandle *sh;

	count_op(fs, FS_OP_READ);
	if (handle_of(fi))
		return read_reply(req, ino, handle_of(fi), size, off);
	/* A read-only mount's file, opened without us. */
	if (!(sh = shared_handle_get(fs, ino, &error)))
		return reply_error(req, error);
	g_mutex_lock(&sh->lock);
	read_reply(req, ino, sh->h, size, off);
	g_mutex_unlock(&sh->lock);
	shared_handle_unref(sh);
}

static void fs_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
		     size_t size, off_t off, struct fuse_file_info *fi)
{
	Handle *h = handle_of(fi);
	ssize_t n;

	count_op(fs_of(req), FS_OP_MODIFY);
	if (!h || !h->local || h->local->fd < 0)
		return (void)fuse_reply_err(req, EBADF);
	n = pwrite(h->local->fd, buf, size, off);
	if (n < 0)
		return (void)fuse_reply_err(req, errno);
	h->local->dirty = TRUE;
	clock_gettime(CLOCK_REALTIME, &h->local->mtime);
	fuse_reply_write(req, (size_t)n);
}

/* IMAP wants CRLF line ends: a file saved with bare LFs gets CRs. */
static GBytes *read_for_upload(LocalFile *lf, GError **error)
{
	g_autofree char *data = NULL;
	gsize len = 0;
	GString *out;

	if (!g_file_get_contents(lf->path, &data, &len, error))
		return NULL;
	out = g_string_sized_new(len + len / 32 + 2);
	for (gsize i = 0; i < len; i++) {
		if (data[i] == '\n' && (i == 0 || data[i - 1] != '\r'))
			g_string_append_c(out, '\r');
		g_string_append_c(out, data[i]);
	}
	return g_string_free_to_bytes(out);
}

/*
 * Store a local *.eml file on the server: APPEND first; only then expunge
 * what it replaces (an in-place rewrite) and the messages that editors'
 * backups stood for. If the APPEND fails nothing else happens: the old
 * version stays.
 */
static gboolean local_upload(Fs *fs, LocalFile *lf, GError **error)
{
	g_autoptr(GBytes) bytes = NULL;
	g_autoptr(CacheMessage) m = NULL;
	g_autoptr(GPtrArray) shadows = NULL;
	g_autoptr(GError) local = NULL;

	if (!lf->dirty || lf->fd < 0 || fs_is_scratch_name(lf->name) ||
	    lf->unlinked)
		return TRUE;
	if (!(bytes = read_for_upload(lf, error)))
		return FALSE;
	if (g_bytes_get_size(bytes) == 0)
		return TRUE; /* nothing to store (yet) */
	m = cache_message_append(fs->cache, lf->folder_id, bytes, lf->flags,
				 &local);
	if (local) {
		g_propagate_error(error, g_steal_pointer(&local));
		return FALSE;
	}
	lf->dirty = FALSE;
	if (lf->replaces &&
	    !cache_message_delete(fs->cache, lf->replaces, FALSE, &local)) {
		g_warning("stored the new version, but the old message "
			  "stays: %s",
			  local->message);
		g_clear_error(&local);
	}
	shadows = fs_local_shadows_of(fs, lf->folder_id, lf->name);
	for (guint i = 0; i < shadows->len; i++) {
		LocalFile *sh = shadows->pdata[i];
		guint64 old = sh->shadow_of;

		/* The backup keeps its bytes here; the old message goes. */
		if (!fs_local_materialize(fs, sh, &local)) {
			g_warning("keeping the old message: %s",
				  local->message);
			g_clear_error(&local);
			continue;
		}
		fs_local_forget_shadow(fs, sh);
		if (!cache_message_delete(fs->cache, old, FALSE, &local)) {
			g_warning("could not remove the old version: %s",
				  local->message);
			g_clear_error(&local);
		}
	}
	/* Later writes to the same handle store a newer version again. */
	lf->replaces = m ? m->id : 0;
	return TRUE;
}

static void fs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	Fs *fs = fs_of(req);
	Handle *h = handle_of(fi);
	g_autoptr(GError) error = NULL;

	/* Opened without us (read-only): nothing to store, ever. */
	if (!h)
		return (void)fuse_reply_err(req, ENOSYS);
	if (h->local && !local_upload(fs, h->local, &error))
		return reply_error(req, error);
	fuse_reply_err(req, 0);
}

static void fs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
		     struct fuse_file_info *fi)
{
	Handle *h = handle_of(fi);

	if (h && h->local && h->local->fd >= 0 && fsync(h->local->fd) < 0)
		return (void)fuse_reply_err(req, errno);
	fuse_reply_err(req, 0);
}

static void fs_release(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	Fs *fs = fs_of(req);
	Handle *h = handle_of(fi);

	if (!h)
		return (void)fuse_reply_err(req, 0);
	if (ino_is_message(ino))
		fs_pages_release(fs, ino);
	if (h->local && !fs_is_scratch_name(h->local->name) &&
	    !h->local->dirty && !h->local->shadow_of && !h->local->unlinked &&
	    h->local->fd >= 0 && lseek(h->local->fd, 0, SEEK_END) > 0) {
		/* Uploaded: the message shows under its own name now. */
		fs_local_unlink(fs, h->local);
		fs_invalidate(fs, h->local->folder_id, h->local->name);
	}
	handle_release(fs, fs->open_files, fi, (GDestroyNotify)handle_free);
	fuse_reply_err(req, 0);
}

static void fs_create(fuse_req_t req, fuse_ino_t parent, const char *name,
		      mode_t mode, struct fuse_file_info *fi)
{
	Fs *fs = fs_of(req);
	gint64 folder = dir_folder(parent);
	struct fuse_entry_param e = {0};
	g_autoptr(GError) error = NULL;
	g_autoptr(CacheFolder) f = NULL;
	Handle *h;

	count_op(fs, FS_OP_MODIFY);
	if (fs->ro)
		return (void)fuse_reply_err(req, EROFS);
	if (folder < 0)
		return (void)fuse_reply_err(req, ENOTDIR);
	if (!fs_is_scratch_name(name)) {
		/* A message needs a folder that can hold messages. */
		f = folder ? cache_folder_get(fs->cache, (guint64)folder)
			   : NULL;
		if (!f || !f->selectable)
			return (void)fuse_reply_err(req, EPERM);
	}
	h = g_new0(Handle, 1);
	h->local = fs_local_create(fs, (guint64)folder, name, mode, &error);
	if (!h->local) {
		g_free(h);
		return reply_error(req, error);
	}
	h->local->dirty = !fs_is_scratch_name(name);
	local_entry(fs, h->local, &e);
	fi->direct_io = 1;
	handle_open(fs, fs->open_files, fi, h);
	fuse_reply_create(req, &e, fi);
}

static void fs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
		       int to_set, struct fuse_file_info *fi)
{
	Fs *fs = fs_of(req);
	g_autoptr(LocalFile) lf = NULL;
	struct stat st;

	count_op(fs, FS_OP_MODIFY);
	if (fs->ro)
		return (void)fuse_reply_err(req, EROFS);
	if (dir_folder(ino) >= 0) {
		/* Folders have no mode or times of their own on the server:
		 * accept what rsync and cp -a set (and forget it), refuse
		 * another owner or a size. */
		g_autoptr(CacheFolder) f =
			ino == FUSE_ROOT_ID
				? NULL
				: cache_folder_get(fs->cache,
						   (guint64)dir_folder(ino));

		if ((to_set & FUSE_SET_ATTR_SIZE) ||
		    ((to_set & FUSE_SET_ATTR_UID) && attr->st_uid != fs->uid) ||
		    ((to_set & FUSE_SET_ATTR_GID) && attr->st_gid != fs->gid))
			return (void)fuse_reply_err(req, EPERM);
		if (ino != FUSE_ROOT_ID && !f)
			return (void)fuse_reply_err(req, ENOENT);
		folder_stat(fs, f, &st);
		return (void)fuse_reply_attr(req, &st, ATTR_TIMEOUT);
	}
	if (!fs_ino_is_local(ino)) {
		/* Messages are what the server has: no mode, owner, times
		 * or size of our own. */
		return (void)fuse_reply_err(req, EPERM);
	}
	lf = fs_local_get(fs, ino);
	if (!lf)
		return (void)fuse_reply_err(req, ENOENT);
	if (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
		if (((to_set & FUSE_SET_ATTR_UID) && attr->st_uid != fs->uid) ||
		    ((to_set & FUSE_SET_ATTR_GID) && attr->st_gid != fs->gid))
			return (void)fuse_reply_err(req, EPERM);
	}
	if (to_set & FUSE_SET_ATTR_SIZE) {
		if (lf->shadow_of)
			return (void)fuse_reply_err(req, EPERM);
		if (ftruncate(lf->fd, attr->st_size) < 0)
			return (void)fuse_reply_err(req, errno);
		lf->dirty = TRUE;
	}
	if (to_set & FUSE_SET_ATTR_MODE)
		lf->mode = attr->st_mode & 07777;
	if (to_set & FUSE_SET_ATTR_MTIME_NOW)
		clock_gettime(CLOCK_REALTIME, &lf->mtime);
	else if (to_set & FUSE_SET_ATTR_MTIME)
		lf->mtime = attr->st_mtim;
	fs_local_stat(fs, lf, &st);
	fuse_reply_attr(req, &st, 0);
}

/* ---- xattrs ---- */

static char *format_internaldate(const CacheMessage *m)
{
	static const char *const months[] = {"Jan", "Feb", "Mar", "Apr",
					     "May", "Jun", "Jul", "Aug",
					     "Sep", "Oct", "Nov", "Dec"};
	g_autoptr(GDateTime) utc =
		g_date_time_new_from_unix_utc(m->internaldate);
	g_autoptr(GTimeZone) tz = NULL;
	g_autoptr(GDateTime) local = NULL;
	int off = m->tz;

	if (!utc)
		return g_strdup("");
	tz = g_time_zone_new_offset(off * 60);
	local = g_date_time_to_timezone(utc, tz);
	if (!local)
		local = g_date_time_ref(utc), off = 0;
	return g_strdup_printf(
		"%02d-%s-%04d %02d:%02d:%02d %c%02d%02d",
		g_date_time_get_day_of_month(local),
		months[g_date_time_get_month(local) - 1],
		g_date_time_get_year(local), g_date_time_get_hour(local),
		g_date_time_get_minute(local), g_date_time_get_second(local),
		off < 0 ? '-' : '+', ABS(off) / 60, ABS(off) % 60);
}

static char *xattr_value(Fs *fs, fuse_ino_t ino, const char *name)
{
	if (fs_ino_is_local(ino)) {
		g_autoptr(LocalFile) lf = fs_local_get(fs, ino);

		if (lf && lf->flags && strcmp(name, "user.imap.flags") == 0)
			return g_strdup(lf->flags);
		return NULL;
	}
	if (ino == FUSE_ROOT_ID) {
		if (strcmp(name, "user.imapfs.counters") == 0) {
			GString *out = g_string_new(NULL);

			cache_append_counters(fs->cache, out);
			for (guint i = 0; i < FS_OP_COUNT; i++)
				g_string_append_printf(
					out, "fuse.%s %d\n", op_names[i],
					g_atomic_int_get(&fs->ops[i]));
			g_string_append_printf(
				out, "fuse.pages_stored %d\n",
				g_atomic_int_get(&fs->pages_stored));
			return g_string_free(out, FALSE);
		}
		return NULL;
	}
	if (ino_is_folder(ino)) {
		g_autoptr(CacheFolder) f =
			cache_folder_get(fs->cache, ino - INO_FOLDER_BASE);

		if (f && f->raw && strcmp(name, "user.imap.folder") == 0)
			return g_strdup(f->raw);
		return NULL;
	}
	g_autoptr(CacheMessage) m =
		cache_message_get(fs->cache, ino - INO_MSG_BASE);

	if (!m)
		return NULL;
	if (strcmp(name, "user.imap.flags") == 0)
		return g_strdup(m->flags);
	if (strcmp(name, "user.imap.uid") == 0)
		return g_strdup_printf("%u", m->uid);
	if (strcmp(name, "user.imap.uidvalidity") == 0)
		return g_strdup_printf("%u", m->uidvalidity);
	if (strcmp(name, "user.imap.internaldate") == 0)
		return format_internaldate(m);
	if (strcmp(name, "user.imap.folder") == 0) {
		g_autoptr(CacheFolder) f =
			cache_folder_get(fs->cache, m->folder_id);

		return f && f->raw ? g_strdup(f->raw) : NULL;
	}
	return NULL;
}

static gboolean is_user_xattr(const char *name)
{
	return strncmp(name, "user.", 5) == 0;
}

static void reply_xattr(fuse_req_t req, const char *value, gsize len,
			size_t size)
{
	if (size == 0)
		return (void)fuse_reply_xattr(req, len);
	if (len > size)
		return (void)fuse_reply_err(req, ERANGE);
	fuse_reply_buf(req, value, len);
}

static void fs_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			size_t size)
{
	Fs *fs = fs_of(req);
	g_autofree char *value = NULL;

	count_op(fs, FS_OP_GETXATTR);
	/* Only the user namespace exists here. "Not supported" (not "no
	 * such attribute") for the others (security.selinux, the POSIX ACLs)
	 * lets ls -l remember it per file system instead of asking once per
	 * file: a request each, most of a warm ls -l. */
	if (!is_user_xattr(name))
		return (void)fuse_reply_err(req, ENOTSUP);
	value = xattr_value(fs, ino, name);
	if (!value)
		return (void)fuse_reply_err(req, ENODATA);
	reply_xattr(req, value, strlen(value), size);
}

static void fs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	Fs *fs = fs_of(req);
	g_autoptr(GString) list = g_string_new(NULL);

	count_op(fs, FS_OP_LISTXATTR);
	if (ino == FUSE_ROOT_ID) {
		g_string_append_len(list, "user.imapfs.counters", 21);
	} else if (fs_ino_is_local(ino)) {
		g_autofree char *v = xattr_value(fs, ino, "user.imap.flags");

		if (v && *v)
			g_string_append_len(list, "user.imap.flags", 16);
	} else if (ino_is_folder(ino)) {
		g_autofree char *v = xattr_value(fs, ino, "user.imap.folder");

		if (v)
			g_string_append_len(list, "user.imap.folder", 17);
	} else {
		/* Only the flags: they are what a copy should carry (and
		 * what may be set). The UID, UIDVALIDITY, date and folder
		 * are read by name: listed, cp -a, rsync -X and tar
		 * --xattrs would put server bookkeeping on local copies,
		 * at two requests per attribute and file. And only when
		 * there are flags: an empty value says what a missing one
		 * does (a copy put back is appended without flags either
		 * way), and not listing it spares cp -a two of its eight
		 * requests per file. */
		g_autofree char *v = xattr_value(fs, ino, "user.imap.flags");

		if (v && *v)
			g_string_append_len(list, "user.imap.flags", 16);
	}
	reply_xattr(req, list->str, list->len, size);
}

/* ---- changes ---- */

static int modify_check(Fs *fs)
{
	count_op(fs, FS_OP_MODIFY);
	return fs->ro ? EROFS : 0;
}

static void set_flags(fuse_req_t req, fuse_ino_t ino, const char *value,
		      size_t size)
{
	Fs *fs = fs_of(req);
	g_autofree char *flags = g_strndup(value, size);
	g_autoptr(GError) error = NULL;

	g_strstrip(flags);
	if (fs_ino_is_local(ino)) {
		g_autoptr(LocalFile) lf = fs_local_get(fs, ino);

		if (!lf)
			return (void)fuse_reply_err(req, ENOENT);
		g_free(lf->flags);
		lf->flags = g_steal_pointer(&flags);
		return (void)fuse_reply_err(req, 0);
	}
	if (!ino_is_message(ino))
		return (void)fuse_reply_err(req, ENOTSUP);
	if (!cache_message_set_flags(fs->cache, ino - INO_MSG_BASE, flags,
				     &error))
		return reply_error(req, error);
	fuse_reply_err(req, 0);
}

static void fs_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			const char *value, size_t size, int flags)
{
	int err = modify_check(fs_of(req));

	if (err)
		return (void)fuse_reply_err(req, err);
	if (strcmp(name, "user.imap.flags") != 0)
		return (void)fuse_reply_err(req, ENOTSUP);
	set_flags(req, ino, value, size);
}

static void fs_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	int err = modify_check(fs_of(req));

	if (err)
		return (void)fuse_reply_err(req, err);
	if (!is_user_xattr(name))
		return (void)fuse_reply_err(req, ENOTSUP);
	if (strcmp(name, "user.imap.flags") != 0)
		return (void)fuse_reply_err(req, ENODATA);
	set_flags(req, ino, "", 0);
}

static void fs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name,
		     mode_t mode)
{
	Fs *fs = fs_of(req);
	gint64 folder = dir_folder(parent);
	struct fuse_entry_param e = {.attr_timeout = ATTR_TIMEOUT,
				     .entry_timeout = ENTRY_TIMEOUT};
	g_autoptr(CacheFolder) f = NULL;
	g_autoptr(GError) error = NULL;
	int err = modify_check(fs);

	if (err)
		return (void)fuse_reply_err(req, err);
	if (folder < 0)
		return (void)fuse_reply_err(req, ENOTDIR);
	f = cache_folder_create(fs->cache, (guint64)folder, name, &error);
	if (!f)
		return reply_error(req, error);
	e.ino = folder_ino(f->id);
	folder_stat(fs, f, &e.attr);
	fuse_reply_entry(req, &e);
}

static void fs_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	Fs *fs = fs_of(req);
	gint64 folder = dir_folder(parent);
	g_autoptr(CacheFolder) f = NULL;
	g_autoptr(GPtrArray) locals = NULL;
	g_autoptr(GError) error = NULL;
	int err = modify_check(fs);

	if (err)
		return (void)fuse_reply_err(req, err);
	if (folder < 0)
		return (void)fuse_reply_err(req, ENOTDIR);
	f = cache_folder_lookup(fs->cache, (guint64)folder, name);
	if (!f)
		return (void)fuse_reply_err(req, ENOENT);
	locals = fs_local_list(fs, f->id);
	if (locals->len)
		return (void)fuse_reply_err(req, ENOTEMPTY);
	if (!cache_folder_delete(fs->cache, f->id, &error))
		return reply_error(req, error);
	fuse_reply_err(req, 0);
}

static void fs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	Fs *fs = fs_of(req);
	gint64 folder = dir_folder(parent);
	g_autoptr(LocalFile) lf = NULL;
	g_autoptr(CacheMessage) m = NULL;
	g_autoptr(GError) error = NULL;
	int err = modify_check(fs);

	if (err)
		return (void)fuse_reply_err(req, err);
	if (folder < 0)
		return (void)fuse_reply_err(req, ENOTDIR);
	lf = fs_local_lookup(fs, (guint64)folder, name);
	if (lf) {
		/* Removing a backup that still stands for its message
		 * removes the message. */
		if (lf->shadow_of &&
		    !cache_message_delete(fs->cache, lf->shadow_of,
					  fs->delete_to_trash, &error))
			return reply_error(req, error);
		fs_local_unlink(fs, lf);
		return (void)fuse_reply_err(req, 0);
	}
	if (!folder || !cache_is_message_name(name))
		return (void)fuse_reply_err(req, ENOENT);
	m = cache_message_lookup(fs->cache, (guint64)folder, name, &error);
	if (!m || fs_local_is_hidden(fs, m->id))
		return m ? (void)fuse_reply_err(req, ENOENT)
			 : reply_error(req, error);
	if (!cache_message_delete(fs->cache, m->id, fs->delete_to_trash,
				  &error))
		return reply_error(req, error);
	fuse_reply_err(req, 0);
}

/* A local file renamed to a message name is stored (replacing @target, a
 * message of that name, if any). */
static void rename_local(fuse_req_t req, LocalFile *lf, guint64 dst,
			 const char *newname, guint64 target)
{
	Fs *fs = fs_of(req);
	g_autoptr(GError) error = NULL;
	g_autoptr(LocalFile) old = fs_local_lookup(fs, dst, newname);
	guint64 from = lf->folder_id;
	g_autofree char *oldname = g_strdup(lf->name);

	if (lf->shadow_of && from == dst &&
	    g_strcmp0(newname, lf->shadow_name) == 0) {
		/* The backup goes back: the message shows again. */
		fs_local_unlink(fs, lf);
		fs_invalidate(fs, dst, newname);
		return (void)fuse_reply_err(req, 0);
	}
	if (lf->shadow_of && !fs_is_scratch_name(newname))
		return (void)fuse_reply_err(req, EPERM);
	if (old && old != lf)
		fs_local_unlink(fs, old);
	fs_local_rename(fs, lf, dst, newname);
	if (fs_is_scratch_name(newname) || lf->fd < 0)
		return (void)fuse_reply_err(req, 0);

	/* sed -i, nano, "cp x.tmp x.eml": the bytes become a message. */
	g_autoptr(CacheFolder) f =
		dst ? cache_folder_get(fs->cache, dst) : NULL;

	if (!f || !f->selectable) {
		fs_local_rename(fs, lf, from, oldname);
		return (void)fuse_reply_err(req, EPERM);
	}
	lf->dirty = TRUE;
	if (target)
		lf->replaces = target;
	if (!local_upload(fs, lf, &error)) {
		fs_local_rename(fs, lf, from, oldname);
		return reply_error(req, error);
	}
	fs_local_unlink(fs, lf);
	fs_invalidate(fs, dst, newname);
	fuse_reply_err(req, 0);
}

static void fs_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		      fuse_ino_t newparent, const char *newname,
		      unsigned int flags)
{
	Fs *fs = fs_of(req);
	gint64 src = dir_folder(parent);
	gint64 dst = dir_folder(newparent);
	g_autoptr(LocalFile) lf = NULL;
	g_autoptr(CacheFolder) f = NULL;
	g_autoptr(CacheMessage) m = NULL;
	g_autoptr(CacheMessage) target = NULL;
	g_autoptr(GError) error = NULL;
	int err = modify_check(fs);

	if (err)
		return (void)fuse_reply_err(req, err);
	if (src < 0 || dst < 0)
		return (void)fuse_reply_err(req, ENOTDIR);
	if (flags & RENAME_EXCHANGE)
		return (void)fuse_reply_err(req, EINVAL);
	if (dst && cache_is_message_name(newname)) {
		target = cache_message_lookup(fs->cache, (guint64)dst, newname,
					      NULL);
		if (target && fs_local_is_hidden(fs, target->id))
			g_clear_pointer(&target, cache_message_unref);
	}
	if ((flags & RENAME_NOREPLACE) &&
	    (target || fs_local_lookup(fs, (guint64)dst, newname)))
		return (void)fuse_reply_err(req, EEXIST);

	lf = fs_local_lookup(fs, (guint64)src, name);
	if (lf)
		return rename_local(req, lf, (guint64)dst, newname,
				    target ? target->id : 0);

	f = cache_folder_lookup(fs->cache, (guint64)src, name);
	if (f) {
		g_autoptr(CacheFolder) there =
			cache_folder_lookup(fs->cache, (guint64)dst, newname);

		if (there)
			return (void)fuse_reply_err(req, EEXIST);
		if (!cache_folder_rename(fs->cache, f->id, (guint64)dst,
					 newname, &error))
			return reply_error(req, error);
		return (void)fuse_reply_err(req, 0);
	}

	if (!src || !cache_is_message_name(name))
		return (void)fuse_reply_err(req, ENOENT);
	m = cache_message_lookup(fs->cache, (guint64)src, name, &error);
	if (!m || fs_local_is_hidden(fs, m->id))
		return m ? (void)fuse_reply_err(req, ENOENT)
			 : reply_error(req, error);
	if (src == dst) {
		if (strcmp(name, newname) == 0)
			return (void)fuse_reply_err(req, 0);
		if (fs_is_scratch_name(newname)) {
			/* An editor's backup (vim, emacs): the message stays
			 * on the server until the new version is stored. */
			g_autoptr(LocalFile) sh =
				fs_local_shadow(fs, (guint64)src, newname, m);

			return (void)fuse_reply_err(req, 0);
		}
		/* Names are the server's: a message cannot be renamed in
		 * its folder. */
		return (void)fuse_reply_err(req, EPERM);
	}
	if (!dst) {
		/* The top level holds folders only. */
		return (void)fuse_reply_err(req, EPERM);
	}
	/* Batched with the next moves (see cache_message_move_later). */
	if (!cache_message_move_later(fs->cache, m->id, (guint64)dst, &error))
		return reply_error(req, error);
	/* The kernel now has the old inode under @newname; the message
	 * shows under its own name, and @newname stays an alias for a
	 * moment (mv looks at every destination it made). */
	fs_alias_add(fs, (guint64)dst, newname, m);
	fuse_reply_err(req, 0);
}

/* ---- the file system ---- */

static void fs_statfs(fuse_req_t req, fuse_ino_t ino)
{
	Fs *fs = fs_of(req);
	CacheStats s = cache_stats(fs->cache);
	struct statvfs st = {0};
	const guint64 bsize = 4096;

	count_op(fs, FS_OP_STATFS);
	st.f_bsize = bsize;
	st.f_frsize = bsize;
	if (s.quota_limit_kib) {
		st.f_blocks = s.quota_limit_kib * 1024 / bsize;
		st.f_bfree = (s.quota_limit_kib -
			      MIN(s.quota_used_kib, s.quota_limit_kib)) *
			     1024 / bsize;
	} else {
		/* No quota: report the space of the cache's disk, which
		 * is what bounds a copy into the mount. */
		struct statvfs local;

		if (statvfs(fs->cache_dir, &local) == 0) {
			st.f_blocks = local.f_blocks * local.f_frsize / bsize;
			st.f_bfree = local.f_bavail * local.f_frsize / bsize;
		}
	}
	st.f_bavail = st.f_bfree;
	st.f_files = s.messages;
	st.f_ffree = G_MAXUINT32;
	st.f_favail = st.f_ffree;
	st.f_namemax = 255;
	fuse_reply_statfs(req, &st);
}

static void fs_init(void *userdata, struct fuse_conn_info *conn)
{
	/* Listings come with attributes in one go. */
	if (conn->capable & FUSE_CAP_READDIRPLUS)
		conn->want |= FUSE_CAP_READDIRPLUS;
	conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
	if (conn->capable & FUSE_CAP_CACHE_SYMLINKS)
		conn->want |= FUSE_CAP_CACHE_SYMLINKS;
	/* No POSIX ACLs: their attributes are "not supported" like every
	 * name outside the user namespace (see fs_getxattr), which ls -l
	 * remembers per file system. (With FUSE_CAP_POSIX_ACL the kernel
	 * would take that answer for a failed permission check.) */
	conn->want &= ~FUSE_CAP_POSIX_ACL;
	/* Reads check the attributes when they were invalidated (a body
	 * found to differ from its announced size). */
	if (conn->capable & FUSE_CAP_AUTO_INVAL_DATA)
		conn->want |= FUSE_CAP_AUTO_INVAL_DATA;
	/* Replies to reads of cached bodies are spliced from their files. */
	if (conn->capable & FUSE_CAP_SPLICE_WRITE)
		conn->want |= FUSE_CAP_SPLICE_WRITE;
	if (conn->capable & FUSE_CAP_SPLICE_MOVE)
		conn->want |= FUSE_CAP_SPLICE_MOVE;
	conn->max_background = 64;
}

const struct fuse_lowlevel_ops fs_ops = {
	.init = fs_init,
	.lookup = fs_lookup,
	.getattr = fs_getattr,
	.setattr = fs_setattr,
	.opendir = fs_opendir,
	.readdir = fs_readdir,
	.readdirplus = fs_readdirplus,
	.releasedir = fs_releasedir,
	.open = fs_open,
	.read = fs_read,
	.write = fs_write,
	.flush = fs_flush,
	.fsync = fs_fsync,
	.release = fs_release,
	.getxattr = fs_getxattr,
	.listxattr = fs_listxattr,
	.setxattr = fs_setxattr,
	.removexattr = fs_removexattr,
	.mkdir = fs_mkdir,
	.unlink = fs_unlink,
	.rmdir = fs_rmdir,
	.rename = fs_rename,
	.create = fs_create,
	.statfs = fs_statfs,
};
