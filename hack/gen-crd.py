#!/usr/bin/env python3
"""Write the QwenInference CRD (crds/ and the Helm chart's template) from the pydantic models.

    python hack/gen-crd.py           # (re)write both files
    python hack/gen-crd.py --check   # exit 1 with a diff when a file on disk is not what it would write
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from qwen_operator.api.crd import CRD_FILE_NAME, build_crd, chart_crd_yaml, crd_yaml

REPO = Path(__file__).resolve().parent.parent
CRD_PATH = REPO / "crds" / CRD_FILE_NAME
CHART_CRD_PATH = REPO / "charts" / "qwen-operator" / "templates" / "crds" / CRD_FILE_NAME


def generated_files() -> dict[Path, str]:
    crd = build_crd()
    return {CRD_PATH: crd_yaml(crd), CHART_CRD_PATH: chart_crd_yaml(crd)}


def check(files: dict[Path, str]) -> int:
    stale = 0
    for path, want in files.items():
        have = path.read_text() if path.exists() else ""
        if have != want:
            stale += 1
            rel = path.relative_to(REPO)
            sys.stdout.writelines(
                difflib.unified_diff(have.splitlines(True), want.splitlines(True), f"{rel} (on disk)", f"{rel} (generated)")
            )
    if stale:
        print(f"\n{stale} generated file(s) out of date: run `make crds`", file=sys.stderr)
    return 1 if stale else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 with a diff when stale")
    args = parser.parse_args()
    files = generated_files()
    if args.check:
        return check(files)
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
