/* SPDX-License-Identifier: MIT */
/*
 * Typed decoding of parsed responses. The parser accepts any well-formed
 * value tree; these functions are where a tree of the wrong shape is
 * refused, so every access checks type and count first and nothing here
 * trusts the server.
 */
#include "imap-private.h"

#include <string.h>

/* COPYUID expansion cap: far beyond any real COPY, small enough that a
 * "1:4294967295" cannot exhaust memory. */
#define MAX_COPYUID_PAIRS 10000000

static gboolean G_GNUC_PRINTF(2, 3)
	proto_error(GError **error, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	g_autofree char *msg = g_strdup_vprintf(fmt, ap);
	va_end(ap);
	g_set_error_literal(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL, msg);
	return FALSE;
}

static const ImapValue *arg(const GPtrArray *a, guint i)
{
	return a && i < a->len ? a->pdata[i] : NULL;
}

/* Untagged data with this keyword, numbered ("* 5 FETCH") or not. */
static gboolean is_data_n(const ImapResponse *resp, const char *keyword,
			  gboolean numbered)
{
	return resp && resp->kind == IMAP_RESP_UNTAGGED &&
	       resp->status == IMAP_STATUS_NONE && resp->keyword &&
	       g_ascii_strcasecmp(resp->keyword, keyword) == 0 && resp->args &&
	       resp->has_number == numbered;
}

static gboolean is_data(const ImapResponse *resp, const char *keyword)
{
	return is_data_n(resp, keyword, FALSE);
}

/* A mailbox name as the server sent it: atom, quoted or literal, but never
 * with a NUL, which no C string downstream could carry. */
static const char *get_mailbox(const ImapValue *v, const char *what,
			       GError **error)
{
	if (!v ||
	    (v->type != IMAP_VALUE_ATOM && v->type != IMAP_VALUE_STRING)) {
		proto_error(error, "%s: mailbox name is not a string", what);
		return NULL;
	}
	if (memchr(v->str, '\0', v->len)) {
		proto_error(error, "%s: mailbox name contains NUL", what);
		return NULL;
	}
	return v->str;
}

/* NULL-terminated copy of a list of atoms (flags). */
static GStrv atoms_to_strv(const ImapValue *v)
{
	const GPtrArray *list = imap_value_get_list(v);

	if (!list)
		return NULL;
	for (guint i = 0; i < list->len; i++) {
		if (((const ImapValue *)list->pdata[i])->type !=
		    IMAP_VALUE_ATOM)
			return NULL;
	}

	GStrv out = g_new0(char *, list->len + 1);

	for (guint i = 0; i < list->len; i++)
		out[i] = g_strdup(((const ImapValue *)list->pdata[i])->str);
	return out;
}

/* ---- CAPABILITY ---- */

GHashTable *imap_decode_capability(const GPtrArray *args)
{
	GHashTable *caps =
		g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);

	for (guint i = 0; args && i < args->len; i++) {
		const ImapValue *v = args->pdata[i];

		/* Anything but an atom is junk we can only skip. */
		if (v->type == IMAP_VALUE_ATOM)
			g_hash_table_add(caps, g_ascii_strup(v->str, v->len));
	}
	return caps;
}

/* ---- LIST / LSUB ---- */

void imap_list_entry_free(ImapListEntry *entry)
{
	if (!entry)
		return;
	g_free(entry->name);
	g_free(entry);
}

static guint32 mbox_attr(const char *name)
{
	static const struct {
		const char *name;
		guint32 bits;
	} table[] = {
		{"\\Noselect", IMAP_MBOX_NOSELECT},
		{"\\NonExistent", IMAP_MBOX_NONEXISTENT | IMAP_MBOX_NOSELECT},
		{"\\Noinferiors", IMAP_MBOX_NOINFERIORS},
		{"\\HasChildren", IMAP_MBOX_HASCHILDREN},
		{"\\HasNoChildren", IMAP_MBOX_HASNOCHILDREN},
		{"\\Marked", IMAP_MBOX_MARKED},
		{"\\Unmarked", IMAP_MBOX_UNMARKED},
		{"\\Subscribed", IMAP_MBOX_SUBSCRIBED},
		{"\\Remote", IMAP_MBOX_REMOTE},
		{"\\All", IMAP_MBOX_ALL},
		{"\\Archive", IMAP_MBOX_ARCHIVE},
		{"\\Drafts", IMAP_MBOX_DRAFTS},
		{"\\Flagged", IMAP_MBOX_FLAGGED},
		{"\\Junk", IMAP_MBOX_JUNK},
		{"\\Sent", IMAP_MBOX_SENT},
		{"\\Trash", IMAP_MBOX_TRASH},
		{"\\Important", IMAP_MBOX_IMPORTANT},
	};

	for (gsize i = 0; i < G_N_ELEMENTS(table); i++) {
		if (g_ascii_strcasecmp(name, table[i].name) == 0)
			return table[i].bits;
	}
	return 0;
}

