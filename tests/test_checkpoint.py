import json

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ncsn import build_score_model
from ncsn.checkpoint import (
    CheckpointError,
    atomic_save,
    list_checkpoints,
    list_snapshots,
    prune_checkpoints,
    safe_load,
    snapshot_path,
    snapshot_state,
    sweep_checkpoints,
    training_state,
)
from ncsn.config import load_config
from ncsn.export import export_slim
from ncsn.model_loading import load_score_model

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
    with pytest.raises(CheckpointError, match="refused: it holds code.*torch.optim.adam.Adam"):
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


class RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_a_pickle_with_code_is_refused_as_code_and_never_runs(tmp_path, writer):
    import pickle

    marker, path = tmp_path / "ran", tmp_path / "evil.pt"
    payload = {"model": {"w": torch.zeros(2)}, "x": RunsCode(marker)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises(CheckpointError) as err:
        load_score_model(path)
    message = str(err.value)
    assert "holds code" in message and "system" in message and "corrupt" not in message and "\n" not in message
    assert not marker.exists()


def test_refusal_is_recognised_whatever_torch_calls_it(tmp_path, monkeypatch):
    """The refusal is read from the file's own pickle, not from torch's wording (which changed in torch 2.14)."""
    import pickle

    torch.save({"obj": torch.optim.Adam}, tmp_path / "code.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "code.pt").read_bytes()[:300])

    def reworded(*args, **kwargs):
        raise pickle.UnpicklingError("Weights only load failed. In a future torch this is worded differently.")

    monkeypatch.setattr(torch, "load", reworded)
    with pytest.raises(CheckpointError, match="holds code.*torch.optim.adam.Adam"):
        safe_load(tmp_path / "code.pt")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        safe_load(tmp_path / "cut.pt")


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
    (out / "config.json").write_bytes(bytes(range(256)))  # binary: not even UTF-8
    with pytest.raises(CheckpointError, match=r"config.json: not an ncsn export config") as err:
        load_score_model(out)
    assert str(out / "config.json") in str(err.value) and "\n" not in str(err.value)


def test_prune_keeps_the_last_full_checkpoints_and_slims_snapshot_steps(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for step in range(1, 11):
        (folder / f"checkpoint_{step:08d}.pt").write_bytes(b"x")
    tiny_checkpoint(folder / "checkpoint_00000008.pt")  # a snapshot step kept in full by earlier versions
    expected, _, _ = load_score_model(folder / "checkpoint_00000008.pt")
    (folder / "snapshot_00000004.pt").write_bytes(b"made when step 4 was saved")
    (folder / ".checkpoint_00000011.pt.123.tmp").write_bytes(b"partial")
    prune_checkpoints(tmp_path, keep_last=2, snapshot_every=4)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [9, 10]
    assert [s for s, _ in list_snapshots(tmp_path)] == [4, 8]
    assert (folder / "snapshot_00000004.pt").read_bytes() == b"made when step 4 was saved"  # not rewritten
    slim, _, info = load_score_model(folder / "snapshot_00000008.pt")
    assert info == {"weights": "ema", "step": 3}
    assert all(torch.equal(a, b) for a, b in zip(slim.state_dict().values(), expected.state_dict().values()))
    assert (folder / ".checkpoint_00000011.pt.123.tmp").is_file()  # temp files are the run folder's business


def test_slim_snapshot_holds_the_sampling_weights_in_a_quarter_of_the_bytes(tmp_path):
    config = load_config("digits", TINY + ["training.ema=true"])
    torch.manual_seed(0)
    model = build_score_model(config.model)
    opt = torch.optim.Adam(model.parameters())
    model.at_levels(torch.rand(2, 1, 8, 8), torch.tensor([0, 1])).sum().backward()
    opt.step()  # Adam now holds its two moments
    avg = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    avg.update_parameters(model)
    with torch.no_grad():
        model.net.end_conv.bias.add_(1.0)
    full = atomic_save(training_state(3, config, model, opt, avg), tmp_path / "checkpoints" / "checkpoint_00000003.pt")
    slim = atomic_save(snapshot_state(3, config, model, avg), snapshot_path(tmp_path, 3))
    assert slim.stat().st_size < 0.3 * full.stat().st_size
    a, _, info = load_score_model(slim)
    b, _, _ = load_score_model(full)  # EMA weights by default
    assert info == {"weights": "ema", "step": 3}
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(CheckpointError, match="only the ema weights.*--ema or a full checkpoint"):
        load_score_model(slim, ema=False)
    assert sweep_checkpoints(tmp_path) == [(3, slim)]  # the slim file stands for its step


def run_folder_with_steps(run, steps):
    """A run folder with full checkpoints at ``steps``; step k's raw end_conv bias is filled with k."""
    config = load_config("digits", TINY + ["training.ema=false"])
    for step in steps:
        torch.manual_seed(0)
        model = build_score_model(config.model)
        with torch.no_grad():
            model.net.end_conv.bias.fill_(step)
        atomic_save(training_state(step, config, model, torch.optim.Adam(model.parameters())),
                    run / "checkpoints" / f"checkpoint_{step:08d}.pt")
    return run


def bias(model):
    return float(model.net.end_conv.bias[0].detach())


def test_a_run_folder_uses_its_newest_weights_export_or_checkpoint_and_says_which(tmp_path, caplog):
    import os

    run = run_folder_with_steps(tmp_path / "run", [5, 10])
    export_slim(run / "checkpoints" / "checkpoint_00000005.pt", run)  # `ncsn export --out RUN` of an older step
    with caplog.at_level("WARNING", logger="ncsn.model_loading"):
        model, _, info = load_score_model(run)
    assert info["step"] == 10 and bias(model) == 10.0  # not the stale export
    assert caplog.messages == [f"{run}: using checkpoints/checkpoint_00000010.pt: checkpoints/checkpoint_00000010.pt "
                               "(step 10) is newer than model.safetensors (exported at step 5)"]

    export_slim(run / "checkpoints" / "checkpoint_00000010.pt", run)  # an export of the latest step wins the tie
    caplog.clear()
    with caplog.at_level("WARNING", logger="ncsn.model_loading"):
        model, _, info = load_score_model(run)
    assert info["step"] == 10 and bias(model) == 10.0 and "using model.safetensors" in caplog.messages[0]
    export_slim(run / "checkpoints" / "checkpoint_00000005.pt", run)
    meta = json.loads((run / "config.json").read_text())
    meta["step"] = None  # an export that records no step (official weights): the modification times decide
    (run / "config.json").write_text(json.dumps(meta))
    newest = run / "checkpoints" / "checkpoint_00000010.pt"
    os.utime(run / "model.safetensors", (1e9, 1e9))
    assert bias(load_score_model(run)[0]) == 10.0
    os.utime(newest, (1e8, 1e8))
    assert bias(load_score_model(run)[0]) == 5.0
    assert len(list_checkpoints(run)) == 2 and load_score_model(tmp_path / "run" / "checkpoints" / newest.name)[2]["step"] == 10


def test_sample_says_which_weights_of_a_run_folder_it_used(tmp_path, monkeypatch):
    """Without logging set up (as in a user's shell, unlike under pytest) the choice is one line on stderr."""
    import logging

    from .conftest import run as cli

    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # Python's last-resort handler then prints it
    run = run_folder_with_steps(tmp_path / "run", [5, 10])
    export_slim(run / "checkpoints" / "checkpoint_00000005.pt", run)
    result = cli("sample", "--workdir", run, "--device", "cpu", "--n", 1, "--steps-each", 1, "--out", tmp_path / "s")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s" / "sample_config.json").read_text())["step"] == 10
    said = [line for line in result.stderr.splitlines() if "model.safetensors" in line]
    assert said == [f"{run}: using checkpoints/checkpoint_00000010.pt: checkpoints/checkpoint_00000010.pt (step 10) "
                    "is newer than model.safetensors (exported at step 5)"]


def test_a_model_of_a_folder_dataset_without_its_root_exports_and_samples_but_reading_images_needs_the_root(tmp_path):
    """An official file loaded with --dataset folder has no data.root: its export must load again (sampling reads
    no images), while anything that reads images still gets the one line naming data.root."""
    from ncsn.config import ConfigError, from_dict, to_dict
    from ncsn.data import DatasetNotFoundError, load_split

    config = load_config("folder", ["data.root=x", "data.image_size=8", "model.ngf=4", "model.in_channels=3"])
    values = to_dict(config)
    values["data"]["root"] = None
    with pytest.raises(ConfigError, match="config key 'data.root'"):
        from_dict(values)  # a training run still needs it at once
    rootless = from_dict(values, data_root_needed=False)
    torch.manual_seed(0)
    model = build_score_model(rootless.model)
    opt = torch.optim.Adam(model.parameters())
    atomic_save(training_state(1, rootless, model, opt), tmp_path / "ck.pt")
    out = export_slim(tmp_path / "ck.pt", tmp_path / "export", ema=False)
    loaded, loaded_config, _ = load_score_model(out)
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([1, 2])
    assert loaded_config.data.root is None
    assert torch.equal(loaded.at_levels(x, y), model.eval().at_levels(x, y))
    with pytest.raises(DatasetNotFoundError, match="^config key 'data.root': the folder dataset needs data.root=DIR"):
        load_split(loaded_config.data, "train")
