#!/usr/bin/env python3
"""The layering check: node/src's top-level modules import one way only.

The layers are written down once, in the table under "## Layers" in
docs/architecture.md (rows `| <layer> | `<module>` | <job> |`, bottom-up). A module may
import (`crate::<name>` in code, comments ignored) only modules of a lower layer, or of
its own layer listed above it in the table. Every top-level module of node/src must have
a row; lib.rs (the wiring) and main.rs (the binary) are exempt.

Usage: tests/layers.py [ROOT]   (ROOT defaults to the repository root)
Exits 1 and names every offending import on failure.
"""
import re
import sys
from pathlib import Path

ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*`([a-z_][a-z0-9_]*)`\s*\|")
PATH = re.compile(r"\bcrate::(?=[{a-z_])")
EXEMPT = {"lib", "main"}


def layers(root: Path) -> list[tuple[int, str]]:
    text = (root / "docs" / "architecture.md").read_text()
    section = text.split("## Layers", 1)
    if len(section) != 2:
        sys.exit("layers: docs/architecture.md has no '## Layers' section")
    rows = []
    for line in section[1].splitlines():
        if line.startswith("## "):
            break
        m = ROW.match(line)
        if m:
            rows.append((int(m.group(1)), m.group(2)))
    if not rows:
        sys.exit("layers: the '## Layers' table has no rows")
    return rows


USE = re.compile(r"^\s*(?:pub(?:\([a-z:]+\))?\s+)?use\b")


def code(text: str) -> str:
    """The text without comments (line comments and the trailing part of a line), each
    `use` statement on one line (its first; the lines it spanned left empty)."""
    out = []
    for line in text.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("//"):
            out.append("")  # keep the line numbers
            continue
        at = line.find(" //")
        out.append(line if at < 0 else line[:at])
    joined = []
    open_use = None  # the index of a `use` line not ended yet
    for line in out:
        if open_use is not None:
            joined[open_use] += " " + line.strip()
            joined.append("")
            if ";" in line:
                open_use = None
            continue
        joined.append(line)
        if USE.match(line) and ";" not in line:
            open_use = len(joined) - 1
    return "\n".join(joined)


def imports(files: list[Path]) -> dict[str, list[str]]:
    """Each module name imported through `crate::`, with where."""
    found: dict[str, list[str]] = {}
    for f in files:
        for n, line in enumerate(code(f.read_text()).splitlines(), 1):
            for m in PATH.finditer(line):
                for name in items(line, m.end()):
                    if name != "self" and not name[0].isupper():
                        found.setdefault(name, []).append(f"{f}:{n}")
    return found


