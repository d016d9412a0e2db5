/* SPDX-License-Identifier: MIT */
/* Declarations shared by the files of cache/. */
#pragma once

#include <sqlite3.h>

#include "cache.h"
#include "names.h"

G_BEGIN_DECLS

/* Bodies bigger than this are read in ranges of RANGE_CHUNK bytes. */
#define CACHE_RANGE_THRESHOLD (2 * 1024 * 1024)
#define CACHE_RANGE_CHUNK (1024 * 1024)
/* Bigger than any mail; also bounds the ranges of one body (16384). */
#define CACHE_MAX_MESSAGE (G_GUINT64_CONSTANT(16) << 30)
/* Sequential-scan prefetch: a batch is at most this many bodies or bytes,
 * in at most this many UID ranges (a command line of a few KiB: RFC 7162
 * asks clients to keep lines under 8192 octets). */
#define CACHE_PREFETCH_MESSAGES 4096
#define CACHE_PREFETCH_BYTES (32 * 1024 * 1024)
#define CACHE_PREFETCH_RANGES 256
/* Moves: at most this many per UID MOVE; network failures retried. */
#define CACHE_MOVE_BATCH_MAX 1000
#define CACHE_MOVE_RETRIES 3
/* Offline: how long to serve the index before asking the server again. */
#define CACHE_OFFLINE_RETRY_US (5 * G_USEC_PER_SEC)

typedef struct {
	guint64 body_hits; /* reads served from a body file */
	guint64 body_fetches; /* whole bodies fetched */
	guint64 range_fetches; /* ranges of big bodies fetched */
	guint64 prefetches; /* bodies fetched ahead of a sequential scan */
	guint64 prefetch_batches; /* the UID FETCH commands that did it */
	guint64 body_bytes_fetched;
	guint64 folder_syncs;
	guint64 evictions;
	guint64 header_hits; /* reads served from the stored header block */
} CacheCounters;

/* Per-folder state of this mount. */
typedef struct {
	GMutex sync_lock; /* one sync of this folder at a time */
	gboolean fresh; /* in step with the server in this mount */
	GPtrArray *msgs; /* CacheMessage *, sorted by name (cache->lock) */
	GHashTable *by_name; /* name -> CacheMessage * (borrowed from msgs) */
	guint32 uidvalidity;
	guint32 max_uid; /* the highest UID seen under it (never lowered) */
	gint64 retry_at; /* offline: next time to try the server */
	GPtrArray *by_id; /* msgs in row id (inode) order, borrowed */
	/* Sequential access, [0] in listing order, [1] in inode order. */
	gint last_index[2];
	guint streak[2];
	guint prefetched_from[2]; /* the first position prefetched */
	guint prefetched_upto[2];
	guint prefetch_span[2]; /* positions the last batch covered */
} FolderState;

/* Statements run once per message, prepared once (cache_stmt_locked()). */
typedef enum {
	CACHE_STMT_INSERT_MESSAGE,
	CACHE_STMT_UPDATE_FLAGS,
	CACHE_STMT_STORE_HEADER,
	CACHE_STMT_COUNT,
} CacheStmt;

struct _Cache {
	ImapClient *client;
	CacheConfig cfg;
	char *body_dir;
	char *tmp_dir;
	sqlite3 *db;
	/* One folder-list refresh at a time: LIST results are applied in the
	 * order they were asked for (the poll and the watch both refresh;
	 * an older LIST applied last would drop a folder just created). */
	GMutex refresh_lock;
	GMutex lock; /* everything below, and the database */
	sqlite3_stmt *stmts[CACHE_STMT_COUNT];
	GCond fetch_cond; /* broadcast when a body fetch finishes */
	GHashTable *folders; /* id -> CacheFolder * */
	GHashTable *folder_ids; /* raw name -> id (implied folders too) */
	GHashTable *states; /* id -> FolderState * */
	GHashTable *messages; /* id -> CacheMessage * */
	guint64 next_message_id; /* ids are never reused in a run */
	GHashTable *fetching; /* message id -> GINT_TO_POINTER(1) */
	GHashTable *partials; /* message id -> Partial * */
	gboolean folders_listed;
	GHashTable *open_paths; /* body path -> open count */
	guint64 body_bytes; /* body files on disk */
	gboolean evict_needed;
	CacheChangeFunc change_func;
	gpointer change_data;
	CacheBodyFunc body_func;
	gpointer body_data;
	/* watch.c */
	GThread *watcher;
	GCond watch_cond;
	GHashTable *dirty; /* folder ids a change was reported for */
	GHashTable *own_changes; /* folder id -> when we last changed it */
	guint64 watch_id; /* the folder in use, IDLE'd on */
	ImapClient *watch_client; /* one connection, IDLE only */
	guint idle_generation; /* of the latest IDLE submitted */
	gint idle_running; /* IDLE commands not finished */
	gint64 idle_restart_at; /* 0: no restart pending */
	gboolean folders_dirty; /* NOTIFY said folders changed */
	gboolean watch_stop;
	GPtrArray *move_batches; /* MoveBatch *, see write.c */
	guint moves_running; /* batches on the wire */
	GThread *mover;
	GCond mover_cond;
	gboolean mover_stop;
	/* Body files are made durable together (body.c, "durability"). */
	GThread *syncer;
	GCond sync_cond;
	gboolean sync_pending; /* a body stored since the last syncfs() */
	gboolean sync_stop;
	gboolean sync_each; /* no marker or no sync_fd: a fsync per body */
	int sync_fd; /* bodies/, open before the first body is written */
	CacheCounters counters;
	gint64 quota_checked;
	guint64 quota_used, quota_limit;
};

