/* SPDX-License-Identifier: MIT */
/*
 * Message and folder names (DESIGN.md section 3).
 *
 * Everything here is a pure function of its arguments. Message names are
 * keys that must not move between mounts, so nothing may depend on the
 * locale, the time zone or the environment: the date is computed by hand in
 * UTC, the common charsets are converted by hand, and the hash in long
 * folder names is SHA-256 rather than g_str_hash().
 */
#include "names.h"

#include "imap.h"

#include <string.h>

G_DEFINE_QUARK(cache - name - error - quark, cache_name_error)

/* ---- Time ---- */

/* 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the range a four-digit
 * year can show. Clamping keeps the order of names monotonic. */
#define TIME_MIN G_GINT64_CONSTANT(-62167219200)
#define TIME_MAX G_GINT64_CONSTANT(253402300799)

typedef struct {
	int year;
	int month, day, hour, minute;
} UtcTime;

/*
 * Proleptic Gregorian calendar from days since 1970-01-01, after Howard
 * Hinnant's civil_from_days: counting in 400-year eras that start on
 * March 1 puts the leap day last, so no month table is needed. GDateTime
 * would do, but refuses year 0 and would need the clamping anyway.
 */
static UtcTime utc_from_epoch(gint64 t)
{
	UtcTime u;

	t = CLAMP(t, TIME_MIN, TIME_MAX);

	gint64 days = t / 86400;
	gint64 secs = t % 86400;

	if (secs < 0) {
		secs += 86400;
		days--;
	}
	u.hour = (int)(secs / 3600);
	u.minute = (int)(secs % 3600 / 60);

	days += 719468; /* shift the epoch to 0000-03-01 */
	gint64 era = (days >= 0 ? days : days - 146096) / 146097;
	gint64 doe = days - era * 146097; /* [0, 146096] */
	gint64 yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	gint64 doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	gint64 mp = (5 * doy + 2) / 153; /* March = 0 */

	u.day = (int)(doy - (153 * mp + 2) / 5 + 1);
	u.month = (int)(mp < 10 ? mp + 3 : mp - 9);
	u.year = (int)(yoe + era * 400 + (u.month <= 2));
	return u;
}

/* ---- Bytes to UTF-8 ---- */

/* Windows-1252 0x80-0x9f. The five holes keep their C1 code points, which
 * the slug turns into separators like any other control character. */
static const guint16 cp1252_high[32] = {
	0x20ac, 0x0081, 0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021,
	0x02c6, 0x2030, 0x0160, 0x2039, 0x0152, 0x008d, 0x017d, 0x008f,
	0x0090, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014,
	0x02dc, 0x2122, 0x0161, 0x203a, 0x0153, 0x009d, 0x017e, 0x0178,
};

/* NUL would end the string early; U+FFFD is no letter, so it still
 * separates words like the NUL did. */
static void append_cp1252_byte(GString *out, guchar b)
{
	if (b == 0)
		g_string_append_unichar(out, 0xfffd);
	else if (b < 0x80)
		g_string_append_c(out, (char)b);
	else if (b < 0xa0)
		g_string_append_unichar(out, cp1252_high[b - 0x80]);
	else
		g_string_append_unichar(out, b);
}

static void append_cp1252(GString *out, const char *s, gsize len)
{
	for (gsize i = 0; i < len; i++)
		append_cp1252_byte(out, (guchar)s[i]);
}

/*
 * Append @len bytes as UTF-8: valid UTF-8 sequences as they are, each other
 * byte as Windows-1252. Deciding per byte rather than per string keeps a
 * mostly-UTF-8 subject with one stray byte readable; real Latin-1 text
 * almost never happens to form valid multi-byte sequences.
 */
static void append_lenient(GString *out, const char *s, gsize len)
{
	const char *end = s + len;

	while (s < end) {
		const char *stop;

		if (g_utf8_validate_len(s, (gsize)(end - s), &stop)) {
			g_string_append_len(out, s, end - s);
			return;
		}
		g_string_append_len(out, s, stop - s);
		append_cp1252_byte(out, (guchar)*stop);
		s = stop + 1;
	}
}

/* ---- The Subject field ---- */

/* A subject longer than this is cut before decoding: the slug needs only
 * its first 80 characters, and this bounds the work a hostile header can
 * cause. */
