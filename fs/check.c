/* SPDX-License-Identifier: MIT */
#include "imap.h"