ImapListEntry *imap_decode_list(const ImapResponse *resp, GError **error)
{
	if (!is_data(resp, "LIST") && !is_data(resp, "LSUB")) {
		proto_error(error, "not a LIST or LSUB response");
		return NULL;
	}

	const GPtrArray *attrs = imap_value_get_list(arg(resp->args, 0));
	const ImapValue *delim = arg(resp->args, 1);
	guint32 bits = 0;
	char delimiter = '\0';

	if (!attrs || !delim || resp->args->len < 3) {
		proto_error(error,
			    "LIST: expected (attributes) delimiter name");
		return NULL;
	}
	for (guint i = 0; i < attrs->len; i++) {
		const ImapValue *a = attrs->pdata[i];

		if (a->type != IMAP_VALUE_ATOM) {
			proto_error(error, "LIST: attribute is not an atom");
			return NULL;
		}
		bits |= mbox_attr(a->str);
	}
	if (delim->type == IMAP_VALUE_STRING) {
		/* NUL would read as NIL, and a control character as a
		 * delimiter can only be mischief. */
		if (delim->len != 1 || (guchar)delim->str[0] < 0x20 ||
		    (guchar)delim->str[0] >= 0x7f) {
			proto_error(error, "LIST: invalid hierarchy delimiter");
			return NULL;
		}
		delimiter = delim->str[0];
	} else if (delim->type != IMAP_VALUE_NIL) {
		proto_error(error, "LIST: delimiter is not a string or NIL");
		return NULL;
	}

	const char *name = get_mailbox(arg(resp->args, 2), "LIST", error);

	if (!name)
		return NULL;

	ImapListEntry *entry = g_new0(ImapListEntry, 1);

	entry->name = g_strdup(name);
	entry->delimiter = delimiter;
	entry->attrs = bits;
	return entry;
}

/* ---- STATUS ---- */

void imap_status_data_free(ImapStatusData *st)
{
	if (!st)
		return;
	g_free(st->mailbox);
	g_free(st);
}

/* Stores a counter, refusing a repeat that contradicts the first one. */
static gboolean set_u32_once(guint32 *has, guint32 bit, guint32 *field,
			     guint32 value, const char *what, GError **error)
{
	if ((*has & bit) && *field != value)
		return proto_error(error, "%s given twice", what);
	*has |= bit;
	*field = value;
	return TRUE;
}

static gboolean set_u64_once(guint32 *has, guint32 bit, guint64 *field,
			     guint64 value, const char *what, GError **error)
{
	if ((*has & bit) && *field != value)
		return proto_error(error, "%s given twice", what);
	*has |= bit;
	*field = value;
	return TRUE;
}

ImapStatusData *imap_decode_status(const ImapResponse *resp, GError **error)
{
	static const struct {
		const char *name;
		guint32 bit;
		gsize offset;
		gboolean wide;
	} items[] = {
		{"MESSAGES", IMAP_STATUS_HAS_MESSAGES,
		 G_STRUCT_OFFSET(ImapStatusData, messages), FALSE},
		{"RECENT", IMAP_STATUS_HAS_RECENT,
		 G_STRUCT_OFFSET(ImapStatusData, recent), FALSE},
		{"UIDNEXT", IMAP_STATUS_HAS_UIDNEXT,
		 G_STRUCT_OFFSET(ImapStatusData, uidnext), FALSE},
		{"UIDVALIDITY", IMAP_STATUS_HAS_UIDVALIDITY,
		 G_STRUCT_OFFSET(ImapStatusData, uidvalidity), FALSE},
		{"UNSEEN", IMAP_STATUS_HAS_UNSEEN,
		 G_STRUCT_OFFSET(ImapStatusData, unseen), FALSE},
		{"HIGHESTMODSEQ", IMAP_STATUS_HAS_HIGHESTMODSEQ,
		 G_STRUCT_OFFSET(ImapStatusData, highestmodseq), TRUE},
		{"SIZE", IMAP_STATUS_HAS_SIZE,
		 G_STRUCT_OFFSET(ImapStatusData, size), TRUE},
	};

	if (!is_data(resp, "STATUS")) {
		proto_error(error, "not a STATUS response");
		return NULL;
	}

	const char *name = get_mailbox(arg(resp->args, 0), "STATUS", error);

	if (!name)
		return NULL;

	const GPtrArray *list = imap_value_get_list(arg(resp->args, 1));

	if (!list || resp->args->len != 2) {
		proto_error(error, "STATUS: expected mailbox (items)");
		return NULL;
	}
	if (list->len % 2) {
		proto_error(error, "STATUS: odd number of items");
		return NULL;
	}

	g_autoptr(ImapStatusData) st = g_new0(ImapStatusData, 1);

	for (guint i = 0; i < list->len; i += 2) {
		const ImapValue *key = list->pdata[i];
		const ImapValue *val = list->pdata[i + 1];
		gsize k;

		if (key->type != IMAP_VALUE_ATOM) {
			proto_error(error, "STATUS: item name is not an atom");
			return NULL;
		}
		for (k = 0; k < G_N_ELEMENTS(items); k++) {
			if (g_ascii_strcasecmp(key->str, items[k].name) == 0)
				break;
		}
		if (k == G_N_ELEMENTS(items))
			continue; /* an item we did not ask for */

		gpointer field = G_STRUCT_MEMBER_P(st, items[k].offset);
		guint64 n64;
		guint32 n32;

		if (items[k].wide) {
			if (!imap_value_get_u64(val, &n64)) {
				proto_error(error, "STATUS: %s is not a number",
					    items[k].name);
				return NULL;
			}
			if (!set_u64_once(&st->has, items[k].bit, field, n64,
					  items[k].name, error))
				return NULL;
		} else {
			if (!imap_value_get_u32(val, &n32)) {
				proto_error(error,
					    "STATUS: %s is not a 32-bit number",
					    items[k].name);
				return NULL;
			}
			if (!set_u32_once(&st->has, items[k].bit, field, n32,
					  items[k].name, error))
				return NULL;
		}
	}
	st->mailbox = g_strdup(name);
	return g_steal_pointer(&st);
}

