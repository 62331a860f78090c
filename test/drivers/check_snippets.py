"""Checks that the README's driver snippets are code the driver tests run.

A README.md block whose info string names a file after the language (```js
test/drivers/node/driver_test.js) must appear in that file as consecutive lines, each compared
without its leading and trailing whitespace. Blocks that name no file are not this script's:
test/scenarios/readme.sh runs the SQL ones. Prints `ok     snippets: ...` or `FAILED snippets: ...` per
block and exits 1 if any failed. Usage: check_snippets.py REPOSITORY-ROOT
"""
import os
import re
import sys


def blocks(markdown):
    """(info words, lines) of each fenced block."""
    found, info, lines = [], None, []
    for line in markdown.splitlines():
        fence = re.match(r"^```(.*)$", line)
        if fence and info is None:
            info, lines = fence.group(1).split(), []
        elif fence:
            found.append((info, lines))
            info = None
        elif info is not None:
            lines.append(line)
    return found


def contains(haystack, needle):
    n = len(needle)
    return any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


def main(root):
    failures = 0
    for number, (info, lines) in enumerate(blocks(open(os.path.join(root, "README.md")).read()), 1):
        if len(info) < 2 or "/" not in info[1]:
            continue
        name = f"README block {number} ({' '.join(info)})"
        path = os.path.join(root, info[1])
        ok = path is not None and os.path.isfile(path) and contains(
            [line.strip() for line in open(path).read().splitlines()], [line.strip() for line in lines])
        print(f"{'ok    ' if ok else 'FAILED'} snippets: {name} is in the program")
        failures += not ok
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
