"""The documentation cannot rot: the site builds strictly and offline, the API page and the module picture follow the
code, every public name has a docstring, and the README keeps its fresh-machine commands in step with CI."""

from __future__ import annotations

import inspect
import os
import pathlib
import re
import subprocess
import sys

import ncsn

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_mkdocs_build_strict(tmp_path):
    """`mkdocs build --strict` passes (a broken link or anchor, a missing page or API name fails it), and the built
    site asks nothing of the network: no web fonts, and every figure the pages show is in the site."""
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(site)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pages = sorted(p.name for p in site.glob("*.html") if p.name != "404.html")
    assert len(pages) >= 13, pages
    for page in site.rglob("*.html"):
        html = page.read_text()
        assert "fonts.googleapis.com" not in html and "fonts.gstatic.com" not in html, page
        for src in re.findall(r'<img[^>]+src="([^"]+)"', html):
            if not src.startswith(("http:", "https:", "data:")):
                assert (page.parent / src).resolve().is_file(), f"{page.relative_to(site)}: image {src} missing"
    api = (site / "api.html").read_text()
    for name in ncsn.__all__:
        assert f'id="ncsn.{name}"' in api, f"{name} not rendered on the API page"
    results = (site / "performance.html").read_text()
    assert "Benchmark results" in results and "compute_floor.py" in results  # benchmarks/RESULTS.md is included


def test_api_page_lists_exactly_the_public_names():
    documented = re.findall(r"^::: ncsn\.(\w+)$", (ROOT / "docs" / "api.md").read_text(), flags=re.M)
    assert sorted(documented) == sorted(ncsn.__all__)
    assert len(documented) == len(set(documented))


def test_every_public_name_has_a_docstring():
    """Everything in ncsn.__all__, and the public methods those classes define themselves."""
    missing = []
    for name in ncsn.__all__:
        obj = getattr(ncsn, name)
        if not (inspect.getdoc(obj) or "").strip():
            missing.append(name)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not callable(member) and not isinstance(member, property):
                    continue
                if not (member.__doc__ or "").strip():
                    missing.append(f"{name}.{attr}")
    assert not missing, f"no docstring: {missing}"


def test_module_graph_is_current():
    """docs/figures/modules.svg and the module table of docs/design.md match the package's imports."""
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "module_graph.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _module_graph():
    import importlib.util

    spec = importlib.util.spec_from_file_location("module_graph", ROOT / "docs" / "module_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_package_has_no_import_cycle():
    """No two modules of ncsn import each other, directly or through others, lazy imports included (checkpoint.py and
    official.py once did, behind a late import)."""
    graph = _module_graph()
    assert graph.cycles() == []
    imports = graph.module_imports()
    assert "safe_load" in imports["official"] and "official" in imports["model_loading"]  # the finder sees both
    assert graph.cycles({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}) == [["a", "b", "c"]]


def test_model_loading_modules_import_ncsn_at_the_top_only():
    """checkpoint, export, model_loading, official and official_scoresde import each other at module level: no import
    hidden inside a function, where a cycle could come back unnoticed by a reader."""
    import ast

    for name in ("checkpoint", "export", "model_loading", "official", "official_scoresde", "safe_load"):
        tree = ast.parse((ROOT / "src" / "ncsn" / f"{name}.py").read_text())
        top = set(map(id, tree.body))
        late = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level
                and id(node) not in top]
        assert late == [], (name, late)


def test_readme_starts_with_the_two_fresh_machine_commands_and_ci_runs_the_second():
    lines = README.read_text().splitlines()
    block = lines[lines.index("```bash") + 1:]
    demo, tests = block[0], block[1]
    assert lines.index("```bash") < 5 and block[2] == "```"
    assert demo == "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/ncsn demo"
    assert "[test,docs]" in tests and tests.endswith(".venv/bin/python -m pytest -q")
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == tests


def test_docs_extra_holds_the_builder():
    """The test install brings the docs builder, so the strict build above runs wherever the tests run."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {re.split(r"[\[<>=]", d)[0] for d in extras["docs"]}
    assert {"mkdocs", "mkdocs-material", "mkdocstrings"} <= names
    assert "ncsn[docs]" in extras["test"]


def test_readme_is_short_and_its_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http:", "https:", "#")):
            continue
        path = target.split("#")[0]
        assert (ROOT / path).exists(), f"README links to {target}, which does not exist"
