"""Kill-and-resume harness: run a training recipe as a real subprocess, SIGKILL it, resume, compare.

As a script, this file runs one recipe in its own process, optionally dying by SIGKILL before the
N-th file write of ``save_checkpoint`` (a kill inside a save, placed deterministically). Imported
(the ``kill_resume`` fixture), it gives the parent side: :func:`run_until_complete` starts the
script, kills it after a delay or lets it kill itself, restarts it until it exits 0, and
:func:`checkpoint_differences` compares the last checkpoints of two run folders tensor by tensor.

    python kill_resume_driver.py --entry moonlit.top.prune:run_prune --app top/prune -o a=1 -o b=2
    python kill_resume_driver.py --entry classifier --out DIR --data DIR     # the common recipe
    ... --kill-before-write N   # SIGKILL before the N-th (1-based) file write of this process's saves

Only the entry's module path is named here (``--entry``), so the driver imports no paper itself.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


def _die_before_write(n: int) -> None:
    """Patch the checkpoint writers so that the process SIGKILLs itself before its ``n``-th write."""
    from moonlit.common.train import checkpoint

    count = {"writes": 0}

    def counted(writer):
        def write(*args, **kwargs):
            count["writes"] += 1
            if count["writes"] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return writer(*args, **kwargs)
        return write

    checkpoint._write_tensors = counted(checkpoint._write_tensors)
    checkpoint._write_json = counted(checkpoint._write_json)


def run_classifier(out: Path, data: Path, epochs: int, num_workers: int) -> None:
    """The common recipe: ``train_classifier`` on an image folder with augmentation and the default loader."""
    import torch
    from torch import nn

    from moonlit.common.data.imagenet import build_imagenet_datasets, build_loader
    from moonlit.common.train.classifier import train_classifier
    from moonlit.common.train.dist import init_distributed
    from moonlit.common.train.seed import seed_everything

    ctx = init_distributed("cpu")
    seed_everything(0)
    datasets = build_imagenet_datasets(data, img_size=24, train_aug={"scale": (0.5, 1.0), "hflip": 0.5})
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    train_loader = build_loader(datasets["train"], 8, shuffle=True, seed=0, drop_last=True, num_workers=num_workers)
    val_loader = build_loader(datasets["val"], 8, shuffle=False, num_workers=num_workers)
    train_classifier(model, train_loader, val_loader, ctx=ctx, epochs=epochs, checkpoint_dir=out / "checkpoints",
                     make_optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2), warmup_steps=1)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entry", required=True, help="module:function taking a composed config, or 'classifier'")
    parser.add_argument("--app", help="config tree/name for compose_config, e.g. top/prune")
    parser.add_argument("-o", "--override", action="append", default=[])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--kill-before-write", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    if args.kill_before_write:
        _die_before_write(args.kill_before_write)
    if args.entry == "classifier":
        run_classifier(args.out, args.data, args.epochs, args.num_workers)
        return
    from moonlit.common.config import compose_config

    module, function = args.entry.split(":")
    tree, name = args.app.split("/")
    getattr(importlib.import_module(module), function)(compose_config(tree, name, args.override))


# ---- the parent side --------------------------------------------------------------------------


@dataclass(frozen=True)
class Kill:
    """One interrupted start: SIGKILL after ``after_s`` seconds, or before the ``before_write``-th save write."""

    after_s: float | None = None
    before_write: int = 0


def _start(args: list[str], log: Path, kill: Kill | None, timeout_s: float) -> int:
    argv = [sys.executable, str(Path(__file__).resolve()), *args]
    if kill is not None and kill.before_write:
        argv += ["--kill-before-write", str(kill.before_write)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1",
           "HYDRA_FULL_ERROR": "1"}
    with open(log, "ab") as sink:
        sink.write(f"\n$ {' '.join(argv)}\n".encode())
        sink.flush()
        # A session of its own: the data-loader workers are killed with the process group.
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            limit = timeout_s if kill is None or kill.after_s is None else kill.after_s
            try:
                return proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                if kill is None or kill.after_s is None:
                    raise
                os.killpg(proc.pid, signal.SIGKILL)
                return proc.wait()
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # leftover workers of a killed run
            except ProcessLookupError:
                pass


def run_until_complete(args: list[str], log: Path, kills: list[Kill] = (), timeout_s: float = 600) -> dict:
    """Start the driver once per kill (each must die or finish), then until it exits 0; the timings."""
    outcomes, started = [], time.monotonic()
    for kill in kills:
        code = _start(args, log, kill, timeout_s)
        if code not in (0, -signal.SIGKILL):
            raise AssertionError(f"driver exited {code} under {kill}; log:\n{log.read_text()[-4000:]}")
        outcomes.append(code)
        if code == 0:
            return {"outcomes": outcomes, "seconds": time.monotonic() - started}
    code = _start(args, log, None, timeout_s)
    if code != 0:
        raise AssertionError(f"driver exited {code}; log:\n{log.read_text()[-4000:]}")
    return {"outcomes": [*outcomes, code], "seconds": time.monotonic() - started}


def checkpoint_differences(run_a: Path, run_b: Path) -> dict[str, float]:
    """Max |a - b| of every tensor of every safetensors file of the two latest checkpoints (inf if absent)."""
    import torch
    from safetensors.torch import load_file

    from moonlit.common.train.checkpoint import latest_checkpoint

    found = [latest_checkpoint(run_a), latest_checkpoint(run_b)]
    if None in found:
        raise AssertionError(f"no checkpoint in {run_a if found[0] is None else run_b}")
    a, b = found
    if a.name != b.name:
        return {"step": float("inf")}
    diffs: dict[str, float] = {}
    names = sorted({p.name for p in a.glob("*.safetensors")} | {p.name for p in b.glob("*.safetensors")})
    for name in names:
        if not (a / name).is_file() or not (b / name).is_file():
            diffs[name] = float("inf")
            continue
        left, right = load_file(str(a / name)), load_file(str(b / name))
        for key in sorted(set(left) | set(right)):
            if key not in left or key not in right or left[key].shape != right[key].shape:
                diffs[f"{name}:{key}"] = float("inf")
            elif left[key].numel():
                diffs[f"{name}:{key}"] = float((left[key].double() - right[key].double()).abs().max())
            else:
                diffs[f"{name}:{key}"] = 0.0
    return diffs


if __name__ == "__main__":
    main(sys.argv[1:])


def assert_resumes_bit_for_bit(args_of: Callable[[Path], list[str]], tmp_path: Path, kills: Sequence[Kill],
                               required: Iterable[str] = ("model.safetensors", "optimizer.safetensors"),
                               checkpoint_dirs: Sequence[str] = ("checkpoints",)) -> tuple[Path, Path]:
    """Run ``args_of(folder)`` straight through and with ``kills``; every tensor of the last checkpoint
    in each of ``checkpoint_dirs`` must be equal (max |a - b| = 0.0). Returns the two run folders."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_until_complete(args_of(straight), tmp_path / "straight.log")
    run = run_until_complete(args_of(killed), tmp_path / "killed.log", list(kills))
    assert run["outcomes"][0] == -signal.SIGKILL, run  # the first start was killed
    for folder in checkpoint_dirs:
        diffs = checkpoint_differences(straight / folder, killed / folder)
        assert {name.split(":")[0] for name in diffs} >= set(required), (folder, sorted(diffs)[:5])
        assert max(diffs.values()) == 0.0, (folder, {k: v for k, v in diffs.items() if v})
    return straight, killed
