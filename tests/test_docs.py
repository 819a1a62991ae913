"""The documentation's examples run, and the site builds with ``mkdocs build --strict``.

Every ```python block of ``docs/**/*.md`` and ``README.md`` is executed, each page's blocks in
order in one namespace (so a block may use names defined by the blocks above it), with the
repository root as the working directory. A block directly preceded by the line
``<!-- skip -->`` is not run (multi-host commands and the like); shell blocks never are.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
FENCE = re.compile(r"^(?P<indent> *)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                   re.MULTILINE | re.DOTALL)
SKIP = "<!-- skip -->"


def python_blocks(text: str) -> list[tuple[int, str]]:
  """``(line number, code)`` of each ```python block that is not marked ``<!-- skip -->``."""
  blocks = []
  for match in FENCE.finditer(text):
    language = match["info"].strip().split(" ")[0].lstrip("{").lstrip(".")
    if language not in ("python", "py"):
      continue
    before = text[:match.start()].rstrip().rsplit("\n", 1)[-1].strip()
    if before == SKIP:
      continue
    line = text.count("\n", 0, match.start("body")) + 1
    blocks.append((line, textwrap.dedent(match["body"])))
  return blocks


def test_collector_finds_blocks_and_honours_skip():
  text = "a\n```python\nx = 1\n```\n<!-- skip -->\n```python\nraise SystemExit\n```\n```bash\nls\n```\n"
  assert python_blocks(text) == [(3, "x = 1\n")]


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p.read_text())],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_page_examples_run(page, monkeypatch, capsys):
  monkeypatch.chdir(ROOT)
  namespace = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
  for line, code in python_blocks(page.read_text()):
    # Blank lines up to the block's first line, so tracebacks give the page's line numbers.
    # dont_inherit: the page's code runs as written, without this file's `from __future__`.
    exec(compile("\n" * (line - 1) + code, str(page), "exec", dont_inherit=True),  # pylint: disable=exec-used
         namespace)
  capsys.readouterr()


def test_mkdocs_build_strict(tmp_path):
  pytest.importorskip("mkdocs", reason="the docs extra is not installed")
  pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra is not installed")
  result = subprocess.run(
      [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
  assert result.returncode == 0, result.stdout + result.stderr
  assert (tmp_path / "site" / "api" / "rnn" / "index.html").exists()
