/* SPDX-License-Identifier: MIT */
/* Declarations shared by the files of fs/ (the FUSE daemon). */
#pragma once

#include "imap.h"

typedef struct {
	ImapConfig imap; /* host, port, user, tls, cafile, auth, secret */
	char *account; /* "user@host" or a config section name */
	char *mountpoint;
	gboolean check; /* --check: probe the server and exit */
	gboolean debug;
	gboolean foreground;
	gboolean show_help;
	gboolean show_version;
} FsOptions;

/* Log in, print capabilities and folders; returns the exit status. */
int fs_check(const FsOptions *opts);
