"""The training configs, shipped with the package: ``tf-dessilbi-train --config=<name>``.

Each ``<name>.py`` here is one experiment (``get_config()`` returns its
`ml_collections.ConfigDict`; its docstring gives the command and the result
measured). The CLI takes a config by name (``--config=fmnist_dessilbi``) or
by path (``--config=path/to/my_config.py``); `names` lists the packaged ones
and `path` gives a name's file.
"""

from __future__ import annotations

import os

DIRECTORY = os.path.dirname(os.path.abspath(__file__))


def names() -> list:
    """The names of the packaged configs, sorted."""
    return sorted(f[:-3] for f in os.listdir(DIRECTORY)
                  if f.endswith(".py") and not f.startswith("_"))


def path(name: str) -> str:
    """The file of the packaged config ``name`` (``"fmnist_dessilbi"`` or ``"fmnist_dessilbi.py"``).

    Raises:
        ValueError: no packaged config has that name.
    """
    stem = name[:-3] if name.endswith(".py") else name
    if stem not in names():
        raise ValueError(
            f"No packaged config named {name!r}. Named configs: {', '.join(names())}; "
            "or give a config file's path."
        )
    return os.path.join(DIRECTORY, stem + ".py")
