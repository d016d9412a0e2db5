/* SPDX-License-Identifier: MIT */
/* Declarations shared by the files of fs/ (the FUSE daemon). */
#pragma once

#include <sys/types.h>

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include "cache.h"
#include "imap.h"

typedef struct {
	ImapConfig imap; /* host, port, user, tls, cafile, auth, secret */
	char *account; /* "user@host" or a config section name */
	char *mountpoint;
	char *cache_dir;
	CacheKeep cache_keep;
	guint64 cache_size;
	gboolean ro;
	gboolean delete_to_trash; /* -o delete=trash */
	gboolean offline; /* don't connect before mounting */
	guint poll_s; /* revalidate folders in use this often; 0: never */
	gboolean check; /* --check: probe the server and exit */
	gboolean debug;
	gboolean foreground;
} FsOptions;

/* Log in, print capabilities and folders; returns the exit status. */
int fs_check(const FsOptions *opts);

typedef enum {
	FS_OP_LOOKUP,
	FS_OP_GETATTR,
	FS_OP_OPENDIR,
	FS_OP_READDIR,
	FS_OP_OPEN,
	FS_OP_READ,
	FS_OP_GETXATTR,
	FS_OP_LISTXATTR,
	FS_OP_STATFS,
	FS_OP_MODIFY,
	FS_OP_COUNT,
} FsOp;

/* The mounted file system; the userdata of every FUSE request. */
typedef struct {
	Cache *cache;
	char *cache_dir;
	gboolean ro;
	uid_t uid;
	gid_t gid;
	time_t mount_time;
	gint ops[FS_OP_COUNT];
	gboolean delete_to_trash;
	/* local.c */
	GMutex local_lock;
	GHashTable *locals; /* ino -> LocalFile * */
	GHashTable *hidden; /* message ids shown as a shadow instead */
	guint64 next_local;
	GPtrArray *aliases; /* names given to moved messages (local.c) */
	/* ops.c: open files and directories (freed at the end if the kernel
	 * did not release them) */
	GMutex handles_lock;
	GHashTable *open_dirs;
	GHashTable *open_files;
	GQueue *shared; /* read-only mounts: SharedHandle, latest first */
	/* watch.c */
	struct fuse_session *se;
	guint poll_s;
	GAsyncQueue *inval;
	GAsyncQueue *inval_later;
	GThread *later_thread;
	GThread *inval_thread;
	GThread *poll_thread;
	gint inval_done;
	GMutex poll_lock;
	GCond poll_cond;
	gboolean stopping;
	/* pages.c */
	GAsyncQueue *stores;
	GThread *pages_thread;
	GMutex pages_lock;
	GCond pages_cond;
	/* message ino -> open count (gint *); NULL: no stores (-o ro) */
	GHashTable *pages_open;
	fuse_ino_t pages_storing; /* the ino of the store under way, or 0 */
	gint pages_stopping;
	gint pages_stored;
	GMutex mtime_lock;
	/* ino -> gint64 ns: when the directory's listing last changed */
	GHashTable *dir_mtimes;
} Fs;

/* A file that exists only in this mount (local.c). */
typedef struct {
	gint ref;
	fuse_ino_t ino;
	guint64 folder_id; /* 0: the top level */
	char *name;
	int fd; /* its bytes, or -1 for a shadow that reads its message */
	char *path; /* the temp file behind fd */
	guint64 shadow_of; /* message it stands for (an editor's backup) */
	char *shadow_name; /* that message's file name */
	guint64 replaces; /* message to expunge once this is uploaded */
	char *flags; /* user.imap.flags set before the upload */
	gboolean dirty; /* written since the last upload */
	gboolean unlinked;
	mode_t mode;
	struct timespec mtime;
} LocalFile;

void fs_local_init(Fs *fs);
void fs_local_clear(Fs *fs);
void fs_handles_init(Fs *fs);
void fs_handles_clear(Fs *fs);
LocalFile *fs_local_ref(LocalFile *lf);
void fs_local_unref(LocalFile *lf);
gboolean fs_ino_is_local(fuse_ino_t ino);
LocalFile *fs_local_get(Fs *fs, fuse_ino_t ino);
LocalFile *fs_local_lookup(Fs *fs, guint64 folder_id, const char *name);
GPtrArray *fs_local_list(Fs *fs, guint64 folder_id);
LocalFile *fs_local_create(Fs *fs, guint64 folder_id, const char *name,
			   mode_t mode, GError **error);
LocalFile *fs_local_shadow(Fs *fs, guint64 folder_id, const char *name,
			   const CacheMessage *m);
gboolean fs_local_fill(Fs *fs, LocalFile *lf, guint64 message_id,
		       GError **error);
gboolean fs_local_materialize(Fs *fs, LocalFile *lf, GError **error);
/* Drop the kernel's entry @name in folder @folder_id (and its listing). */
void fs_invalidate(Fs *fs, guint64 folder_id, const char *name);
void fs_local_forget_shadow(Fs *fs, LocalFile *lf);
void fs_local_unlink(Fs *fs, LocalFile *lf);
void fs_local_rename(Fs *fs, LocalFile *lf, guint64 folder_id,
		     const char *name);
gboolean fs_local_is_hidden(Fs *fs, guint64 message_id);
GPtrArray *fs_local_shadows_of(Fs *fs, guint64 folder_id, const char *name);
void fs_local_stat(Fs *fs, LocalFile *lf, struct stat *st);
gboolean fs_is_scratch_name(const char *name);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(LocalFile, fs_local_unref)

#define FS_ALIAS_TTL_US (2 * G_USEC_PER_SEC)
void fs_alias_add(Fs *fs, guint64 folder_id, const char *name, CacheMessage *m);
CacheMessage *fs_alias_lookup(Fs *fs, guint64 folder_id, const char *name);
CacheMessage *fs_alias_by_id(Fs *fs, guint64 message_id);
/* fs_invalidate() once the alias time has passed. */
void fs_invalidate_later(Fs *fs, guint64 folder_id, const char *name);

fuse_ino_t fs_folder_ino(guint64 folder_id);
/* A directory's mtime: when its listing last changed in this mount (the
 * mount time until then). */
void fs_dir_mtime(Fs *fs, fuse_ino_t ino, struct timespec *ts);
void fs_watch_start(Fs *fs);
void fs_watch_stop(Fs *fs);
/* At the end: answer requests on this thread until *@done is set. */
void fs_serve_until(Fs *fs, const gint *done);
/* Bodies a prefetch brings, handed to the kernel's page cache. */
void fs_pages_start(Fs *fs);
void fs_pages_stop(Fs *fs);
void fs_pages_clear(Fs *fs);
void fs_pages_open(Fs *fs, fuse_ino_t ino);
void fs_pages_release(Fs *fs, fuse_ino_t ino);
fuse_ino_t fs_message_ino(guint64 message_id);

int errno_from_error(const GError *error);
extern const struct fuse_lowlevel_ops fs_ops;
