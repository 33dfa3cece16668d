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


FREEZE = """
import gc, json
from e5studio.serving import allocator
allocator.freeze_loaded_objects()
before = gc.get_freeze_count()  # a process that is not a server keeps the usual collector
allocator.freeze_after_loads()
class Node:
    pass
a, b = Node(), Node()
a.other, b.other = b, a  # a cycle, alive when the model "loads"
allocator.freeze_loaded_objects()
frozen = gc.get_freeze_count()
import weakref
gone = weakref.ref(a)
del a, b  # the model is unloaded: its cycle is garbage
gc.collect()
hidden = gone() is not None  # frozen: a full collection does not walk it
allocator.unfreeze_objects()
allocator.freeze_loaded_objects()
print(json.dumps({"before": before, "frozen": frozen, "hidden": hidden, "freed": gone() is None,
                  "refrozen": gc.get_freeze_count()}))
"""


def test_a_server_freezes_loaded_objects_and_frees_an_unloaded_models_cycles() -> None:
    out = subprocess.run([sys.executable, "-c", FREEZE], capture_output=True, text=True, timeout=120, check=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert got["before"] == 0, got
    assert got["frozen"] > 1000, got  # the interpreter's and the modules' objects: out of full collections
    assert got["hidden"], got
    assert got["freed"], got  # unfreeze + collect frees what was unloaded
    assert got["refrozen"] > 1000, got
