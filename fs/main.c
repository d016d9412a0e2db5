/* SPDX-License-Identifier: MIT */
/*
 * imapfs command line: options in the style of sshfs (-o key=value,
 * [user@]host[:port] MOUNTPOINT), parsed with fuse_opt.
 */
#define FUSE_USE_VERSION 35
#include <fuse_lowlevel.h>
#include <fuse_opt.h>

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs.h"

typedef struct {
	char *tls;
	char *auth;
	char *cafile;
	char *password_command;
	char *password_file;
	char *token_command;
	char *user;
	char *password; /* only to refuse it */
	unsigned port;
	unsigned timeout;
	unsigned max_connections;
	int check;
	int debug;
	int foreground;
	int help;
	int version;
	GPtrArray *positional;
} RawOptions;

#define OPT(t, p)                             \
	{                                     \
		t, offsetof(RawOptions, p), 1 \
	}

static const struct fuse_opt option_spec[] = {
	OPT("tls=%s", tls),
	OPT("auth=%s", auth),
	OPT("cafile=%s", cafile),
	OPT("password_command=%s", password_command),
	OPT("password_file=%s", password_file),
	OPT("token_command=%s", token_command),
	OPT("user=%s", user),
	OPT("password=%s", password),
	OPT("port=%u", port),
	OPT("timeout=%u", timeout),
	OPT("max_connections=%u", max_connections),
	OPT("--check", check),
	OPT("-d", debug),
	OPT("debug", debug),
	OPT("-f", foreground),
	OPT("-h", help),
	OPT("--help", help),
	OPT("-V", version),
	OPT("--version", version),
	FUSE_OPT_END,
};

static int opt_proc(void *data, const char *arg, int key,
		    struct fuse_args *outargs)
{
	RawOptions *raw = data;

	if (key == FUSE_OPT_KEY_NONOPT) {
		g_ptr_array_add(raw->positional, g_strdup(arg));
		return 0;
	}
	return 1; /* keep: a FUSE option for the mount */
}

static void usage(const char *prog)
{
	printf("usage: %s [options] [user@]host[:port] MOUNTPOINT\n"
	       "       %s --check [options] [user@]host[:port]\n"
	       "\n"
	       "options:\n"
	       "    -o password_command=CMD  first line of CMD's output is the "
	       "password\n"
	       "    -o password_file=FILE    first line of FILE is the "
	       "password\n"
	       "                             (else $IMAPFS_PASSWORD; never on "
	       "the command line)\n"
	       "    -o tls=implicit|starttls|none  default implicit (port 993; "
	       "else 143)\n"
	       "    -o port=N                server port\n"
	       "    -o cafile=FILE           trust this CA instead of the "
	       "system store\n"
	       "    -o auth=auto|plain|login|xoauth2|oauthbearer\n"
	       "    -o token_command=CMD     OAuth2 access token for "
	       "xoauth2/oauthbearer\n"
	       "    -o timeout=S             give up on a silent server after "
	       "S seconds (30)\n"
	       "    -o max_connections=N     connections to the server (3)\n"
	       "    --check                  log in, list capabilities and "
	       "folders, exit\n"
	       "    -d                       debug: protocol trace (secrets "
	       "redacted)\n"
	       "    -f                       foreground\n"
	       "    -h, --help               this text\n"
	       "    -V, --version            version\n",
	       prog, prog);
}

/* "[user@]host[:port]", host possibly "[v6]". */
static gboolean parse_account(const char *spec, FsOptions *opts, GError **error)
{
	const char *at = strrchr(spec, '@');
	const char *host = at ? at + 1 : spec;
	const char *colon = NULL;
	g_autofree char *h = NULL;

	if (at)
		opts->imap.user = g_strndup(spec, (gsize)(at - spec));
	if (*host == '[') {
		const char *end = strchr(host, ']');

		if (!end) {
			g_set_error(error, G_OPTION_ERROR,
				    G_OPTION_ERROR_BAD_VALUE,
				    "unbalanced [ in %s", spec);
			return FALSE;
		}
		h = g_strndup(host + 1, (gsize)(end - host - 1));
		colon = end[1] == ':' ? end + 1 : NULL;
	} else {
		colon = strrchr(host, ':');
		h = colon ? g_strndup(host, (gsize)(colon - host))
			  : g_strdup(host);
	}
	if (colon) {
		char *endp = NULL;
		unsigned long p = strtoul(colon + 1, &endp, 10);

		if (!*(colon + 1) || *endp || p == 0 || p > 65535) {
			g_set_error(error, G_OPTION_ERROR,
				    G_OPTION_ERROR_BAD_VALUE, "bad port in %s",
				    spec);
			return FALSE;
		}
		opts->imap.port = (guint16)p;
	}
	if (!*h) {
		g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
			    "no host in %s", spec);
		return FALSE;
	}
	opts->imap.host = g_steal_pointer(&h);
	return TRUE;
}

