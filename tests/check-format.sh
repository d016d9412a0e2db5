#!/bin/sh
# Fails if any C file differs from what .clang-format asks for.
set -eu
cd "$1"
status=0
for f in $(git ls-files '*.c' '*.h' 2>/dev/null || find . -name '*.[ch]' -not -path './build*'); do
	if ! clang-format --dry-run --Werror "$f" >/dev/null 2>&1; then
		echo "not formatted: $f (run: clang-format -i $f)"
		status=1
	fi
done
exit $status
