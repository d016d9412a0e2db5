/* SPDX-License-Identifier: MIT */
/*
 * Secrets (passwords, OAuth tokens) and the SASL messages built from them.
 * A secret is only ever held in an ImapSecret, which is wiped when freed;
 * it never comes from argv and is never logged.
 */
#include "imap-private.h"

#include <string.h>
#include <sys/stat.h>

void imap_secret_free(ImapSecret *secret)
{
	if (!secret)
		return;
	if (secret->data) {
		explicit_bzero(secret->data, secret->len);
		g_free(secret->data);
	}
	g_free(secret);
}

static ImapSecret *secret_from_first_line(char *buf, gsize len,
					  const char *what, GError **error)
{
	gsize n = 0;

	while (n < len && buf[n] != '\n' && buf[n] != '\r')
		n++;
	if (n == 0 || memchr(buf, '\0', n)) {
		explicit_bzero(buf, len);
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_SECRET,
			    "%s gave an empty or unusable first line", what);
		return NULL;
	}

	ImapSecret *secret = g_new0(ImapSecret, 1);

	secret->data = g_strndup(buf, n);
	secret->len = n;
	explicit_bzero(buf, len);
	return secret;
}

static ImapSecret *secret_from_command(const char *command, GError **error)
{
	const char *argv[] = {"/bin/sh", "-c", command, NULL};
	g_autofree char *out = NULL;
	g_autofree char *err = NULL;
	gint status = 0;
	g_autoptr(GError) local = NULL;
	gsize outlen;

	/* stdin stays the terminal, so `pass` or a gpg-agent can prompt. */
	if (!g_spawn_sync(NULL, (char **)argv, NULL,
			  G_SPAWN_CHILD_INHERITS_STDIN, NULL, NULL, &out, &err,
			  &status, &local)) {
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_SECRET,
			    "cannot run password command: %s", local->message);
		return NULL;
	}
	outlen = out ? strlen(out) : 0;
	if (!g_spawn_check_wait_status(status, &local)) {
		g_strstrip(err);
		if (out)
			explicit_bzero(out, outlen);
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_SECRET,
			    "password command failed (%s)%s%s", local->message,
			    *err ? ": " : "", err);
		return NULL;
	}
	return secret_from_first_line(out, outlen, "password command", error);
}

static ImapSecret *secret_from_file(const char *path, GError **error)
{
	g_autofree char *buf = NULL;
	gsize len = 0;
	g_autoptr(GError) local = NULL;
	struct stat st;

	if (!g_file_get_contents(path, &buf, &len, &local)) {
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_SECRET,
			    "cannot read password file: %s", local->message);
		return NULL;
	}
	/* A hint, not a refusal; on stderr it would break the one-line
	 * rule for errors, so it goes to the debug log. */
	if (stat(path, &st) == 0 && (st.st_mode & 0077))
		g_debug("password file %s is readable by others (mode %04o)",
			path, st.st_mode & 07777);
	return secret_from_first_line(buf, len, "password file", error);
}

ImapSecret *imap_secret_fetch(const ImapSecretSource *src, GError **error)
{
	if (src->command)
		return secret_from_command(src->command, error);
	if (src->file)
		return secret_from_file(src->file, error);
	if (src->env) {
		const char *v = g_getenv(src->env);
		g_autofree char *copy = NULL;

		if (!v || !*v) {
			g_set_error(error, IMAP_ERROR, IMAP_ERROR_SECRET,
				    "environment variable %s is not set",
				    src->env);
			return NULL;
		}
		copy = g_strdup(v);
		return secret_from_first_line(copy, strlen(copy), src->env,
					      error);
	}
	g_set_error(error, IMAP_ERROR, IMAP_ERROR_SECRET,
		    "no password source given (password_command, "
		    "password_file or IMAPFS_PASSWORD)");
	return NULL;
}

