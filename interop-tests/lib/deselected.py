#!/usr/bin/env python3
"""Print the deselected test ids of one suite from interop-tests/deselected.txt.

Format of that file: one entry per line, `SUITE TEST-ID  # reason`; blank lines
and lines starting with `#` are ignored.  Every entry must carry a reason.
"""
import sys


def entries(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            body, sep, reason = line.partition("#")
            fields = body.split()
            if len(fields) != 2 or not sep or not reason.strip():
                sys.exit(f"{path}:{n}: expected 'SUITE TEST-ID  # reason', got: {line}")
            out.append((fields[0], fields[1], reason.strip()))
    return out


if __name__ == "__main__":
    path, suite = sys.argv[1], sys.argv[2]
    for s, test_id, _reason in entries(path):
        if s == suite:
            print(test_id)
