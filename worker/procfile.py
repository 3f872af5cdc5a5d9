"""The process types of the ``Procfile``, read from it for ``casecredits dev``."""

from __future__ import annotations

from pathlib import Path

#: where the Procfile sits: the root of a checkout
ROOT = Path(__file__).resolve().parent.parent


def read(path: Path | None = None) -> dict[str, str]:
    """Process type -> shell command, in the file's order.

    :raises FileNotFoundError: when there is no Procfile (an installed wheel
        without a checkout).
    """
    path = path or ROOT / "Procfile"
    processes: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, command = line.partition(":")
        processes[name.strip()] = command.strip()
    return processes
