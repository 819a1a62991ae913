"""Packaging by audience: the core needs only jax and numpy, the wheel only rnn_jax; no cycles."""

import ast
import pathlib
import re
import subprocess
import sys

import pytest
import setuptools

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMPORT_CYCLES = ROOT.parent / "shared" / "tools" / "import-cycles"

# Everything outside jax and numpy that some part of the project uses.
OPTIONAL = ("flax", "optax", "orbax", "absl", "matplotlib", "torch", "tensorflow",
            "tensorflow_datasets", "tensorboard", "PIL")
# Import name -> distribution name, where they differ.
DISTRIBUTIONS = {"orbax": "orbax-checkpoint", "absl": "absl-py", "PIL": "pillow",
                 "tensorflow_datasets": "tensorflow-datasets"}

CORE_ONLY = f"""
import sys
for name in {OPTIONAL!r}:
  sys.modules[name] = None  # `import name` now raises ImportError.

import jax, jax.numpy as jnp
import rnn_jax

H = I = 3
cells = [rnn_jax.simple_rnn(H), rnn_jax.lstm(H), rnn_jax.gru(H), rnn_jax.gru(H, reset_after=False),
         rnn_jax.mingru(H), rnn_jax.minlstm(H), rnn_jax.lru(H, H)]
layers = cells + [
    rnn_jax.stack([rnn_jax.lstm(H), rnn_jax.gru(H)], dropout=0.5),
    rnn_jax.bidirectional(rnn_jax.lstm(H), rnn_jax.gru(H)),
    rnn_jax.remat(rnn_jax.lstm(H)),
]
xs = jnp.ones((2, 4, I))
lengths = jnp.array([4, 2])
for layer in layers:
  params = layer.init(jax.random.key(0), I)
  loss = lambda params: jnp.sum(rnn_jax.rnn(layer, params, xs, lengths=lengths,
                                            dropout_rng=jax.random.key(1))[0])
  jax.grad(loss)(params)
loaded = sorted(name for name in sys.modules
                if name.split(".")[0] in {OPTIONAL!r} and sys.modules[name] is not None)
assert not loaded, loaded
assert "rnn_jax.training" not in sys.modules
print("core ok:", len(layers), "layers")
"""


def _requirement_name(requirement: str) -> str:
  return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower()


@pytest.fixture(scope="module")
def pyproject():
  tomllib = pytest.importorskip("tomllib")
  with open(ROOT / "pyproject.toml", "rb") as f:
    return tomllib.load(f)


def test_core_runs_with_only_jax_and_numpy():
  """Every cell, rnn, stack, bidirectional and remat, with the optional packages unimportable."""
  result = subprocess.run([sys.executable, "-c", CORE_ONLY], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "core ok" in result.stdout


def test_distribution_name_is_ours(pyproject):
  """``rnn_jax`` / ``rnn-jax`` on PyPI is an unrelated project (0.0.1, 0.0.2): the distribution
  is ``rnnjax-toolkit`` (free on PyPI when chosen), the import name stays ``rnn_jax``."""
  name = pyproject["project"]["name"]
  assert name == "rnnjax-toolkit"
  packages = setuptools.find_namespace_packages(
      where=str(ROOT), include=pyproject["tool"]["setuptools"]["packages"]["find"]["include"])
  assert "rnn_jax" in packages


def test_docs_extra_formats_signatures(pyproject):
  """mkdocstrings needs Black or Ruff to break API signatures over lines; without either it
  renders each on one line, cut off at the page's right edge."""
  docs = {_requirement_name(r) for r in pyproject["project"]["optional-dependencies"]["docs"]}
  assert docs & {"ruff", "black"}, docs


def test_wheel_holds_only_rnn_jax(pyproject):
  include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
  assert include == ["rnn_jax", "rnn_jax.*"]
  packages = setuptools.find_namespace_packages(where=str(ROOT), include=include)
  assert "rnn_jax" in packages and "rnn_jax.training" in packages
  # Not the oneDNN extension's source folder, a package with its own pyproject.toml.
  assert {package.split(".")[0] for package in packages} == {"rnn_jax"}


def test_dependencies_by_audience(pyproject):
  """The core depends on jax and numpy; each toolkit's module-level imports are in its extra."""
  project = pyproject["project"]
  core = {_requirement_name(r) for r in project["dependencies"]}
  assert core == {"jax", "numpy"}
  extras = {name: {_requirement_name(r) for r in requirements}
            for name, requirements in project["optional-dependencies"].items()}
  audiences = {"flax": [ROOT / "rnn_jax" / "linen.py", ROOT / "rnn_jax" / "nnx.py"],
               "train": sorted((ROOT / "rnn_jax" / "training").glob("*.py"))}
  for extra, paths in audiences.items():
    for path in paths:
      tree = ast.parse(path.read_text(), str(path))
      for node in tree.body:  # Module level only: imports inside functions are optional.
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                 else [])
        for name in names:
          top = name.split(".")[0]
          if top in OPTIONAL:
            distribution = DISTRIBUTIONS.get(top, top).lower()
            assert distribution in extras[extra], (path.name, top, extra)
            assert distribution in extras["test"], (path.name, top)


@pytest.mark.skipif(not IMPORT_CYCLES.exists(), reason=f"{IMPORT_CYCLES} not found")
def test_no_import_cycles():
  result = subprocess.run([sys.executable, str(IMPORT_CYCLES), "rnn_jax"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
  assert result.returncode == 0, result.stdout + result.stderr


def test_the_version_is_written_once_and_installed_as_written():
  import importlib.metadata  # pylint: disable=import-outside-toplevel
  import tomllib  # pylint: disable=import-outside-toplevel
  import rnn_jax  # pylint: disable=import-outside-toplevel
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  assert "version" not in project and "version" in project["dynamic"]
  assert importlib.metadata.version(project["name"]) == rnn_jax.__version__
