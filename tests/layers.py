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
PATH = re.compile(r"\bcrate::(\{[^}]*\}|[a-z_][a-z0-9_]*)")
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


def code(text: str) -> str:
    """The text without comments (line comments and the trailing part of a line)."""
    out = []
    for line in text.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("//"):
            out.append("")  # keep the line numbers
            continue
        at = line.find(" //")
        out.append(line if at < 0 else line[:at])
    return "\n".join(out)


def imports(files: list[Path]) -> dict[str, list[str]]:
    """Each module name imported through `crate::`, with where."""
    found: dict[str, list[str]] = {}
    for f in files:
        for n, line in enumerate(code(f.read_text()).splitlines(), 1):
            for m in PATH.finditer(line):
                target = m.group(1)
                names = (
                    [part.strip().split("::")[0] for part in target[1:-1].split(",")]
                    if target.startswith("{")
                    else [target]
                )
                for name in filter(None, names):
                    found.setdefault(name, []).append(f"{f}:{n}")
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
    print(f"layering check: {len(modules) - len(EXEMPT & set(modules))} modules, every import goes down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
