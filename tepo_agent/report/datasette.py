"""Open a store in Datasette: the metadata (table and column descriptions, canned queries) and
the plugin that shows token arrays decoded, as ``tepo-agent trajectories browse`` uses them.

    pip install 'tepo-agent[datasette]'
    tepo-agent trajectories browse --db tepo-agent.db

or by hand: ``datasette tepo-agent.db --metadata datasette-metadata.json --plugins-dir DIR``
with the files from :func:`metadata_path` (its database key is ``tepo-agent``: rename it to your
file's stem, as :func:`metadata_for` does) and :func:`plugins_dir`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from tepo_agent.errors import ConfigError


def metadata_path() -> Path:
    """The packaged metadata file (database key ``tepo-agent``)."""
    assets = resources.files("tepo_agent.report").joinpath("assets")
    return Path(str(assets.joinpath("datasette-metadata.json")))


def plugins_dir() -> Path:
    """The directory holding the token-array plugin."""
    return Path(str(resources.files("tepo_agent.report").joinpath("assets/datasette_plugins")))


def metadata_for(db: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata with its database key set to ``db``'s name as Datasette shows it (the stem)."""
    data = json.loads(metadata_path().read_text("utf-8"))
    data["databases"] = {Path(db).stem: data["databases"]["tepo-agent"]}
    return data


def datasette_command(
    db: str | os.PathLike[str], metadata_file: Path, *, host: str, port: int, open_browser: bool
) -> list[str]:
    """The Datasette command line for ``db`` (raises ConfigError when Datasette is missing)."""
    if importlib.util.find_spec("datasette") is None:
        raise ConfigError(
            "Datasette is not installed; install the optional extra: "
            "pip install 'tepo-agent[datasette]'"
        )
    if not Path(db).is_file():
        raise ConfigError(f"no trajectory database at {db}; pass the right --db")
    cmd = [sys.executable, "-m", "datasette", "serve", str(db), "--metadata", str(metadata_file),
           "--plugins-dir", str(plugins_dir()), "--host", host, "--port", str(port)]  # fmt: skip
    return [*cmd, "--open"] if open_browser else cmd