#define SUBJECT_MAX_BYTES (64 * 1024)

typedef struct {
	const char *p, *end;
} LineIter;

/* The next line without its LF or CRLF; FALSE at the end of the input. */
static gboolean next_line(LineIter *it, const char **line, gsize *len)
{
	if (it->p >= it->end)
		return FALSE;

	const char *nl = memchr(it->p, '\n', (gsize)(it->end - it->p));
	const char *stop = nl ? nl : it->end;

	*line = it->p;
	it->p = nl ? nl + 1 : it->end;
	if (stop > *line && stop[-1] == '\r')
		stop--;
	*len = (gsize)(stop - *line);
	return TRUE;
}

static gboolean is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

static void append_capped(GString *out, const char *s, gsize len)
{
	if (out->len >= SUBJECT_MAX_BYTES)
		return;
	g_string_append_len(out, s, MIN(len, SUBJECT_MAX_BYTES - out->len));
}

/* If @line is a "Subject:" field (obsolete syntax allows blanks before the
 * colon), the offset of its value. */
static gboolean subject_field(const char *line, gsize len, gsize *value_out)
{
	gsize i = 7;

	if (len < 8 || g_ascii_strncasecmp(line, "subject", 7) != 0)
		return FALSE;
	while (i < len && is_wsp(line[i]))
		i++;
	if (i == len || line[i] != ':')
		return FALSE;
	*value_out = i + 1;
	return TRUE;
}

/*
 * The unfolded value of the first Subject field. RFC 5322 unfolding only
 * removes the line break and keeps the blank that starts the next line.
 * Input without a Subject field is taken as a bare value, so callers may
 * pass either the fetched field or just its text. An empty line ends the
 * header block; leading empty lines are skipped.
 */
static void subject_value(const char *s, gsize len, GString *out)
{
	LineIter it = {s, s + len};
	const char *line;
	gsize n, value;
	gboolean found = FALSE, started = FALSE;

	while (next_line(&it, &line, &n)) {
		if (n == 0) {
			if (started)
				break;
			continue;
		}
		started = TRUE;
		if (found) {
			if (!is_wsp(line[0]))
				break;
			append_capped(out, line, n);
		} else if (subject_field(line, n, &value)) {
			found = TRUE;
			append_capped(out, line + value, n - value);
		}
	}
	if (found)
		return;

	it = (LineIter){s, s + len};
	started = FALSE;
	while (next_line(&it, &line, &n)) {
		if (n == 0) {
			if (started)
				break;
			continue;
		}
		/* Lines that are not continuations still are separate words. */
		if (started && !is_wsp(line[0]))
			append_capped(out, " ", 1);
		started = TRUE;
		append_capped(out, line, n);
	}
}

/* ---- RFC 2047 encoded-words ---- */

typedef enum {
	CHARSET_UTF8, /* also US-ASCII: stray 8-bit is read as Windows-1252 */
	CHARSET_CP1252, /* ISO-8859-1 is read as its superset, as browsers do */
	CHARSET_ICONV,
} CharsetKind;

/* Longest charset name we pass to iconv. */
#define CHARSET_MAX 40

typedef struct {
	char charset[CHARSET_MAX + 1]; /* without an RFC 2231 "*lang" */
	CharsetKind kind;
	GString *bytes; /* decoded, still in @charset */
} EncodedWord;

/* Charset names reach iconv_open(), so only plain names get there: no
 * "/", which glibc reads as "//TRANSLIT"-style suffixes or paths. */
static gboolean charset_char(char c)
{
	return g_ascii_isalnum(c) || strchr("-_.:+()", c) != NULL;
}

