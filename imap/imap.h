/* SPDX-License-Identifier: MIT */
/*
 * imap/: the IMAP protocol engine. Knows nothing of files, FUSE or the
 * cache. Errors are GError in IMAP_ERROR; out-parameters end in _out and
 * come before the GError **.
 */
#pragma once

#include <glib.h>

#include "imap-parser.h"

G_BEGIN_DECLS

#define IMAP_ERROR (imap_error_quark())
GQuark imap_error_quark(void);

typedef enum {
	IMAP_ERROR_PROTOCOL, /* malformed or unexpected server data */
	IMAP_ERROR_LIMIT, /* a parser or size limit was exceeded */
	IMAP_ERROR_CONNECT, /* TCP connect / name resolution failed */
	IMAP_ERROR_TLS, /* TLS handshake or certificate verification */
	IMAP_ERROR_STARTTLS, /* STARTTLS refused, missing, or tampered with */
	IMAP_ERROR_AUTH, /* credentials rejected or no usable mechanism */
	IMAP_ERROR_SECRET, /* password/token command, file or env failed */
	IMAP_ERROR_NO, /* the server answered NO */
	IMAP_ERROR_BAD, /* the server answered BAD */
	IMAP_ERROR_BYE, /* the server closed the session */
	IMAP_ERROR_DISCONNECTED, /* the connection was lost */
	IMAP_ERROR_TIMEOUT, /* no progress within the timeout */
	IMAP_ERROR_UIDVALIDITY, /* the mailbox's UIDVALIDITY changed */
	IMAP_ERROR_UNSUPPORTED, /* the server lacks a needed capability */
	IMAP_ERROR_INVALID, /* a caller-supplied argument cannot be encoded */
	IMAP_ERROR_CANCELLED, /* the client was shut down */
	/* NO completions with a response code (RFC 5530) */
	IMAP_ERROR_NONEXISTENT, /* [NONEXISTENT], [TRYCREATE] */
	IMAP_ERROR_ALREADYEXISTS, /* [ALREADYEXISTS] */
	IMAP_ERROR_OVERQUOTA, /* [OVERQUOTA], [LIMIT] */
	IMAP_ERROR_NOPERM, /* [NOPERM], [READ-ONLY] */
	IMAP_ERROR_INUSE, /* [INUSE], [UNAVAILABLE] */
	IMAP_ERROR_EXPUNGEISSUED, /* [EXPUNGEISSUED]: the message is gone */
} ImapErrorCode;

/* The server is out of reach (connect, disconnect, timeout, BYE) rather
 * than refusing something: worth serving a cache and retrying later. */
gboolean imap_error_is_network(const GError *error);

/* ---- Mailbox names (modified UTF-7, RFC 3501 5.1.3) ---- */

/* Decode a server name to UTF-8. Fails (IMAP_ERROR_PROTOCOL) on invalid
 * modified UTF-7 or a name that decodes to invalid UTF-8 / NUL. */
char *imap_mutf7_decode(const char *mutf7, GError **error);
/* Encode UTF-8 to modified UTF-7. Fails (IMAP_ERROR_INVALID) on invalid
 * UTF-8. "&" becomes "&-". */
char *imap_mutf7_encode(const char *utf8, GError **error);

/* ---- UID sets ---- */

typedef struct {
	guint32 lo, hi; /* inclusive, lo <= hi, both >= 1 */
} ImapUidRange;

/* A set of UIDs as sorted, merged ranges. */
typedef struct {
	GArray *ranges; /* ImapUidRange */
} ImapUidSet;

ImapUidSet *imap_uid_set_new(void);
void imap_uid_set_free(ImapUidSet *set);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ImapUidSet, imap_uid_set_free)
void imap_uid_set_add(ImapUidSet *set, guint32 lo, guint32 hi);
gboolean imap_uid_set_contains(const ImapUidSet *set, guint32 uid);
guint64 imap_uid_set_count(const ImapUidSet *set);
/* Parse "1:3,7,9:*" (a "*" needs @star, the value it stands for; 0 makes
 * it an error). Ranges may come reversed ("5:3"). */
