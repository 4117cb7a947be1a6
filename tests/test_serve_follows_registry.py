"""`tepo-agent serve --db` hot-swaps each newly live registry version between requests."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from tepo_agent.model.io import load_causal_lm
from tepo_agent.net import free_port
from tepo_agent.policy.registry import PolicyRegistry


def _complete(url: str) -> dict:
    body = {
        "model": "m",
        "prompt": [1, 2, 3, 4],
        "max_tokens": 2,
        "temperature": 0,
        "logprobs": 0,
        "return_weight_versions": True,
    }
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    response.raise_for_status()
    choice = response.json()["choices"][0]
    return {"logprobs": choice["logprobs"]["token_logprobs"], "versions": choice["weight_versions"]}


@pytest.mark.slow
def test_serve_with_db_swaps_in_a_newly_live_version(default_model_dir: Path, tmp_path: Path):
    db = tmp_path / "t.db"
    registry = PolicyRegistry(db)
    registry.ensure_base(str(default_model_dir))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tepo_agent", "serve", "--model", str(default_model_dir),
         "--served-model-name", "m", "--port", str(port), "--db", str(db), "--poll-s", "0.2",
         "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
        before = _complete(url)

        # A trainer publishes: new weights in a new directory, registered, then promoted.
        model = load_causal_lm(default_model_dir, device="cpu", dtype="float32")
        with torch.no_grad():
            model.model.norm.weight.mul_(1.5)
        new_dir = tmp_path / "v1"
        model.save_pretrained(new_dir)
        version = registry.register(str(new_dir), kind="full", parent=0)
        registry.promote(version)

        deadline = time.monotonic() + 60
        after = _complete(url)
        while str(version) not in str(after["versions"]):
            assert time.monotonic() < deadline, f"still serving {after['versions']}"
            time.sleep(0.2)
            after = _complete(url)
        assert after["logprobs"] != pytest.approx(before["logprobs"], abs=1e-4)
    finally:
        proc.terminate()
        proc.wait(30)
        registry.close()
