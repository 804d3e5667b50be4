"""Importing resnetbk before torch sets OMP_WAIT_POLICY=PASSIVE, unless the user chose a policy
(benches/omp_wait_policy.py measures why)."""

import os
import subprocess
import sys

CODE = "import os, resnetbk, torch; print(os.environ.get('OMP_WAIT_POLICY'))"


def _policy(code: str, **env) -> str:
    environment = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    environment.update(env)
    out = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_passive_by_default_and_the_users_choice_wins():
    assert _policy(CODE) == "PASSIVE"
    assert _policy(CODE, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"
    # torch already loaded: too late for libgomp to read it, so nothing is set.
    assert _policy("import os, torch, resnetbk; print(os.environ.get('OMP_WAIT_POLICY'))") == "None"
