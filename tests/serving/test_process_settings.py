"""The serve command's process settings (``serving/allocator.py``): numpy's OpenBLAS on one thread, torch's own
thread count untouched, and job processes started from the server not inheriting the limit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CHILD = """
import json, os, sys
from e5studio.serving.allocator import one_blas_thread
one_blas_thread()
import torch
torch.set_num_threads(2)
from threadpoolctl import threadpool_info
blas = [i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"]
child = __import__("subprocess").run([sys.executable, "-c", "import numpy; from threadpoolctl import threadpool_info;"
    "print([i['num_threads'] for i in threadpool_info() if i['internal_api'] == 'openblas'])"],
    capture_output=True, text=True, check=True).stdout.strip()
print(json.dumps({"blas": blas, "torch": torch.get_num_threads(), "child": child,
                  "env": [v for v in os.environ if "NUM_THREADS" in v]}))
"""


def test_the_server_runs_numpys_blas_on_one_thread_and_leaves_torch_and_children_alone() -> None:
    pytest.importorskip("threadpoolctl")
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=True,
                         env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"}).stdout
    got = json.loads(out.strip().splitlines()[-1])
    plain = ("import numpy; from threadpoolctl import threadpool_info;"
             "print([i['num_threads'] for i in threadpool_info() if i['internal_api'] == 'openblas'])")
    default = subprocess.run([sys.executable, "-c", plain],
                             capture_output=True, text=True, timeout=120, check=True,
                             env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"}).stdout.strip()
    assert got["blas"] == [1], got  # numpy's wheels bundle OpenBLAS: limited here
    assert got["torch"] == 2, got
    assert got["env"] == [], got  # nothing set in the environment ...
    assert got["child"] == default, got  # ... so a job process gets OpenBLAS's default again