ImapUidSet *imap_uid_set_parse(const char *text, guint32 star, GError **error);
/* "1:3,7" or "" for an empty set. */
char *imap_uid_set_to_string(const ImapUidSet *set);
/* The n-th UID in ascending order; FALSE if out of range. For COPYUID
 * pairing (source n-th <-> destination n-th in the server's order, see
 * imap_copyuid_*). */
gboolean imap_uid_set_nth(const ImapUidSet *set, guint64 n, guint32 *uid_out);

/* ---- Typed decoding of responses ---- */

/* CAPABILITY data ("* CAPABILITY ..." args or a [CAPABILITY ...] code's
 * args): a set of upper-cased names ("IMAP4REV1", "AUTH=PLAIN"). */
GHashTable *imap_decode_capability(const GPtrArray *args);

typedef enum {
	IMAP_MBOX_NOSELECT = 1 << 0,
	IMAP_MBOX_NOINFERIORS = 1 << 1,
	IMAP_MBOX_HASCHILDREN = 1 << 2,
	IMAP_MBOX_HASNOCHILDREN = 1 << 3,
	IMAP_MBOX_MARKED = 1 << 4,
	IMAP_MBOX_UNMARKED = 1 << 5,
	IMAP_MBOX_NONEXISTENT = 1 << 6,
	IMAP_MBOX_SUBSCRIBED = 1 << 7,
	IMAP_MBOX_REMOTE = 1 << 8,
	/* RFC 6154 special-use */
	IMAP_MBOX_ALL = 1 << 16,
	IMAP_MBOX_ARCHIVE = 1 << 17,
	IMAP_MBOX_DRAFTS = 1 << 18,
	IMAP_MBOX_FLAGGED = 1 << 19,
	IMAP_MBOX_JUNK = 1 << 20,
	IMAP_MBOX_SENT = 1 << 21,
	IMAP_MBOX_TRASH = 1 << 22,
	IMAP_MBOX_IMPORTANT = 1 << 23,
} ImapMboxAttr;

typedef struct {
	char *name; /* raw server name (modified UTF-7), NUL-free */
	char delimiter; /* '\0' for NIL */
	guint32 attrs; /* ImapMboxAttr bits */
} ImapListEntry;

void imap_list_entry_free(ImapListEntry *entry);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ImapListEntry, imap_list_entry_free)
/* "* LIST (attrs) delim name [ext]" (also LSUB). */
ImapListEntry *imap_decode_list(const ImapResponse *resp, GError **error);

typedef enum {
	IMAP_STATUS_HAS_MESSAGES = 1 << 0,
	IMAP_STATUS_HAS_RECENT = 1 << 1,
	IMAP_STATUS_HAS_UIDNEXT = 1 << 2,
	IMAP_STATUS_HAS_UIDVALIDITY = 1 << 3,
	IMAP_STATUS_HAS_UNSEEN = 1 << 4,
	IMAP_STATUS_HAS_HIGHESTMODSEQ = 1 << 5,
	IMAP_STATUS_HAS_SIZE = 1 << 6,
} ImapStatusHas;

typedef struct {
	char *mailbox; /* raw server name */
	guint32 has; /* ImapStatusHas */
	guint32 messages, recent, uidnext, uidvalidity, unseen;
	guint64 highestmodseq, size;
} ImapStatusData;

void imap_status_data_free(ImapStatusData *st);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ImapStatusData, imap_status_data_free)
/* "* STATUS mbox (MESSAGES 3 UIDNEXT 9 ...)" */
ImapStatusData *imap_decode_status(const ImapResponse *resp, GError **error);