/* ---- SELECT / EXAMINE ---- */

void imap_select_data_clear(ImapSelectData *sd)
{
	if (!sd)
		return;
	g_strfreev(sd->flags);
	g_strfreev(sd->permanentflags);
	memset(sd, 0, sizeof(*sd));
}

static gboolean select_code_update(ImapSelectData *sd, const ImapResponse *resp)
{
	const ImapValue *a0 = arg(resp->code_args, 0);
	guint32 n32;
	guint64 n64;

	if (resp->kind == IMAP_RESP_TAGGED) {
		if (resp->status != IMAP_STATUS_OK)
			return FALSE;
		if (imap_response_has_code(resp, "READ-ONLY")) {
			sd->read_only = TRUE;
			return TRUE;
		}
		if (imap_response_has_code(resp, "READ-WRITE")) {
			sd->read_only = FALSE;
			return TRUE;
		}
		return FALSE;
	}
	if (resp->status != IMAP_STATUS_OK || !resp->code)
		return FALSE;
	/* A malformed value leaves the field unset; the caller sees the
	 * missing bit rather than a made-up number. */
	if (!strcmp(resp->code, "UIDVALIDITY")) {
		if (!imap_value_get_u32(a0, &n32) || n32 == 0)
			return FALSE;
		sd->uidvalidity = n32;
		sd->has |= IMAP_STATUS_HAS_UIDVALIDITY;
	} else if (!strcmp(resp->code, "UIDNEXT")) {
		if (!imap_value_get_u32(a0, &n32) || n32 == 0)
			return FALSE;
		sd->uidnext = n32;
		sd->has |= IMAP_STATUS_HAS_UIDNEXT;
	} else if (!strcmp(resp->code, "HIGHESTMODSEQ")) {
		if (!imap_value_get_u64(a0, &n64))
			return FALSE;
		sd->highestmodseq = n64;
		sd->has |= IMAP_STATUS_HAS_HIGHESTMODSEQ;
	} else if (!strcmp(resp->code, "NOMODSEQ")) {
		sd->nomodseq = TRUE;
	} else if (!strcmp(resp->code, "PERMANENTFLAGS")) {
		GStrv flags = atoms_to_strv(a0);

		if (!flags)
			return FALSE;
		g_strfreev(sd->permanentflags);
		sd->permanentflags = flags;
	} else if (!strcmp(resp->code, "READ-ONLY")) {
		sd->read_only = TRUE;
	} else if (!strcmp(resp->code, "READ-WRITE")) {
		sd->read_only = FALSE;
	} else {
		return FALSE;
	}
	return TRUE;
}

gboolean imap_select_data_update(ImapSelectData *sd, const ImapResponse *resp)
{
	if (!sd || !resp)
		return FALSE;
	if (resp->status != IMAP_STATUS_NONE)
		return select_code_update(sd, resp);
	if (resp->kind != IMAP_RESP_UNTAGGED || !resp->keyword)
		return FALSE;
	if (resp->has_number && !strcmp(resp->keyword, "EXISTS")) {
		sd->exists = resp->number;
		sd->has |= IMAP_STATUS_HAS_MESSAGES;
		return TRUE;
	}
	if (!resp->has_number && !strcmp(resp->keyword, "FLAGS")) {
		GStrv flags = NULL;

		if (resp->args && resp->args->len == 1)
			flags = atoms_to_strv(resp->args->pdata[0]);
		if (!flags)
			return FALSE;
		g_strfreev(sd->flags);
		sd->flags = flags;
		return TRUE;
	}
	return FALSE;
}

