/* SPDX-License-Identifier: MIT */
/*
 * imapfs --check: the first thing to run when a mount will not work. Logs
 * in exactly as a mount would, then prints what the server offers.
 */
#include "fs.h"

#include <stdio.h>
#include <string.h>

static void print_folders(ImapClient *client, const ImapResult *list)
{
	g_autoptr(GHashTable) counts =
		g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
	char delimiter = 0;

	for (guint i = 0; i < list->untagged->len; i++) {
		const ImapResponse *r = list->untagged->pdata[i];
		g_autoptr(ImapStatusData) st = NULL;

		if (g_strcmp0(r->keyword, "STATUS") != 0)
			continue;
		st = imap_decode_status(r, NULL);
		if (st && (st->has & IMAP_STATUS_HAS_MESSAGES))
			g_hash_table_insert(counts, g_strdup(st->mailbox),
					    GUINT_TO_POINTER(st->messages + 1));
	}
	for (guint i = 0; i < list->untagged->len; i++) {
		const ImapResponse *r = list->untagged->pdata[i];
		g_autoptr(ImapListEntry) e = NULL;
		g_autoptr(GError) error = NULL;
		g_autofree char *utf8 = NULL;
		gpointer n;

		if (g_strcmp0(r->keyword, "LIST") != 0)
			continue;
		e = imap_decode_list(r, &error);
		if (!e) {
			printf("  (unreadable LIST entry: %s)\n",
			       error->message);
			continue;
		}
		if (!delimiter && e->delimiter) {
			delimiter = e->delimiter;
			printf("folders (hierarchy delimiter \"%c\"):\n",
			       delimiter);
		}
		utf8 = imap_mutf7_decode(e->name, NULL);
		printf("  %s", utf8 ? utf8 : e->name);
		if (!utf8)
			printf("  (name is not valid modified UTF-7)");
		else if (strcmp(utf8, e->name) != 0)
			printf("  [%s]", e->name);
		n = g_hash_table_lookup(counts, e->name);
		if (n)
			printf("  %u messages", GPOINTER_TO_UINT(n) - 1);
		static const struct {
			guint32 bit;
			const char *name;
		} attrs[] = {
			{IMAP_MBOX_NOSELECT, "\\Noselect"},
			{IMAP_MBOX_ALL, "\\All"},
			{IMAP_MBOX_ARCHIVE, "\\Archive"},
			{IMAP_MBOX_DRAFTS, "\\Drafts"},
			{IMAP_MBOX_FLAGGED, "\\Flagged"},
			{IMAP_MBOX_JUNK, "\\Junk"},
			{IMAP_MBOX_SENT, "\\Sent"},
			{IMAP_MBOX_TRASH, "\\Trash"},
		};
		for (guint j = 0; j < G_N_ELEMENTS(attrs); j++) {
			if (e->attrs & attrs[j].bit)
				printf("  %s", attrs[j].name);
		}
		printf("\n");
	}
	(void)client;
}

int fs_check(const FsOptions *opts)
{
	const ImapConfig *cfg = &opts->imap;
	g_autoptr(ImapClient) client = imap_client_new(cfg);
	g_autoptr(GError) error = NULL;
	g_autoptr(ImapCommand) list = NULL;
	g_autoptr(ImapResult) result = NULL;
	g_auto(GStrv) caps = NULL;
	gint64 start = g_get_monotonic_time();
	ImapCounters c;

	printf("checking %s@%s port %u (%s)\n", cfg->user, cfg->host,
	       cfg->port ? cfg->port
			 : (cfg->tls == IMAP_TLS_IMPLICIT ? 993 : 143),
	       cfg->tls == IMAP_TLS_IMPLICIT   ? "implicit TLS"
	       : cfg->tls == IMAP_TLS_STARTTLS ? "STARTTLS"
					       : "plaintext, as asked");
	fflush(stdout);
	if (!imap_client_connect(client, &error)) {
		fprintf(stderr, "imapfs: %s: %s\n", cfg->host, error->message);
		return 1;
	}
	printf("logged in as %s in %" G_GINT64_FORMAT " ms%s\n", cfg->user,
	       (g_get_monotonic_time() - start) / 1000,
	       cfg->tls == IMAP_TLS_NONE ? "" : " (certificate verified)");
	caps = imap_client_dup_caps(client);
	printf("capabilities:");
	for (guint i = 0; caps[i]; i++)
		printf(" %s", caps[i]);
	printf("\n");

	list = imap_cmd_list(client, TRUE);
	result = imap_client_run(client, list, &error);
	if (!result) {
		fprintf(stderr, "imapfs: %s: LIST failed: %s\n", cfg->host,
			error->message);
		return 1;
	}
	print_folders(client, result);
	c = imap_client_counters(client);
	printf("traffic: %" G_GUINT64_FORMAT " commands, %" G_GUINT64_FORMAT
	       " round trips, %" G_GUINT64_FORMAT
	       " bytes in, %" G_GUINT64_FORMAT " bytes out\n",
	       c.commands, c.round_trips, c.bytes_in, c.bytes_out);
	return 0;
}