/* State of a mailbox as reported while SELECT/EXAMINE runs. */
typedef struct {
	guint32 has; /* ImapStatusHas (MESSAGES = exists, UIDNEXT, ...) */
	guint32 exists, uidvalidity, uidnext;
	guint64 highestmodseq;
	gboolean nomodseq; /* [NOMODSEQ] */
	gboolean read_only; /* tagged OK [READ-ONLY] */
	GStrv flags; /* FLAGS, or NULL */
	GStrv permanentflags; /* [PERMANENTFLAGS], may contain "\*" */
} ImapSelectData;

void imap_select_data_clear(ImapSelectData *sd);
/* Fold one response (untagged EXISTS/FLAGS/OK [code], or the tagged
 * completion) into @sd. Returns TRUE if the response was relevant. */
gboolean imap_select_data_update(ImapSelectData *sd, const ImapResponse *resp);

typedef enum {
	IMAP_FETCH_HAS_UID = 1 << 0,
	IMAP_FETCH_HAS_FLAGS = 1 << 1,
	IMAP_FETCH_HAS_SIZE = 1 << 2,
	IMAP_FETCH_HAS_INTERNALDATE = 1 << 3,
	IMAP_FETCH_HAS_MODSEQ = 1 << 4,
} ImapFetchHas;

typedef struct {
	char *section; /* upper-cased text between [ ], e.g. "", "HEADER",
			  "HEADER.FIELDS (DATE SUBJECT)" */
	gboolean has_origin;
	guint64 origin; /* <origin> */
	const ImapValue *value; /* borrowed from the response: STRING, NIL or
				   STREAMED */
} ImapFetchSection;

typedef struct {
	guint32 seq; /* stays inside imap/ */
	guint32 has; /* ImapFetchHas */
	guint32 uid;
	GStrv flags;
	guint64 rfc822_size;
	gint64 internaldate; /* seconds since the epoch, UTC */
	gint internaldate_tz; /* the zone the server gave, in minutes */
	guint64 modseq;
	GArray *sections; /* ImapFetchSection; borrows from the response */
} ImapFetchData;

void imap_fetch_data_free(ImapFetchData *fd);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ImapFetchData, imap_fetch_data_free)
/* "* 5 FETCH (UID 9 FLAGS (\Seen) ...)". The result borrows literal values
 * from @resp, which must outlive it. */
ImapFetchData *imap_decode_fetch(const ImapResponse *resp, GError **error);
/* First section with this (upper-cased) name, or NULL. */
const ImapFetchSection *imap_fetch_data_section(const ImapFetchData *fd,
						const char *section);

/* "17-Jul-1996 02:44:25 -0700" -> epoch seconds. */
gboolean imap_parse_internaldate(const char *text, gint64 *epoch_out,
				 gint *tz_minutes_out);
/* epoch -> "17-Jul-1996 09:44:25 +0000" (for APPEND) */
char *imap_format_internaldate(gint64 epoch);

/* "* VANISHED (EARLIER) 1:3,5" */
ImapUidSet *imap_decode_vanished(const ImapResponse *resp,
				 gboolean *earlier_out, GError **error);

typedef struct {
	char *tag; /* (TAG "x") correlator, or NULL */
	gboolean uid;
	guint32 has_min : 1, has_max : 1, has_count : 1, has_modseq : 1;
	guint32 min, max, count;
	guint64 modseq;
	ImapUidSet *all; /* ALL, or NULL */
} ImapEsearchData;

void imap_esearch_data_free(ImapEsearchData *es);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ImapEsearchData, imap_esearch_data_free)
ImapEsearchData *imap_decode_esearch(const ImapResponse *resp, GError **error);
/* "* SEARCH 1 4 9" -> set */
ImapUidSet *imap_decode_search(const ImapResponse *resp, GError **error);

/* Response codes. Each returns FALSE (no error) if @resp lacks the code,
 * and FALSE with @error if the code is malformed. */
