/* SPDX-License-Identifier: MIT */
#include "imap-private.h"

G_DEFINE_QUARK(imapfs - imap - error - quark, imap_error)

gboolean imap_error_is_network(const GError *error)
{
	if (!error || error->domain != IMAP_ERROR)
		return FALSE;
	switch (error->code) {
	case IMAP_ERROR_CONNECT:
	case IMAP_ERROR_DISCONNECTED:
	case IMAP_ERROR_TIMEOUT:
	case IMAP_ERROR_BYE:
		return TRUE;
	default:
		return FALSE;
	}
}
