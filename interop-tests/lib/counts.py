#!/usr/bin/env python3
"""Count passed / failed / skipped tests from a test runner's report.

    counts.py junit FILE...     JUnit XML (pytest, node --test-reporter=junit)
    counts.py gojson FILE       `go test -json` / test2json stream
    counts.py cargo FILE        `cargo test` console output
    counts.py plain FILE        a closing "N passed, N failed[, N skipped]" line
    counts.py pytestlog FILE    `pytest -v` console output (when a killed run
                                left no JUnit report)

Prints `passed=N failed=N skipped=N`; with --failures, also prints the names
of failed tests, one per line, prefixed with "FAILED ".
"""
import json
import re
import sys
import xml.etree.ElementTree as ET


def junit(paths):
    passed, failed, skipped, names = 0, 0, 0, []
    for path in paths:
        root = ET.parse(path).getroot()
        for case in root.iter("testcase"):
            tags = {child.tag for child in case}
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            if tags & {"failure", "error"}:
                failed += 1
                names.append(name)
            elif "skipped" in tags:
                skipped += 1
            else:
                passed += 1
    return passed, failed, skipped, names


def gojson(path):
    final = {}
    package_failed = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            action, test = ev.get("Action"), ev.get("Test")
            if action in ("pass", "fail", "skip"):
                if test:
                    final[test] = action
                elif action == "fail":
                    package_failed = True
    passed = sum(1 for a in final.values() if a == "pass")
    failed = sum(1 for a in final.values() if a == "fail")
    skipped = sum(1 for a in final.values() if a == "skip")
    names = sorted(t for t, a in final.items() if a == "fail")
    if package_failed and not failed:
        # The binary failed outside any test (panic, timeout, build error).
        failed, names = 1, ["(package: failed outside a test)"]
    return passed, failed, skipped, names


CARGO_RESULT = re.compile(
    r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored; (\d+) measured; (\d+) filtered out"
)
CARGO_FAILED = re.compile(r"^test (\S+) \.\.\. FAILED", re.M)


def cargo(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    passed = failed = skipped = 0
    for m in CARGO_RESULT.finditer(text):
        passed += int(m.group(1))
        failed += int(m.group(2))
        skipped += int(m.group(3))
    return passed, failed, skipped, CARGO_FAILED.findall(text)


PLAIN = re.compile(r"^(?:\w+: )?(\d+) passed, (\d+) failed(?:, (\d+) skipped)?\s*$", re.M)


def plain(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    found = PLAIN.findall(text)
    if not found:
        return 0, 0, 0, []
    p, f, s = found[-1]
    names = re.findall(r"^FAIL (\S+)", text, re.M)
    return int(p), int(f), int(s or 0), names


PYTEST_V = re.compile(r"^(\S+::.*?) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)(?: |$)", re.M)


def pytestlog(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    final = {}
    for nodeid, outcome in PYTEST_V.findall(text):
        # A teardown ERROR after PASSED makes the test a failure.
        if final.get(nodeid) in ("FAILED", "ERROR"):
            continue
        final[nodeid] = outcome
    passed = sum(1 for o in final.values() if o in ("PASSED", "XFAIL"))
    failed = sum(1 for o in final.values() if o in ("FAILED", "ERROR", "XPASS"))
    skipped = sum(1 for o in final.values() if o == "SKIPPED")
    return passed, failed, skipped, sorted(n for n, o in final.items() if o in ("FAILED", "ERROR", "XPASS"))


def main(argv):
    show = "--failures" in argv
    argv = [a for a in argv if a != "--failures"]
    kind, paths = argv[0], argv[1:]
    fn = {"junit": lambda: junit(paths), "gojson": lambda: gojson(paths[0]),
          "cargo": lambda: cargo(paths[0]), "plain": lambda: plain(paths[0]),
          "pytestlog": lambda: pytestlog(paths[0])}[kind]
    passed, failed, skipped, names = fn()
    print(f"passed={passed} failed={failed} skipped={skipped}")
    if show:
        for n in names:
            print(f"FAILED {n}")


if __name__ == "__main__":
    main(sys.argv[1:])
