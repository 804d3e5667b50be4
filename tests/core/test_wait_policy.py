"""Importing resnetbk before torch sets libgomp's spin count (GOMP_SPINCOUNT=3000), unless the user
chose it or a wait policy (benches/omp_wait_policy.py measures why)."""

import os
import subprocess
import sys

CODE = "import os, resnetbk, torch; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"


def _settings(code: str, **env) -> str:
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    environment.update(env)
    out = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_a_short_spin_by_default_and_the_users_choice_wins():
    assert _settings(CODE) == "3000 None"
    assert _settings(CODE, OMP_WAIT_POLICY="PASSIVE") == "None PASSIVE"
    assert _settings(CODE, GOMP_SPINCOUNT="100") == "100 None"
    # torch already loaded: too late for libgomp to read it, so nothing is set.
    assert _settings(CODE.replace("resnetbk, torch", "torch, resnetbk")) == "None None"
