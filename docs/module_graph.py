"""Draw docs/figures/modules.svg and the module table of docs/design.md from the package's own imports.

Nodes are the top-level modules of ``src/ncsn`` and its subpackages (cli, data, evaluation, nets, samplers) taken
whole; an arrow A -> B means A imports B (anywhere in A, lazy imports included);
rows are dependency depth: modules that import nothing of ncsn at the bottom, the command line on top. Import
cycles are found between single modules (every file, lazy imports included) and listed under the table.

    python docs/module_graph.py           # rewrite the figure and the table
    python docs/module_graph.py --check   # exit 1 if either is out of date (tests/test_docs_build.py runs this)
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "ncsn"
FIGURE = ROOT / "docs" / "figures" / "modules.svg"
DESIGN = ROOT / "docs" / "design.md"
START, END = "<!-- module-table:start (docs/module_graph.py) -->", "<!-- module-table:end -->"


def node_of(path: pathlib.Path) -> str:
    """The graph node of a source file: its top-level module, or the subpackage it belongs to."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def nodes() -> dict[str, list[pathlib.Path]]:
    out: dict[str, list[pathlib.Path]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__init__.py" and path.parent == PACKAGE:
            continue  # the package's own re-exports are drawn as nothing: every name there lives in a module
        out.setdefault(node_of(path), []).append(path)
    return out


def imported(path: pathlib.Path) -> set[str]:
    """ncsn modules one file imports, as absolute dotted names below ``ncsn`` (a package by its own name)."""
    here = list(path.relative_to(PACKAGE).with_suffix("").parts)
    package = here if path.name == "__init__.py" else here[:-1]
    package = [p for p in package if p != "__init__"]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = (node.module or "").split(".") if node.module else []
            if node.level:
                base = package[: len(package) - (node.level - 1)]
            elif module[:1] == ["ncsn"]:
                base, module = [], module[1:]
            else:
                continue
            found.update(_targets(base + module, node.names))
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".", 1)[1] for a in node.names if a.name.startswith("ncsn."))
    return found


def _targets(target: list[str], names) -> set[str]:
    found = set()
    for alias in names:  # `from .pkg import module` names the module; `from .module import name` the module
        inner = PACKAGE.joinpath(*target, alias.name)
        if inner.with_suffix(".py").is_file() or (inner / "__init__.py").is_file():
            found.add(".".join([*target, alias.name]))
        elif target:
            found.add(".".join(target))
    return found


