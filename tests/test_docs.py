"""The documentation's examples run, the site builds with ``mkdocs build --strict``, and it reads.

Every ```python block of ``docs/**/*.md`` and ``README.md`` is executed, each page's blocks in
order in one namespace (so a block may use names defined by the blocks above it), with the
repository root as the working directory. A block directly preceded by the line
``<!-- skip -->`` is not run (multi-host commands and the like); shell blocks never are.

The site is built once per run (the ``site`` fixture) and its HTML checked for what a reader
would see go wrong in a browser: reST markup left in docstrings, bullet lists run into their
paragraph, Markdown links shown as text or code, cut-off signatures, tables too wide for the
page. Every ``pip install`` line in the Markdown and on the built pages installs this project
from the checkout (or a dependency of it), never the unrelated ``rnn_jax`` on PyPI.
"""

from __future__ import annotations

import html
import inspect
import os
import pathlib
import re
import shlex
import subprocess
import sys
import textwrap

import pytest

import rnn_jax
from rnn_jax.training import cores

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
  # A page may register a cell (the Extending guide): it leaves with the page.
  monkeypatch.setattr(cores, "CELLS", dict(cores.CELLS))
  namespace = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
  for line, code in python_blocks(page.read_text()):
    # Blank lines up to the block's first line, so tracebacks give the page's line numbers.
    # dont_inherit: the page's code runs as written, without this file's `from __future__`.
    exec(compile("\n" * (line - 1) + code, str(page), "exec", dont_inherit=True),  # pylint: disable=exec-used
         namespace)
  capsys.readouterr()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> pathlib.Path:
  """The site of ``mkdocs build --strict``, built once for the tests below."""
  pytest.importorskip("mkdocs", reason="the docs extra is not installed")
  pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra is not installed")
  site_dir = tmp_path_factory.mktemp("docs") / "site"
  result = subprocess.run(
      [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
  assert result.returncode == 0, result.stdout + result.stderr
  # Without Black or Ruff mkdocstrings leaves every signature on one line (and only says so).
  assert "requires either Black or Ruff" not in result.stdout + result.stderr
  return site_dir


def test_mkdocs_build_strict(site):
  assert (site / "api" / "rnn" / "index.html").exists()


# ---- What the built pages show ------------------------------------------------------------------

def _pages(site: pathlib.Path) -> dict[str, str]:
  """``{path in the site: HTML}`` of every page, without its code blocks and scripts."""
  pages = {}
  for path in sorted(site.rglob("*.html")):
    text = re.sub(r"<(pre|script|style)\b.*?</\1>", "", path.read_text(), flags=re.DOTALL)
    pages[path.relative_to(site).as_posix()] = text
  return pages


def _text(fragment: str) -> str:
  """What a browser shows of an HTML fragment (tags dropped, entities decoded)."""
  return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def _faults(site: pathlib.Path, find) -> list[str]:
  """``"page: what"`` for each match of ``find(page HTML) -> iterable of str`` on every page."""
  return [f"{page}: {what!r}" for page, text in _pages(site).items() for what in find(text)]


def test_no_rest_markup_leaks_into_pages(site):
  """Docstrings are Markdown: ``x`` renders as code, except where mkdocstrings reads a
  Returns line's text before its first colon as a type and shows it verbatim."""
  faults = _faults(site, lambda text: re.findall(r"``[^`]*``", _text(text)))
  assert not faults, "\n".join(faults)


def test_no_bullet_list_runs_into_its_paragraph(site):
  """A list needs a blank line before it; without one its items join the paragraph above."""
  def run_on(text):
    for paragraph in re.findall(r"<p>(.*?)</p>", text, flags=re.DOTALL):
      if re.search(r"\n[ \t]*[-*+][ \t]+\S", paragraph):
        yield _text(paragraph)[:100]
  faults = _faults(site, run_on)
  assert not faults, "\n".join(faults)


LINK = r"!?\[[^\]\n]*\]\([^)\s]+\)"         # [text](target), ![alt](image)
REFERENCE = r"\[[^\]\n]*\]\[[\w.:-]*\]"       # [text][rnn_jax.rnn], unresolved


def test_links_render_as_links(site):
  """No Markdown link left as text, and none inside backticks (which makes it literal code)."""
  def literal(text):
    yield from re.findall(rf"<code>({LINK}|{REFERENCE})</code>", text)
    outside_code = _text(re.sub(r"<code>.*?</code>", "", text, flags=re.DOTALL))
    yield from re.findall(rf"{LINK}|{REFERENCE}", outside_code)
  faults = _faults(site, literal)
  assert not faults, "\n".join(faults)


SIGNATURE = r'<div class="doc-signature[^"]*"[^>]*>(.*?)</div>'  # mkdocstrings' signature block


def test_signatures_are_formatted_whole(site):
  """Ruff breaks each signature longer than ``line_length`` one parameter a line, so none runs
  off the right edge; the one exception is a value with nothing to break (a long URL)."""
  configured = re.search(r"^\s*line_length:\s*(\d+)", (ROOT / "mkdocs.yml").read_text(),
                         flags=re.MULTILINE)
  line_length = int(configured[1]) if configured else 60  # mkdocstrings' default.
  faults = []
  for path in sorted(site.rglob("*.html")):
    for block in re.findall(SIGNATURE, path.read_text(), flags=re.DOTALL):
      signature = _text(block)
      if re.match(r"\w+\(", signature):  # A function's or class's (not an attribute's value).
        # A default that names a private object (a sentinel) says nothing to the reader.
        faults += [f"{path.relative_to(site)}: private default {default!r} in {signature[:40]!r}"
                   for default in re.findall(r"=\s*(_\w+)", signature)]
        # A class variable is no constructor parameter (griffe needs ClassVar[...] to see it).
        if "ClassVar" in signature:
          faults.append(f"{path.relative_to(site)}: a ClassVar in {signature[:40]!r}")
      faults += [f"{path.relative_to(site)}: {len(line)} columns: {line[:80]!r}"
                 for line in signature.splitlines()
                 if len(line) > line_length and " " in line.split(" = ", 1)[-1].strip()]
  assert not faults, "\n".join(faults)
  page = (site / "api" / "rnn" / "index.html").read_text()
  rnn = _text(re.search(r'id="rnn_jax.unroll.rnn".*?' + SIGNATURE, page, flags=re.DOTALL)[1])
  assert rnn.startswith("rnn(\n") and "    backward: str | None = None,\n" in rnn, rnn


# Material gives every table header cell min-width 5rem (100 px); docs/stylesheets/extra.css
# lowers it to 2.5rem, so that 8 columns of short numbers (about 32 px of padding and 45 px of
# text each) fit the content column of a 1280-pixel-wide screen beside both sidebars (690 px).
MAX_TABLE_COLUMNS = 8


def test_tables_fit_the_page(site):
  """No table has more columns than fit the content column at the header cells' minimum width
  (wider content scrolls inside the table's own box, as Material does)."""
  assert (site / "stylesheets" / "extra.css").exists(), "docs/stylesheets/extra.css is missing"
  css = (site / "stylesheets" / "extra.css").read_text()
  rule = re.search(r"\.md-typeset table:not\(\[class\]\) th \{([^}]*)\}", css)
  assert rule and "min-width: 2.5rem" in rule[1], css
  faults = []
  for page, text in _pages(site).items():
    if "stylesheets/extra.css" not in text:
      faults.append(f"{page}: does not link stylesheets/extra.css")
    for table in re.findall(r"<table>(.*?)</table>", text, flags=re.DOTALL):
      header = re.search(r"<tr>(.*?)</tr>", table, flags=re.DOTALL)[1]
      columns = len(re.findall(r"<th\b", header))
      if columns > MAX_TABLE_COLUMNS:
        faults.append(f"{page}: a table of {columns} columns: {_text(header).split()[:6]}")
  assert not faults, "\n".join(faults)


# ---- Install lines ------------------------------------------------------------------------------

def _install_arguments(spans: list[str]) -> list[str]:
  """The packages named by each ``pip install`` command in ``spans`` (pieces of code: inline
  code and the lines of shell blocks), options dropped."""
  arguments = []
  for span in spans:
    for command in re.findall(r"pip3? install ([^\n#;&|)]*)", span):
      skip_next = False
      for token in shlex.split(command.replace("\\", " ")):
        if skip_next:
          skip_next = False
        elif token in ("-r", "-c", "-i", "-f", "--index-url", "--extra-index-url", "--find-links",
                       "--constraint", "--requirement", "--target", "-t"):
          skip_next = True
        elif not token.startswith("-"):
          arguments.append(token)
  return arguments


def _markdown_code(text: str) -> list[str]:
  """The inline code spans and the lines of the fenced blocks of a Markdown page."""
  blocks = [match["body"] for match in FENCE.finditer(text)]
  prose = FENCE.sub("", text)
  return blocks + re.findall(r"`([^`\n]+)`", prose)


def _html_code(text: str) -> list[str]:
  """What the ``<code>`` elements of an HTML page show."""
  return [_text(code) for code in re.findall(r"<code\b[^>]*>(.*?)</code>", text, flags=re.DOTALL)]


def _distribution(requirement: str) -> str:
  """The normalised distribution name of a requirement (``'Orbax_Checkpoint[x]>=1'`` ->
  ``orbax-checkpoint``)."""
  name = re.split(r"[<>=!~;\[ @]", requirement, maxsplit=1)[0]
  return re.sub(r"[-_.]+", "-", name).lower()


def _refused_install(argument: str, dependencies: set[str]) -> bool:
  """Whether an install argument is neither a path (this checkout, ``.[extra]``, an extension
  folder) nor one of this project's own dependencies (``pip install torch`` for a CPU build)."""
  return not argument.startswith((".", "/")) and _distribution(argument) not in dependencies


@pytest.fixture(scope="module")
def dependencies() -> set[str]:
  """The distributions this project depends on, extras included."""
  tomllib = pytest.importorskip("tomllib")
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  requirements = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
  return {_distribution(requirement) for requirement in requirements}


def test_install_line_scanner():
  page = ("`pip install 'rnn_jax[flax]'` (then) and `pip install -e '.[train]'`\n\n```bash\n"
          "pip install -q -e '.[test,docs]' ./rnn_jax_onednn && pytest  # all\n"
          "pip install torch --index-url https://download.pytorch.org/whl/cpu\n```\n")
  arguments = _install_arguments(_markdown_code(page))
  assert sorted(arguments) == sorted(
      ["rnn_jax[flax]", ".[train]", ".[test,docs]", "./rnn_jax_onednn", "torch"])
  assert _install_arguments(_html_code("<p><code>pip install 'rnn-jax[data]'</code> (from)</p>")) \
      == ["rnn-jax[data]"]
  assert {a for a in arguments if _refused_install(a, {"torch"})} == {"rnn_jax[flax]"}
  assert _refused_install("rnn-jax", {"torch"}) and _refused_install("rnnjax-toolkit", {"torch"})


def test_install_lines_install_this_project(site, dependencies):
  """``rnn_jax`` / ``rnn-jax`` on PyPI is someone else's project, and ours is not published:
  every install line of the README, the docs and the API pages (docstrings) installs from the
  checkout, or names one of our own dependencies."""
  code = {str(path.relative_to(ROOT)): _markdown_code(path.read_text()) for path in PAGES}
  code.update({f"site/{path.relative_to(site).as_posix()}": _html_code(path.read_text())
               for path in sorted(site.rglob("*.html"))})
  faults = [f"{where}: pip install {argument}" for where, spans in code.items()
            for argument in _install_arguments(spans) if _refused_install(argument, dependencies)]
  assert not faults, "\n".join(faults)


# ---- The README and the docs home page agree ----------------------------------------------------

def _shell_lines(text: str) -> list[str]:
  """The non-empty lines of the ```bash blocks of a Markdown page."""
  return [line.strip() for match in FENCE.finditer(text) if match["info"].strip() == "bash"
          for line in match["body"].splitlines() if line.strip()]


def test_home_page_and_readme_give_the_same_commands():
  """The install-and-train, test and docs commands are the same lines in both places, and
  both say how to view the site (served: opened as files, the search does not work)."""
  readme, home = (ROOT / "README.md").read_text(), (ROOT / "docs" / "index.md").read_text()
  commands = lambda text: [line for line in _shell_lines(text)
                           if "pip install" in line or "mkdocs" in line or "pytest" in line]
  assert commands(readme) == commands(home), (commands(readme), commands(home))
  assert any("pytest" in line for line in commands(home))
  for text in (readme, home):
    assert ".venv/bin/python -m mkdocs serve" in text
    assert "search" in text and "as files" in text


def test_linear_rnn_page_states_the_default_the_code_uses():
  """``parallel=None`` is the default: the mode measured faster per backend, not ``True``."""
  for make in (rnn_jax.mingru, rnn_jax.minlstm, rnn_jax.lru):
    assert inspect.signature(make).parameters["parallel"].default is None
  page = (ROOT / "docs" / "api" / "linear_rnn.md").read_text()
  prose = FENCE.sub("", page)
  assert not re.search(r"parallel=True`?,? (is )?the default", prose), prose[:400]
  assert "The default, `parallel=None`" in prose
  assert "sequential on CPU, parallel on GPU and TPU" in prose
