/* SPDX-License-Identifier: MIT */
/*
 * imapfs command line: options in the style of sshfs (-o key=value,
 * [user@]host[:port] MOUNTPOINT), parsed with fuse_opt.
 */
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <fuse_opt.h>

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

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
	char *cache_dir;
	char *cache;
	char *cache_size;
	unsigned port;
	unsigned timeout;
	unsigned keepalive;
	unsigned max_connections;
	char *poll;
	char *compress;
	char *delete;
	int offline;
	int check;
	int debug;
	int foreground;
	int help;
	int version;
	int ro;
	int allow_other;
	int default_permissions;
	GPtrArray *positional;
} RawOptions;

enum {
	KEY_KEEP,
};

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
	OPT("keepalive=%u", keepalive),
	OPT("max_connections=%u", max_connections),
	OPT("cache_dir=%s", cache_dir),
	OPT("poll=%s", poll),
	OPT("compress=%s", compress),
	OPT("offline", offline),
	OPT("delete=%s", delete),
	OPT("cache=%s", cache),
	OPT("cache_size=%s", cache_size),
	/* Also handed to the kernel: keep them (FUSE_OPT_KEY). */
	OPT("ro", ro),
	FUSE_OPT_KEY("ro", KEY_KEEP),
	OPT("allow_other", allow_other),
	FUSE_OPT_KEY("allow_other", KEY_KEEP),
	OPT("default_permissions", default_permissions),
	FUSE_OPT_KEY("default_permissions", KEY_KEEP),
	/* fstab words that mean something to mount(8), not to us. */
	FUSE_OPT_KEY("noauto", FUSE_OPT_KEY_DISCARD),
	FUSE_OPT_KEY("auto", FUSE_OPT_KEY_DISCARD),
	FUSE_OPT_KEY("user", FUSE_OPT_KEY_DISCARD),
	FUSE_OPT_KEY("users", FUSE_OPT_KEY_DISCARD),
	FUSE_OPT_KEY("nouser", FUSE_OPT_KEY_DISCARD),
	FUSE_OPT_KEY("owner", FUSE_OPT_KEY_DISCARD),
	FUSE_OPT_KEY("defaults", FUSE_OPT_KEY_DISCARD),
	FUSE_OPT_KEY("_netdev", FUSE_OPT_KEY_DISCARD),
	FUSE_OPT_KEY("nofail", FUSE_OPT_KEY_DISCARD),
	FUSE_OPT_KEY("rw", FUSE_OPT_KEY_DISCARD),

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
	/* fstab: "comment=...", "x-systemd.automount" are for others. */
	if (key == FUSE_OPT_KEY_OPT &&
	    (g_str_has_prefix(arg, "x-") || g_str_has_prefix(arg, "comment=")))
		return 0;
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
	       "    -o keepalive=S           check a silent IDLE connection "
	       "every S seconds (60)\n"
	       "    -o max_connections=N     connections to the server (3)\n"
	       "    -o compress=yes|no       COMPRESS=DEFLATE when the server "
	       "offers it (no)\n"
	       "    -o cache_dir=DIR         default "
	       "$XDG_CACHE_HOME/imapfs/ACCOUNT\n"
	       "    -o cache=none|headers|full   how much to keep on disk "
	       "(full)\n"
	       "    -o cache_size=SIZE       bodies kept on disk, e.g. 2G "
	       "(1G)\n"
	       "    -o ro                    read-only mount (opens skip the "
	       "daemon)\n"
	       "    -o poll=S                look for changes in the tree "
	       "and folders in use every S\n"
	       "                             seconds (60; 0: never)\n"
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

/* Fill what the command line left open from the account's section in
 * $XDG_CONFIG_HOME/imapfs/config (so `imapfs work ~/mail` works). */
static gboolean apply_config(RawOptions *raw, GError **error)
{
	g_autofree char *path = g_build_filename(g_get_user_config_dir(),
						 "imapfs", "config", NULL);
	g_autoptr(GKeyFile) kf = g_key_file_new();
	g_autofree char *section = NULL;
	g_autoptr(GError) local = NULL;

	if (raw->positional->len < 1)
		return TRUE;
	/* A copy: the host replaces the section's name below. */
	section = g_strdup(raw->positional->pdata[0]);
	if (!g_key_file_load_from_file(kf, path, G_KEY_FILE_NONE, &local)) {
		if (g_error_matches(local, G_FILE_ERROR, G_FILE_ERROR_NOENT))
			return TRUE;
		g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_FAILED,
			    "%s: %s", path, local->message);
		return FALSE;
	}
	if (!g_key_file_has_group(kf, section))
		return TRUE;

	g_autofree char *host =
		g_key_file_get_string(kf, section, "host", NULL);

	if (!host) {
		g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
			    "%s: [%s] has no host", path, section);
		return FALSE;
	}
	if (g_key_file_has_key(kf, section, "password", NULL)) {
		g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
			    "%s: [%s]: use password_command or password_file, "
			    "not password",
			    path, section);
		return FALSE;
	}
	g_free(raw->positional->pdata[0]);
	raw->positional->pdata[0] = g_steal_pointer(&host);
