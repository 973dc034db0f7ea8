"""Runtime-only bundles for boards (``edgert bundle``): the artifacts, edgert's runtime
modules, TVM's runtime files for the board's architecture and a board CLI, without the
compiler. See docs/deploy.md.

    from edgert.bundle import make_bundle
    report = make_bundle(["digits.edgert"], "deploy/", target="rpi5")
    print("\\n".join(report.lines()))

Layout: :mod:`.build` (the bundle itself), :mod:`.contents` (which edgert modules go in),
:mod:`.runtime_files` (TVM's runtime files, fetched from the wheels and cached),
``board_main.py`` (the bundle's ``edgert/__main__.py``).
"""

from __future__ import annotations

from edgert.bundle.build import BundleReport, check_artifact_target, make_bundle

__all__ = ["make_bundle", "BundleReport", "check_artifact_target"]
