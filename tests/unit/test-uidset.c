/* SPDX-License-Identifier: MIT */
#include "imap-private.h"

static void assert_set(const ImapUidSet *set, const char *expect)
{
	g_autofree char *s = imap_uid_set_to_string(set);

	g_assert_cmpstr(s, ==, expect);
	/* The representation is canonical: sorted, merged, non-adjacent. */
	for (guint i = 0; i < set->ranges->len; i++) {
		const ImapUidRange *r =
			&g_array_index(set->ranges, ImapUidRange, i);

		g_assert_cmpuint(r->lo, >=, 1);
		g_assert_cmpuint(r->lo, <=, r->hi);
		if (i > 0) {
			const ImapUidRange *prev = r - 1;

			g_assert_cmpuint((guint64)prev->hi + 1, <, r->lo);
		}
	}
}

static void test_parse_good(void)
{
	static const struct {
		const char *in;
		guint32 star;
		const char *out;
		guint64 count;
	} cases[] = {
		{"1", 0, "1", 1},
		{"1:3,7,9:10", 0, "1:3,7,9:10", 6},
		{"5:3", 0, "3:5", 3},
		{"7,1:3", 0, "1:3,7", 4},
		{"1,2,3,4", 0, "1:4", 4},
		{"3:4,1:2", 0, "1:4", 4},
		{"1:10,2:3,5", 0, "1:10", 10},
		{"9:*", 12, "9:12", 4},
		{"*:9", 12, "9:12", 4},
		{"*", 5, "5", 1},
		{"20:*", 12, "12:20", 9},
		{"4294967295", 0, "4294967295", 1},
		{"1:4294967295", 0, "1:4294967295", G_MAXUINT32},
		{"4294967294,4294967295,1", 0, "1,4294967294:4294967295", 3},
		{"304,319:320", 0, "304,319:320", 3},
		{"0001", 0, "1", 1},
	};

	for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
		g_autoptr(GError) error = NULL;
		g_autoptr(ImapUidSet) set =
			imap_uid_set_parse(cases[i].in, cases[i].star, &error);

		g_assert_no_error(error);
		g_assert_nonnull(set);
		assert_set(set, cases[i].out);
		g_assert_cmpuint(imap_uid_set_count(set), ==, cases[i].count);
	}
}

static void test_parse_bad(void)
{
	static const char *const bad[] = {
		"",
		"0",
		"0:5",
		"5:0",
		"1,",
		",1",
		"1,,2",
		"1:",
		":1",
		"1::2",
		"a",
		"1a",
		"1 2",
		"1:2:3",
		"4294967296",
		"1:4294967296",
		"99999999999999999999",
		"*",
		"1:*",
		"-1",
		"+1",
		"1;2",
		" 1",
		"1 ",
	};

	for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
		g_autoptr(GError) error = NULL;
		ImapUidSet *set = imap_uid_set_parse(bad[i], 0, &error);

		g_test_message("bad set '%s'", bad[i]);
		g_assert_null(set);
		g_assert_error(error, IMAP_ERROR, IMAP_ERROR_PROTOCOL);
	}
	g_assert_null(imap_uid_set_parse(NULL, 0, NULL));
}

static void test_add_merge(void)
{
	g_autoptr(ImapUidSet) set = imap_uid_set_new();

	assert_set(set, "");
	g_assert_cmpuint(imap_uid_set_count(set), ==, 0);
	imap_uid_set_add(set, 10, 12);
	imap_uid_set_add(set, 1, 1);
	imap_uid_set_add(set, 5, 3);
	assert_set(set, "1,3:5,10:12");
	imap_uid_set_add(set, 2, 2); /* bridges 1 and 3:5 */
	assert_set(set, "1:5,10:12");
	imap_uid_set_add(set, 13, 13); /* adjacent above */
	imap_uid_set_add(set, 9, 9); /* adjacent below */
	assert_set(set, "1:5,9:13");
	imap_uid_set_add(set, 20, 30);
	imap_uid_set_add(set, 40, 50);
	imap_uid_set_add(set, 7, 45); /* swallows several */
	assert_set(set, "1:5,7:50");
	imap_uid_set_add(set, 4, 6);
	assert_set(set, "1:50");
	imap_uid_set_add(set, G_MAXUINT32, G_MAXUINT32);
	imap_uid_set_add(set, G_MAXUINT32 - 1, G_MAXUINT32);
	assert_set(set, "1:50,4294967294:4294967295");
	imap_uid_set_add(set, 1, G_MAXUINT32);
	assert_set(set, "1:4294967295");
	g_assert_cmpuint(imap_uid_set_count(set), ==, G_MAXUINT32);
}

