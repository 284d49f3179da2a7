#!/usr/bin/env python3
"""Refuses #include edges of src/ that go against the library arrows (docs/architecture.md):

    server -> net -> pop3, auth, store -> common

Each directory of src/ is one library; a file may include headers of its own directory and of
the directories listed for it below. pop3 may include only the interface headers of store and
auth named in INTERFACE_HEADERS. A unit test (*_test.cpp) is held to its directory's rule.
Exits 1 and names every offending line."""

import pathlib
import re
import sys

ALLOWED = {
    "common": set(),
    "pop3": {"common"},
    "auth": {"common"},
    "store": {"common"},
    "net": {"common", "pop3", "auth", "store"},
    "server": {"common", "pop3", "auth", "store", "net"},
}

# Headers a lower library may include from a sibling: the engine's view of the store and of
# password checks, which hold no code of their own.
INTERFACE_HEADERS = {
    "pop3": {"store/maildrop.hpp", "auth/passdb.hpp"},
}

# TEMPORARY EXCEPTIONS, to be deleted when the store tests no longer use the pop3 encoder
# (issue 11, `cleanup`): file -> headers it may include against the arrows.
EXCEPTIONS = {
    "store/mapped_file_test.cpp": {"pop3/body_stream.hpp", "pop3/dot_encoder.hpp", "pop3/mapped_access.hpp"},
    "store/maildir/maildir_test.cpp": {"pop3/dot_encoder.hpp"},
    "store/mbox/mbox_test.cpp": {"pop3/dot_encoder.hpp"},
}

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def check(src: pathlib.Path) -> list[str]:
    errors = []
    for path in sorted(src.rglob("*")):
        if path.suffix not in (".cpp", ".hpp") or not path.is_file():
            continue
        rel = path.relative_to(src).as_posix()
        lib = rel.split("/", 1)[0]
        if lib not in ALLOWED:
            errors.append(f"src/{rel}: directory '{lib}' has no rule in scripts/check-layering.py")
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            m = INCLUDE.match(line)
            if not m:
                continue
            header = m.group(1)
            target = header.split("/", 1)[0]
            if target == lib or target not in ALLOWED:
                continue  # own directory, or not a src/ library (a generated or system header)
            if target in ALLOWED[lib] or header in INTERFACE_HEADERS.get(lib, set()):
                continue
            if header in EXCEPTIONS.get(rel, set()):
                continue
            errors.append(f"src/{rel}:{number}: {lib} may not include {header} "
                          f"(allowed: {', '.join(sorted(ALLOWED[lib])) or 'nothing'})")
    return errors


def main() -> int:
    root = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent
    errors = check(root / "src")
    for e in errors:
        print(e)
    if errors:
        print(f"{len(errors)} include(s) against the layering (docs/architecture.md)")
        return 1
    print("layering: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
