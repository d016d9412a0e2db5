/* SPDX-License-Identifier: MIT */
/*
 * UID sets as sorted, merged ranges. Adjacent ranges are merged too, so a
 * set has exactly one representation and equality is a byte comparison of
 * imap_uid_set_to_string().
 */
#include "imap-private.h"

#include <stdlib.h>

ImapUidSet *imap_uid_set_new(void)
{
	ImapUidSet *set = g_new0(ImapUidSet, 1);

	set->ranges = g_array_new(FALSE, FALSE, sizeof(ImapUidRange));
	return set;
}

void imap_uid_set_free(ImapUidSet *set)
{
	if (!set)
		return;
	g_array_unref(set->ranges);
	g_free(set);
}

#define RANGE(set, i) g_array_index((set)->ranges, ImapUidRange, (i))

/* Index of the first range whose hi + 1 >= uid, i.e. the first one that
 * @uid could touch or precede; ranges->len if none. */
static guint first_touching(const ImapUidSet *set, guint64 uid)
{
	guint lo = 0, hi = set->ranges->len;

	while (lo < hi) {
		guint mid = lo + (hi - lo) / 2;

		if ((guint64)RANGE(set, mid).hi + 1 < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

void imap_uid_set_add(ImapUidSet *set, guint32 lo, guint32 hi)
{
	if (lo > hi) {
		guint32 t = lo;

		lo = hi;
		hi = t;
	}
	g_return_if_fail(lo >= 1);

	guint i = first_touching(set, lo);
	guint len = set->ranges->len;

	/* Appending in ascending order (the common case: parsing, SEARCH
	 * results) hits the end and costs O(log n). */
	if (i == len || (guint64)hi + 1 < RANGE(set, i).lo) {
		ImapUidRange r = {lo, hi};

		g_array_insert_val(set->ranges, i, r);
		return;
	}

	ImapUidRange *r = &RANGE(set, i);
	guint j = i + 1;

	r->lo = MIN(r->lo, lo);
	r->hi = MAX(r->hi, hi);
	while (j < len && RANGE(set, j).lo <= (guint64)r->hi + 1) {
		r->hi = MAX(r->hi, RANGE(set, j).hi);
		j++;
	}
	if (j > i + 1)
		g_array_remove_range(set->ranges, i + 1, j - i - 1);
}

gboolean imap_uid_set_contains(const ImapUidSet *set, guint32 uid)
{
	if (!set || uid == 0)
		return FALSE;

	guint i = first_touching(set, (guint64)uid + 1);

	return i < set->ranges->len && RANGE(set, i).lo <= uid &&
	       uid <= RANGE(set, i).hi;
}

guint64 imap_uid_set_count(const ImapUidSet *set)
{
	guint64 n = 0;

	for (guint i = 0; set && i < set->ranges->len; i++)
		n += (guint64)RANGE(set, i).hi - RANGE(set, i).lo + 1;
	return n;
}

gboolean imap_uid_set_nth(const ImapUidSet *set, guint64 n, guint32 *uid_out)
{
	for (guint i = 0; set && i < set->ranges->len; i++) {
		guint64 size = (guint64)RANGE(set, i).hi - RANGE(set, i).lo + 1;

		if (n < size) {
			if (uid_out)
				*uid_out = RANGE(set, i).lo + (guint32)n;
			return TRUE;
		}
		n -= size;
	}
	return FALSE;
}

char *imap_uid_set_to_string(const ImapUidSet *set)
{
	GString *out = g_string_new(NULL);

	for (guint i = 0; set && i < set->ranges->len; i++) {
		const ImapUidRange *r = &RANGE(set, i);

		if (i > 0)
			g_string_append_c(out, ',');
		if (r->lo == r->hi)
			g_string_append_printf(out, "%u", r->lo);
		else
			g_string_append_printf(out, "%u:%u", r->lo, r->hi);
	}
	return g_string_free(out, FALSE);
}

static gboolean parse_uid(const char **p_io, guint32 star, guint32 *uid_out,
			  const char *text, GError **error)
{
	const char *p = *p_io;
	guint64 n = 0;

	if (*p == '*') {
		if (star == 0) {
			g_set_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL,
				    "UID set: '*' not allowed here (offset %d)",
				    (int)(p - text));
			return FALSE;
		}
		*uid_out = star;
		*p_io = p + 1;
		return TRUE;
	}
	if (!g_ascii_isdigit(*p)) {
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL,
			    "UID set: expected a number (offset %d)",
			    (int)(p - text));
		return FALSE;
	}
	while (g_ascii_isdigit(*p)) {
		n = n * 10 + (*p - '0');
		if (n > G_MAXUINT32) {
			g_set_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL,
				    "UID set: number out of range (offset %d)",
				    (int)(*p_io - text));
			return FALSE;
		}
		p++;
	}
	if (n == 0) {
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL,
			    "UID set: UID 0 (offset %d)", (int)(*p_io - text));
		return FALSE;
	}
	*uid_out = n;
	*p_io = p;
	return TRUE;
}

static int range_cmp(const void *a, const void *b)
{
	const ImapUidRange *x = a, *y = b;

	return x->lo < y->lo ? -1 : x->lo > y->lo;
}

ImapUidSet *imap_uid_set_parse(const char *text, guint32 star, GError **error)
{
	g_autoptr(GArray) tmp = NULL;
	const char *p = text;

	if (!text || !*text) {
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL,
			    "UID set: empty");
		return NULL;
	}
	tmp = g_array_new(FALSE, FALSE, sizeof(ImapUidRange));
	for (;;) {
		ImapUidRange r;

		if (!parse_uid(&p, star, &r.lo, text, error))
			return NULL;
		r.hi = r.lo;
		if (*p == ':') {
			p++;
			if (!parse_uid(&p, star, &r.hi, text, error))
				return NULL;
			if (r.lo > r.hi) {
				guint32 t = r.lo;

				r.lo = r.hi;
				r.hi = t;
			}
		}
		g_array_append_val(tmp, r);
		if (*p == '\0')
			break;
		if (*p != ',') {
			g_set_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL,
				    "UID set: unexpected character (offset %d)",
				    (int)(p - text));
			return NULL;
		}
		p++;
	}

	/* Sorting first keeps a hostile descending set from costing a
	 * memmove per element. */
	if (tmp->len > 1)
		qsort(tmp->data, tmp->len, sizeof(ImapUidRange), range_cmp);

	ImapUidSet *set = imap_uid_set_new();

	for (guint i = 0; i < tmp->len; i++) {
		const ImapUidRange *r = &g_array_index(tmp, ImapUidRange, i);

		imap_uid_set_add(set, r->lo, r->hi);
	}
	return set;
}