#define FROM_CONFIG(field, key)                                                \
	do {                                                                   \
		if (!raw->field)                                               \
			raw->field =                                           \
				g_key_file_get_string(kf, section, key, NULL); \
	} while (0)
	FROM_CONFIG(user, "user");
	FROM_CONFIG(tls, "tls");
	FROM_CONFIG(auth, "auth");
	FROM_CONFIG(cafile, "cafile");
	FROM_CONFIG(password_command, "password_command");
	FROM_CONFIG(password_file, "password_file");
	FROM_CONFIG(token_command, "token_command");
	FROM_CONFIG(cache_dir, "cache_dir");
	FROM_CONFIG(cache, "cache");
	FROM_CONFIG(cache_size, "cache_size");
	FROM_CONFIG(compress, "compress");
#undef FROM_CONFIG
	if (!raw->port)
		raw->port = (unsigned)g_key_file_get_integer(kf, section,
							     "port", NULL);
	if (!raw->ro)
		raw->ro = g_key_file_get_boolean(kf, section, "ro", NULL);
	return TRUE;
}

static gboolean parse_size(const char *s, guint64 *out)
{
	char *end = NULL;
	guint64 v = g_ascii_strtoull(s, &end, 10);
	guint64 mult = 1;

	if (end == s)
		return FALSE;
	switch (g_ascii_toupper(*end)) {
	case 'K':
		mult = G_GUINT64_CONSTANT(1) << 10;
		break;
	case 'M':
		mult = G_GUINT64_CONSTANT(1) << 20;
		break;
	case 'G':
		mult = G_GUINT64_CONSTANT(1) << 30;
		break;
	case 'T':
		mult = G_GUINT64_CONSTANT(1) << 40;
		break;
	case '\0':
		break;
	default:
		return FALSE;
	}
	if (*end && end[1] && g_ascii_strcasecmp(end + 1, "iB") != 0 &&
	    g_ascii_strcasecmp(end + 1, "B") != 0)
		return FALSE;
	if (v > G_MAXUINT64 / mult)
		return FALSE;
	*out = v * mult;
	return TRUE;
}

/* user@host[:port] made safe as one path component. */
static char *account_dir_name(const ImapConfig *cfg)
{
	g_autofree char *s =
		g_strdup_printf("%s@%s:%u", cfg->user, cfg->host, cfg->port);

	for (char *p = s; *p; p++) {
		if (*p == '/' || *p == '\\' || (unsigned char)*p < 0x20)
			*p = '_';
	}
	return g_steal_pointer(&s);
}

static gboolean options_from_raw(RawOptions *raw, FsOptions *opts,
				 GError **error)
{
	ImapConfig *cfg = &opts->imap;

	opts->check = raw->check;
	opts->debug = raw->debug;
	opts->foreground = raw->foreground || raw->debug;
	opts->ro = raw->ro;
	opts->offline = raw->offline;
	if (raw->delete &&g_str_equal(raw->delete, "trash")) {
		opts->delete_to_trash = TRUE;
	} else if (raw->delete &&!g_str_equal(raw->delete, "expunge")) {
		g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
			    "delete must be expunge or trash, not %s",
			    raw->delete);
		return FALSE;
	}
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
	opts->cache_keep = CACHE_KEEP_FULL;
	if (raw->cache) {
		if (g_str_equal(raw->cache, "none"))
			opts->cache_keep = CACHE_KEEP_NONE;
		else if (g_str_equal(raw->cache, "headers"))
			opts->cache_keep = CACHE_KEEP_HEADERS;
		else if (!g_str_equal(raw->cache, "full")) {
			g_set_error(error, G_OPTION_ERROR,
				    G_OPTION_ERROR_BAD_VALUE,
				    "cache must be none, headers or full");
			return FALSE;
		}
	}
	opts->cache_size = G_GUINT64_CONSTANT(1) << 30;
	if (raw->cache_size &&
	    !parse_size(raw->cache_size, &opts->cache_size)) {
		g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
			    "cache_size: not a size: %s", raw->cache_size);
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
	if (!opts->check && !opts->mountpoint) {
		g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
			    "no mountpoint given (see --help)");
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
	if (!cfg->port)
		cfg->port = cfg->tls == IMAP_TLS_IMPLICIT ? 993 : 143;
	cfg->cafile =
		raw->cafile ? g_canonicalize_filename(raw->cafile, NULL) : NULL;
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
		cfg->secret.file =
			g_canonicalize_filename(raw->password_file, NULL);
	} else {
		cfg->secret.env = g_strdup("IMAPFS_PASSWORD");
	}
	opts->poll_s = 60;
	if (raw->poll) {
		char *end = NULL;
		guint64 v = g_ascii_strtoull(raw->poll, &end, 10);

		if (!*raw->poll || *end || v > 86400) {
			g_set_error(error, G_OPTION_ERROR,
				    G_OPTION_ERROR_BAD_VALUE,
				    "poll: seconds from 0 to 86400, not %s",
				    raw->poll);
			return FALSE;
		}
		opts->poll_s = (guint)v;
	}
	if (raw->timeout > 86400 || raw->keepalive > 86400) {
		g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
			    "timeout and keepalive: seconds up to 86400");
		return FALSE;
	}
	cfg->timeout_ms = raw->timeout * 1000;
	cfg->keepalive_ms = raw->keepalive * 1000;
	cfg->max_connections = raw->max_connections;
	if (raw->compress && g_str_equal(raw->compress, "yes")) {
		cfg->compress = TRUE;
	} else if (raw->compress && !g_str_equal(raw->compress, "no")) {
		g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
			    "compress: yes or no, not %s", raw->compress);
		return FALSE;
	}
	if (raw->cache_dir) {
		opts->cache_dir = g_canonicalize_filename(raw->cache_dir, NULL);
	} else {
		g_autofree char *name = account_dir_name(cfg);

		opts->cache_dir = g_build_filename(g_get_user_cache_dir(),
						   "imapfs", name, NULL);
	}
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
	g_free(raw->cache_dir);
	g_free(raw->cache);
	g_free(raw->cache_size);
	g_free(raw->poll);
	g_free(raw->compress);
	g_free(raw->delete);
	if (raw->password)
		explicit_bzero(raw->password, strlen(raw->password));
	g_free(raw->password);
	g_ptr_array_unref(raw->positional);
}

