/* SPDX-License-Identifier: MIT */
/*
 * Constructors for the commands the rest of imapfs sends. Mailbox
 * arguments are raw server names (modified UTF-7, as LIST returns them).
 * Every message-level command is a UID command bound to its mailbox and,
 * where given, to the UIDVALIDITY the UIDs belong to.
 */
#include "imap-private.h"

static ImapCommand *bound(const char *verb, const char *mailbox,
			  guint32 uidvalidity)
{
	ImapCommand *cmd = imap_command_new(verb);

	imap_command_set_mailbox(cmd, mailbox, uidvalidity);
	return cmd;
}

static gboolean add_set(ImapCommand *cmd, const char *uids)
{
	imap_command_set_scope(cmd, uids);
	/* Sequence sets come from our own code; still, never let one carry
	 * a line break into the stream. */
	return imap_command_add_raw(cmd, uids, NULL);
}

ImapCommand *imap_cmd_list(ImapClient *client, gboolean with_status)
{
	ImapCommand *cmd = imap_command_new("LIST");
	gboolean special = imap_client_has_cap(client, "SPECIAL-USE");
	gboolean status =
		with_status && imap_client_has_cap(client, "LIST-STATUS");

	imap_command_add_raw(cmd, "\"\" \"*\"", NULL);
	if (special || status) {
		g_autoptr(GString) ret = g_string_new("RETURN (");

		if (special)
			g_string_append(ret, "SPECIAL-USE");
		if (status) {
			g_string_append_printf(
				ret,
				"%sSTATUS (MESSAGES UIDNEXT UIDVALIDITY%s)",
				special ? " " : "",
				imap_client_has_cap(client, "CONDSTORE")
					? " HIGHESTMODSEQ"
					: "");
		}
		g_string_append_c(ret, ')');
		imap_command_add_raw(cmd, ret->str, NULL);
	}
	imap_command_want(cmd, "LIST");
	if (status)
		imap_command_want(cmd, "STATUS");
	imap_command_set_idempotent(cmd, TRUE);
	return cmd;
}

ImapCommand *imap_cmd_status(const char *mailbox, const char *items)
{
	ImapCommand *cmd = imap_command_new("STATUS");

	imap_command_add_mailbox_raw(cmd, mailbox, NULL);
	imap_command_add_printf(cmd, "(%s)", items);
	imap_command_want(cmd, "STATUS");
	imap_command_set_idempotent(cmd, TRUE);
	return cmd;
}

ImapCommand *imap_cmd_select(ImapClient *client, const char *mailbox,
			     gboolean readonly, guint32 uidvalidity,
			     guint64 modseq, const char *known_uids)
{
	ImapCommand *cmd = imap_command_new(readonly ? "EXAMINE" : "SELECT");

	imap_command_add_mailbox_raw(cmd, mailbox, NULL);
	if (uidvalidity && modseq && imap_client_has_cap(client, "QRESYNC")) {
		if (known_uids && *known_uids)
			imap_command_add_printf(
				cmd, "(QRESYNC (%u %" G_GUINT64_FORMAT " %s))",
				uidvalidity, modseq, known_uids);
		else
			imap_command_add_printf(
				cmd, "(QRESYNC (%u %" G_GUINT64_FORMAT "))",
				uidvalidity, modseq);
	}
	cmd->selects = g_strdup(mailbox);
	imap_command_set_idempotent(cmd, TRUE);
	return cmd;
}

ImapCommand *imap_cmd_uid_fetch(const char *mailbox, guint32 uidvalidity,
				const char *uids, const char *items,
				guint64 changedsince)
{
	ImapCommand *cmd = bound("UID FETCH", mailbox, uidvalidity);

	add_set(cmd, uids);
	imap_command_add_printf(cmd, "(%s)", items);
	if (changedsince)
		imap_command_add_printf(cmd,
					"(CHANGEDSINCE %" G_GUINT64_FORMAT ")",
					changedsince);
	imap_command_want(cmd, "FETCH");
	imap_command_want(cmd, "VANISHED");
	imap_command_set_idempotent(cmd, TRUE);
	return cmd;
}

ImapCommand *imap_cmd_uid_search(const char *mailbox, guint32 uidvalidity,
				 ImapClient *client, const char *criteria)
{
	ImapCommand *cmd = bound("UID SEARCH", mailbox, uidvalidity);

	if (imap_client_has_cap(client, "ESEARCH"))
		imap_command_add_raw(cmd, "RETURN (ALL)", NULL);
	imap_command_add_raw(cmd, criteria, NULL);
	imap_command_want(cmd, "SEARCH");
	imap_command_want(cmd, "ESEARCH");
	imap_command_set_idempotent(cmd, TRUE);
	return cmd;
}