gboolean imap_decode_appenduid(const ImapResponse *resp,
			       guint32 *uidvalidity_out, ImapUidSet **uids_out,
			       GError **error);
/* COPYUID uidvalidity src dst: @pairs_out gets guint32 pairs
 * (src, dst, src, dst, ...) in the server's order. */
gboolean imap_decode_copyuid(const ImapResponse *resp, guint32 *uidvalidity_out,
			     GArray **pairs_out, GError **error);
gboolean imap_response_has_code(const ImapResponse *resp, const char *code);
/* True for "* BYE" and for "* OK [ALERT]" / "* NO [ALERT]" etc. */
gboolean imap_response_is_bye(const ImapResponse *resp);
gboolean imap_response_is_alert(const ImapResponse *resp);

/* ---- Commands ---- */

typedef struct _ImapCommand ImapCommand;

/* How literals may be sent (from the server's capabilities). */
typedef enum {
	IMAP_LITERAL_SYNC, /* {n}: wait for "+" before the data */
	IMAP_LITERAL_MINUS, /* LITERAL-: {n+} for n <= 4096, else sync */
	IMAP_LITERAL_PLUS, /* LITERAL+: always {n+} */
} ImapLiteralMode;

/* @verb is one or more trusted atoms ("UID FETCH", "SELECT"). */
ImapCommand *imap_command_new(const char *verb);
ImapCommand *imap_command_ref(ImapCommand *cmd);
void imap_command_unref(ImapCommand *cmd);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ImapCommand, imap_command_unref)

/* Trusted protocol text (sequence sets, fetch items, "(\Seen)"), emitted
 * as is after a space. Must not contain CR, LF or NUL (checked: returns
 * FALSE with IMAP_ERROR_INVALID). */
gboolean imap_command_add_raw(ImapCommand *cmd, const char *text,
			      GError **error);
void imap_command_add_printf(ImapCommand *cmd, const char *fmt, ...)
	G_GNUC_PRINTF(2, 3);
/* An astring: sent as an atom when it is one, a quoted string when every
 * byte may be quoted, otherwise a literal. NUL cannot be sent (refused). */
gboolean imap_command_add_string(ImapCommand *cmd, const char *data, gsize len,
				 GError **error);
/* A mailbox name in UTF-8: modified UTF-7 encoded, then as a string.
 * "INBOX" in any case is sent as INBOX. */
gboolean imap_command_add_mailbox(ImapCommand *cmd, const char *utf8,
				  GError **error);
/* A raw server mailbox name (already modified UTF-7), as a string. */
gboolean imap_command_add_mailbox_raw(ImapCommand *cmd, const char *mutf7,
				      GError **error);
/* Always a literal (APPEND's message). May contain any byte. */
void imap_command_add_literal(ImapCommand *cmd, GBytes *data);

/*
 * Render "TAG VERB args\r\n" into parts: part 0 is sent at once; each later
 * part is sent only after the server's "+" continuation (a synchronizing
 * literal precedes it). Returns a GPtrArray of GBytes. Arguments marked
 * secret are replaced by "***" when @redact is TRUE (for logs).
 */
GPtrArray *imap_command_render(const ImapCommand *cmd, const char *tag,
			       ImapLiteralMode mode, gboolean redact);
/* Mark the arguments added from now on as secret (for LOGIN). */
void imap_command_begin_secret(ImapCommand *cmd);
const char *imap_command_verb(const ImapCommand *cmd);

/* ---- Secrets ---- */

/* A secret in memory, wiped when freed. */
typedef struct {
	char *data;
	gsize len;
} ImapSecret;

void imap_secret_free(ImapSecret *secret);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ImapSecret, imap_secret_free)

/* Where a password or OAuth token comes from: exactly one of these. */
typedef struct {
	char *command; /* run with /bin/sh -c; first line of stdout */
	char *file; /* first line of the file */
	char *env; /* name of an environment variable */
} ImapSecretSource;