/*
 * Without -f, fork before any thread exists; the child logs in and mounts,
 * and the parent waits to hear that it worked. So a wrong password or an
 * unreachable server fails the command itself, with one line on stderr,
 * and never leaves a dead mountpoint behind.
 */
static int ready_fd = -1;

static gboolean daemon_start(void)
{
	int p[2];
	pid_t pid;
	char c = 1;

	if (pipe2(p, O_CLOEXEC) < 0)
		return FALSE;
	pid = fork();
	if (pid < 0)
		return FALSE;
	if (pid > 0) {
		int status = 0;

		close(p[1]);
		if (read(p[0], &c, 1) == 1 && c == 0)
			_exit(0);
		waitpid(pid, &status, 0);
		_exit(WIFEXITED(status) && WEXITSTATUS(status)
			      ? WEXITSTATUS(status)
			      : 1);
	}
	close(p[0]);
	ready_fd = p[1];
	setsid();
	return TRUE;
}

static void daemon_ready(void)
{
	char c = 0;
	int null;

	if (ready_fd < 0)
		return;
	null = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (null >= 0) {
		dup2(null, STDIN_FILENO);
		dup2(null, STDOUT_FILENO);
		dup2(null, STDERR_FILENO);
		if (null > STDERR_FILENO)
			close(null);
	}
	if (chdir("/") < 0) {
		/* not fatal: the mount is up */
	}
	if (write(ready_fd, &c, 1) != 1) {
		/* the parent is gone; nothing to tell */
	}
	close(ready_fd);
	ready_fd = -1;
}

static gboolean check_mountpoint(const char *path, GError **error)
{
	struct stat st;

	if (stat(path, &st) < 0) {
		int e = errno;

		g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(e),
			    "mountpoint %s: %s", path, g_strerror(e));
		return FALSE;
	}
	if (!S_ISDIR(st.st_mode)) {
		g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_NOTDIR,
			    "mountpoint %s: not a directory", path);
		return FALSE;
	}
	return TRUE;
}

