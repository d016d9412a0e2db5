/* SPDX-License-Identifier: MIT */
/*
 * cache/names.h: the names the filesystem shows for messages and folders
 * (DESIGN.md section 3). Pure functions: no I/O, no global state, safe to
 * call from any thread. Every returned string is newly allocated and owned
 * by the caller (g_free; GPtrArray with g_ptr_array_unref).
 *
 * The mapping from server data to names is deterministic: the same input
 * gives the same name in every mount and every process. Two things outside
 * this file can still change a name: the iconv tables of the C library (for
 * encoded-words in charsets other than UTF-8, US-ASCII, ISO-8859-1 and
 * Windows-1252) and the Unicode tables of GLib (which code points count as
 * letters, and NFC). Both only move for newly assigned or rarely used
 * characters.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* ---- Errors ---- */

/* The error domain of cache_folder_raw_name(). The filesystem maps
 * CACHE_NAME_ERROR_INVALID to EINVAL. */
#define CACHE_NAME_ERROR (cache_name_error_quark())
GQuark cache_name_error_quark(void);

typedef enum {
	CACHE_NAME_ERROR_INVALID, /* the name cannot exist on the server */
} CacheNameError;

/* ---- Message names ---- */

/* Longest file name we ever produce, in bytes (NAME_MAX on Linux). */
#define CACHE_NAME_MAX 255

/*
 * The file name of a message:
 *
 *     YYYY-MM-DD_HHMM_<slug>.<uid>.eml
 *     2026-11-20_0914_Re_Quarterly_budget.4812.eml
 *
 * @internaldate: the INTERNALDATE in seconds since the epoch; shown in UTC.
 *   Any value is accepted; years are clamped to 0000-9999 (proleptic
 *   Gregorian), so the zero-padded prefix sorts chronologically under a
 *   plain byte-wise `ls`.
 * @subject: the raw bytes of BODY.PEEK[HEADER.FIELDS (SUBJECT)], e.g.
 *   "Subject: =?UTF-8?B?...?=\r\n folded\r\n\r\n", or NULL. The first
 *   Subject field is used; if there is none the whole input (up to the
 *   first empty line) is taken as a bare subject value. Folded lines are
 *   unfolded, RFC 2047 encoded-words decoded, raw 8-bit that is not UTF-8
 *   read as Windows-1252. Embedded NUL bytes are allowed. Only the first
 *   64 KiB of the field value are looked at.
 * @subject_len: length of @subject in bytes (ignored when @subject is NULL).
 * @uid: the message UID.
 *
 * The slug keeps letters, digits (any script, with their combining marks)
 * and "-+=@,"; every other run of characters becomes one "_". It has no "_"
 * at either end, at most about 80 characters, and is cut at a character
 * boundary so that the whole name fits in CACHE_NAME_MAX bytes. A message
 * without a Subject (or an empty one) gets "no_subject"; a Subject with
 * nothing to keep ("..") gets no slug: "YYYY-MM-DD_HHMM.<uid>.eml".
 *
 * The result is valid UTF-8, at most CACHE_NAME_MAX bytes, has no "/", no
 * control characters, starts with a digit and ends in ".<uid>.eml".
 * Returns: (transfer full) the name, never NULL.
 */
char *cache_message_name(gint64 internaldate, const char *subject,
			 gsize subject_len, guint32 uid);

/*
 * The UID of a message name: the decimal digits between the last two dots
 * of a name ending in ".eml" ("x.4812.eml" -> 4812). Something must come
 * before that dot; the digits have no sign and no leading zero and fit in
 * 32 bits. Returns FALSE (and leaves @uid_out alone) for any other name.
 * @uid_out may be NULL.
 */
gboolean cache_message_name_parse_uid(const char *name, guint32 *uid_out);

/* TRUE if @name is a message file name: ".eml" preceded by at least one
 * byte. It need not carry a UID (files being created don't). */
gboolean cache_is_message_name(const char *name);

/* ---- Folder names ---- */

/*
 * Split a raw server mailbox name (modified UTF-7) into the path components
 * shown by the filesystem.
 *
 * @raw: the name as LISTed, NUL-terminated.
 * @delimiter: the hierarchy delimiter; '\0' (NIL) means a flat name, one
 *   component. The name is split only outside "&...-" base64 runs.
 *
 * Each component is its modified UTF-7 decoding, with these escapes
 * (uppercase hex):
 *   "%" -> "%25", "/" -> "%2F", control characters (U+0080-U+009F; the
 *   decoder refuses C0 and DEL) -> "%XX" for each UTF-8 byte;
 *   a component that is "." or ".." -> "%2E" or "%2E%2E";
 *   an empty component ("a..b" with delimiter ".") -> "%00".
 * A component that is not valid modified UTF-7 (hostile or broken server
 * data) is shown as its raw bytes with every byte outside 0x20-0x7e and
 * every "%", "/" and "&" written as "%XX". Valid names never show "%26" or
 * an escaped C0 control, so these rarely look like a valid name; the one
 * exception is raw UTF-8 whose only non-ASCII characters are C1 controls
 * ("\xc2\x80" shows as "%C2%80", like "&AIA-"). cache_folder_raw_name()
 * refuses these names (it cannot produce invalid modified UTF-7).
 * A component longer than CACHE_NAME_MAX bytes after escaping is cut at a
 * character (or escape) boundary and ends in "%~" and 8 uppercase hex
 * digits of SHA-256 of the raw component: unique in practice, but not
 * reversible (cache_folder_raw_name() refuses it).
 *
 * So a hostile server can, with effort, make two sibling folders show the
 * same name; callers must not assume shown names are unique.
 *
 * Every component is non-empty valid UTF-8 of at most CACHE_NAME_MAX bytes,
 * without "/", NUL or control characters, and never "." or "..".
 * Returns: (transfer full) (element-type utf8) at least one component.
 */
GPtrArray *cache_folder_components(const char *raw, char delimiter);

/*
 * The reverse of cache_folder_components(), for mkdir and rename: turn
 * displayed components into the raw server name (modified UTF-7, joined
 * with @delimiter).
 *
 * Only the escapes the forward direction produces for valid names are
 * accepted: "%25", "%2F", "%C2%80"-"%C2%9F" anywhere, and "%2E", "%2E%2E"
 * and "%00" as a whole component. Fails with CACHE_NAME_ERROR_INVALID if a
 * component is empty, holds any other "%", a control character or "/", is
 * not valid UTF-8, contains @delimiter once unescaped (no server folder
 * can be named so), or if @n != 1 with a flat (@delimiter '\0') hierarchy.
 *
 * A successful result always maps back: cache_folder_components(result,
 * @delimiter) gives exactly @components. Conversely, for every raw name r
 * whose components are valid, cache_folder_raw_name(
 * cache_folder_components(r, d)) == r.
 * Returns: (transfer full) the raw name, or NULL with @error set.
 */
char *cache_folder_raw_name(const char *const *components, gsize n,
			    char delimiter, GError **error);

G_END_DECLS