ImapSecret *imap_secret_fetch(const ImapSecretSource *src, GError **error);

/* ---- The account: a bounded pool of pipelined connections ---- */

typedef enum {
	IMAP_TLS_IMPLICIT, /* TLS from the first byte (port 993) */
	IMAP_TLS_STARTTLS, /* strict STARTTLS (port 143) */
	IMAP_TLS_NONE, /* plaintext: only when explicitly asked for */
} ImapTlsMode;

typedef enum {
	IMAP_AUTH_AUTO, /* PLAIN if offered, else LOGIN */
	IMAP_AUTH_LOGIN,
	IMAP_AUTH_PLAIN,
	IMAP_AUTH_XOAUTH2,
	IMAP_AUTH_OAUTHBEARER,
} ImapAuthMech;

typedef struct {
	char *host;
	guint16 port; /* 0: 993 for implicit TLS, 143 otherwise */
	ImapTlsMode tls;
	char *cafile; /* trust only this CA file; NULL: the system store */
	char *user;
	ImapAuthMech auth;
	ImapSecretSource secret; /* password, or the token command for OAuth */
	guint timeout_ms; /* no progress for this long fails; default 30 s */
	guint keepalive_ms; /* an IDLE silent this long is ended; default 60 s */
	guint max_connections; /* default 3 */
	gboolean no_enable; /* don't ENABLE QRESYNC/CONDSTORE */
	gboolean compress; /* COMPRESS=DEFLATE when the server offers it */
} ImapConfig;

void imap_config_clear(ImapConfig *config);
const char *imap_tls_mode_to_string(ImapTlsMode mode);
gboolean imap_tls_mode_from_string(const char *s, ImapTlsMode *mode_out);
const char *imap_auth_mech_to_string(ImapAuthMech mech);
gboolean imap_auth_mech_from_string(const char *s, ImapAuthMech *mech_out);

typedef struct _ImapClient ImapClient;

/* What one command got back. Owned by the caller of imap_client_run(),
 * or borrowed by an ImapDoneFunc for the duration of the call. */
typedef struct {
	ImapResponse *tagged; /* the completion (OK, NO or BAD) */
	GPtrArray *untagged; /* ImapResponse * routed to this command and not
				taken by its untagged handler */
	guint32 uidvalidity; /* of the selected mailbox at completion, or 0 */
	ImapSelectData select; /* filled for SELECT / EXAMINE */
} ImapResult;

void imap_result_free(ImapResult *result);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ImapResult, imap_result_free)

/* Called on the connection's I/O thread for each untagged response routed
 * to the command (see imap_command_want). Return TRUE to take it (it is not
 * added to result->untagged). @resp is freed after the call. */
typedef gboolean (*ImapUntaggedFunc)(const ImapResponse *resp,
				     gpointer user_data);
/* Called once, on an I/O thread: @result (owned by the callee) on a tagged
 * completion of any status, else NULL with @error (transport failure,
 * timeout, cancellation). Must not block on the client. */
typedef void (*ImapDoneFunc)(ImapResult *result, const GError *error,
			     gpointer user_data);

/* Untagged keywords ("FETCH", "LIST", "STATUS", "ESEARCH", ...) this
 * command collects. The oldest command in flight that wants a keyword gets
 * it; the rest go to the client's event handler. */
void imap_command_want(ImapCommand *cmd, const char *keyword);
void imap_command_set_untagged(ImapCommand *cmd, ImapUntaggedFunc func,
			       gpointer user_data);
/* Work nobody waits for (prefetching): a command that is not bulk is not
 * queued behind it on the same connection when another can take it. */
void imap_command_set_bulk(ImapCommand *cmd);
/* Literals of FETCH responses routed to this command go to @sink. */
void imap_command_set_sink(ImapCommand *cmd, const ImapLiteralSink *sink,
			   gpointer user_data);
