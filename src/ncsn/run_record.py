"""A training run's record of how it computes (``runtime.json`` in its folder: precision, channels_last, compile,
device, machine): written when a run starts, read when it resumes so it computes as before."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from . import autotune
from .io import write_json
from .runtime import RuntimeOptions, announce, resolve, resolve_with_reason

RUN_RECORD = "runtime.json"  # a training run's resolved options, in its folder


def read_run_record(path: Path) -> dict | None:
    """The options a run recorded (None when it has no record). A record that cannot be read is an error, not
    a guess: it decides how a resumed run computes."""
    if not path.exists():
        return None
    hint = "pass --precision fp32 or bf16 to resume with an explicit choice"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is unreadable ({type(err).__name__}); {hint}") from None
    if not isinstance(data, dict) or data.get("precision") not in ("fp32", "bf16"):
        raise ValueError(f"{path} records no precision (fp32 or bf16); {hint}")
    return data


def settle_run(options: RuntimeOptions, workdir, resuming: bool, model, device, shape) -> RuntimeOptions:
    """A training run's options, written to ``workdir/runtime.json`` (main process only).

    Resumed with precision "auto", the run takes the recorded precision instead of deciding again (a new trial
    could answer differently), so it repeats the uninterrupted run bit for bit; a folder without a record predates
    it and trained with the default of the time, fp32. An explicit --precision wins, and is recorded, with a
    warning when it changes the run's precision.
    """
    path = Path(workdir) / RUN_RECORD
    recorded = None
    if resuming:
        try:
            recorded = read_run_record(path)
        except ValueError:
            if options.precision == "auto":
                raise
    if resuming and options.precision == "auto":
        precision = recorded["precision"] if recorded else "fp32"
        requested = recorded.get("requested", "auto") if recorded else "auto"
        reason = (f"recorded in {path} when the run started" if recorded
                  else f"no {RUN_RECORD}: the run predates the record, when fp32 was the default")
        announce(f"precision {precision} for the resumed run: {reason}")
        resolved = resolve(replace(options, precision=precision), model, device, shape, training=True)
    else:
        if recorded and recorded["precision"] != options.precision:
            announce(f"warning: the run trained in {recorded['precision']} so far and continues in "
                     f"{options.precision}: not bit-identical to an uninterrupted run")
        resolved, reason = resolve_with_reason(options, model, device, shape, training=True)
        requested = options.precision
    record = {"precision": resolved.precision, "requested": requested, "reason": reason,
              "channels_last": bool(resolved.channels_last), "compile": resolved.compile, "device": str(device),
              "machine": autotune.machine_fingerprint()}
    write_json(path, record)
    return resolved
