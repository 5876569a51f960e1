"""Checkpoints a run can resume from exactly, written atomically, and the resume itself.

A checkpoint folder holds the policy as any Hugging Face tool loads it (weights or LoRA adapters, tokenizer,
value head, critic; see `export_policy`) plus `trainer_state.pt`: the trainable tensors, optimiser and LR
schedule states, every random generator's state and the data cursor (one of each per rank), the step, the
guard's counters and the byte size of each log file. The trainable tensors are stored beside the export
(full fine-tuning stores its weights twice) because one code path then restores every kind of policy (full,
LoRA, DART, 2-Agent, value head, critic) bit for bit, while the export stays a plain HF folder.

A folder is written under a hidden temporary name, its files fsynced, then renamed into place: a run killed
at any instant leaves either the previous checkpoint or the new one, never half of one. A write that fails
(a full disk) removes its partial copy and stops the run with an ArlkitError that names the folder and keeps
the previous checkpoints; a resume skips a newest checkpoint that does not load (a file truncated by a crash
of the machine, or a copy cut short) for the newest intact one, and says so.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from arlkit.errors import ArlkitError
from arlkit.models.routing import save_routed
from arlkit.train import fsdp
from arlkit.train.distributed import gather
from arlkit.train.guards import TrainState, diverged, divergence_error
from arlkit.train.setup import Setup

STATE_FILE = "trainer_state.pt"
STATE_VERSION = 2  # 2: cursor and random states per rank
_STEP_DIR = re.compile(r"step_(\d+)")


def export_policy(s: Setup, path: Path) -> None:
    """Weights (or LoRA adapters), tokenizer and critic via save_pretrained, so any HF tool can load them."""
    if s.policy.routing is not None:
        save_routed(s.policy.model, path, s.policy.routing)
    else:
        s.policy.model.save_pretrained(path)
    s.policy.tokenizer.save_pretrained(path)
    if s.policy.value_head is not None:
        s.policy.value_head.save(path)
    if s.policy.critic is not None:
        s.policy.critic.save(path / "critic")


def save_checkpoint(s: Setup, name: str, state: TrainState | None = None) -> Path:
    """Write `checkpoints/<name>` atomically: the HF export and, given the loop's `state`, everything an
    exact resume needs. An existing folder of that name is replaced."""
    final = s.run.path / "checkpoints" / name
    gathered = gathered_state(s) if state is not None else None  # collectives: every rank takes part
    if not s.dist.is_main:  # the weights are the same on every rank: rank 0 writes them
        return final
    tmp = final.parent / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        export_policy(s, tmp)
        if state is not None:
            torch.save(trainer_state(s, state, gathered), tmp / STATE_FILE)
        _fsync_tree(tmp)
    except (
        OSError,
        RuntimeError,
    ) as e:  # torch, safetensors and tokenizers each word a failed write their own way
        shutil.rmtree(tmp, ignore_errors=True)  # a partial copy would only hold on to the space that ran out
        raise write_error(final, e) from None
    _replace_dir(tmp, final)
    return final


_DISK_FULL = ("No space left", "os error 28", "unexpected pos", "iostream error", "file write failed")


def write_error(final: Path, e: BaseException) -> ArlkitError:
    """The error of a checkpoint write that failed: what filled (or what else went wrong), where, and that
    the previous checkpoints are intact."""
    ckpts = final.parent
    full = (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or any(
        m in str(e) for m in _DISK_FULL
    )
    free_mb = shutil.disk_usage(ckpts).free / 2**20
    reason = (
        f"the disk is full ({free_mb:.1f} MB free there now, after removing the partial copy)"
        if full
        else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    )
    kept = ", ".join(p.name for p in step_dirs(ckpts)) or "none yet"
    return ArlkitError(
        f"could not write checkpoint {final.name!r} to {ckpts}: {reason}. The previous checkpoints are "
        f"intact ({kept}); free space (train.keep_checkpoints bounds how many are kept) and continue with "
        "--resume"
    )


def save_state(s: Setup, state: TrainState) -> None:
    """The loop's checkpoint after step `state.step`: every `train.save_every` steps, keeping the newest
    `train.keep_checkpoints`; and, when `train.max_bad_steps` bad steps in a row trip the guard, one of the
    last good weights (bad updates were skipped), then the error that stops the run.

    Raises:
        ArlkitError: the guard tripped.
    """
    t = s.cfg.train
    tripped = diverged(state, t.max_bad_steps)
    if not tripped and not (t.save_every and state.step % t.save_every == 0):
        return
    # a resume after a trip is a deliberate restart (e.g. with a lower lr): its bad-step count starts anew
    path = save_checkpoint(s, f"step_{state.step}", replace(state, bad_steps=0) if tripped else state)
    if s.dist.is_main:
        rotate(path.parent, t.keep_checkpoints)
    if tripped:
        raise divergence_error(state, t.max_bad_steps, path)


def resume_or_start(s: Setup, console: Console, resume: bool) -> TrainState:
    """The loop's counters: restored from the newest checkpoint with `resume` (see `resume_run`), else new."""
    return resume_run(s, console) if resume else TrainState()