static gboolean charset_kind(const char *cs, CharsetKind *kind_out)
{
	static const char *const utf8[] = {"utf-8", "utf8", "us-ascii",
					   "ascii"};
	static const char *const cp1252[] = {
		"iso-8859-1", "iso8859-1", "iso_8859-1",   "latin1",
		"latin-1",    "l1",	   "windows-1252", "cp1252",
	};

	for (gsize i = 0; i < G_N_ELEMENTS(utf8); i++) {
		if (g_ascii_strcasecmp(cs, utf8[i]) == 0) {
			*kind_out = CHARSET_UTF8;
			return TRUE;
		}
	}
	for (gsize i = 0; i < G_N_ELEMENTS(cp1252); i++) {
		if (g_ascii_strcasecmp(cs, cp1252[i]) == 0) {
			*kind_out = CHARSET_CP1252;
			return TRUE;
		}
	}

	GIConv cd = g_iconv_open("UTF-8", cs);

	if (cd == (GIConv)-1)
		return FALSE;
	g_iconv_close(cd);
	*kind_out = CHARSET_ICONV;
	return TRUE;
}

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static gboolean decode_q(const char *s, gsize len, GString *out)
{
	for (gsize i = 0; i < len; i++) {
		if (s[i] == '_') {
			g_string_append_c(out, ' ');
		} else if (s[i] == '=') {
			int hi = i + 2 < len ? hex_value(s[i + 1]) : -1;
			int lo = hi >= 0 ? hex_value(s[i + 2]) : -1;

			if (lo < 0)
				return FALSE;
			g_string_append_c(out, (char)(hi << 4 | lo));
			i += 2;
		} else {
			g_string_append_c(out, s[i]);
		}
	}
	return TRUE;
}

