#!/usr/bin/env python3
"""Read a test list (interop-tests/deselected.txt, flaky.txt) for one suite.

    deselected.py FILE SUITE                       print SUITE's test ids
    deselected.py FILE SUITE --match prefix|exact  print the test ids read on
        stdin that the list names (exactly, or as a prefix of a pytest node id)

Format of the file: one entry per line, `SUITE TEST-ID  # reason`; blank lines
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
    ids = [test_id for s, test_id, _reason in entries(path) if s == suite]
    if len(sys.argv) == 5 and sys.argv[3] == "--match":
        prefix = sys.argv[4] == "prefix"
        for line in sys.stdin:
            name = line.rstrip("\n")
            if name and any(name == i or (prefix and name.startswith(i)) for i in ids):
                print(name)
    else:
        for i in ids:
            print(i)