ImapCommand *imap_cmd_uid_store(const char *mailbox, guint32 uidvalidity,
				const char *uids, const char *op,
				const char *flags, guint64 unchangedsince)
{
	ImapCommand *cmd = bound("UID STORE", mailbox, uidvalidity);

	add_set(cmd, uids);
	if (unchangedsince)
		imap_command_add_printf(
			cmd, "(UNCHANGEDSINCE %" G_GUINT64_FORMAT ")",
			unchangedsince);
	imap_command_add_raw(cmd, op, NULL);
	imap_command_add_printf(cmd, "(%s)", flags ? flags : "");
	imap_command_want(cmd, "FETCH");
	/* Setting flags to a value is idempotent; adding is too. */
	imap_command_set_idempotent(cmd, TRUE);
	return cmd;
}

static ImapCommand *copy_or_move(const char *verb, const char *mailbox,
				 guint32 uidvalidity, const char *uids,
				 const char *dest, GError **error)
{
	g_autoptr(ImapCommand) cmd = bound(verb, mailbox, uidvalidity);

	add_set(cmd, uids);
	if (!imap_command_add_mailbox_raw(cmd, dest, error))
		return NULL;
	return g_steal_pointer(&cmd);
}

ImapCommand *imap_cmd_uid_copy(const char *mailbox, guint32 uidvalidity,
			       const char *uids, const char *dest,
			       GError **error)
{
	return copy_or_move("UID COPY", mailbox, uidvalidity, uids, dest,
			    error);
}

ImapCommand *imap_cmd_uid_move(const char *mailbox, guint32 uidvalidity,
			       const char *uids, const char *dest,
			       GError **error)
{
	ImapCommand *cmd = copy_or_move("UID MOVE", mailbox, uidvalidity, uids,
					dest, error);

	/* RFC 6851: COPYUID arrives in an untagged OK before the
	 * expunges. */
	if (cmd)
		imap_command_want(cmd, "OK");
	return cmd;
}

ImapCommand *imap_cmd_uid_expunge(const char *mailbox, guint32 uidvalidity,
				  const char *uids)
{
	ImapCommand *cmd = bound("UID EXPUNGE", mailbox, uidvalidity);

	add_set(cmd, uids);
	return cmd;
}

ImapCommand *imap_cmd_append(const char *mailbox, const char *flags,
			     gint64 date, GBytes *message, GError **error)
{
	g_autoptr(ImapCommand) cmd = imap_command_new("APPEND");

	if (!imap_command_add_mailbox_raw(cmd, mailbox, error))
		return NULL;
	if (flags)
		imap_command_add_printf(cmd, "(%s)", flags);
	if (date) {
		g_autofree char *d = imap_format_internaldate(date);

		imap_command_add_printf(cmd, "\"%s\"", d);
	}
	imap_command_add_literal(cmd, message);
	return g_steal_pointer(&cmd);
}

static ImapCommand *one_mailbox(const char *verb, const char *mailbox,
				GError **error)
{
	g_autoptr(ImapCommand) cmd = imap_command_new(verb);

	if (!imap_command_add_mailbox_raw(cmd, mailbox, error))
		return NULL;
	return g_steal_pointer(&cmd);
}

ImapCommand *imap_cmd_create(const char *mailbox, GError **error)
{
	return one_mailbox("CREATE", mailbox, error);
}

ImapCommand *imap_cmd_delete(const char *mailbox, GError **error)
{
	ImapCommand *cmd = one_mailbox("DELETE", mailbox, error);

	if (cmd)
		cmd->unselects = g_strdup(mailbox);
	return cmd;
}

ImapCommand *imap_cmd_rename(const char *from, const char *to, GError **error)
{
	g_autoptr(ImapCommand) cmd = one_mailbox("RENAME", from, error);

	if (!cmd || !imap_command_add_mailbox_raw(cmd, to, error))
		return NULL;
	cmd->unselects = g_strdup(from);
	return g_steal_pointer(&cmd);
}

ImapCommand *imap_cmd_simple(const char *verb)
{
	ImapCommand *cmd = imap_command_new(verb);

	imap_command_set_idempotent(cmd, TRUE);
	return cmd;
}

ImapCommand *imap_cmd_idle(const char *mailbox)
{
	ImapCommand *cmd = bound("IDLE", mailbox, 0);

	cmd->is_idle = TRUE;
	return cmd;
}
