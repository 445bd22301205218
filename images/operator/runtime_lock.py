"""Print the runtime part of requirements.lock, hashes included.

requirements.lock pins the development tools too (pytest, import-linter, kubectl, hadolint), and
`pip install --require-hashes` installs every line of a file it is given. The operator image needs
only what [project].dependencies in pyproject.toml pulls in, so this script keeps those packages
and everything they need, found by walking the lock's "# via" annotations (written by
`uv pip compile`): a package is needed at runtime when one of the packages it is "via" is.
The lines it prints are the lock's own lines, so pip still checks every hash.

    python runtime_lock.py requirements.lock pyproject.toml > runtime.lock
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")
REQUIREMENT_START = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==")
VIA_SINGLE = re.compile(r"^\s+# via (\S.*)$")
VIA_HEADER = re.compile(r"^\s+# via$")
VIA_ITEM = re.compile(r"^\s+#   (\S.*)$")
# "qwen-operator (pyproject.toml)" names the project itself; its direct runtime dependencies
# come from pyproject.toml instead, because the lock names the dev extra's packages the same way.
PROJECT_ITSELF = re.compile(r"\(pyproject\.toml\)$")


def normalize(name: str) -> str:
    """PEP 503 name normalization: Typing_Extensions -> typing-extensions."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class LockedPackage:
    name: str
    lines: list[str] = field(default_factory=list)
    required_by: set[str] = field(default_factory=set)


def parse_lock(text: str) -> dict[str, LockedPackage]:
    """The lock's packages by normalized name, each with its requirement lines and "via" parents."""
    packages: dict[str, LockedPackage] = {}
    current: LockedPackage | None = None
    in_via_list = False
    for line in text.splitlines():
        if match := REQUIREMENT_START.match(line):
            current = LockedPackage(name=normalize(match.group(1)), lines=[line])
            packages[current.name] = current
            in_via_list = False
        elif current is None or not line.strip():
            continue
        elif line.lstrip().startswith("--hash="):
            current.lines.append(line)
        elif match := VIA_SINGLE.match(line):
            current.required_by.add(match.group(1))
        elif VIA_HEADER.match(line):
            in_via_list = True
        elif in_via_list and (match := VIA_ITEM.match(line)):
            current.required_by.add(match.group(1))
    for package in packages.values():
        package.required_by = {normalize(p) for p in package.required_by if not PROJECT_ITSELF.search(p)}
        # The last requirement line ends with a continuation backslash before the comments.
        package.lines[-1] = package.lines[-1].rstrip(" \\")
    return packages


def direct_dependencies(pyproject_text: str) -> set[str]:
    dependencies = tomllib.loads(pyproject_text)["project"]["dependencies"]
    return {normalize(NAME.match(d.strip()).group(0)) for d in dependencies}


def runtime_packages(packages: dict[str, LockedPackage], roots: set[str]) -> set[str]:
    missing = roots - packages.keys()
    if missing:
        raise SystemExit(f"runtime dependencies missing from the lock: {', '.join(sorted(missing))}")
    needed = set(roots)
    grew = True
    while grew:
        grew = False
        for package in packages.values():
            if package.name not in needed and package.required_by & needed:
                needed.add(package.name)
                grew = True
    return needed


def runtime_lock(lock_text: str, pyproject_text: str) -> str:
    packages = parse_lock(lock_text)
    needed = runtime_packages(packages, direct_dependencies(pyproject_text))
    out = ["# The runtime subset of requirements.lock, printed by images/operator/runtime_lock.py."]
    for package in packages.values():  # keeps the lock's order
        if package.name in needed:
            out.extend(package.lines)
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit("usage: runtime_lock.py REQUIREMENTS_LOCK PYPROJECT_TOML")
    sys.stdout.write(runtime_lock(Path(argv[1]).read_text(), Path(argv[2]).read_text()))


if __name__ == "__main__":
    main(sys.argv)
