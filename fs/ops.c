/* SPDX-License-Identifier: MIT */
/*
 * The FUSE operations. Each is a thin translation: unpack, call one cache_
 * function, map the error with errno_from_error(), reply exactly once -
 * the shape of libfuse's example/passthrough_ll.c.
 *
 * Inode numbers are derived from the cache's stable ids, so nothing needs
 * to be remembered per lookup and forget has nothing to free.
 */
#define FUSE_USE_VERSION 35
#include <fuse_lowlevel.h>

#include <errno.h>
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
		}
	}
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
	return folder_ino(folder_id);
}

static fuse_ino_t message_ino(guint64 id)
{
	return INO_MSG_BASE + id;
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
	st->st_mtime = st->st_ctime = st->st_atime = fs->mount_time;
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

static void fs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	Fs *fs = fs_of(req);
	guint64 parent_id = 0;
	struct fuse_entry_param e = {.attr_timeout = ATTR_TIMEOUT,
				     .entry_timeout = ENTRY_TIMEOUT};
	g_autoptr(CacheFolder) f = NULL;
	g_autoptr(CacheFolder) pf = NULL;
	g_autoptr(CacheMessage) m = NULL;
	g_autoptr(GError) error = NULL;

	count_op(fs, FS_OP_LOOKUP);
	if (ino_is_folder(parent))
		parent_id = parent - INO_FOLDER_BASE;
	else if (parent != FUSE_ROOT_ID)
		return (void)fuse_reply_err(req, ENOTDIR);

	f = cache_folder_lookup(fs->cache, parent_id, name);
	if (f) {
		e.ino = folder_ino(f->id);
		folder_stat(fs, f, &e.attr);
		return (void)fuse_reply_entry(req, &e);
	}
	if (!parent_id || !cache_is_message_name(name))
		return (void)fuse_reply_err(req, ENOENT);
	pf = cache_folder_get(fs->cache, parent_id);
	if (!pf || !pf->selectable)
		return (void)fuse_reply_err(req, ENOENT);
	m = cache_message_lookup(fs->cache, parent_id, name, &error);
	if (!m)
		return reply_error(req, error);
	e.ino = message_ino(m->id);
	message_stat(fs, m, &e.attr);
	fuse_reply_entry(req, &e);
}

