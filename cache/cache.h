/* SPDX-License-Identifier: MIT */
/*
 * cache/: the mail store the filesystem sees. Folders, messages, names,
 * flags and bodies, answered from an on-disk index (SQLite) and body files,
 * filled from imap/ on demand and kept in step with the server.
 *
 * Threading: every function may be called from any thread. Network waits
 * never happen under a lock that a listing needs: one slow fetch does not
 * block `ls`.
 *
 * Objects handed out (CacheFolder, CacheMessage) are reference counted and
 * immutable; a change on the server replaces them.
 */
#pragma once

#include <glib.h>

#include "imap.h"
#include "names.h"

G_BEGIN_DECLS

#define CACHE_ERROR (cache_error_quark())
GQuark cache_error_quark(void);

typedef enum {
	CACHE_ERROR_NOT_FOUND, /* no such folder or message (any more) */
	CACHE_ERROR_IO, /* local disk trouble */
	CACHE_ERROR_CORRUPT, /* server data we cannot trust */
	CACHE_ERROR_READONLY,
	CACHE_ERROR_INVALID, /* a name or flag that cannot be used */
	CACHE_ERROR_CONFLICT, /* another client changed it first */
	CACHE_ERROR_NOT_EMPTY, /* a folder with messages or subfolders */
	CACHE_ERROR_PERMISSION, /* not allowed (renaming INBOX) */
} CacheErrorCode;

typedef enum {
	CACHE_KEEP_NONE, /* bodies only for the life of an open file */
	CACHE_KEEP_HEADERS, /* index only; bodies not kept across mounts */
	CACHE_KEEP_FULL, /* index and bodies (default) */
} CacheKeep;

typedef struct {
	char *dir; /* created with mode 0700 */
	CacheKeep keep;
	guint64 size_limit; /* bytes of bodies; 0 = unlimited */
	gboolean readonly; /* every change fails with CACHE_ERROR_READONLY */
} CacheConfig;

typedef struct _Cache Cache;

typedef struct {
	guint64 id; /* stable across mounts while the cache lives */
	guint64 parent_id; /* 0: top level */
	char *name; /* display name of the last component (UTF-8, escaped) */
	char *raw; /* raw server name; NULL if only implied by children */
	char delimiter;
	guint32 attrs; /* ImapMboxAttr */
	gboolean selectable;
} CacheFolder;

typedef struct {
	guint64 id; /* stable while (folder, UIDVALIDITY, UID) lives */
	guint64 folder_id;
	guint32 uidvalidity;
	guint32 uid;
	guint64 size; /* RFC822.SIZE, corrected once the body is known */
	gint64 internaldate; /* epoch seconds */
	gint tz; /* the zone INTERNALDATE came with, minutes */
	guint64 modseq;
	char *name; /* file name, see cache/names.h */
	char *flags; /* "\Seen $Label1" */
	gboolean hidden; /* flagged \Deleted by us without UIDPLUS: not shown */
} CacheMessage;

CacheFolder *cache_folder_ref(CacheFolder *f);
void cache_folder_unref(CacheFolder *f);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(CacheFolder, cache_folder_unref)
CacheMessage *cache_message_ref(CacheMessage *m);
void cache_message_unref(CacheMessage *m);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(CacheMessage, cache_message_unref)

/* Opens (creating or rebuilding when incompatible) the index in cfg->dir.
 * Does not talk to the server. */
Cache *cache_open(ImapClient *client, const CacheConfig *cfg, GError **error);
/* Stop the background work that uses the client (the watcher; the movers,
 * after sending the moves still pending). Then free the client, which
 * ends the fetches still in flight (a prefetch, at an unmount during a
 * copy) while the cache is there for their callbacks, then the cache.
 * cache_free() stops too, for a cache whose client never did anything. */
void cache_stop(Cache *cache);
void cache_free(Cache *cache);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Cache, cache_free)

/* LIST the folders (once per mount, then on invalidation). */
gboolean cache_refresh_folders(Cache *cache, GError **error);

/* Does the index know any folder (a warm cache that can serve offline)? */
gboolean cache_has_folders(Cache *cache);
/* A folder by id (0 is not a folder), or NULL. */
CacheFolder *cache_folder_get(Cache *cache, guint64 id);
/* Child folders of @parent_id (0: the top level), sorted by name. */
GPtrArray *cache_folder_children(Cache *cache, guint64 parent_id);
CacheFolder *cache_folder_lookup(Cache *cache, guint64 parent_id,
				 const char *name);

/*
 * The messages of a selectable folder, sorted by name (a snapshot; the
 * caller unrefs the array). The first call in a mount brings the folder in
 * step with the server: one SELECT and one pipelined UID FETCH of
 * metadata and the Subject field, never bodies. Later calls send nothing.
 */
GPtrArray *cache_folder_messages(Cache *cache, guint64 folder_id,
				 GError **error);
/* Bring a folder that was looked at in this mount in step again (a cheap
 * QRESYNC SELECT when nothing changed); the change function hears what
 * did. Folders never looked at are left alone. */
gboolean cache_folder_revalidate(Cache *cache, guint64 folder_id,
				 GError **error);