def rotate(checkpoints: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` step_N folders (`final` and other names stay); returns the deleted."""
    old = step_dirs(checkpoints)[:-keep]
    for p in old:
        shutil.rmtree(p)
    return old


def step_dirs(checkpoints: Path) -> list[Path]:
    """The step_N folders, oldest first."""
    found = [p for p in checkpoints.glob("step_*") if p.is_dir() and _STEP_DIR.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(p.name.removeprefix("step_")))


def gathered_state(s: Setup) -> dict[str, Any]:
    """The parts of `trainer_state` that need every rank: each rank's data cursor and random streams (rank
    order; each rank takes its own prompts and samples its own streams) and, under FSDP, the actor optimiser's
    state gathered whole, so a checkpoint does not depend on how many ranks wrote it."""
    out = {"cursor": gather([s.cursor], s.dist), "rng": gather([rng_state(s)], s.dist)}
    if s.policy.train_model is not None:
        out["actor"] = fsdp.optimiser_state(s.policy.train_model, s.opts.actor)
    return out


def trainer_state(s: Setup, state: TrainState, gathered: dict[str, Any]) -> dict[str, Any]:
    """Everything an exact resume needs (rank 0's view, plus `gathered_state`)."""
    p = s.policy
    optimisers = {k: None if v is None else v.state_dict() for k, v in vars(s.opts).items()}
    if "actor" in gathered:
        optimisers["actor"] = gathered["actor"]
    return {
        "version": STATE_VERSION,
        "loop": asdict(state),
        "cursor": gathered["cursor"],
        "trainable": {k: v.detach().cpu().clone() for k, v in _trainable(p.model).items()},
        "value_head": p.value_head.state_dict() if p.value_head is not None else None,
        "critic": p.critic.state_dict() if p.critic is not None else None,
        "optimisers": optimisers,
        "rng": gathered["rng"],
        "logs": s.run.log_sizes(),
        "config": s.cfg.model_dump(mode="json"),
    }


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {k: v for k, v in model.named_parameters() if v.requires_grad}


def sampling_rng(s: Setup) -> torch.Generator | None:
    """The rollout runner's sampling generator: the engine's own, or that of the Generator a TurnSyncRunner
    wraps (each runner seeds one from train.seed; rollout/continuous.py, rollout/generator.py)."""
    for owner in (s.generator, getattr(s.generator, "generator", None)):
        rng = getattr(owner, "rng", None)
        if isinstance(rng, torch.Generator):
            return rng
    return None


def rng_state(s: Setup) -> dict[str, Any]:
    """Every random stream a step draws from: Python's, numpy's, torch's (CPU, every CUDA device), the
    Setup's update generator (mini-batch shuffles) and the runner's sampling generator."""
    sampler = sampling_rng(s)
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "setup": s.rng.get_state(),
        "sampler": sampler.get_state() if sampler is not None else None,
    }


def set_rng_state(s: Setup, rng: dict[str, Any]) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    s.rng.set_state(rng["setup"])
    sampler = sampling_rng(s)
    if sampler is not None and rng["sampler"] is not None:
        sampler.set_state(rng["sampler"])


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under `root` to disk, so the rename that publishes it publishes data."""
    for dirpath, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`. A folder cannot replace a non-empty one in one rename, so an existing `final`
    is first renamed aside; a crash in between leaves `tmp` complete and is repaired by `clean_partial`."""
    old = final.parent / f".old-{final.name}-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def clean_partial(checkpoints: Path) -> None:
    """Remove what a killed save left behind: temporary folders, and folders renamed aside."""
    for p in checkpoints.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in checkpoints.glob(".old-*"):
        name = re.sub(r"^\.old-(.*)-\d+$", r"\1", p.name)
        if (checkpoints / name).exists():
            shutil.rmtree(p, ignore_errors=True)
        else:  # killed between the two renames: the old folder is the last complete one
            os.replace(p, checkpoints / name)


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The complete step_N folder of the highest step (`final` is an export only: it holds no state)."""
    found = complete_checkpoints(checkpoints)
    return found[-1] if found else None


def complete_checkpoints(checkpoints: Path) -> list[Path]:
    """The step_N folders that hold a trainer state, oldest first."""
    return [p for p in step_dirs(checkpoints) if (p / STATE_FILE).is_file()]


def _load(path: Path) -> dict[str, Any]:
    # our own file, holding numpy and Python RNG states besides tensors: not loadable with weights_only
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)