static void fs_getattr(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	Fs *fs = fs_of(req);
	struct stat st;

	count_op(fs, FS_OP_GETATTR);
	if (ino == FUSE_ROOT_ID) {
		folder_stat(fs, NULL, &st);
	} else if (ino_is_folder(ino)) {
		g_autoptr(CacheFolder) f =
			cache_folder_get(fs->cache, ino - INO_FOLDER_BASE);

		if (!f)
			return (void)fuse_reply_err(req, ENOENT);
		folder_stat(fs, f, &st);
	} else {
		g_autoptr(CacheMessage) m =
			cache_message_get(fs->cache, ino - INO_MSG_BASE);

		if (!m)
			return (void)fuse_reply_err(req, ENOENT);
		message_stat(fs, m, &st);
	}
	fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

/* ---- directories ---- */

typedef struct {
	char *name;
	struct stat st;
} DirEntry;

static void dir_entry_clear(DirEntry *d)
{
	g_free(d->name);
}

static void dir_add(GArray *a, const char *name, const struct stat *st)
{
	DirEntry d = {.name = g_strdup(name), .st = *st};

	g_array_append_val(a, d);
}

/* The listing is taken once at opendir: offsets stay valid however the
 * folder changes while it is read. */
static void fs_opendir(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	Fs *fs = fs_of(req);
	guint64 id = 0;
	g_autoptr(GArray) entries = g_array_new(FALSE, FALSE, sizeof(DirEntry));
	g_autoptr(GPtrArray) children = NULL;
	g_autoptr(CacheFolder) self = NULL;
	struct stat st;

	count_op(fs, FS_OP_OPENDIR);
	g_array_set_clear_func(entries, (GDestroyNotify)dir_entry_clear);
	if (ino_is_folder(ino)) {
		id = ino - INO_FOLDER_BASE;
		self = cache_folder_get(fs->cache, id);
		if (!self)
			return (void)fuse_reply_err(req, ENOENT);
	} else if (ino != FUSE_ROOT_ID) {
		return (void)fuse_reply_err(req, ENOTDIR);
	}
	folder_stat(fs, self, &st);
	dir_add(entries, ".", &st);
	dir_add(entries, "..", &st);
	children = cache_folder_children(fs->cache, id);
	for (guint i = 0; i < children->len; i++) {
		folder_stat(fs, children->pdata[i], &st);
		dir_add(entries, ((CacheFolder *)children->pdata[i])->name,
			&st);
	}
	if (self && self->selectable) {
		g_autoptr(GError) error = NULL;
		g_autoptr(GPtrArray) msgs =
			cache_folder_messages(fs->cache, id, &error);

		if (!msgs)
			return reply_error(req, error);
		for (guint i = 0; i < msgs->len; i++) {
			message_stat(fs, msgs->pdata[i], &st);
			dir_add(entries, ((CacheMessage *)msgs->pdata[i])->name,
				&st);
		}
	}
	fi->fh = (uint64_t)(uintptr_t)g_steal_pointer(&entries);
	fi->cache_readdir = 1;
	fi->keep_cache = 1;
	fuse_reply_open(req, fi);
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi, gboolean plus)
{
	GArray *entries = (GArray *)(uintptr_t)fi->fh;
	g_autofree char *buf = g_malloc(size);
	size_t used = 0;

	count_op(fs_of(req), FS_OP_READDIR);
	for (gsize i = (gsize)off; i < entries->len; i++) {
		DirEntry *d = &g_array_index(entries, DirEntry, i);
		size_t n;

		if (plus) {
			struct fuse_entry_param e = {
				.ino = d->st.st_ino,
				.attr = d->st,
				.attr_timeout = ATTR_TIMEOUT,
				.entry_timeout = ENTRY_TIMEOUT,
			};

			/* "." and ".." must not take a lookup count. */
			if (i < 2)
				e.ino = 0;
			n = fuse_add_direntry_plus(req, buf + used, size - used,
						   d->name, &e, (off_t)i + 1);
		} else {
			n = fuse_add_direntry(req, buf + used, size - used,
					      d->name, &d->st, (off_t)i + 1);
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
	g_array_unref((GArray *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

/* ---- files ---- */

static void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	Fs *fs = fs_of(req);
	g_autoptr(GError) error = NULL;
	CacheBody *body;

	count_op(fs, FS_OP_OPEN);
	if (!ino_is_message(ino))
		return (void)fuse_reply_err(req, EISDIR);
	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC))
		return (void)fuse_reply_err(req, fs->ro ? EROFS : EACCES);
	body = cache_body_open(fs->cache, ino - INO_MSG_BASE, &error);
	if (!body)
		return reply_error(req, error);
	fi->fh = (uint64_t)(uintptr_t)body;
	/* The bytes of a message never change: keep the page cache. */
	fi->keep_cache = 1;
	fi->noflush = 1;
	fuse_reply_open(req, fi);
}

static void fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	CacheBody *body = (CacheBody *)(uintptr_t)fi->fh;
	g_autoptr(GError) error = NULL;
	g_autofree char *buf = g_malloc(size);
	gssize n;

	count_op(fs_of(req), FS_OP_READ);
	n = cache_body_read(body, buf, size, off, &error);
	if (n < 0)
		return reply_error(req, error);
	fuse_reply_buf(req, buf, (size_t)n);
}

static void fs_release(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	cache_body_close((CacheBody *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

/* ---- xattrs ---- */

static const char *const message_xattrs[] = {
	"user.imap.flags",	  "user.imap.uid",    "user.imap.uidvalidity",
	"user.imap.internaldate", "user.imap.folder",
};

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
	if (ino == FUSE_ROOT_ID) {
		if (strcmp(name, "user.imapfs.counters") == 0) {
			GString *out = g_string_new(NULL);

			cache_append_counters(fs->cache, out);
			for (guint i = 0; i < FS_OP_COUNT; i++)
				g_string_append_printf(
					out, "fuse.%s %d\n", op_names[i],
					g_atomic_int_get(&fs->ops[i]));
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
	} else if (ino_is_folder(ino)) {
		g_autofree char *v = xattr_value(fs, ino, "user.imap.folder");

		if (v)
			g_string_append_len(list, "user.imap.folder", 17);
	} else {
		for (guint i = 0; i < G_N_ELEMENTS(message_xattrs); i++)
			g_string_append_len(list, message_xattrs[i],
					    (gssize)strlen(message_xattrs[i]) +
						    1);
	}
	reply_xattr(req, list->str, list->len, size);
}

/* ---- changes (not yet supported beyond refusing them clearly) ---- */

static int refuse(Fs *fs)
{
	count_op(fs, FS_OP_MODIFY);
	return fs->ro ? EROFS : EPERM;
}

static void fs_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			const char *value, size_t size, int flags)
{
	fuse_reply_err(req, refuse(fs_of(req)));
}

static void fs_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	fuse_reply_err(req, refuse(fs_of(req)));
}

static void fs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name,
		     mode_t mode)
{
	fuse_reply_err(req, refuse(fs_of(req)));
}

static void fs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	fuse_reply_err(req, refuse(fs_of(req)));
}

static void fs_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	fuse_reply_err(req, refuse(fs_of(req)));
}

static void fs_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		      fuse_ino_t newparent, const char *newname,
		      unsigned int flags)
{
	fuse_reply_err(req, refuse(fs_of(req)));
}

static void fs_create(fuse_req_t req, fuse_ino_t parent, const char *name,
		      mode_t mode, struct fuse_file_info *fi)
{
	fuse_reply_err(req, refuse(fs_of(req)));
}

static void fs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
		       int to_set, struct fuse_file_info *fi)
{
	fuse_reply_err(req, refuse(fs_of(req)));
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