/* The command runs with @mailbox (raw server name) selected. When
 * @uidvalidity is nonzero the command is sent only once the selection has
 * confirmed it, and fails with IMAP_ERROR_UIDVALIDITY otherwise: UIDs of
 * one generation are never applied to another. */
void imap_command_set_mailbox(ImapCommand *cmd, const char *mailbox,
			      guint32 uidvalidity);
/* The UIDs (a UID set, "*" for open-ended) that this command's FETCH
 * responses are about; the UID commands below set it. Responses are routed
 * by it, so FETCH commands in flight together must have disjoint scopes. */
void imap_command_set_scope(ImapCommand *cmd, const char *uids);
/* Safe to send again on a fresh connection after a disconnect. */
void imap_command_set_idempotent(ImapCommand *cmd, gboolean idempotent);

/* Mailbox events from responses no command asked for: EXISTS, EXPUNGE
 * (translated to a UID when known), VANISHED, FETCH (flag changes), BYE,
 * ALERT. Called on an I/O thread. */
typedef enum {
	IMAP_EVENT_EXISTS,
	IMAP_EVENT_EXPUNGED, /* uid, or 0 if the UID was not known */
	IMAP_EVENT_VANISHED, /* uids */
	IMAP_EVENT_FETCH, /* fetch */
	IMAP_EVENT_ALERT, /* text */
	IMAP_EVENT_DISCONNECTED, /* text */
	IMAP_EVENT_MAILBOX_CHANGED, /* NOTIFY: mailbox (not selected) changed */
	IMAP_EVENT_MAILBOXES, /* NOTIFY: a mailbox was created, deleted or
				 renamed */
	IMAP_EVENT_SELECTED, /* a SELECT/EXAMINE succeeded: exists, uidnext,
				highestmodseq */
} ImapEventKind;

typedef struct {
	ImapEventKind kind;
	const char *mailbox; /* raw name of the selected mailbox, or NULL */
	guint32 uidvalidity;
	guint32 exists;
	guint32 uidnext;
	guint64 highestmodseq;
	guint32 uid;
	const ImapUidSet *uids;
	const ImapFetchData *fetch;
	const char *text;
} ImapEvent;

typedef void (*ImapEventFunc)(const ImapEvent *event, gpointer user_data);

typedef struct {
	guint64 commands; /* commands sent */
	guint64 round_trips; /* times the client had to wait for the server */
	guint64 bytes_in; /* IMAP bytes received (inside TLS) */
	guint64 bytes_out; /* IMAP bytes sent (inside TLS) */
	guint64 connects; /* connections opened (logins) */
	guint64 timeouts; /* connections given up for a silent server */
	guint64 keepalives; /* IDLEs ended to see that the server is there */
} ImapCounters;

/* Copies @config. No connection is opened until one is needed (or
 * imap_client_connect()). */
ImapClient *imap_client_new(const ImapConfig *config);
/* A second client for the same account (its own connections and
 * counters, e.g. one that only IDLEs); shares the password already read. */
ImapClient *imap_client_new_sibling(ImapClient *client, guint max_connections);
/* Fails every outstanding command with IMAP_ERROR_CANCELLED, logs out,
 * joins the I/O threads. */
void imap_client_free(ImapClient *client);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ImapClient, imap_client_free)
void imap_client_set_event_handler(ImapClient *client, ImapEventFunc func,
				   gpointer user_data);

/* Open the first connection and log in; the way to learn early that the
 * host, certificate or password is wrong. */
gboolean imap_client_connect(ImapClient *client, GError **error);
/* Capabilities of the last login (upper-cased), e.g. "QRESYNC". */
gboolean imap_client_has_cap(ImapClient *client, const char *cap);
/* Sorted, NULL-terminated copy of the capability list. */
GStrv imap_client_dup_caps(ImapClient *client);
ImapCounters imap_client_counters(ImapClient *client);
/* The same per connection: @index from 0 to imap_client_n_connections()
 * - 1, in the order they were opened. */
