"""``sqlite_utils``, imported without its optional pandas and numpy support.

sqlite-utils imports pandas (with pyarrow) and numpy, when installed, only to map their scalar
types to column types when it creates a table from values; tepo-agent creates its tables with
SQL (``store.schema``) and inserts plain Python values, and those imports cost about a second,
which every store-only command (``tepo-agent feedback``) paid. Each of them that is not loaded
yet is hidden during this one import; a process that loaded it first gets sqlite-utils' full
behaviour.
"""

from __future__ import annotations

import sys

_OPTIONAL = ("pandas", "numpy")

if "sqlite_utils" in sys.modules:
    import sqlite_utils
else:
    hidden = [name for name in _OPTIONAL if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` fail
    try:
        import sqlite_utils
    finally:
        for name in hidden:
            del sys.modules[name]

__all__ = ["sqlite_utils"]