static int b64_value(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/* Base64 with or without its "=" padding; anything else is a broken word
 * that stays as it is (g_base64_decode() would skip bad characters). */
static gboolean decode_b(const char *s, gsize len, GString *out)
{
	guint32 bits = 0;
	guint nbits = 0;
	gsize pad = 0;

	while (pad < 2 && len > 0 && s[len - 1] == '=') {
		len--;
		pad++;
	}
	if (len % 4 == 1 || (pad > 0 && (len + pad) % 4 != 0))
		return FALSE;
	for (gsize i = 0; i < len; i++) {
		int v = b64_value(s[i]);

		if (v < 0)
			return FALSE;
		bits = (bits << 6) | (guint32)v;
		nbits += 6;
		if (nbits >= 8) {
			nbits -= 8;
			g_string_append_c(out, (char)((bits >> nbits) & 0xff));
		}
		bits &= (1u << nbits) - 1;
	}
	return TRUE;
}

/*
 * Parse "=?charset[*lang]?B|Q?text?=" at @s. On success fills @ew (whose
 * bytes must be empty) and the length consumed. Text may hold no blank and
 * no "?", as RFC 2047 says; a known charset is required, so a word in an
 * unknown one stays text.
 */
static gboolean parse_encoded_word(const char *s, gsize len, EncodedWord *ew,
				   gsize *consumed_out)
{
	gsize i = 2, cs_len = 0;

	if (len < 2 || s[0] != '=' || s[1] != '?')
		return FALSE;

	gsize cs_start = i;
	gboolean lang = FALSE;

	for (; i < len && s[i] != '?'; i++) {
		if (s[i] == '*' && !lang && i > cs_start) {
			lang = TRUE;
			cs_len = i - cs_start;
			continue;
		}
		if (!charset_char(s[i]) || i - cs_start >= 2 * CHARSET_MAX)
			return FALSE;
	}
	if (!lang)
		cs_len = i - cs_start;
	if (i + 2 >= len || cs_len == 0 || cs_len > CHARSET_MAX)
		return FALSE;

	char enc = g_ascii_toupper(s[i + 1]);

	if ((enc != 'B' && enc != 'Q') || s[i + 2] != '?')
		return FALSE;
	i += 3;

	gsize text = i;

	while (i < len && s[i] != '?') {
		if ((guchar)s[i] <= ' ' || (guchar)s[i] >= 0x7f)
			return FALSE;
		i++;
	}
	if (i + 1 >= len || s[i + 1] != '=')
		return FALSE;

	memcpy(ew->charset, s + cs_start, cs_len);
	ew->charset[cs_len] = '\0';
	if (!charset_kind(ew->charset, &ew->kind))
		return FALSE;

	gboolean ok = enc == 'B' ? decode_b(s + text, i - text, ew->bytes)
				 : decode_q(s + text, i - text, ew->bytes);

	if (!ok) {
		g_string_truncate(ew->bytes, 0);
		return FALSE;
	}
	*consumed_out = i + 2;
	return TRUE;
}

/* Bytes in a charset to UTF-8. A known charset with bytes it cannot
 * convert (mislabelled mail) falls back to the lenient reading. */
static void append_charset(GString *out, const EncodedWord *ew)
{
	if (ew->kind == CHARSET_CP1252) {
		append_cp1252(out, ew->bytes->str, ew->bytes->len);
		return;
	}
	if (ew->kind == CHARSET_ICONV) {
		gsize written = 0;
		g_autofree char *conv =
			g_convert(ew->bytes->str, (gssize)ew->bytes->len,
				  "UTF-8", ew->charset, NULL, &written, NULL);

		if (conv) {
			append_lenient(out, conv, written);
			return;
		}
	}
	append_lenient(out, ew->bytes->str, ew->bytes->len);
}

/*
 * Decode the encoded-words in @s (UTF-8, no NUL) into @out. Blanks between
 * two encoded-words vanish (RFC 2047 6.2). Adjacent words in the same
 * charset are converted together, because mailers do split a multi-byte
 * character across two words.
 */
static void rfc2047_decode(const char *s, gsize len, GString *out)
{
	g_autoptr(GString) pending = g_string_new(NULL);
	g_autoptr(GString) blanks = g_string_new(NULL);
	g_autoptr(GString) next_bytes = g_string_new(NULL);
	EncodedWord cur = {.bytes = pending};
	EncodedWord next = {.bytes = next_bytes};
	gboolean after_word = FALSE;
	gsize i = 0;

	while (i < len) {
		gsize used;

		if (s[i] == '=' &&
		    parse_encoded_word(s + i, len - i, &next, &used)) {
			if (after_word && cur.kind == next.kind &&
			    g_ascii_strcasecmp(cur.charset, next.charset) ==
				    0) {
				g_string_append_len(pending, next_bytes->str,
						    next_bytes->len);
			} else {
				if (after_word)
					append_charset(out, &cur);
				memcpy(cur.charset, next.charset,
				       sizeof(cur.charset));
				cur.kind = next.kind;
				g_string_truncate(pending, 0);
				g_string_append_len(pending, next_bytes->str,
						    next_bytes->len);
			}
			g_string_truncate(next_bytes, 0);
			g_string_truncate(blanks, 0);
			after_word = TRUE;
			i += used;
			continue;
		}

		gboolean blank = is_wsp(s[i]) || s[i] == '\r' || s[i] == '\n';

		if (after_word && blank) {
			g_string_append_c(blanks, s[i]);
		} else {
			if (after_word) {
				append_charset(out, &cur);
				g_string_append_len(out, blanks->str,
						    blanks->len);
				after_word = FALSE;
			}
			g_string_append_c(out, s[i]);
		}
		i++;
	}
	if (after_word)
		append_charset(out, &cur);
}

/* ---- The slug ---- */

#define SLUG_MAX_CHARS 80
/* "YYYY-MM-DD_HHMM_" + slug + ".4294967295.eml": the same budget for every
 * UID, so a name never depends on how many digits its UID has. */
#define SLUG_MAX_BYTES (CACHE_NAME_MAX - 16 - 15)

static gboolean is_mark(gunichar c)
{
	GUnicodeType t = g_unichar_type(c);

	return t == G_UNICODE_SPACING_MARK || t == G_UNICODE_ENCLOSING_MARK ||
	       t == G_UNICODE_NON_SPACING_MARK;
}

static gboolean all_ascii(const char *text, gsize len)
{
	for (gsize i = 0; i < len; i++) {
		if ((guchar)text[i] >= 0x80)
			return FALSE;
	}
	return TRUE;
}

/*
 * Letters and digits of any script stay, with the combining marks that
 * follow them (Devanagari or Thai would fall apart without); so do
 * "-+=@,", which need no quoting in a shell. Any other run becomes one "_".
 * @text is NFC-normalized first so that "é" has one spelling.
 */
static void build_slug(const char *text, gsize len, GString *slug)
{
	/* ASCII is its own NFC: most subjects skip the normalization, a
	 * tenth of a cold listing. */
	g_autofree char *nfc =
		all_ascii(text, len)
			? g_strndup(text, len)
			: g_utf8_normalize(text, (gssize)len, G_NORMALIZE_NFC);
	gsize chars = 0;
	gboolean gap = FALSE, after_letter = FALSE;

	for (const char *p = nfc ? nfc : ""; *p; p = g_utf8_next_char(p)) {
		gunichar c = g_utf8_get_char(p);
		gboolean letter = g_unichar_isalnum(c);
		gboolean keep = letter ||
				(c < 0x80 && strchr("-+=@,", (int)c) != NULL) ||
				(after_letter && !gap && is_mark(c));

		if (!keep) {
			gap = TRUE;
			after_letter = FALSE;
			continue;
		}

		char buf[6];
		gsize n = (gsize)g_unichar_to_utf8(c, buf);
		gsize sep = gap && slug->len > 0 ? 1 : 0;

		/* The separator goes in only with the character after it,
		 * so a slug cut here never ends in "_". */
		if (slug->len + sep + n > SLUG_MAX_BYTES ||
		    chars + sep + 1 > SLUG_MAX_CHARS)
			break;
		if (sep)
			g_string_append_c(slug, '_');
		g_string_append_len(slug, buf, (gssize)n);
		chars += sep + 1;
		gap = FALSE;
		after_letter = letter || after_letter;
	}
}

/* ---- Message names ---- */

char *cache_message_name(gint64 internaldate, const char *subject,
			 gsize subject_len, guint32 uid)
{
	g_autoptr(GString) value = g_string_new(NULL);
	g_autoptr(GString) text = g_string_new(NULL);
	g_autoptr(GString) decoded = g_string_new(NULL);
	g_autoptr(GString) slug = g_string_new(NULL);

	if (subject != NULL)
		subject_value(subject, subject_len, value);
	append_lenient(text, value->str, value->len);
	rfc2047_decode(text->str, text->len, decoded);
	build_slug(decoded->str, decoded->len, slug);
	/* "no_subject" says what is true only when there is none; a subject
	 * of nothing but punctuation ("..") leaves the slug out. */
	g_strstrip(decoded->str);
	if (slug->len == 0 && decoded->str[0] == '\0')
		g_string_assign(slug, "no_subject");

	UtcTime t = utc_from_epoch(internaldate);

	return g_strdup_printf("%04d-%02d-%02d_%02d%02d%s%s.%" G_GUINT32_FORMAT
			       ".eml",
			       t.year, t.month, t.day, t.hour, t.minute,
			       slug->len ? "_" : "", slug->str, uid);
}

gboolean cache_is_message_name(const char *name)
{
	g_return_val_if_fail(name != NULL, FALSE);

	gsize len = strlen(name);

	return len > 4 && strcmp(name + len - 4, ".eml") == 0;
}

gboolean cache_message_name_parse_uid(const char *name, guint32 *uid_out)
{
	g_return_val_if_fail(name != NULL, FALSE);

	if (!cache_is_message_name(name))
		return FALSE;

	gsize end = strlen(name) - 4; /* the dot of ".eml" */
	gsize start = end;

	while (start > 0 && g_ascii_isdigit(name[start - 1]))
		start--;
	/* digits, a dot before them and something before that */
	if (start == end || start < 2 || name[start - 1] != '.')
		return FALSE;
	if (end - start > 10 || (name[start] == '0' && end - start > 1))
		return FALSE;

	guint64 v = 0;

	for (gsize i = start; i < end; i++)
		v = v * 10 + (guint64)(name[i] - '0');
	if (v > G_MAXUINT32)
		return FALSE;
	if (uid_out != NULL)
		*uid_out = (guint32)v;
	return TRUE;
}

/* ---- Folder names ---- */

/* Room left for the prefix of a shortened component: "%~" + 8 hex. */
#define SHORT_PREFIX_MAX (CACHE_NAME_MAX - 10)

static void split_raw(const char *raw, char delimiter, GPtrArray *parts)
{
	const char *start = raw;
	gboolean in_run = FALSE;

	if (delimiter == '\0') {
		g_ptr_array_add(parts, g_strdup(raw));
		return;
	}
	for (const char *p = raw; *p != '\0'; p++) {
		if (in_run) {
			if (*p == '-')
				in_run = FALSE;
			continue;
		}
		/* With "&" as the delimiter nothing can be a run; such a
		 * server has only ASCII names. */
		if (*p == '&' && delimiter != '&') {
			if (p[1] == '-')
				p++;
			else
				in_run = TRUE;
			continue;
		}
		if (*p == delimiter) {
			g_ptr_array_add(parts, g_strndup(start, p - start));
			start = p + 1;
		}
	}
	g_ptr_array_add(parts, g_strdup(start));
}

static void append_escape(GString *out, guchar b)
{
	g_string_append_printf(out, "%%%02X", b);
}

static void escape_decoded(const char *dec, GString *out)
{
	for (const char *p = dec; *p != '\0'; p = g_utf8_next_char(p)) {
		gunichar c = g_utf8_get_char(p);
		const char *next = g_utf8_next_char(p);

		if (c == '%' || c == '/' || g_unichar_iscntrl(c)) {
			for (const char *q = p; q < next; q++)
				append_escape(out, (guchar)*q);
		} else {
			g_string_append_len(out, p, next - p);
		}
	}
}

/* "&" is escaped too although it is harmless in a file name: a valid name
 * never shows "%26", so an invalid one cannot pass for a valid one. */
static void escape_raw(const char *raw, GString *out)
{
	for (const guchar *p = (const guchar *)raw; *p != '\0'; p++) {
		if (*p < 0x20 || *p > 0x7e || *p == '%' || *p == '/' ||
		    *p == '&')
			append_escape(out, *p);
		else
			g_string_append_c(out, (char)*p);
	}
}

/* The first 32 bits of SHA-256: fixed forever, unlike g_str_hash(), and
 * unlike FNV no one can make two names collide at will without 2^32 work. */
static guint32 name_hash(const char *s)
{
	g_autoptr(GChecksum) sum = g_checksum_new(G_CHECKSUM_SHA256);
	guint8 digest[32];
	gsize len = sizeof(digest);

	g_checksum_update(sum, (const guchar *)s, (gssize)strlen(s));
	g_checksum_get_digest(sum, digest, &len);
	return (guint32)digest[0] << 24 | (guint32)digest[1] << 16 |
	       (guint32)digest[2] << 8 | digest[3];
}

/* Cut @out at an escape or character boundary and add the hash. Every "%"
 * in @out starts an escape: both escape functions escape "%" itself. */
static void shorten(GString *out, const char *raw)
{
	gsize keep = 0;

	while (keep < out->len) {
		gsize unit =
			out->str[keep] == '%'
				? 3
				: (gsize)(g_utf8_next_char(out->str + keep) -
					  (out->str + keep));

		if (keep + unit > SHORT_PREFIX_MAX)
			break;
		keep += unit;
	}
	g_string_truncate(out, keep);
	g_string_append_printf(out, "%%~%08X", name_hash(raw));
}

static char *display_component(const char *raw)
{
	if (*raw == '\0')
		return g_strdup("%00");

	g_autofree char *dec = imap_mutf7_decode(raw, NULL);
	g_autoptr(GString) out = g_string_new(NULL);

	if (dec != NULL && strcmp(dec, ".") == 0)
		return g_strdup("%2E");
	if (dec != NULL && strcmp(dec, "..") == 0)
		return g_strdup("%2E%2E");
	if (dec != NULL)
		escape_decoded(dec, out);
	else
		escape_raw(raw, out);
	if (out->len > CACHE_NAME_MAX)
		shorten(out, raw);
	return g_string_free(g_steal_pointer(&out), FALSE);
}

GPtrArray *cache_folder_components(const char *raw, char delimiter)
{
	g_return_val_if_fail(raw != NULL, NULL);

	g_autoptr(GPtrArray) parts = g_ptr_array_new_with_free_func(g_free);
	GPtrArray *shown = g_ptr_array_new_with_free_func(g_free);

	split_raw(raw, delimiter, parts);
	for (guint i = 0; i < parts->len; i++)
		g_ptr_array_add(shown, display_component(parts->pdata[i]));
	return shown;
}

static gboolean refuse(GError **error, gsize index, const char *why)
{
	g_set_error(error, CACHE_NAME_ERROR, CACHE_NAME_ERROR_INVALID,
		    "folder name component %zu %s", index + 1, why);
	return FALSE;
}

/* A C1 control as the forward direction writes it: "%C2%80"-"%C2%9F". */
static gboolean c1_escape(const char *p)
{
	return strncmp(p, "%C2%", 4) == 0 && (p[4] == '8' || p[4] == '9') &&
	       hex_value(p[5]) >= 0 && !g_ascii_islower(p[5]);
}

/* Undo escape_decoded() and the whole-component forms into @out. */
static gboolean unescape_component(const char *shown, gsize index, GString *out,
				   GError **error)
{
	if (*shown == '\0')
		return refuse(error, index, "is empty");
	if (!g_utf8_validate(shown, -1, NULL))
		return refuse(error, index, "is not valid UTF-8");
	if (strcmp(shown, "%2E") == 0) {
		g_string_append_c(out, '.');
		return TRUE;
	}
	if (strcmp(shown, "%2E%2E") == 0) {
		g_string_append(out, "..");
		return TRUE;
	}
	if (strcmp(shown, "%00") == 0)
		return TRUE;
	if (strcmp(shown, ".") == 0 || strcmp(shown, "..") == 0)
		return refuse(error, index, "is \".\" or \"..\"");

	for (const char *p = shown; *p != '\0';) {
		if (*p == '%') {
			if (strncmp(p, "%25", 3) == 0) {
				g_string_append_c(out, '%');
				p += 3;
			} else if (strncmp(p, "%2F", 3) == 0) {
				g_string_append_c(out, '/');
				p += 3;
			} else if (c1_escape(p)) {
				g_string_append_c(out, (char)0xc2);
				g_string_append_c(out,
						  (char)(hex_value(p[4]) << 4 |
							 hex_value(p[5])));
				p += 6;
			} else {
				return refuse(error, index,
					      "has a \"%\" that is not an "
					      "escape (%25, %2F)");
			}
			continue;
		}

		gunichar c = g_utf8_get_char(p);
		const char *next = g_utf8_next_char(p);

		if (c == '/' || g_unichar_iscntrl(c))
			return refuse(error, index,
				      "contains \"/\" or a control character");
		g_string_append_len(out, p, next - p);
		p = next;
	}
	return TRUE;
}

char *cache_folder_raw_name(const char *const *components, gsize n,
			    char delimiter, GError **error)
{
	g_return_val_if_fail(components != NULL || n == 0, NULL);
	g_return_val_if_fail(error == NULL || *error == NULL, NULL);

	if (n == 0 || (delimiter == '\0' && n != 1)) {
		g_set_error(error, CACHE_NAME_ERROR, CACHE_NAME_ERROR_INVALID,
			    "a folder name needs %s component",
			    n == 0 ? "at least one"
				   : "exactly one (flat "
				     "hierarchy)");
		return NULL;
	}

	g_autoptr(GString) raw = g_string_new(NULL);

	for (gsize i = 0; i < n; i++) {
		g_autoptr(GString) plain = g_string_new(NULL);
		g_autoptr(GError) local = NULL;

		if (!unescape_component(components[i], i, plain, error))
			return NULL;
		if (delimiter != '\0' &&
		    memchr(plain->str, delimiter, plain->len) != NULL) {
			refuse(error, i,
			       "contains the server's hierarchy delimiter");
			return NULL;
		}

		g_autofree char *enc = imap_mutf7_encode(plain->str, &local);

		if (enc == NULL) {
			refuse(error, i, "cannot be a mailbox name");
			return NULL;
		}
		if (i > 0)
			g_string_append_c(raw, delimiter);
		g_string_append(raw, enc);
	}

	/* The checks above should make this hold; checking it is what makes
	 * the promise in the header true for odd delimiters ("&", "-", base64
	 * letters) and components too long to show unshortened. */
	g_autoptr(GPtrArray) back =
		cache_folder_components(raw->str, delimiter);
	gboolean same = back->len == n;

	for (gsize i = 0; same && i < n; i++)
		same = strcmp(back->pdata[i], components[i]) == 0;
	if (!same) {
		g_set_error_literal(error, CACHE_NAME_ERROR,
				    CACHE_NAME_ERROR_INVALID,
				    "folder name cannot be represented on "
				    "the server");
		return NULL;
	}
	return g_string_free(g_steal_pointer(&raw), FALSE);
}
