import json

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ncsn import build_score_model
from ncsn.checkpoint import (
    CheckpointError,
    atomic_save,
    export_slim,
    list_checkpoints,
    load_score_model,
    prune_checkpoints,
    safe_load,
    training_state,
)
from ncsn.config import load_config

TINY = ["model.ngf=4", "training.n_iters=3"]


def tiny_checkpoint(path, ema=True):
    config = load_config("digits", TINY + [f"training.ema={str(ema).lower()}"])
    torch.manual_seed(0)
    model = build_score_model(config.model)
    opt = torch.optim.Adam(model.parameters())
    avg = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True) if ema else None
    if avg is not None:
        avg.update_parameters(model)
        with torch.no_grad():
            model.net.end_conv.bias.add_(1.0)  # raw and EMA weights now differ
    atomic_save(training_state(3, config, model, opt, avg), path)
    return model, config


def test_atomic_save_round_trip_without_leftovers(tmp_path):
    path = tmp_path / "ck" / "checkpoint_00000003.pt"
    model, _ = tiny_checkpoint(path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    loaded, config, info = load_score_model(path, ema=False)
    assert info == {"weights": "raw", "step": 3} and config.model.ngf == 4
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    ema_model, _, ema_info = load_score_model(path)
    assert ema_info["weights"] == "ema"
    assert not torch.equal(ema_model.net.end_conv.bias, model.net.end_conv.bias)


def test_bad_files_give_one_clear_line(tmp_path):
    good = tmp_path / "good.pt"
    tiny_checkpoint(good)
    raw = good.read_bytes()
    cases = {
        "truncated.pt": (raw[: len(raw) // 2], "corrupt or truncated"),
        "random.pt": (bytes(range(256)) * 10, "not a PyTorch checkpoint|corrupt"),
        "empty.pt": (b"", "corrupt or truncated|not a PyTorch checkpoint"),
    }
    for name, (payload, message) in cases.items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(CheckpointError, match=message) as err:
            load_score_model(tmp_path / name)
        assert "\n" not in str(err.value) and name in str(err.value)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an ncsn or official NCSN checkpoint"):
        load_score_model(tmp_path / "foreign.pt")
    torch.save({"obj": torch.optim.Adam}, tmp_path / "code.pt")
    with pytest.raises(CheckpointError, match="refused"):
        safe_load(tmp_path / "code.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_score_model(tmp_path / "missing.pt")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoints"):
        load_score_model(tmp_path / "empty_dir")
    no_ema = tmp_path / "noema.pt"
    tiny_checkpoint(no_ema, ema=False)
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_score_model(no_ema, ema=True)


def test_slim_export_round_trip(tmp_path):
    model, _ = tiny_checkpoint(tmp_path / "ck.pt")
    out = export_slim(tmp_path / "ck.pt", tmp_path / "export", ema=False)
    meta = json.loads((out / "config.json").read_text())
    assert meta["weights"] == "raw" and meta["config"]["model"]["ngf"] == 4 and (out / "model.safetensors").is_file()
    for source in (out, out / "model.safetensors"):
        loaded, _, _ = load_score_model(source)
        x, y = torch.rand(2, 1, 8, 8), torch.tensor([1, 2])
        assert torch.equal(loaded.at_levels(x, y), model.eval().at_levels(x, y))
    (out / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt or truncated safetensors"):
        load_score_model(out)


def test_prune_keeps_last_and_snapshots(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for step in range(1, 11):
        (folder / f"checkpoint_{step:08d}.pt").write_bytes(b"x")
    (folder / ".checkpoint_00000011.pt.123.tmp").write_bytes(b"partial")
    prune_checkpoints(tmp_path, keep_last=2, snapshot_every=4)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 8, 9, 10]
