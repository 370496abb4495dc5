#!/usr/bin/env python3
"""Lists the longest Rust functions in the tree (hand-written code only).

    scripts/fn_lengths.py [N]      the N longest (default 10)

A function's length is the number of lines from its `fn` line to its closing
brace, found by brace matching that skips strings, chars and comments.
Generated files (cli/src/proto/) and target/ are left out.
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SKIP = ("target", "proto", ".venv", "fuzz/corpus")
FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(unsafe\s+)?(extern\s+\"C\"\s+)?fn\s+(\w+)")


def strip(line, state):
    """Returns the line with strings/chars/comments blanked; state tracks block comments."""
    out = []
    i = 0
    while i < len(line):
        if state["block"]:
            j = line.find("*/", i)
            if j < 0:
                return "".join(out)
            state["block"] = False
            i = j + 2
            continue
        c = line[i]
        if line.startswith("//", i):
            break
        if line.startswith("/*", i):
            state["block"] = True
            i += 2
            continue
        if c == '"':
            j = i + 1
            while j < len(line) and line[j] != '"':
                j += 2 if line[j] == "\\" else 1
            i = j + 1
            continue
        if c == "'" and re.match(r"'(\\.|[^\\'])'", line[i:]):
            i += len(re.match(r"'(\\.|[^\\'])'", line[i:]).group(0))
            continue
        out.append(c)
        i += 1
    return "".join(out)


def functions(path):
    lines = path.read_text(errors="replace").splitlines()
    state = {"block": False}
    clean = [strip(l, state) for l in lines]
    for n, line in enumerate(clean):
        m = FN.match(line)
        if not m:
            continue
        depth = 0
        opened = False
        for k in range(n, len(clean)):
            for ch in clean[k]:
                if ch == "{":
                    depth += 1
                    opened = True
                elif ch == "}":
                    depth -= 1
                elif ch == ";" and not opened and depth == 0:
                    break
            else:
                if opened and depth == 0:
                    yield m.group(6), n + 1, k - n + 1
                    break
                continue
            break


def main():
    top = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    found = []
    for path in ROOT.rglob("*.rs"):
        rel = path.relative_to(ROOT)
        if any(part in SKIP for part in rel.parts):
            continue
        for name, line, length in functions(path):
            found.append((length, f"{rel}:{line}", name))
    found.sort(reverse=True)
    for length, where, name in found[:top]:
        print(f"{length:5}  {name:32} {where}")


if __name__ == "__main__":
    main()
