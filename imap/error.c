/* SPDX-License-Identifier: MIT */
#include "imap-private.h"

G_DEFINE_QUARK(imapfs - imap - error - quark, imap_error)
