"""torch.compile's caches persist under the ncsn cache folder: a second process compiling the same network loads
its graphs from disk (FX-graph cache hits) instead of compiling them again; a folder the user set wins."""

import json
import os
import subprocess
import sys

from ncsn.runtime import use_persistent_compile_cache

COMPILE_TWICE = """
import json, torch
from torch._dynamo.utils import counters
from ncsn.runtime import RuntimeOptions, prepare_model
torch.set_num_threads(1)
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(4, 1, 3, padding=1))
compiled = prepare_model(net, RuntimeOptions(compile=True, precision="fp32", channels_last=False), "cpu")
x = torch.rand(2, 1, 8, 8, requires_grad=True)
compiled(x).square().sum().backward()
print(json.dumps({"hit": counters["inductor"]["fxgraph_cache_hit"], "miss": counters["inductor"]["fxgraph_cache_miss"],
                  "grad": x.grad.sum().item()}))
"""


def compile_in_a_fresh_process(env):
    proc = subprocess.run([sys.executable, "-c", COMPILE_TWICE], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_a_second_process_loads_the_compiled_graphs_from_the_ncsn_cache(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env.update(NCSN_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    first = compile_in_a_fresh_process(env)
    assert first["hit"] == 0 and first["miss"] >= 2  # the forward and the backward graph, compiled
    assert any((tmp_path / "cache" / "inductor").rglob("*")), "nothing written under $NCSN_CACHE/inductor"
    second = compile_in_a_fresh_process(env)
    assert second["miss"] == 0 and second["hit"] == first["miss"]
    assert second["grad"] == first["grad"]


def test_a_cache_folder_the_user_set_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("NCSN_CACHE", str(tmp_path / "ncsn"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert use_persistent_compile_cache() == tmp_path / "mine"
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert use_persistent_compile_cache() == tmp_path / "ncsn" / "inductor"


def test_inductors_own_default_does_not_count_as_the_users_choice(tmp_path, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("NCSN_CACHE", str(tmp_path / "ncsn"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # as importing torch._dynamo leaves it
    assert use_persistent_compile_cache() == tmp_path / "ncsn" / "inductor"
