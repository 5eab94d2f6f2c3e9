"""Seeding asks torch for deterministic kernels without paying for torch._inductor's import."""

import os
import subprocess
import sys

CHECK = """
import os, sys
from modelfoundry.train.runtime import seed_everything
flags = seed_everything(3, True)
assert "torch._inductor" not in sys.modules, "seeding imported torch._inductor"
import torch
assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
assert flags["deterministic_algorithms"] is True and flags["cudnn_deterministic"] is True
import torch._inductor.config as inductor
assert inductor.deterministic is True, "a later torch.compile would not be told to be deterministic"
seed_everything(3, True)  # once inductor is loaded, its config is set directly
assert inductor.deterministic is True
print("ok")
"""


def test_seeding_is_deterministic_without_importing_inductor():
    env_free = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_DETERMINISTIC"}
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env_free, timeout=120,
                          check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_without_determinism_the_flags_stay_off():
    code = ("from modelfoundry.train.runtime import seed_everything; import torch; f = seed_everything(1, False);"
            "print(f['deterministic_algorithms'], torch.are_deterministic_algorithms_enabled())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and done.stdout.split() == ["False", "False"], done.stderr[-2000:]