def newest_readable(checkpoints: Path, console: Console) -> tuple[Path, dict[str, Any]]:
    """The newest step_N checkpoint whose trainer state loads, and that state. Each newer one that does not
    load (a truncated or empty file) is renamed to `corrupt-step_N` (kept for a post-mortem, out of rotation
    and of later resumes) with a warning.

    Raises:
        ArlkitError: no checkpoint, or none that loads.
    """
    found = complete_checkpoints(checkpoints)
    if not found:
        raise ArlkitError(
            f"--resume: no complete checkpoint in {checkpoints}; set train.save_every so that runs write them"
        )
    broken = []
    for path in reversed(found):
        try:
            saved = _load(path)
            if not isinstance(saved, dict) or "loop" not in saved:
                raise ValueError("not a trainer state")
        except (
            Exception
        ) as e:  # torch.load: EOFError (empty), RuntimeError (truncated zip), UnpicklingError, …
            first = str(e).splitlines()[0] if str(e) else ""
            broken.append(f"{path.name} ({type(e).__name__}: {first[:120]})")
            aside = path.with_name(f"corrupt-{path.name}")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(path, aside)
            console.print(
                f"[yellow]warning:[/] {path / STATE_FILE} does not load ({type(e).__name__}: {first[:120]}); "
                f"moved to {aside.name}, trying the previous checkpoint"
            )
            continue
        if broken:
            console.print(f"[yellow]warning:[/] resuming from the newest intact checkpoint, {path.name}")
        return path, saved
    raise ArlkitError(
        f"--resume: no checkpoint in {checkpoints} loads: {'; '.join(broken)} (moved to corrupt-step_N); "
        "start afresh with --overwrite"
    )


def config_changes(saved: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the config fields whose values differ."""
    out = []
    for k in sorted(set(saved) | set(now)):
        a, b = saved.get(k), now.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out


def resume_run(s: Setup, console: Console) -> TrainState:
    """Restore the newest complete checkpoint of the run folder into `s` (weights, optimisers, schedules,
    random states, data cursor) and rewind the logs to it; returns the loop's counters.

    Raises:
        ArlkitError: a finished run (summary.json), no checkpoint that loads (newer ones that do not are set
            aside with a warning, see `newest_readable`), or a checkpoint of another kind of policy or critic.
    """
    ckpts = s.run.path / "checkpoints"
    summary = s.run.path / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("steps", 0) >= s.cfg.train.steps:
        raise ArlkitError(
            f"--resume: the run in {s.run.path} is finished (summary.json, {s.cfg.train.steps} steps); "
            "raise train.steps to train further"
        )
    clean_partial(ckpts)
    path, saved = newest_readable(ckpts, console)
    if saved.get("version") != STATE_VERSION:
        raise ArlkitError(
            f"--resume: {path / STATE_FILE} has format {saved.get('version')!r}, not {STATE_VERSION}"
        )
    state = TrainState(**saved["loop"])
    changed = config_changes(saved["config"], s.cfg.model_dump(mode="json"))
    if changed:
        console.print(
            f"[yellow]warning:[/] resuming with changed settings ({', '.join(changed)}): "
            "the run is no longer an exact continuation"
        )
    restore(s, saved, path)
    if s.sampler is not None:  # the bf16 rollout copy was made from the weights before the restore
        s.sampler.refresh(s.policy.model)
    s.run.rewind(saved["logs"], state.step)
    console.print(f"resumed from {path} after step {state.step}")
    return state


def restore(s: Setup, saved: dict[str, Any], path: Path) -> None:
    """Load a `trainer_state` dict into the freshly built Setup `s`."""
    saved_world = len(saved["rng"])
    if saved_world != s.dist.world_size:
        raise ArlkitError(
            f"--resume: {path} was written by {saved_world} process(es), this run has {s.dist.world_size}; "
            "each rank resumes its own prompt stream and random state, so launch as many processes"
        )
    params = _trainable(s.policy.model)
    if set(params) != set(saved["trainable"]):
        raise ArlkitError(
            f"--resume: {path} holds other trainable tensors than this config's policy; model.lora and "
            "model.routing must be those of the run that wrote it"
        )
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(saved["trainable"][k])
    if s.policy.train_model is not None:
        fsdp.copy_to_shards(s.policy.model, s.policy.train_model)
    for module, key in ((s.policy.value_head, "value_head"), (s.policy.critic, "critic")):
        if (module is None) != (saved[key] is None):
            raise ArlkitError(f"--resume: {path} was written with another critic.kind than this config's")
        if module is not None:
            module.load_state_dict(saved[key])
    for key, obj in vars(s.opts).items():
        if key == "actor" and s.policy.train_model is not None:
            fsdp.load_optimiser_state(s.policy.train_model, obj, saved["optimisers"][key])
        elif obj is not None:
            obj.load_state_dict(saved["optimisers"][key])
    s.cursor = saved["cursor"][s.dist.rank]
    set_rng_state(s, saved["rng"][s.dist.rank])