static gboolean options_from_raw(RawOptions *raw, FsOptions *opts,
				 GError **error)
{
	ImapConfig *cfg = &opts->imap;

	opts->check = raw->check;
	opts->debug = raw->debug;
	opts->foreground = raw->foreground || raw->debug;
	if (raw->password) {
		g_set_error(
			error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
			"a password on the command line is visible to every "
			"user (ps); use password_command, password_file or "
			"IMAPFS_PASSWORD");
		return FALSE;
	}
	if (raw->tls && !imap_tls_mode_from_string(raw->tls, &cfg->tls)) {
		g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
			    "tls must be implicit, starttls or none, not %s",
			    raw->tls);
		return FALSE;
	}
	if (raw->auth && !imap_auth_mech_from_string(raw->auth, &cfg->auth)) {
		g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
			    "unknown auth mechanism %s", raw->auth);
		return FALSE;
	}
	if (raw->positional->len < 1) {
		g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
			    "no server given (see --help)");
		return FALSE;
	}
	if (!parse_account(raw->positional->pdata[0], opts, error))
		return FALSE;
	opts->account = g_strdup(raw->positional->pdata[0]);
	if (raw->positional->len > 1)
		opts->mountpoint = g_strdup(raw->positional->pdata[1]);
	if (raw->positional->len > 2) {
		g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
			    "unexpected argument %s",
			    (char *)raw->positional->pdata[2]);
		return FALSE;
	}
	if (raw->user) {
		g_free(cfg->user);
		cfg->user = g_strdup(raw->user);
	}
	if (!cfg->user)
		cfg->user = g_strdup(g_get_user_name());
	if (raw->port)
		cfg->port = (guint16)MIN(raw->port, 65535u);
	cfg->cafile = g_strdup(raw->cafile);
	if (cfg->auth == IMAP_AUTH_XOAUTH2 ||
	    cfg->auth == IMAP_AUTH_OAUTHBEARER) {
		if (!raw->token_command) {
			g_set_error(
				error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
				"auth=%s needs token_command=CMD", raw->auth);
			return FALSE;
		}
		cfg->secret.command = g_strdup(raw->token_command);
	} else if (raw->password_command) {
		cfg->secret.command = g_strdup(raw->password_command);
	} else if (raw->password_file) {
		cfg->secret.file = g_strdup(raw->password_file);
	} else {
		cfg->secret.env = g_strdup("IMAPFS_PASSWORD");
	}
	cfg->timeout_ms = raw->timeout * 1000;
	cfg->max_connections = raw->max_connections;
	return TRUE;
}

static void raw_clear(RawOptions *raw)
{
	g_free(raw->tls);
	g_free(raw->auth);
	g_free(raw->cafile);
	g_free(raw->password_command);
	g_free(raw->password_file);
	g_free(raw->token_command);
	g_free(raw->user);
	if (raw->password)
		explicit_bzero(raw->password, strlen(raw->password));
	g_free(raw->password);
	g_ptr_array_unref(raw->positional);
}

int main(int argc, char **argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	RawOptions raw = {.positional = g_ptr_array_new_with_free_func(g_free)};
	FsOptions opts = {0};
	g_autoptr(GError) error = NULL;
	int status = 1;

	if (fuse_opt_parse(&args, &raw, option_spec, opt_proc) == -1)
		goto out;
	if (raw.help) {
		usage(argv[0]);
		status = 0;
		goto out;
	}
	if (raw.version) {
		printf("imapfs %s\n", IMAPFS_VERSION);
		status = 0;
		goto out;
	}
	if (!options_from_raw(&raw, &opts, &error)) {
		fprintf(stderr, "imapfs: %s\n", error->message);
		goto out;
	}
	if (opts.debug)
		g_log_set_debug_enabled(TRUE);
	if (opts.check) {
		status = fs_check(&opts);
		goto out;
	}
	fprintf(stderr, "imapfs: mounting is not part of this build yet; "
			"use --check to test a server\n");
out:
	raw_clear(&raw);
	imap_config_clear(&opts.imap);
	g_free(opts.account);
	g_free(opts.mountpoint);
	fuse_opt_free_args(&args);
	return status;
}
