"""The README's commands set up their environment through scripts/environment.sh.

Each test sources the real script in a real bash and calls one of its functions; nothing is
installed (the list of system packages here names one that is installed and one that cannot be).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENVIRONMENT = REPO / "scripts" / "environment.sh"
MISSING = "tepo-agent-no-such-package"

needs_dpkg = pytest.mark.skipif(
    shutil.which("dpkg-query") is None, reason="system packages are Debian's (dpkg)"
)


def _bash(
    script: str, *, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", script],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )


def _installed_package() -> str:
    """A Debian package that is installed wherever dpkg is: the one that owns bash."""
    owner = subprocess.run(
        ["dpkg-query", "-S", os.path.realpath(shutil.which("bash") or "/bin/bash")],
        capture_output=True,
        text=True,
    ).stdout
    return owner.split(":")[0] if owner else "bash"


@needs_dpkg
def test_missing_system_packages_lists_only_those_dpkg_lacks(tmp_path):
    installed = _installed_package()
    listing = tmp_path / "packages.txt"
    listing.write_text(
        "# comment line\n\n"
        f"{installed}   # tests/test_x.py: always there\n"
        f"{MISSING}  # tests/test_y.py: never there\n"
    )
    out = _bash(f"source {ENVIRONMENT} && tepo_missing_system_packages {listing}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [MISSING]


@needs_dpkg
def test_without_root_it_prints_the_one_install_command_and_installs_nothing():
    # The script and its list travel inline: `nobody` cannot read the checkout or pytest's tmp.
    script = (
        f"{ENVIRONMENT.read_text()}\n"
        'listing="$(mktemp)" && trap \'rm -f "$listing"\' EXIT\n'
        f'printf "bash  # always there\\n{MISSING}  # never there\\n" >"$listing"\n'
        'tepo_system_packages "$listing"\n'
    )
    if os.geteuid() == 0:
        # Drop to `nobody`, as a developer's shell would run it; the script travels inline.
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-c"]
        if shutil.which("setpriv") is None or subprocess.run([*argv, "true"]).returncode:
            pytest.skip("running as root and cannot drop privileges with setpriv")
    else:
        argv = ["bash", "-c"]
    out = subprocess.run([*argv, script], capture_output=True, text=True, cwd="/", timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines()[-1] == (
        f"sudo apt-get install -y --no-install-recommends {MISSING}"
    )
    assert "apt-get update" not in out.stderr


def test_an_empty_list_needs_nothing(tmp_path):
    listing = tmp_path / "packages.txt"
    listing.write_text("# only comments\n\n")
    out = _bash(f"source {ENVIRONMENT} && tepo_system_packages {listing}")
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")


def test_every_listed_system_package_says_which_tests_need_it():
    for line in (REPO / "scripts" / "system-packages.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"[a-z0-9][a-z0-9.+-]*\s+#\s*tests/\S+.*", line), line


def test_a_python_without_ensurepip_gets_one_line_naming_python3_venv(tmp_path):
    # Debian and Ubuntu ship ensurepip apart from python3 (package python3-venv): shadow it.
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "ensurepip.py").write_text("raise ImportError('ensurepip is not installed')\n")
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env |= {"PYTHON": sys.executable, "PYTHONPATH": str(shadow)}
    target = tmp_path / "venv"
    out = _bash(f"source {ENVIRONMENT} && tepo_use_venv {target}", env=env)
    assert out.returncode == 1
    (line,) = out.stderr.splitlines()
    assert line.startswith("tepo-agent: error:") and "apt-get install python3-venv" in line
    assert not target.exists()


def test_an_activated_venv_is_used_instead_of_creating_one(tmp_path):
    activated = tmp_path / "activated"
    (activated / "bin").mkdir(parents=True)
    (activated / "bin" / "python").symlink_to(sys.executable)
    env = dict(os.environ, VIRTUAL_ENV=str(activated))
    target = tmp_path / "venv"
    out = _bash(
        f'source {ENVIRONMENT} && tepo_use_venv {target} && echo "$VIRTUAL_ENV"'
        " && command -v python",
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(activated), str(activated / "bin" / "python")]
    assert not target.exists()
