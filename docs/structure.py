#!/usr/bin/env python3
"""The structure figures of issue 20, at any git revision (read with `git show`, no checkout):

    python3 docs/structure.py [REV] [--list]

- hand-placed side effects: calls outside src/changes that write an audit entry, an outbox row, a
  history row or a cache invalidation, drop caches after a write or wake a worker;
- non-test functions over 80 lines (brace matching on the source; `#[cfg(test)] mod` cut off);
- `allow(clippy::too_many_arguments)`;
- upward imports from the base (config/, error.rs, util.rs, metrics.rs naming another module);
- integration-test crates (files and folders with a main.rs directly under tests/).
Test code (`tests.rs`, `#[cfg(test)] mod tests`, tests/) is not counted in the first three.
"""
import re
import subprocess
import sys

rev = next((a for a in sys.argv[1:] if not a.startswith("--")), "HEAD")
listing = "--list" in sys.argv


def git(*args):
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


files = git("ls-tree", "-r", "--name-only", rev).split()


def source(path):
    text = git("show", f"{rev}:{path}")
    cut = re.search(r"#\[cfg\(test\)\]\s*mod \w+", text)
    return text[: cut.start()] if cut else text


src = [f for f in files if f.startswith("src/") and f.endswith(".rs") and not f.endswith("tests.rs")]

SIDE = re.compile(
    r"audit::record\(|outbox::record\w*\(|record_event\(|invalidations::(record|connection|api_key)\("
    r"|after_write\(|after_refresh\(|\.wake\(\)"
)
side = []
for f in src:
    if f.startswith("src/changes/"):
        continue
    for n, line in enumerate(source(f).splitlines(), 1):
        s = line.strip()
        if not s.startswith("//") and not re.search(r"\bfn\s", s) and SIDE.search(s):
            side.append(f"{f}:{n}: {s[:100]}")

FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(async\s+)?(const\s+)?(unsafe\s+)?fn\s+(\w+)")
long_fns, many_args = [], 0
for f in src:
    lines = source(f).splitlines()
    many_args += sum("too_many_arguments" in l for l in lines)
    i = 0
    while i < len(lines):
        m = FN.match(lines[i])
        if not m:
            i += 1
            continue
        depth, j, opened = 0, i, False
        while j < len(lines):
            code = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j].split("//")[0])
            depth += code.count("{") - code.count("}")
            opened |= "{" in code
            if opened and depth <= 0 or (not opened and code.rstrip().endswith(";")):
                break
            j += 1
        if opened and j - i + 1 > 80:
            long_fns.append(f"{f}:{i + 1}: {m.group(6)} {j - i + 1} lines")
        i = j + 1 if opened else i + 1

BASE = ("src/config.rs", "src/error.rs", "src/util.rs", "src/metrics.rs")
base = [f for f in src if f.startswith("src/config/") or f in BASE]
code_of = lambda f: "\n".join(l for l in source(f).splitlines() if not l.strip().startswith("//"))
upward = sorted(
    {f"{f} -> crate::{m}" for f in base for m in re.findall(r"crate::([a-z_]+)", code_of(f)) if m not in ("util", "on_conn")}
)
crates = sorted(
    {f.split("/")[1] for f in files if re.match(r"tests/[^/]+\.rs$", f) or re.match(r"tests/[^/]+/main\.rs$", f)}
)

print(f"revision {rev}")
print(f"hand-placed side-effect calls outside src/changes: {len(side)} in {len({s.split(':')[0] for s in side})} files")
print(f"non-test functions over 80 lines: {len(long_fns)}; allow(too_many_arguments): {many_args}")
print(f"upward imports from the base: {len(upward)}")
print(f"integration-test crates: {len(crates)}")
if listing:
    for title, rows in (("side effects", side), ("long functions", long_fns), ("upward imports", upward), ("test crates", crates)):
        print(f"\n{title}:")
        for r in rows:
            print(f"  {r}")