/* The folder in use: watch it with IDLE (one at a time), so other
 * clients' changes show within a moment. */
void cache_watch_folder(Cache *cache, guint64 folder_id);
/* Ids of the folders looked at in this mount. */
GArray *cache_watched_folders(Cache *cache);
CacheMessage *cache_message_get(Cache *cache, guint64 id);
CacheMessage *cache_message_lookup(Cache *cache, guint64 folder_id,
				   const char *name, GError **error);

/*
 * An open message body. cache_body_open() registers the access (for the
 * sequential-scan prefetch) and fetches nothing yet; reads fetch what they
 * need: small bodies whole, big ones in ranges, each at most once.
 */
typedef struct _CacheBody CacheBody;

CacheBody *cache_body_open(Cache *cache, guint64 message_id, GError **error);
void cache_body_close(CacheBody *body);
/* Reads up to @size bytes at @offset into @buf; returns the count (short
 * only at the end of the message) or -1 with @error. */
gssize cache_body_read(CacheBody *body, char *buf, gsize size, goffset offset,
		       GError **error);
/* The message's current size (exact once the body is known). */
guint64 cache_body_size(CacheBody *body);
/* The descriptor of the complete body file, when there is one (a read can
 * then be spliced from it); -1 otherwise: use cache_body_read(). */
int cache_body_file_fd(CacheBody *body);
/* The same, after fetching the body if a read of @size bytes at @offset
 * needs it whole (not a big body, read in ranges, nor a read the stored
 * header block may answer): -1 with @error if the fetch failed, -1
 * without if cache_body_read() is the way. */
int cache_body_fetch_fd(CacheBody *body, gsize size, goffset offset,
			GError **error);

/* Called (on any thread, with no cache lock held) when a sync found that
 * messages of a folder disappeared (@removed: their names) or arrived, so
 * the file system can invalidate the kernel's caches precisely. */
typedef void (*CacheChangeFunc)(guint64 folder_id, const GPtrArray *removed,
				gboolean added, gpointer user_data);
void cache_set_change_func(Cache *cache, CacheChangeFunc func,
			   gpointer user_data);

/* Called on a connection's thread with the cache lock held (so it may only
 * queue work) when a prefetch stored a whole body of the size shown:
 * @path, @size bytes. The file system can hand it to the kernel's page
 * cache before anyone asks for it. */
typedef void (*CacheBodyFunc)(guint64 message_id, const char *path,
			      guint64 size, gpointer user_data);
void cache_set_body_func(Cache *cache, CacheBodyFunc func, gpointer user_data);

/* ---- Changes (server first, then the index; see write.c) ---- */

/* Move a message to another folder; returns the message there when the
 * server told its new UID (COPYUID), else NULL with no error (the next
 * listing of the destination shows it). */
CacheMessage *cache_message_move(Cache *cache, guint64 message_id,
				 guint64 dest_folder_id, GError **error);
/* The same, answered at once: the message leaves the source's listing
 * now and the server gets one UID MOVE for many such calls a moment later
 * (or as soon as either folder is looked at). If the server refuses, the
 * message shows in the source again. */
gboolean cache_message_move_later(Cache *cache, guint64 message_id,
				  guint64 dest_folder_id, GError **error);
/* Send every waiting move now. */
void cache_flush_moves(Cache *cache);
/* \Deleted + UID EXPUNGE of this message only; with @to_trash, a move to
 * the \Trash folder instead (when there is one and it is elsewhere). */
gboolean cache_message_delete(Cache *cache, guint64 message_id,
			      gboolean to_trash, GError **error);
/* Set the flags to exactly @flags ("\Seen $Label1"); UNCHANGEDSINCE with
 * CONDSTORE (CACHE_ERROR_CONFLICT if another client got there first). */
gboolean cache_message_set_flags(Cache *cache, guint64 message_id,
				 const char *flags, GError **error);
/* APPEND @msg with @flags (may be NULL) and the date of its Date header
 * (else now). Returns the new message when the server told its UID. */
CacheMessage *cache_message_append(Cache *cache, guint64 folder_id, GBytes *msg,
				   const char *flags, GError **error);
guint64 cache_special_folder(Cache *cache, guint32 attr);
CacheFolder *cache_folder_create(Cache *cache, guint64 parent_id,
				 const char *name, GError **error);
/* CACHE_ERROR_NOT_EMPTY when it holds messages or subfolders. */
gboolean cache_folder_delete(Cache *cache, guint64 folder_id, GError **error);
gboolean cache_folder_rename(Cache *cache, guint64 folder_id,
			     guint64 new_parent_id, const char *new_name,
			     GError **error);

/* statfs: messages known, bytes of bodies on disk, quota (KiB, 0 if the
 * server has none). */
typedef struct {
	guint64 messages;
	guint64 cached_bytes;
	guint64 quota_used_kib;
	guint64 quota_limit_kib;
} CacheStats;

CacheStats cache_stats(Cache *cache);
/* Ask the server for the quota (when it has QUOTA); cache_stats() tells. */
gboolean cache_refresh_quota(Cache *cache, GError **error);

/* "name value\n" lines: imap.*, cache.* counters. */
void cache_append_counters(Cache *cache, GString *out);

G_END_DECLS
