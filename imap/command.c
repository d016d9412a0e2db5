/* SPDX-License-Identifier: MIT */
#include "imap-private.h"