/* Base64 of @raw, wiping @raw: the result is as secret as the input. */
static ImapSecret *secret_base64(GString *raw)
{
	ImapSecret *out = g_new0(ImapSecret, 1);

	out->data = g_base64_encode((const guchar *)raw->str, raw->len);
	out->len = strlen(out->data);
	explicit_bzero(raw->str, raw->len);
	g_string_free(raw, TRUE);
	return out;
}

/* RFC 4616: authzid NUL authcid NUL password (no authzid). */
ImapSecret *imap_sasl_plain(const char *user, const ImapSecret *password)
{
	GString *raw = g_string_new(NULL);

	g_string_append_c(raw, '\0');
	g_string_append(raw, user);
	g_string_append_c(raw, '\0');
	g_string_append_len(raw, password->data, password->len);
	return secret_base64(raw);
}

/* Google's and Microsoft's XOAUTH2. */
ImapSecret *imap_sasl_xoauth2(const char *user, const ImapSecret *token)
{
	GString *raw = g_string_new(NULL);

	g_string_append_printf(raw, "user=%s\001auth=Bearer ", user);
	g_string_append_len(raw, token->data, token->len);
	g_string_append(raw, "\001\001");
	return secret_base64(raw);
}

/* RFC 7628; the GS2 authzid escapes ',' and '=' (RFC 5801). */
ImapSecret *imap_sasl_oauthbearer(const char *user, const char *host,
				  guint16 port, const ImapSecret *token)
{
	GString *raw = g_string_new("n,a=");

	for (const char *p = user; *p; p++) {
		if (*p == ',')
			g_string_append(raw, "=2C");
		else if (*p == '=')
			g_string_append(raw, "=3D");
		else
			g_string_append_c(raw, *p);
	}
	g_string_append_printf(raw, ",\001host=%s\001port=%u\001auth=Bearer ",
			       host, port);
	g_string_append_len(raw, token->data, token->len);
	g_string_append(raw, "\001\001");
	return secret_base64(raw);
}

const char *imap_tls_mode_to_string(ImapTlsMode mode)
{
	switch (mode) {
	case IMAP_TLS_IMPLICIT:
		return "implicit";
	case IMAP_TLS_STARTTLS:
		return "starttls";
	case IMAP_TLS_NONE:
		return "none";
	}
	return "?";
}

gboolean imap_tls_mode_from_string(const char *s, ImapTlsMode *mode_out)
{
	for (ImapTlsMode m = IMAP_TLS_IMPLICIT; m <= IMAP_TLS_NONE; m++) {
		if (g_ascii_strcasecmp(s, imap_tls_mode_to_string(m)) == 0) {
			*mode_out = m;
			return TRUE;
		}
	}
	return FALSE;
}

static const char *const auth_names[] = {
	[IMAP_AUTH_AUTO] = "auto",
	[IMAP_AUTH_LOGIN] = "login",
	[IMAP_AUTH_PLAIN] = "plain",
	[IMAP_AUTH_XOAUTH2] = "xoauth2",
	[IMAP_AUTH_OAUTHBEARER] = "oauthbearer",
};

const char *imap_auth_mech_to_string(ImapAuthMech mech)
{
	return mech < G_N_ELEMENTS(auth_names) ? auth_names[mech] : "?";
}

gboolean imap_auth_mech_from_string(const char *s, ImapAuthMech *mech_out)
{
	for (guint i = 0; i < G_N_ELEMENTS(auth_names); i++) {
		if (g_ascii_strcasecmp(s, auth_names[i]) == 0) {
			*mech_out = (ImapAuthMech)i;
			return TRUE;
		}
	}
	return FALSE;
}

void imap_config_clear(ImapConfig *config)
{
	g_clear_pointer(&config->host, g_free);
	g_clear_pointer(&config->cafile, g_free);
	g_clear_pointer(&config->user, g_free);
	g_clear_pointer(&config->secret.command, g_free);
	g_clear_pointer(&config->secret.file, g_free);
	g_clear_pointer(&config->secret.env, g_free);
}