SCOPED = re.compile(r"\b((?:crate|super|self)(?:::(?:super|[a-z_][a-z0-9_]*))*)::(?=[{A-Za-z_])")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def items(text: str, at: int) -> list[str]:
    """What a path names from `at`: one name, or the first name of each item of a
    `{...}` group (nested groups kept whole, `self` as itself)."""
    if text[at] != "{":
        m = NAME.match(text, at)
        return [m.group(0)] if m else []
    depth, start, found = 0, at + 1, []
    for i in range(at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
        if (text[i] == "," and depth == 1) or depth == 0:
            item = text[start:i].strip()
            m = NAME.match(item)
            if m:
                found.append(m.group(0))
            start = i + 1
        if depth == 0:
            break
    return found
CHILD = re.compile(r"^\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;")
INLINE = re.compile(r"^\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*\{")


def module_of(src: Path, f: Path) -> tuple[str, ...]:
    parts = f.relative_to(src).with_suffix("").parts
    return parts[:-1] if parts[-1] == "mod" else parts


def file_edges(src: Path, files: list[Path]) -> dict[tuple[str, ...], dict[tuple[str, ...], str]]:
    """For each file's module, the modules of other files it uses, with a place each."""
    known = {module_of(src, f): f for f in files}
    edges: dict[tuple[str, ...], dict[tuple[str, ...], str]] = {}
    for f in files:
        here = module_of(src, f)
        out = edges.setdefault(here, {})
        lines = code(f.read_text()).splitlines()
        children = {m.group(1) for line in lines if (m := CHILD.match(line))}
        bare = re.compile(r"(?<![\w:])(" + "|".join(sorted(children)) + r")::") if children else None
        inline: list[tuple[str, int, bool]] = []  # (name, brace depth it opened at, a test module)
        depth = 0

        def add(path: list[str], n: int) -> None:
            # The deepest prefix of the path that is a file's module.
            for end in range(len(path), 0, -1):
                target = tuple(path[:end])
                if target in known:
                    related = here[: len(target)] == target  # using an ancestor
                    if target != here and not related:
                        out.setdefault(target, f"{f}:{n}")
                    return

        for n, line in enumerate(lines, 1):
            scope = list(here) + [name for name, _, _ in inline]
            tested = n > 1 and lines[n - 2].strip() == "#[cfg(test)]"
            if m := INLINE.match(line):
                inline.append((m.group(1), depth, tested))
            in_tests = any(test for _, _, test in inline)
            if (m := CHILD.match(line)) and not tested and not in_tests:
                add(list(scope) + [m.group(1)], n)  # a module holds what it declares
            for m in SCOPED.finditer(line) if not in_tests else ():
                head = m.group(1).split("::")
                base = [] if head[0] == "crate" else list(scope)
                for part in head[1 if head[0] == "crate" else 0:]:
                    if part == "super":
                        base = base[:-1]
                    elif part != "self":
                        base.append(part)
                for item in items(line, m.end()):
                    add(base if item == "self" else base + [item], n)
            if bare and not in_tests:
                for m in bare.finditer(line):
                    add(list(scope) + [m.group(1)], n)
            depth += line.count("{") - line.count("}")
            while inline and depth <= inline[-1][1]:
                inline.pop()
    return edges


def circles(edges: dict[tuple[str, ...], dict[tuple[str, ...], str]]) -> list[list[tuple[str, ...]]]:
    """The strongly connected groups of more than one file (Tarjan)."""
    index: dict[tuple[str, ...], int] = {}
    low: dict[tuple[str, ...], int] = {}
    stack: list[tuple[str, ...]] = []
    found = []

    def visit(v: tuple[str, ...]) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
    src = root / "node" / "src"
    table = layers(root)
    rank = {name: (layer, i) for i, (layer, name) in enumerate(table)}
    problems = []
    modules = sorted(
        {p.stem for p in src.glob("*.rs")} | {p.name for p in src.iterdir() if p.is_dir()}
    )
    for module in modules:
        if module in EXEMPT:
            continue
        if module not in rank:
            problems.append(f"node/src/{module}: not in the Layers table of docs/architecture.md")
            continue
        here = src / module
        files = sorted(here.rglob("*.rs")) if here.is_dir() else [src / f"{module}.rs"]
        layer, order = rank[module]
        if here.is_dir():
            edges = file_edges(src, files)
            for group in circles(edges):
                names = ["::".join(g) for g in group]
                ring = [edges[a][b] for a in group for b in group if b in edges.get(a, {})]
                problems.append(
                    f"node/src/{module}: a circle of files: {' <-> '.join(names)} ("
                    + "; ".join(ring)
                    + ")"
                )
        for target, places in imports(files).items():
            if target == module or target in EXEMPT:
                continue
            if target not in rank:
                problems.append(f"{places[0]}: {module} imports {target}, which is not in the table")
                continue
            t_layer, t_order = rank[target]
            if t_layer > layer or (t_layer == layer and t_order > order):
                problems.append(
                    f"{places[0]}: {module} (layer {layer}) imports {target} (layer {t_layer}), "
                    "a layer above it"
                )
    for name in rank:
        if name not in modules:
            problems.append(f"docs/architecture.md: the Layers table names {name}, which node/src lacks")
    if problems:
        print("layering check failed:", *problems, sep="\n  ")
        return 1
    print(
        f"layering check: {len(modules) - len(EXEMPT & set(modules))} modules, every import goes down, "
        "no circle of files inside a module"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
