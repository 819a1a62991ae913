"""MkDocs hook: serves the figures that our scripts write under ``experiments/results/``.

Every ``*.png`` under ``experiments/results/`` becomes the site file ``results/<same path>``
(a page in ``docs/guides/`` links it as ``../results/hopfield/capacity.png``), so the guides
show the PNGs the experiment scripts wrote, with no copies in ``docs/``. Regenerate a figure
with the command its guide gives (it writes into ``experiments/results/``) and rebuild.
"""

from __future__ import annotations

import pathlib

from mkdocs.structure.files import File

RESULTS = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "results"


def on_files(files, config, **kwargs):
  for png in sorted(RESULTS.rglob("*.png")):
    uri = "results/" + png.relative_to(RESULTS).as_posix()
    files.append(File.generated(config, uri, abs_src_path=str(png)))
  return files
