"""Every code block in README.md and docs/*.md runs here, or carries the reason it does not.

A fenced block's language says what happens to it:
- ``python``: executed, the blocks of one page in order in one namespace (like a reader pasting them in turn);
- ``bash``: each command executed; ``ncsn ...`` lines through the console script's entry point (``ncsn.cli:main``)
  in this process, anything else by bash; ``$TMPDIR`` is a fresh temporary folder;
- ``yaml``: loaded with safe YAML and validated as an ncsn config (``ncsn.config.from_dict``);
- ``text`` and ``bibtex``: listings and citations, not code.
A block of python, bash or yaml that cannot run here (it needs a dataset, a GPU, a trained run or a long time) is
preceded by ``<!-- skip: REASON -->``. Any other language, or none, fails. ``python tests/test_docs_examples.py``
prints the inventory.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = {"python", "bash", "yaml"}
NOT_CODE = {"text", "bibtex"}
FENCE = re.compile(r"^```(\S*)\s*$")
SKIP = re.compile(r"^<!--\s*skip:\s*(.*?)\s*-->$")


@dataclass
class Block:
    page: pathlib.Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None  # the reason, when marked

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: pathlib.Path) -> list[Block]:
    """The fenced blocks of one Markdown page, with the skip reason written just before each (if any)."""
    lines = page.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{page.relative_to(ROOT)}:{i + 1}: unclosed code block"
        before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        reason = SKIP.match(before)
        found.append(Block(page, start + 1, lang, "\n".join(lines[start + 1:end]) + "\n",
                           reason.group(1) if reason else None))
        i = end + 1
    return found


ALL = [b for page in PAGES for b in blocks(page)]


def inventory() -> dict[str, int]:
    counts = {"python run": 0, "bash run": 0, "yaml validated": 0, "skipped with a reason": 0, "not code": 0}
    for b in ALL:
        if b.lang in NOT_CODE:
            counts["not code"] += 1
        elif b.skip:
            counts["skipped with a reason"] += 1
        else:
            counts[{"python": "python run", "bash": "bash run", "yaml": "yaml validated"}[b.lang]] += 1
    return counts


def test_every_block_is_runnable_or_marked():
    """Each block names a known language, and a skip marker gives a reason; at least one example runs per kind."""
    bad = [f"{b.where}: language {b.lang!r} (use one of {sorted(RUN | NOT_CODE)})" for b in ALL
           if b.lang not in RUN | NOT_CODE]
    bad += [f"{b.where}: empty skip reason" for b in ALL if b.skip is not None and not b.skip]
    assert not bad, "\n".join(bad)
    counts = inventory()
    assert counts["python run"] >= 5 and counts["bash run"] >= 2 and counts["yaml validated"] >= 1, counts


def test_the_collector_sees_markers():
    """The parser itself: a marked block is skipped with its reason, an unmarked one is not, fences are paired."""
    page = ROOT / "README.md"
    readme = blocks(page)
    assert readme[0].lang == "bash" and readme[0].skip and "ci/run" in readme[0].skip
    python = [b for b in readme if b.lang == "python"]
    assert python and python[0].skip is None and "import ncsn" in python[0].code


def _run_bash(block: Block, tmp_path: pathlib.Path) -> None:
    from click.testing import CliRunner

    from ncsn.cli import main

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    commands = re.sub(r"\\\n", " ", block.code).splitlines()
    for n, command in enumerate(c for c in commands if c.strip() and not c.lstrip().startswith("#")):
        expanded = os.path.expandvars(command.replace("$TMPDIR", str(tmp_path)))
        args = shlex.split(expanded, comments=True)
        if args[0] == "ncsn":
            result = CliRunner().invoke(main, args[1:], catch_exceptions=False, env=env)
            assert result.exit_code == 0, f"{block.where}: `{command}` failed:\n{result.output}"
        else:
            proc = subprocess.run(["bash", "-euo", "pipefail", "-c", expanded], cwd=tmp_path, env=env,
                                  capture_output=True, text=True)
            assert proc.returncode == 0, f"{block.where}: `{command}` failed:\n{proc.stdout}{proc.stderr}"


def _check_yaml(block: Block) -> None:
    import yaml

    from ncsn.config import from_dict

    from_dict(yaml.safe_load(block.code))  # raises ConfigError, naming the key, when the example is wrong


@pytest.mark.parametrize("page", [p for p in PAGES if any(b.page == p and b.lang in RUN and not b.skip for b in ALL)],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_run(page, tmp_path, monkeypatch, one_thread):
    """Run every unmarked python, bash and yaml block of one page, in order."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs_example__"}
    ran = 0
    for block in (b for b in ALL if b.page == page and b.lang in RUN and not b.skip):
        if block.lang == "python":
            # line numbers in tracebacks point into the Markdown page
            code = compile("\n" * block.line + block.code, block.where.rsplit(":", 1)[0], "exec")
            exec(code, namespace)
        elif block.lang == "bash":
            _run_bash(block, tmp_path)
        else:
            _check_yaml(block)
        ran += 1
    assert ran > 0


def test_yaml_examples_are_really_validated():
    """The yaml check refuses what ncsn train would refuse (so a passing example is a valid config)."""
    from ncsn.config import ConfigError

    bad = Block(ROOT / "README.md", 1, "yaml", "training: {lrr: 1.0e-4}\n", None)
    with pytest.raises(ConfigError, match="lrr"):
        _check_yaml(bad)


if __name__ == "__main__":
    for b in ALL:
        state = "not code" if b.lang in NOT_CODE else (f"skip: {b.skip}" if b.skip else "runs")
        print(f"{b.where:32} {b.lang:7} {state}")
    print(inventory(), file=sys.stderr)