/* ---- INTERNALDATE ---- */

static const char month_names[12][4] = {"Jan", "Feb", "Mar", "Apr",
					"May", "Jun", "Jul", "Aug",
					"Sep", "Oct", "Nov", "Dec"};

static gboolean is_leap(gint64 y)
{
	return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int days_in_month(gint64 y, int m)
{
	static const int days[12] = {31, 28, 31, 30, 31, 30,
				     31, 31, 30, 31, 30, 31};

	return m == 2 && is_leap(y) ? 29 : days[m - 1];
}

/* Days since 1970-01-01 of a proleptic Gregorian date, counted in 400-year
 * eras so that it holds for any year without calendar tables. */
static gint64 days_from_civil(gint64 y, int m, int d)
{
	y -= m <= 2;

	gint64 era = (y >= 0 ? y : y - 399) / 400;
	gint64 yoe = y - era * 400;
	gint64 doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	gint64 doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;

	return era * 146097 + doe - 719468;
}

static void civil_from_days(gint64 z, gint64 *y_out, int *m_out, int *d_out)
{
	z += 719468;

	gint64 era = (z >= 0 ? z : z - 146096) / 146097;
	gint64 doe = z - era * 146097;
	gint64 yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	gint64 doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	gint64 mp = (5 * doy + 2) / 153;
	int m = mp < 10 ? mp + 3 : mp - 9;

	*d_out = doy - (153 * mp + 2) / 5 + 1;
	*m_out = m;
	*y_out = yoe + era * 400 + (m <= 2);
}

static gboolean take_digits(const char **p_io, int n, int *out)
{
	const char *p = *p_io;
	int v = 0;

	for (int i = 0; i < n; i++) {
		if (!g_ascii_isdigit(p[i]))
			return FALSE;
		v = v * 10 + (p[i] - '0');
	}
	*out = v;
	*p_io = p + n;
	return TRUE;
}

static gboolean take_char(const char **p_io, char c)
{
	if (**p_io != c)
		return FALSE;
	(*p_io)++;
	return TRUE;
}

gboolean imap_parse_internaldate(const char *text, gint64 *epoch_out,
				 gint *tz_minutes_out)
{
	const char *p = text;
	int day, mon = 0, year, hh, mm, ss, zh, zm, sign;

	if (!p)
		return FALSE;
	/* date-day-fixed is SP DIGIT or 2DIGIT; a bare single digit is
	 * tolerated too, some servers trim the space. */
	if (*p == ' ')
		p++;
	if (!take_digits(&p, 2, &day) && !take_digits(&p, 1, &day))
		return FALSE;
	if (!take_char(&p, '-'))
		return FALSE;
	for (int i = 0; i < 12; i++) {
		if (g_ascii_strncasecmp(p, month_names[i], 3) == 0) {
			mon = i + 1;
			break;
		}
	}
	if (!mon)
		return FALSE;
	p += 3;
	if (!take_char(&p, '-') || !take_digits(&p, 4, &year) ||
	    !take_char(&p, ' ') || !take_digits(&p, 2, &hh) ||
	    !take_char(&p, ':') || !take_digits(&p, 2, &mm) ||
	    !take_char(&p, ':') || !take_digits(&p, 2, &ss) ||
	    !take_char(&p, ' '))
		return FALSE;
	if (*p == '+')
		sign = 1;
	else if (*p == '-')
		sign = -1;
	else
		return FALSE;
	p++;
	if (!take_digits(&p, 2, &zh) || !take_digits(&p, 2, &zm) || *p)
		return FALSE;
	if (year < 1 || day < 1 || day > days_in_month(year, mon) || hh > 23 ||
	    mm > 59 || ss > 59 || zh > 23 || zm > 59)
		return FALSE;

	gint tz = sign * (zh * 60 + zm);
	gint64 epoch = days_from_civil(year, mon, day) * 86400 + hh * 3600 +
		       mm * 60 + ss - (gint64)tz * 60;

	if (epoch_out)
		*epoch_out = epoch;
	if (tz_minutes_out)
		*tz_minutes_out = tz;
	return TRUE;
}

char *imap_format_internaldate(gint64 epoch)
{
	/* Floor division: times before 1970 still land on the right day. */
	gint64 days = epoch / 86400;
	gint64 secs = epoch % 86400;
	gint64 y;
	int m, d;

	if (secs < 0) {
		secs += 86400;
		days--;
	}
	civil_from_days(days, &y, &m, &d);
	return g_strdup_printf("%02d-%s-%04" G_GINT64_FORMAT
			       " %02d:%02d:%02d +0000",
			       d, month_names[m - 1], y, (int)(secs / 3600),
			       (int)(secs / 60 % 60), (int)(secs % 60));
}

/* ---- FETCH ---- */

static void section_clear(gpointer data)
{
	ImapFetchSection *s = data;

	g_free(s->section);
}

void imap_fetch_data_free(ImapFetchData *fd)
{
	if (!fd)
		return;
	g_strfreev(fd->flags);
	if (fd->sections)
		g_array_unref(fd->sections);
	g_free(fd);
}

static gboolean is_body_value(const ImapValue *v)
{
	return v->type == IMAP_VALUE_STRING || v->type == IMAP_VALUE_NIL ||
	       v->type == IMAP_VALUE_STREAMED;
}

/*
 * "BODY[HEADER.FIELDS (DATE)]<0>" -> section "HEADER.FIELDS (DATE)", origin
 * 0. The parser guarantees the brackets balance; the text after ']' must be
 * empty or a <number>.
 */
static gboolean add_section(ImapFetchData *fd, const char *name,
			    const ImapValue *value, GError **error)
{
	const char *open = strchr(name, '[');
	const char *close = strrchr(name, ']');
	ImapFetchSection sec = {0};

	if (!open || !close || close < open)
		return proto_error(error, "FETCH: malformed section");
	if (close[1] == '<') {
		ImapValue tmp = {.type = IMAP_VALUE_ATOM};
		const char *end = strchr(close + 2, '>');
		g_autofree char *digits = NULL;

		if (!end || end[1])
			return proto_error(error, "FETCH: malformed origin");
		digits = g_strndup(close + 2, end - (close + 2));
		tmp.str = digits;
		tmp.len = strlen(digits);
		if (!imap_value_get_u64(&tmp, &sec.origin))
			return proto_error(error, "FETCH: malformed origin");
		sec.has_origin = TRUE;
	} else if (close[1]) {
		return proto_error(error, "FETCH: junk after section");
	}
	if (!is_body_value(value))
		return proto_error(error,
				   "FETCH: section value is not a string");
	sec.section = g_ascii_strup(open + 1, close - open - 1);
	sec.value = value;
	g_array_append_val(fd->sections, sec);
	return TRUE;
}

static gboolean has_prefix_ci(const char *s, const char *prefix)
{
	return g_ascii_strncasecmp(s, prefix, strlen(prefix)) == 0;
}

static gboolean fetch_item(ImapFetchData *fd, const ImapValue *key,
			   const ImapValue *val, GError **error)
{
	const char *k = key->str;
	guint32 n32;
	guint64 n64;

	if (!g_ascii_strcasecmp(k, "UID")) {
		if (!imap_value_get_u32(val, &n32) || n32 == 0)
			return proto_error(error, "FETCH: invalid UID");
		return set_u32_once(&fd->has, IMAP_FETCH_HAS_UID, &fd->uid, n32,
				    "FETCH: UID", error);
	}
	if (!g_ascii_strcasecmp(k, "FLAGS")) {
		GStrv flags = atoms_to_strv(val);

		if (!flags)
			return proto_error(error, "FETCH: invalid FLAGS");
		g_strfreev(fd->flags);
		fd->flags = flags;
		fd->has |= IMAP_FETCH_HAS_FLAGS;
		return TRUE;
	}
	if (!g_ascii_strcasecmp(k, "RFC822.SIZE")) {
		if (!imap_value_get_u64(val, &n64))
			return proto_error(error, "FETCH: invalid RFC822.SIZE");
		fd->rfc822_size = n64;
		fd->has |= IMAP_FETCH_HAS_SIZE;
		return TRUE;
	}
	if (!g_ascii_strcasecmp(k, "INTERNALDATE")) {
		if (val->type != IMAP_VALUE_STRING ||
		    memchr(val->str, '\0', val->len) ||
		    !imap_parse_internaldate(val->str, &fd->internaldate,
					     &fd->internaldate_tz))
			return proto_error(error,
					   "FETCH: invalid INTERNALDATE");
		fd->has |= IMAP_FETCH_HAS_INTERNALDATE;
		return TRUE;
	}
	if (!g_ascii_strcasecmp(k, "MODSEQ")) {
		const GPtrArray *l = imap_value_get_list(val);

		if (!l || l->len != 1 || !imap_value_get_u64(l->pdata[0], &n64))
			return proto_error(error, "FETCH: invalid MODSEQ");
		fd->modseq = n64;
		fd->has |= IMAP_FETCH_HAS_MODSEQ;
		return TRUE;
	}
	if (!g_ascii_strcasecmp(k, "RFC822") ||
	    !g_ascii_strcasecmp(k, "RFC822.HEADER") ||
	    !g_ascii_strcasecmp(k, "RFC822.TEXT")) {
		ImapFetchSection sec = {0};

		if (!is_body_value(val))
			return proto_error(error, "FETCH: %s is not a string",
					   k[6] ? k + 7 : "RFC822");
		sec.section = g_ascii_strup(k[6] ? k + 7 : "", -1);
		sec.value = val;
		g_array_append_val(fd->sections, sec);
		return TRUE;
	}
	/* BINARY.SIZE[...] is a number, not content: skipped below. */
	if ((has_prefix_ci(k, "BODY[") || has_prefix_ci(k, "BODY.PEEK[") ||
	     has_prefix_ci(k, "BINARY[") || has_prefix_ci(k, "BINARY.PEEK[")))
		return add_section(fd, k, val, error);
	return TRUE; /* unknown items (ENVELOPE, X-GM-*, ...) are skipped */
}

ImapFetchData *imap_decode_fetch(const ImapResponse *resp, GError **error)
{
	if (!is_data_n(resp, "FETCH", TRUE)) {
		proto_error(error, "not a FETCH response");
		return NULL;
	}
	if (resp->number == 0) {
		proto_error(error, "FETCH: message number 0");
		return NULL;
	}

	const GPtrArray *list = imap_value_get_list(arg(resp->args, 0));

	if (!list || resp->args->len != 1) {
		proto_error(error, "FETCH: expected one list of items");
		return NULL;
	}
	if (list->len % 2) {
		proto_error(error, "FETCH: odd number of items");
		return NULL;
	}

	g_autoptr(ImapFetchData) fd = g_new0(ImapFetchData, 1);

	fd->seq = resp->number;
	fd->sections = g_array_new(FALSE, TRUE, sizeof(ImapFetchSection));
	g_array_set_clear_func(fd->sections, section_clear);
	for (guint i = 0; i < list->len; i += 2) {
		const ImapValue *key = list->pdata[i];

		if (key->type != IMAP_VALUE_ATOM) {
			proto_error(error, "FETCH: item name is not an atom");
			return NULL;
		}
		if (!fetch_item(fd, key, list->pdata[i + 1], error))
			return NULL;
	}
	return g_steal_pointer(&fd);
}

const ImapFetchSection *imap_fetch_data_section(const ImapFetchData *fd,
						const char *section)
{
	for (guint i = 0; fd && fd->sections && i < fd->sections->len; i++) {
		const ImapFetchSection *s =
			&g_array_index(fd->sections, ImapFetchSection, i);

		if (g_ascii_strcasecmp(s->section, section) == 0)
			return s;
	}
	return NULL;
}

/* ---- VANISHED, SEARCH, ESEARCH ---- */

static ImapUidSet *parse_set_value(const ImapValue *v, const char *what,
				   GError **error)
{
	g_autoptr(GError) local = NULL;
	ImapUidSet *set;

	/* sequence-set is atom syntax; a string here is not one. */
	if (!v || v->type != IMAP_VALUE_ATOM) {
		proto_error(error, "%s: expected a UID set", what);
		return NULL;
	}
	set = imap_uid_set_parse(v->str, 0, &local);
	if (!set)
		proto_error(error, "%s: %s", what, local->message);
	return set;
}

ImapUidSet *imap_decode_vanished(const ImapResponse *resp,
				 gboolean *earlier_out, GError **error)
{
	guint i = 0;
	gboolean earlier = FALSE;

	if (!is_data(resp, "VANISHED")) {
		proto_error(error, "not a VANISHED response");
		return NULL;
	}

	const GPtrArray *tags = imap_value_get_list(arg(resp->args, 0));

	if (tags) {
		if (tags->len != 1 ||
		    !imap_value_is_atom(tags->pdata[0], "EARLIER")) {
			proto_error(error, "VANISHED: unknown modifier");
			return NULL;
		}
		earlier = TRUE;
		i++;
	}
	if (resp->args->len != i + 1) {
		proto_error(error, "VANISHED: expected one UID set");
		return NULL;
	}

	ImapUidSet *set =
		parse_set_value(arg(resp->args, i), "VANISHED", error);

	if (set && earlier_out)
		*earlier_out = earlier;
	return set;
}

void imap_esearch_data_free(ImapEsearchData *es)
{
	if (!es)
		return;
	g_free(es->tag);
	imap_uid_set_free(es->all);
	g_free(es);
}

static gboolean esearch_u32(const ImapValue *v, guint32 *out, const char *what,
			    GError **error)
{
	if (!imap_value_get_u32(v, out))
		return proto_error(error, "ESEARCH: %s is not a number", what);
	return TRUE;
}

ImapEsearchData *imap_decode_esearch(const ImapResponse *resp, GError **error)
{
	guint i = 0;

	if (!is_data(resp, "ESEARCH")) {
		proto_error(error, "not an ESEARCH response");
		return NULL;
	}

	g_autoptr(ImapEsearchData) es = g_new0(ImapEsearchData, 1);
	const GPtrArray *args = resp->args;
	const GPtrArray *corr = imap_value_get_list(arg(args, 0));

	if (corr) {
		const char *tag = imap_value_get_string(arg(corr, 1));

		if (corr->len != 2 ||
		    !imap_value_is_atom(arg(corr, 0), "TAG") || !tag ||
		    memchr(tag, '\0',
			   ((const ImapValue *)corr->pdata[1])->len)) {
			proto_error(error, "ESEARCH: malformed (TAG ...)");
			return NULL;
		}
		es->tag = g_strdup(tag);
		i++;
	}
	if (imap_value_is_atom(arg(args, i), "UID")) {
		es->uid = TRUE;
		i++;
	}
	for (; i < args->len; i += 2) {
		const ImapValue *key = args->pdata[i];
		const ImapValue *val = arg(args, i + 1);
		guint32 n32;

		if (key->type != IMAP_VALUE_ATOM || !val) {
			proto_error(error, "ESEARCH: malformed return data");
			return NULL;
		}
		if (!g_ascii_strcasecmp(key->str, "MIN")) {
			if (!esearch_u32(val, &n32, "MIN", error))
				return NULL;
			es->min = n32;
			es->has_min = TRUE;
		} else if (!g_ascii_strcasecmp(key->str, "MAX")) {
			if (!esearch_u32(val, &n32, "MAX", error))
				return NULL;
			es->max = n32;
			es->has_max = TRUE;
		} else if (!g_ascii_strcasecmp(key->str, "COUNT")) {
			if (!esearch_u32(val, &n32, "COUNT", error))
				return NULL;
			es->count = n32;
			es->has_count = TRUE;
		} else if (!g_ascii_strcasecmp(key->str, "MODSEQ")) {
			if (!imap_value_get_u64(val, &es->modseq)) {
				proto_error(error,
					    "ESEARCH: MODSEQ is not a number");
				return NULL;
			}
			es->has_modseq = TRUE;
		} else if (!g_ascii_strcasecmp(key->str, "ALL")) {
			ImapUidSet *set =
				parse_set_value(val, "ESEARCH ALL", error);

			if (!set)
				return NULL;
			imap_uid_set_free(es->all);
			es->all = set;
		}
		/* Other return data (PARTIAL, RELEVANCY, ...) is skipped
		 * together with its value. */
	}
	return g_steal_pointer(&es);
}

static int u32_cmp(const void *a, const void *b)
{
	guint32 x = *(const guint32 *)a, y = *(const guint32 *)b;

	return x < y ? -1 : x > y;
}

ImapUidSet *imap_decode_search(const ImapResponse *resp, GError **error)
{
	if (!is_data(resp, "SEARCH")) {
		proto_error(error, "not a SEARCH response");
		return NULL;
	}

	const GPtrArray *args = resp->args;
	guint n = args->len;
	g_autoptr(GArray) nums =
		g_array_sized_new(FALSE, FALSE, sizeof(guint32), n);

	/* RFC 7162 appends "(MODSEQ n)" after the numbers. */
	if (n > 0 && imap_value_get_list(args->pdata[n - 1])) {
		const GPtrArray *l = imap_value_get_list(args->pdata[n - 1]);

		if (l->len != 2 || !imap_value_is_atom(l->pdata[0], "MODSEQ") ||
		    !imap_value_get_u64(l->pdata[1], NULL)) {
			proto_error(error, "SEARCH: malformed (MODSEQ ...)");
			return NULL;
		}
		n--;
	}
	for (guint i = 0; i < n; i++) {
		guint32 uid;

		if (!imap_value_get_u32(args->pdata[i], &uid) || uid == 0) {
			proto_error(error, "SEARCH: result is not a number");
			return NULL;
		}
		g_array_append_val(nums, uid);
	}
	/* Sorted first: adding in ascending order is O(log n) per UID. */
	if (nums->len > 1)
		qsort(nums->data, nums->len, sizeof(guint32), u32_cmp);

	ImapUidSet *set = imap_uid_set_new();

	for (guint i = 0; i < nums->len; i++) {
		guint32 uid = g_array_index(nums, guint32, i);

		imap_uid_set_add(set, uid, uid);
	}
	return set;
}

/* ---- Response codes ---- */

gboolean imap_response_has_code(const ImapResponse *resp, const char *code)
{
	return resp && resp->code && code &&
	       g_ascii_strcasecmp(resp->code, code) == 0;
}

gboolean imap_response_is_bye(const ImapResponse *resp)
{
	return resp && resp->kind == IMAP_RESP_UNTAGGED &&
	       resp->status == IMAP_STATUS_BYE;
}

gboolean imap_response_is_alert(const ImapResponse *resp)
{
	return imap_response_has_code(resp, "ALERT");
}

static gboolean code_uidvalidity(const ImapResponse *resp, const char *what,
				 guint32 *out, GError **error)
{
	if (!imap_value_get_u32(arg(resp->code_args, 0), out) || *out == 0)
		return proto_error(error, "%s: invalid UIDVALIDITY", what);
	return TRUE;
}

gboolean imap_decode_appenduid(const ImapResponse *resp,
			       guint32 *uidvalidity_out, ImapUidSet **uids_out,
			       GError **error)
{
	guint32 uidvalidity;

	if (!imap_response_has_code(resp, "APPENDUID"))
		return FALSE;
	if (!resp->code_args || resp->code_args->len != 2)
		return proto_error(error, "APPENDUID: expected 2 arguments");
	if (!code_uidvalidity(resp, "APPENDUID", &uidvalidity, error))
		return FALSE;

	ImapUidSet *set =
		parse_set_value(resp->code_args->pdata[1], "APPENDUID", error);

	if (!set)
		return FALSE;
	if (uidvalidity_out)
		*uidvalidity_out = uidvalidity;
	if (uids_out)
		*uids_out = set;
	else
		imap_uid_set_free(set);
	return TRUE;
}

/*
 * A COPYUID set must be expanded in the order the server wrote it: the
 * n-th source UID pairs with the n-th destination UID, and "304,319:320"
 * is not required to be sorted. Each element is validated through
 * imap_uid_set_parse().
 */
static GArray *expand_in_order(const ImapValue *v, const char *what,
			       GError **error)
{
	g_auto(GStrv) parts = NULL;
	guint64 total = 0;

	if (!v || v->type != IMAP_VALUE_ATOM) {
		proto_error(error, "COPYUID: %s is not a UID set", what);
		return NULL;
	}
	parts = g_strsplit(v->str, ",", -1);

	g_autoptr(GPtrArray) sets = g_ptr_array_new_with_free_func(
		(GDestroyNotify)imap_uid_set_free);

	for (guint i = 0; parts[i]; i++) {
		g_autoptr(GError) local = NULL;
		ImapUidSet *s = imap_uid_set_parse(parts[i], 0, &local);

		if (!s) {
			proto_error(error, "COPYUID: %s: %s", what,
				    local->message);
			return NULL;
		}
		g_ptr_array_add(sets, s);
		total += imap_uid_set_count(s);
		if (total > MAX_COPYUID_PAIRS) {
			proto_error(error, "COPYUID: %s has too many UIDs",
				    what);
			return NULL;
		}
	}

	GArray *out = g_array_sized_new(FALSE, FALSE, sizeof(guint32), total);

	for (guint i = 0; i < sets->len; i++) {
		const ImapUidSet *s = sets->pdata[i];
		const ImapUidRange *r =
			&g_array_index(s->ranges, ImapUidRange, 0);

		for (guint64 uid = r->lo; uid <= r->hi; uid++) {
			guint32 u = uid;

			g_array_append_val(out, u);
		}
	}
	return out;
}

gboolean imap_decode_copyuid(const ImapResponse *resp, guint32 *uidvalidity_out,
			     GArray **pairs_out, GError **error)
{
	guint32 uidvalidity;

	if (!imap_response_has_code(resp, "COPYUID"))
		return FALSE;
	if (!resp->code_args || resp->code_args->len != 3)
		return proto_error(error, "COPYUID: expected 3 arguments");
	if (!code_uidvalidity(resp, "COPYUID", &uidvalidity, error))
		return FALSE;

	g_autoptr(GArray) src =
		expand_in_order(resp->code_args->pdata[1], "source", error);

	if (!src)
		return FALSE;

	g_autoptr(GArray) dst = expand_in_order(resp->code_args->pdata[2],
						"destination", error);

	if (!dst)
		return FALSE;
	if (src->len != dst->len)
		return proto_error(
			error, "COPYUID: %u source UIDs but %u destinations",
			src->len, dst->len);

	GArray *pairs =
		g_array_sized_new(FALSE, FALSE, sizeof(guint32), 2 * src->len);

	for (guint i = 0; i < src->len; i++) {
		g_array_append_val(pairs, g_array_index(src, guint32, i));
		g_array_append_val(pairs, g_array_index(dst, guint32, i));
	}
	if (uidvalidity_out)
		*uidvalidity_out = uidvalidity;
	if (pairs_out)
		*pairs_out = pairs;
	else
		g_array_unref(pairs);
	return TRUE;
}
