"""Model inputs read from ``.npy`` / ``.npz`` files and outputs written to an ``.npz`` file: the
``--input`` / ``--output`` of ``edgert run`` and ``edgert profile``, on the full install and in
a board bundle (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgert.errors import InputError
from edgert.fileio import atomic_path


def load_inputs(specs: Sequence[str]) -> dict[str, np.ndarray]:
    """``NAME=file.npy`` or one ``.npz`` holding every input by name -> feed dict.

    Raises:
        InputError: a missing file, not a .npy/.npz file, a .npy without a name.
    """
    feed: dict[str, np.ndarray] = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep:
            file, name = spec, ""
        path = Path(file)
        if not path.is_file():
            raise InputError(f"--input {spec}: no such file {file}")
        try:
            loaded = np.load(path, allow_pickle=False)
        except Exception as e:
            raise InputError(f"--input {spec}: not a .npy/.npz file ({e})") from None
        if isinstance(loaded, np.lib.npyio.NpzFile):
            if name:
                raise InputError(f"--input {spec}: give a .npz file alone, without NAME=")
            feed.update({k: loaded[k] for k in loaded.files})
        elif not name:
            raise InputError(f"--input {spec}: a .npy file needs a name: --input NAME={file}")
        else:
            feed[name] = loaded
    return feed


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to an .npz file atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