/* What a metadata FETCH brought for one message. */
typedef struct {
	guint32 uid;
	guint32 has;
	char *flags;
	guint64 size;
	gint64 date;
	gint tz;
	guint64 modseq;
	GBytes *subject; /* NULL when not fetched */
	char *name; /* made from them as they arrived, or NULL */
} Meta;

void cache_meta_free(Meta *m);
guint64 *cache_id_key(guint64 id);
FolderState *cache_state_get_locked(Cache *c, guint64 id);
FolderState *cache_folder_fresh(Cache *c, guint64 folder_id,
				CacheFolder **folder_out, GError **error);
/* Run commands concurrently (they pipeline) and wait for all. */
gboolean cache_run_batch(Cache *c, ImapCommand **cmds, guint n, GError **error);
sqlite3_stmt *cache_stmt_locked(Cache *c, CacheStmt which, const char *sql);
void cache_stmt_done(sqlite3_stmt *st);
CacheMessage *cache_insert_message_locked(Cache *c, guint64 folder_id,
					  guint32 uidvalidity, Meta *m);
void cache_delete_message_locked(Cache *c, CacheMessage *m);
void cache_update_flags_locked(Cache *c, CacheMessage *m);
void cache_install_messages_locked(Cache *c, FolderState *st, GPtrArray *msgs,
				   guint32 uidvalidity);
/* The snapshot without @gone and with @add (either may be NULL). */
void cache_snapshot_edit_locked(Cache *c, FolderState *st,
				const CacheMessage *gone, CacheMessage *add);

/* index.c */
gboolean cache_db_open(Cache *c, GError **error);
void cache_db_close(Cache *c);
gboolean cache_db_exec(Cache *c, const char *sql, GError **error);

/* body.c */
char *cache_body_path(Cache *c, const CacheMessage *m);
void cache_body_remove_folder(Cache *c, guint64 folder_id);
void cache_body_scan(Cache *c);
void cache_syncer_start(Cache *c);
void cache_syncer_stop(Cache *c);
void cache_body_unlink_locked(Cache *c, const char *path);
/* Write a complete body file (tmp, rename; synced as in "durability"). */
gboolean cache_body_store(Cache *c, const char *path, const char *data,
			  gsize len);
/* Does a SELECT's answer (IMAP_EVENT_SELECTED) show the folder as its last
 * sync left it? */
gboolean cache_folder_in_step_locked(Cache *c, guint64 id,
				     const ImapEvent *sel);
/* watch.c */
void cache_watch_start(Cache *c);
void cache_watch_stop(Cache *c);
void cache_append_watch_counters(Cache *c, GString *out);
/* watch.c: this mount is changing the folder (see the watcher) */
void cache_note_own_change(Cache *c, guint64 folder_id);

/* write.c: batched moves */
void cache_movers_start(Cache *c);
void cache_movers_stop(Cache *c);
void cache_flush_moves_of(Cache *c, guint64 folder_id);
void cache_rename_folder_rows(Cache *c, const char *from, const char *to,
			      char delimiter);
/* The next access syncs the folder again. */
void cache_folder_mark_stale(Cache *c, guint64 folder_id);
void cache_note_open(Cache *c, const CacheMessage *m);
void cache_note_miss(Cache *c, const CacheMessage *m);
/* Fetch ahead of position @index of folder @folder_id's snapshot, in the
 * listing's order (@order 0) or the ids' (1). */
void cache_prefetch_after(Cache *c, guint64 folder_id, int order, guint index);

G_END_DECLS