static void test_add_against_bitmap(void)
{
	g_autoptr(GRand) rand = g_rand_new_with_seed(1234);

	for (int round = 0; round < 200; round++) {
		g_autoptr(ImapUidSet) set = imap_uid_set_new();
		gboolean bits[101] = {FALSE};
		g_autoptr(GString) expect = g_string_new(NULL);

		for (int k = 0; k < 12; k++) {
			guint32 a = g_rand_int_range(rand, 1, 101);
			guint32 b = g_rand_int_range(rand, 1, 101);

			imap_uid_set_add(set, a, b);
			for (guint32 u = MIN(a, b); u <= MAX(a, b); u++)
				bits[u] = TRUE;
		}
		for (guint32 u = 1; u <= 100; u++) {
			g_assert_cmpint(imap_uid_set_contains(set, u), ==,
					bits[u]);
			if (!bits[u] || (u > 1 && bits[u - 1]))
				continue;

			guint32 end = u;

			while (end < 100 && bits[end + 1])
				end++;
			if (expect->len)
				g_string_append_c(expect, ',');
			if (end == u)
				g_string_append_printf(expect, "%u", u);
			else
				g_string_append_printf(expect, "%u:%u", u, end);
		}
		assert_set(set, expect->str);
	}
}

static void test_contains_nth(void)
{
	g_autoptr(ImapUidSet) set = imap_uid_set_parse("2:4,10,20:21", 0, NULL);
	static const guint32 order[] = {2, 3, 4, 10, 20, 21};
	guint32 uid = 0;

	g_assert_false(imap_uid_set_contains(set, 0));
	g_assert_false(imap_uid_set_contains(set, 1));
	g_assert_true(imap_uid_set_contains(set, 2));
	g_assert_true(imap_uid_set_contains(set, 4));
	g_assert_false(imap_uid_set_contains(set, 5));
	g_assert_true(imap_uid_set_contains(set, 10));
	g_assert_false(imap_uid_set_contains(set, 11));
	g_assert_true(imap_uid_set_contains(set, 21));
	g_assert_false(imap_uid_set_contains(set, 22));
	g_assert_false(imap_uid_set_contains(set, G_MAXUINT32));
	g_assert_false(imap_uid_set_contains(NULL, 2));
	for (guint i = 0; i < G_N_ELEMENTS(order); i++) {
		g_assert_true(imap_uid_set_nth(set, i, &uid));
		g_assert_cmpuint(uid, ==, order[i]);
	}
	g_assert_false(imap_uid_set_nth(set, 6, &uid));
	g_assert_false(imap_uid_set_nth(set, G_MAXUINT64, &uid));

	g_autoptr(ImapUidSet) big = imap_uid_set_parse("1:4294967295", 0, NULL);

	g_assert_true(imap_uid_set_nth(big, G_MAXUINT32 - 1, &uid));
	g_assert_cmpuint(uid, ==, G_MAXUINT32);
	g_assert_false(imap_uid_set_nth(big, G_MAXUINT32, &uid));
	g_assert_true(imap_uid_set_contains(big, G_MAXUINT32));
}

/* Parsing a long descending list must not be quadratic. */
static void test_parse_descending(void)
{
	g_autoptr(GString) s = g_string_new(NULL);
	g_autoptr(ImapUidSet) set = NULL;

	for (guint32 u = 400000; u >= 2; u -= 2)
		g_string_append_printf(s, "%s%u", s->len ? "," : "", u);
	set = imap_uid_set_parse(s->str, 0, NULL);
	g_assert_nonnull(set);
	g_assert_cmpuint(set->ranges->len, ==, 200000);
	g_assert_cmpuint(imap_uid_set_count(set), ==, 200000);
	g_assert_true(imap_uid_set_contains(set, 4));
	g_assert_false(imap_uid_set_contains(set, 5));
}

int main(int argc, char **argv)
{
	g_test_init(&argc, &argv, NULL);
	g_test_add_func("/uidset/parse-good", test_parse_good);
	g_test_add_func("/uidset/parse-bad", test_parse_bad);
	g_test_add_func("/uidset/add-merge", test_add_merge);
	g_test_add_func("/uidset/add-against-bitmap", test_add_against_bitmap);
	g_test_add_func("/uidset/contains-nth", test_contains_nth);
	g_test_add_func("/uidset/parse-descending", test_parse_descending);
	return g_test_run();
}
