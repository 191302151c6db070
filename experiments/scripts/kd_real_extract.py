"""Python functions and their docstrings, for `edkd experiment kd` (code summarisation).

For every function (and method) with a docstring in the given source trees, prints one JSON
line: the package, the file (relative to its root), the qualified name, the function's
source with the docstring removed (dedented), and the docstring's first sentence. Parsing
is Python's own `ast`, so what counts as a function and a docstring is exactly Python's.
Test folders and files are skipped. The Rust side filters, deduplicates and splits.

usage: kd_real_extract.py NAME=ROOT [NAME=ROOT ...] > functions.jsonl
"""

import ast
import json
import os
import re
import sys
import textwrap

SKIP_DIRS = {"test", "tests", "testing", "__pycache__", "idlelib", "turtledemo", "site-packages"}
# Abbreviations whose period does not end a sentence.
ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "resp.", "approx.", "incl.")


def first_sentence(doc):
    """The first sentence of the docstring's first paragraph, whitespace collapsed."""
    para = doc.strip().split("\n\n")[0]
    text = " ".join(para.split())
    i = 0
    while True:
        j = text.find(".", i)
        if j < 0:
            return text
        end = j + 1
        if end == len(text) or text[end] == " ":
            if not any(text[: end].endswith(a) for a in ABBREVIATIONS):
                return text[:end]
        i = end


def without_docstring(lines, node):
    """The function's source lines (from `def` to its end) with the docstring's lines removed."""
    doc = node.body[0]
    start, end = node.lineno - 1, node.end_lineno
    if doc.lineno - 1 <= start or len(node.body) < 2:
        return None  # a docstring on the def line, or nothing but the docstring
    kept = lines[start : doc.lineno - 1] + lines[doc.end_lineno : end]
    return textwrap.dedent("".join(kept)).rstrip() + "\n"


def functions(name, root):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for fn in sorted(filenames):
            if not fn.endswith(".py") or fn.startswith("test_") or fn.endswith("_test.py"):
                continue
            path = os.path.join(dirpath, fn)
            rel = os.path.relpath(path, root)
            try:
                with open(path, encoding="utf-8") as f:
                    src = f.read()
                tree = ast.parse(src)
            except (SyntaxError, UnicodeDecodeError, ValueError, RecursionError):
                continue
            lines = src.splitlines(keepends=True)
            stack = [(tree, "")]
            while stack:
                parent, prefix = stack.pop()
                for node in ast.iter_child_nodes(parent):
                    if isinstance(node, ast.ClassDef):
                        stack.append((node, prefix + node.name + "."))
                        continue
                    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        continue
                    stack.append((node, prefix + node.name + "."))
                    doc = ast.get_docstring(node, clean=True)
                    if not doc:
                        continue
                    code = without_docstring(lines, node)
                    if code is None:
                        continue
                    yield {
                        "package": name,
                        "file": rel,
                        "name": prefix + node.name,
                        "line": node.lineno,
                        "code": code,
                        "summary": first_sentence(doc),
                    }


def main():
    out = sys.stdout
    for arg in sys.argv[1:]:
        name, _, root = arg.partition("=")
        if not root or not os.path.isdir(root):
            sys.exit(f"{arg}: expected NAME=ROOT with ROOT a folder")
        for row in functions(name, root):
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