static int fs_mount(FsOptions *opts, struct fuse_args *args)
{
	g_autoptr(GError) error = NULL;
	g_autoptr(ImapClient) client = NULL;
	g_autoptr(Cache) cache = NULL;
	CacheConfig ccfg = {.dir = opts->cache_dir,
			    .keep = opts->cache_keep,
			    .size_limit = opts->cache_size,
			    .readonly = opts->ro};
	Fs fs = {.ro = opts->ro,
		 .uid = getuid(),
		 .gid = getgid(),
		 .mount_time = time(NULL),
		 .cache_dir = opts->cache_dir};
	struct fuse_session *se;
	struct fuse_loop_config *loop;
	g_autofree char *fsname = NULL;
	int status = 1;

	if (!check_mountpoint(opts->mountpoint, &error))
		goto fail;
	if (!opts->foreground && !daemon_start()) {
		fprintf(stderr, "imapfs: cannot start the daemon: %s\n",
			g_strerror(errno));
		return 1;
	}
	client = imap_client_new(&opts->imap);
	cache = cache_open(client, &ccfg, &error);
	if (!cache)
		goto fail;
	if (opts->offline || !imap_client_connect(client, &error) ||
	    !cache_refresh_folders(cache, &error)) {
		/* Unreachable, but a warm cache: mount it and reconnect when
		 * the server is back. Credentials and certificates that fail
		 * are not a network problem: those stop the mount. */
		if (!cache_has_folders(cache) ||
		    (error && !imap_error_is_network(error)))
			goto fail_host;
		if (error)
			fprintf(stderr,
				"imapfs: %s: %s; mounting the cached copy "
				"offline\n",
				opts->imap.host, error->message);
		g_clear_error(&error);
	} else {
		g_autoptr(GError) qerr = NULL;

		if (!cache_refresh_quota(cache, &qerr))
			g_debug("quota: %s", qerr->message);
	}
	fs.cache = cache;
	fs.poll_s = opts->poll_s;
	fs.delete_to_trash = opts->delete_to_trash;
	fs_local_init(&fs);
	fs_handles_init(&fs);

	/* fuse_opt splits at commas; the account may hold one. */
	g_strdelimit(opts->account, ",\\", '_');
	fsname = g_strdup_printf("-ofsname=%s,subtype=imapfs", opts->account);
	fuse_opt_add_arg(args, fsname);
	se = fuse_session_new(args, &fs_ops, sizeof(fs_ops), &fs);
	if (!se) {
		g_set_error(&error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
			    "bad FUSE options");
		goto fail;
	}
	if (fuse_set_signal_handlers(se) != 0 ||
	    fuse_session_mount(se, opts->mountpoint) != 0) {
		g_set_error(&error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
			    "cannot mount on %s", opts->mountpoint);
		fuse_session_destroy(se);
		goto fail;
	}
	fs.se = se;
	fs_watch_start(&fs);
	fs_pages_start(&fs);
	daemon_ready();
	loop = fuse_loop_cfg_create();
	fuse_loop_cfg_set_clone_fd(loop, 0);
	fuse_loop_cfg_set_max_threads(loop, 16);
	/* Threads that stay: one made and ended per request costs more than
	 * the request (cp -a keeps several reads in flight). */
	fuse_loop_cfg_set_idle_threads(loop, 16);
	status = fuse_session_loop_mt(se, loop);
	/* SIGTERM, SIGINT or SIGHUP: an unmount that was asked for. */
	status = (status == 0 || status == SIGTERM || status == SIGINT ||
		  status == SIGHUP)
			 ? 0
			 : 1;
	fuse_loop_cfg_destroy(loop);
	fs_pages_stop(&fs);
	fs_watch_stop(&fs);
	fuse_session_unmount(se);
	fs_handles_clear(&fs);
	fs_pages_clear(&fs);
	fs_local_clear(&fs);
	fuse_remove_signal_handlers(se);
	fuse_session_destroy(se);
	/* In this order: a prefetch still in flight ends with the client
	 * and its callbacks need the cache. */
	cache_stop(cache);
	g_clear_pointer(&client, imap_client_free);
	return status;

fail_host:
	fprintf(stderr, "imapfs: %s: %s\n", opts->imap.host, error->message);
	return 1;
fail:
	fprintf(stderr, "imapfs: %s\n", error->message);
	return 1;
}

int main(int argc, char **argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	RawOptions raw = {.positional = g_ptr_array_new_with_free_func(g_free)};

	/* A peer that hangs up must end a connection, not the daemon. */
	signal(SIGPIPE, SIG_IGN);
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
		printf("imapfs %s (libfuse %s)\n", IMAPFS_VERSION,
		       fuse_pkgversion());
		status = 0;
		goto out;
	}
	if (!apply_config(&raw, &error) ||
	    !options_from_raw(&raw, &opts, &error)) {
		fprintf(stderr, "imapfs: %s\n", error->message);
		goto out;
	}
	if (opts.ro) {
		/* Also when it came from the config file: the kernel refuses
		 * writes before they reach us (opens do not, see ops.c). */
		fuse_opt_add_arg(&args, "-oro");
	}
	if (raw.allow_other && !raw.default_permissions) {
		/* Other users get in only through the kernel's checks. */
		fuse_opt_add_arg(&args, "-odefault_permissions");
	}
	if (opts.debug)
		g_log_set_debug_enabled(TRUE);
	if (opts.check)
		status = fs_check(&opts);
	else
		status = fs_mount(&opts, &args);
out:
	raw_clear(&raw);
	imap_config_clear(&opts.imap);
	g_free(opts.account);
	g_free(opts.mountpoint);
	g_free(opts.cache_dir);
	fuse_opt_free_args(&args);
	return status;
}