guint imap_client_n_connections(ImapClient *client);
ImapCounters imap_client_connection_counters(ImapClient *client, guint index);

/* Queue @cmd; @done is called exactly once. Thread-safe. Takes a ref. */
void imap_client_submit(ImapClient *client, ImapCommand *cmd, ImapDoneFunc done,
			gpointer user_data);
/* Queue @cmd and wait. NULL with @error on failure, including a NO or BAD
 * completion (IMAP_ERROR_NO / _BAD, or a code-specific error such as
 * IMAP_ERROR_NONEXISTENT). Never waits much beyond the timeout. */
ImapResult *imap_client_run(ImapClient *client, ImapCommand *cmd,
			    GError **error);
/* Map a NO/BAD completion to a GError (NULL-safe for OK: returns TRUE). */
gboolean imap_result_check(const ImapResult *result, GError **error);

/* ---- Command constructors (each returns a new command) ----
 * Those taking an ImapClient choose by its capabilities as of the last
 * login: build them after imap_client_connect(). */

/* LIST "" "*" with RETURN (SPECIAL-USE) / (STATUS (...)) as offered. */
ImapCommand *imap_cmd_list(ImapClient *client, gboolean with_status);
ImapCommand *imap_cmd_status(const char *mailbox, const char *items);
/* SELECT (or EXAMINE when @readonly) with QRESYNC parameters when
 * @uidvalidity and @modseq are nonzero and QRESYNC is enabled; @known_uids
 * may be NULL. */
ImapCommand *imap_cmd_select(ImapClient *client, const char *mailbox,
			     gboolean readonly, guint32 uidvalidity,
			     guint64 modseq, const char *known_uids);
/* UID FETCH @uids (@items) [(CHANGEDSINCE @changedsince)] */
ImapCommand *imap_cmd_uid_fetch(const char *mailbox, guint32 uidvalidity,
				const char *uids, const char *items,
				guint64 changedsince);
ImapCommand *imap_cmd_uid_search(const char *mailbox, guint32 uidvalidity,
				 ImapClient *client, const char *criteria);
/* UID STORE @uids @op (@flags), op "+FLAGS.SILENT", "FLAGS", ...;
 * UNCHANGEDSINCE when @unchangedsince is nonzero. */
ImapCommand *imap_cmd_uid_store(const char *mailbox, guint32 uidvalidity,
				const char *uids, const char *op,
				const char *flags, guint64 unchangedsince);
ImapCommand *imap_cmd_uid_copy(const char *mailbox, guint32 uidvalidity,
			       const char *uids, const char *dest,
			       GError **error);
ImapCommand *imap_cmd_uid_move(const char *mailbox, guint32 uidvalidity,
			       const char *uids, const char *dest,
			       GError **error);
/* UID EXPUNGE only: a bare EXPUNGE is not offered (and refused by
 * imap_client_submit()), it would remove other clients' \Deleted mail. */
ImapCommand *imap_cmd_uid_expunge(const char *mailbox, guint32 uidvalidity,
				  const char *uids);
/* APPEND @mailbox (@flags) "@date" {message}; @flags may be NULL, @date
 * 0 for the server's time. */
ImapCommand *imap_cmd_append(const char *mailbox, const char *flags,
			     gint64 date, GBytes *message, GError **error);
ImapCommand *imap_cmd_create(const char *mailbox, GError **error);
ImapCommand *imap_cmd_delete(const char *mailbox, GError **error);
ImapCommand *imap_cmd_rename(const char *from, const char *to, GError **error);
ImapCommand *imap_cmd_simple(const char *verb); /* NOOP, CAPABILITY, ... */
/* IDLE: runs until the client has other work for its connection or
 * imap_client_free(); untagged data goes to the event handler. */
ImapCommand *imap_cmd_idle(const char *mailbox);

G_END_DECLS
