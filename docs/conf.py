"""Sphinx configuration for the airflow-provider-ssh-jobs documentation.

Build from the repository root (warnings are errors; -E re-reads everything, since pages
quote defaults and values from the code)::

    sphinx-build -E -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

# autodoc imports the provider, which imports Airflow. Keep Airflow's files (it creates a logs
# folder on import) out of the reader's home unless they chose an AIRFLOW_HOME themselves.
if "AIRFLOW_HOME" not in os.environ:
    _airflow_home = tempfile.mkdtemp(prefix="ssh-jobs-docs-airflow-")
    os.environ["AIRFLOW_HOME"] = _airflow_home
    atexit.register(shutil.rmtree, _airflow_home, ignore_errors=True)

try:
    import ssh_jobs_provider
except ImportError:  # a plain checkout: document the source tree
    sys.path.insert(0, str(DOCS.parent / "provider"))
    import ssh_jobs_provider

# -- Project ----------------------------------------------------------------------------------

project = "airflow-provider-ssh-jobs"
author = "The airflow-provider-ssh-jobs contributors"
copyright = author
release = ssh_jobs_provider.__version__
version = release

# -- General ----------------------------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.graphviz",
    "sphinx.ext.viewcode",
    "ssh_jobs_docs",
]
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]
root_doc = "index"
language = "en"
pygments_style = "sphinx"
pygments_dark_style = "monokai"

# -- autodoc: the API reference comes from the docstrings -------------------------------------

autoclass_content = "class"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "signature"
add_module_names = False
python_maximum_signature_line_length = 88

# -- graphviz: diagrams are rendered at build time by the local `dot` -------------------------

graphviz_output_format = "svg"
graphviz_dot_args = [
    "-Gfontname=Helvetica,Arial,sans-serif",
    "-Nfontname=Helvetica,Arial,sans-serif",
    "-Efontname=Helvetica,Arial,sans-serif",
]

# -- HTML: everything is served from the build directory, nothing from the network -------------

html_theme = "furo"
html_title = f"{project} {release}"
html_static_path: list[str] = []
html_copy_source = False
html_show_sourcelink = False
