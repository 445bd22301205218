#!/usr/bin/env python3
"""Judges kube-score's findings (hack/lint.sh's report, `--output-format ci` lines prefixed with the file they
came from) against hack/lint-allowlist.yaml. Exit 1 on a finding no entry allows, and on an entry that allows
nothing any more (fixed findings leave the allowlist, so it never grows stale).

    hack/lint-findings.py REPORT ALLOWLIST
"""

from __future__ import annotations

import fnmatch
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

# "<file> [CRITICAL] <name>/<namespace> <apiVersion>/<Kind>: <message>"
LINE = re.compile(r"^(?P<file>\S+) \[(?P<level>[A-Z]+)\] (?P<object>\S+ \S+?): (?P<message>.*)$")
JUDGED_LEVELS = {"CRITICAL", "WARNING"}


@dataclass(frozen=True)
class Finding:
    file: str
    level: str
    object: str  # "name/namespace apiVersion/Kind"
    message: str

    def __str__(self) -> str:
        return f"{self.file}: [{self.level}] {self.object}: {self.message}"


def findings(report: str) -> list[Finding]:
    found = []
    for line in report.splitlines():
        match = LINE.match(line)
        if match and match["level"] in JUDGED_LEVELS:
            found.append(Finding(match["file"], match["level"], match["object"], match["message"]))
    return found


def allows(entry: dict, finding: Finding) -> bool:
    return (fnmatch.fnmatchcase(finding.file, entry.get("file", "*"))
            and fnmatch.fnmatchcase(finding.object, entry.get("object", "*"))
            and fnmatch.fnmatchcase(finding.message, entry["message"]))


def judge(found: list[Finding], allowlist: list[dict]) -> tuple[list[Finding], list[dict]]:
    """(findings no entry allows, entries that allow none)."""
    for entry in allowlist:
        if not entry.get("reason", "").strip():
            raise SystemExit(f"allowlist entry without a reason: {entry}")
    new = [f for f in found if not any(allows(entry, f) for entry in allowlist)]
    stale = [entry for entry in allowlist if not any(allows(entry, f) for f in found)]
    return new, stale


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    found = findings(Path(sys.argv[1]).read_text())
    allowlist = (yaml.safe_load(Path(sys.argv[2]).read_text()) or {}).get("kube-score", [])
    new, stale = judge(found, allowlist)
    print(f"kube-score: {len(found)} findings, {len(found) - len(new)} allowed by {sys.argv[2]}, {len(new)} new")
    for finding in new:
        print(f"  NEW {finding}")
    for entry in stale:
        print(f"  STALE allowlist entry (matches no finding any more: remove it): {entry}")
    return 1 if new or stale else 0


if __name__ == "__main__":
    sys.exit(main())
