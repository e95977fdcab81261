#!/usr/bin/env python3
"""Checks that the file paths the docs name exist in the repository.

Reads README.md, bench/README.md and docs/*.md, takes every path-like word (in backticks,
parentheses or plain text: a name with a file extension, or a/b/c with a slash), and looks it
up from the repository root, from the md file's folder and from the folders the docs name
files relative to (src/cuda/forward/, examples/train_lm/, ...). Names with <x> or {a,b} match
as globs. Prints the names found nowhere (with where a file of that base name lives, if any)
and exits with 1 if there are any not listed in ALLOWED.

    python3 scripts/check_doc_paths.py
"""
import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Names that are meant not to exist in a clone: build outputs, files a command writes, files
# the docs name as removed.
ALLOWED = {
    "build/results/moba-bench.csv", "build/results/moba-bench.png",  # written by run_main.sh
    "hopper_kernel.cuh",  # named as removed (docs/architecture.md)
    "plan.json", "profiles.json", "candidates.json", "ref.json", "train_lm.json",  # outputs
    "results.md", "results.json", "loss_curves.png", "needle_heatmap.png",  # study outputs
    "f.png", "f.md", "F.png", "FILE.png",  # placeholders in option synopses
}

# Folders the docs name files relative to, besides the root and the md file's own folder.
BASES = ["src/", "src/core/", "src/cpu/", "src/cuda/", "src/cuda/forward/", "src/cuda/backward/",
         "src/cuda/common/", "src/cuda/gate/", "src/cuda/decode/", "src/cuda/paged/",
         "include/", "include/moba/", "python/", "python/src/", "python/moba/",
         "python/moba/moa/", "python/tests/", "bench/", "bench/cuda/", "bench/results/",
         "tests/", "tests/cuda/", "scripts/", "scripts/device/", "examples/",
         "examples/train_lm/", "cli/", "docs/"]

EXT = r"(?:cuh|cu|cpp|hpp|h|py|sh|md|json|toml|map|txt|csv|png)"
WORD = re.compile(r"[A-Za-z0-9_.\-<>{},*]+(?:/[A-Za-z0-9_.\-<>{},*]+)+/?"
                  r"|[A-Za-z0-9_\-<>{},*]+\." + EXT + r"\b")


def looks_like_path(word):
    if "/" not in word:
        return True  # a name with a file extension
    first = word.split("/")[0]
    # a/b pairs of words ("f16/bf16", "dK/dV") are not paths: a path has a known top folder,
    # a file extension or a trailing slash
    return (os.path.isdir(os.path.join(ROOT, first)) or first in ("build", "..", ".")
            or re.search(r"\." + EXT + r"$", word) is not None or word.endswith("/"))


def exists(word, md_dir):
    pattern = re.sub(r"<[^>]*>|\{[^}]*\}", "*", word)
    for base in ["", md_dir + "/"] + BASES:
        if glob.glob(os.path.join(ROOT, base, pattern)):
            return True
    return False


def main():
    files = ["README.md", "bench/README.md"] + sorted(
        os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
    bad = 0
    for md in files:
        md_dir = os.path.dirname(md)
        for ln, line in enumerate(open(os.path.join(ROOT, md), encoding="utf-8"), 1):
            for m in WORD.finditer(line):
                word = m.group(0).rstrip(".,;:")
                if "://" in line[max(0, m.start() - 12):m.end()] or not looks_like_path(word):
                    continue
                if word.startswith("build/") and word not in ALLOWED:
                    continue  # build outputs depend on the build
                if word in ALLOWED or os.path.basename(word.rstrip("/")) in ALLOWED:
                    continue
                if exists(word, md_dir):
                    continue
                hits = [os.path.relpath(h, ROOT) for h in
                        glob.glob(os.path.join(ROOT, "**", os.path.basename(word.rstrip("/"))),
                                  recursive=True) if "/build" not in h]
                print(f"{md}:{ln}: {word} not found" + (f" (there is {hits[0]})" if hits else ""))
                bad += 1
    print(f"{bad} missing path(s)" if bad else "every path named in the docs exists")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
