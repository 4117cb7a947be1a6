"""The public API: every exported name resolves, and importing the package stays light."""

from __future__ import annotations

import subprocess
import sys

import tepo_agent


def test_every_exported_name_resolves():
    for name in tepo_agent.__all__:
        assert getattr(tepo_agent, name) is not None, name


def test_export_list_is_complete():
    public = {
        name
        for name in dir(tepo_agent)
        if not name.startswith("_") and name[0].isupper() and name not in {"TYPE_CHECKING", "Any"}
    }
    assert public <= set(tepo_agent.__all__)
    assert len(set(tepo_agent.__all__)) == len(tepo_agent.__all__)


def test_unknown_names_raise_attribute_error():
    try:
        tepo_agent.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_importing_the_package_loads_neither_torch_nor_the_trainer():
    code = (
        "import sys, tepo_agent; "
        "print(sorted(m for m in ('torch', 'transformers', 'langgraph', 'tepo_agent.trainer') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_serving_modules_never_import_the_trainer():
    code = (
        "import sys, tepo_agent.agent.graph, tepo_agent.server.app, tepo_agent.cli.serve; "
        "print([m for m in sys.modules if m.startswith('tepo_agent.trainer')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
