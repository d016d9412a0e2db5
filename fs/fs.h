/* SPDX-License-Identifier: MIT */
/* Declarations shared by the files of fs/ (the FUSE daemon). */
#pragma once

#include <sys/types.h>

#define FUSE_USE_VERSION 35
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
	/* watch.c */
	struct fuse_session *se;
	guint poll_s;
	GAsyncQueue *inval;
	GThread *inval_thread;
	GThread *poll_thread;
	GMutex poll_lock;
	GCond poll_cond;
	gboolean stopping;
} Fs;

fuse_ino_t fs_folder_ino(guint64 folder_id);
void fs_watch_start(Fs *fs);
void fs_watch_stop(Fs *fs);

int errno_from_error(const GError *error);
extern const struct fuse_lowlevel_ops fs_ops;