def module_name(path: pathlib.Path) -> str:
    """A file's dotted name below ``ncsn``; a package's __init__ is the package ("" for ncsn itself)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports() -> dict[str, set[str]]:
    """Every module of the package (each file) -> the modules of the package it imports, lazy imports included."""
    names = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    return {name: {d for d in imported(path) if d in names and d != name} for name, path in names.items()}


def cycles(edges: dict[str, set[str]] | None = None) -> list[list[str]]:
    """The import cycles between modules: every strongly connected group of two or more (Tarjan), sorted."""
    edges = module_imports() if edges is None else edges
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(n):
        index[n] = low[n] = len(index)
        stack.append(n)
        for d in sorted(edges[n]):
            if d not in index:
                visit(d)
                low[n] = min(low[n], low[d])
            elif d in stack:
                low[n] = min(low[n], index[d])
        if low[n] == index[n]:
            group = []
            while not group or group[-1] != n:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for n in sorted(edges):
        if n not in index:
            visit(n)
    return sorted(found)


def graph() -> tuple[dict[str, str], dict[str, set[str]]]:
    """(node -> one-line description, node -> nodes it imports)."""
    groups = nodes()
    described, edges = {}, {}
    for name, files in groups.items():
        main = PACKAGE / name / "__init__.py" if (PACKAGE / name).is_dir() else files[0]
        doc = " ".join((ast.get_docstring(ast.parse(main.read_text())) or "").split("\n\n")[0].split())
        if not doc and main.parent != PACKAGE:  # a data-only package (configs/): name what it holds
            held = sorted(p.stem for p in main.parent.iterdir() if p.suffix not in (".py", ".pyc") and p.is_file())
            doc = "Data files: " + ", ".join(f"`{h}`" for h in held) + "."
        described[name] = doc.split(". ")[0].rstrip(".") + "."
        deps = set()
        for path in files:
            deps |= {d.split(".")[0] for d in imported(path)}
        edges[name] = {d for d in deps if d in groups and d != name}
    return described, edges


def depths(edges: dict[str, set[str]]) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(n, stack=()):
        if n not in depth:
            # an edge that closes an import cycle (a lazy import inside a function) does not count for depth
            depth[n] = 1 + max((visit(d, stack + (n,)) for d in edges[n] if d not in stack + (n,)), default=-1)
        return depth[n]

    for n in edges:
        visit(n)
    return depth


def table(described: dict[str, str], edges: dict[str, set[str]]) -> str:
    rows = ["| module | what it is for | imports (within ncsn) |", "| --- | --- | --- |"]
    for name in sorted(described, key=lambda n: (depths(edges)[n], n)):
        kind = "/" if (PACKAGE / name).is_dir() else ".py"
        deps = ", ".join(f"`{d}`" for d in sorted(edges[name])) or "–"
        rows.append(f"| `{name}{kind}` | {described[name].replace('|', '/')} | {deps} |")
    loops = cycles()
    said = "; ".join(" ↔ ".join(f"`{m}`" for m in loop) for loop in loops) if loops else "none"
    rows += ["", f"Import cycles between modules (every file, lazy imports included): {said}."]
    return "\n".join(rows)


def draw(edges: dict[str, set[str]], out: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "ncsn", "font.size": 9})
    depth = depths(edges)
    columns: dict[int, list[str]] = {}  # depth -> the modules at that depth
    for n in sorted(edges, key=lambda n: (depth[n], n)):
        columns.setdefault(depth[n], []).append(n)
    widest = max(len(c) for c in columns.values())
    pos = {}
    for d, names in columns.items():  # one row per depth, the foundations at the bottom, the command line on top
        spread = (widest - 1) / max(len(names) - 1, 1) if len(names) > 1 else 0.0
        for i, n in enumerate(names):
            pos[n] = (i * spread - (len(names) - 1) * spread / 2, float(d))
    fig, ax = plt.subplots(figsize=(1.2 + 1.35 * widest, 0.6 + 0.75 * len(columns)))
    for a in sorted(edges):
        for b in sorted(edges[a]):
            (xa, ya), (xb, yb) = pos[a], pos[b]
            ax.annotate("", xy=(xb, yb + 0.17), xytext=(xa, ya - 0.17),
                        arrowprops=dict(arrowstyle="-|>", color="#7a8ca3", lw=0.6, alpha=0.5,
                                        shrinkA=0, shrinkB=0, connectionstyle="arc3,rad=0.06"))
    palette = ["#e8f1fb", "#e9f7ef", "#fff4e0", "#fbeaea", "#f1ebfa", "#eaf6f6", "#f7f7e4", "#eeeeee"]
    for n, (x, y) in pos.items():
        package = (PACKAGE / n).is_dir()
        ax.text(x, y, n + ("/" if package else ""), ha="center", va="center", fontsize=10,
                fontweight="bold" if package else "normal",
                bbox=dict(boxstyle="round,pad=0.3", fc=palette[depth[n] % len(palette)], ec="#4a5a70", lw=0.8))
    ax.set_xlim(-(widest - 1) / 2 - 0.7, (widest - 1) / 2 + 0.7)
    ax.set_ylim(-0.5, len(columns) - 0.5)
    ax.set_axis_off()
    ax.set_title("ncsn modules: an arrow A → B means A imports B; rows by dependency depth", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format=out.suffix[1:], **({"metadata": {"Date": None}} if out.suffix == ".svg" else {"dpi": 110}))
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that the figure and the table are current")
    args = parser.parse_args(argv)
    described, edges = graph()
    text = DESIGN.read_text()
    if START not in text or END not in text:
        print(f"{DESIGN}: the markers {START} ... {END} are missing", file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    wanted = f"{head}{START}\n{table(described, edges)}\n{END}{tail}"
    if args.check:
        stale = []
        if wanted != text:
            stale.append(str(DESIGN.relative_to(ROOT)) + " (module table)")
        svg = FIGURE.read_text() if FIGURE.exists() else ""
        missing = [n for n in edges if f">{n}{'/' if (PACKAGE / n).is_dir() else ''}<" not in svg]
        if missing:
            stale.append(f"{FIGURE.relative_to(ROOT)} (lacks {', '.join(missing)})")
        if stale:
            print("out of date: " + "; ".join(stale) + ": run `python docs/module_graph.py`", file=sys.stderr)
            return 1
        return 0
    DESIGN.write_text(wanted)
    draw(edges, FIGURE)
    lines = {module_name(p) or "__init__": len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    largest = ", ".join(f"{m} {n}" for m, n in sorted(lines.items(), key=lambda kv: (-kv[1], kv[0]))[:5])
    print(f"wrote {FIGURE.relative_to(ROOT)} and the module table of {DESIGN.relative_to(ROOT)}: "
          f"{len(edges)} modules, {sum(len(v) for v in edges.values())} imports; {len(lines)} files, "
          f"{sum(lines.values())} lines (largest: {largest}); {len(cycles())} import cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
