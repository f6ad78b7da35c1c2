"""``kimi-lab bench data``: the streaming loader against the raw tar read rate, and training's appetite.

Measured in one run, on the same shards:
- raw: samples/s of plain ``tarfile`` reading every member (the ceiling for I/O);
- loader: samples/s and tokens/s of kimi_lab's training stream (decode, tokenize,
  patchify, mix, pack, batch) through its DataLoader;
- training: tokens/s that the quickstart model consumes, and the share of each
  step spent waiting for data, from a short real run (text data; a vision mix
  needs a model with a vision tower).
Targets: loader tokens/s at least 5x what training consumes; data wait < 5%.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from kimi_lab.config import compose, to_run_config, validate_run
from kimi_lab.cpu import tune_cpu_allocator
from kimi_lab.data.datamodule import KimiDataModule
from kimi_lab.data.shards import resolve_shards
from kimi_lab.metrics import DATA_WAIT_FRACTION, METRICS_FILE, TRAIN_TOKENS_PER_SEC


def raw_tar_rate(urls: list[str]) -> dict[str, float]:
    t0, samples, nbytes = time.perf_counter(), 0, 0
    for url in urls:
        keys = set()
        with tarfile.open(url) as tar:
            for member in tar:
                if member.isfile():
                    nbytes += len(tar.extractfile(member).read())
                    keys.add(member.name.split(".", 1)[0])
        samples += len(keys)
    dt = time.perf_counter() - t0
    return {"samples_per_s": samples / dt, "mb_per_s": nbytes / dt / 1e6, "samples": samples}


def loader_rate(dm: KimiDataModule, batches: int) -> dict[str, float]:
    it = iter(dm.train_dataloader())
    first = next(it)  # worker start-up is not throughput
    t0 = time.perf_counter()
    draws0 = first["meta"]["state"]["mixer"]["draws"]
    tokens = 0
    last = first
    for last in itertools.islice(it, batches):
        tokens += last["meta"]["stats"].tokens
    dt = time.perf_counter() - t0
    # documents drawn by the stream (per worker counters; with several workers an estimate)
    docs = (last["meta"]["state"]["mixer"]["draws"] - draws0) * max(1, dm.cfg.num_workers)
    return {"samples_per_s": docs / dt, "tokens_per_s": tokens / dt, "batches_per_s": batches / dt}


def training_rate(overrides: list[str], steps: int) -> dict[str, float]:
    import pandas as pd

    from kimi_lab.train import train

    with tempfile.TemporaryDirectory() as tmp:
        dcfg = compose(
            [
                *overrides,
                f"trainer.max_steps={steps}",
                "trainer.log_every_n_steps=1",
                "logger=none",
                "trainer.progress_bar=false",
                f"trainer.val_check_interval={steps}",
                "phase.schedule.warmup_steps=1",
                "data.val_batches=0",
            ]
        )
        cfg = to_run_config(dcfg)
        validate_run(cfg)
        run_dir = Path(tmp) / "run"
        train(cfg, run_dir, OmegaConf.to_container(dcfg, resolve=True))  # type: ignore[arg-type]
        m = pd.read_parquet(run_dir / METRICS_FILE)
    late = m[m.step >= 3]  # past the first steps' warm-up
    return {
        "tokens_per_s": float(statistics.median(late[late.key == TRAIN_TOKENS_PER_SEC].value)),
        "wait_fraction": float(statistics.median(late[late.key == DATA_WAIT_FRACTION].value)),
    }


def run(
    data: str = "text",
    batches: int = 100,
    train_steps: int = 20,
    workers: int | None = None,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    tune_cpu_allocator()
    overrides = ["experiment=quickstart", f"data={data}", *(extra or [])]
    if workers is not None:
        overrides.append(f"data.num_workers={workers}")
    cfg = to_run_config(compose(overrides))
    validate_run(cfg)
    dm = KimiDataModule(cfg.data, cfg.model.vocab_size, max_steps=cfg.trainer.max_steps)
    dm.prepare_data()
    dm.setup("fit")
    urls = [u for name, src in cfg.data.sources.items() for u in resolve_shards(src.path, "train", name)]
    res: dict[str, Any] = {"data": data, "num_workers": cfg.data.num_workers, "raw_tar": raw_tar_rate(urls)}
    res["loader"] = loader_rate(dm, batches)
    res["loader_vs_raw_samples"] = res["loader"]["samples_per_s"] / res["raw_tar"]["samples_per_s"]
    if dm.has_vision:
        res["training"] = "skipped: the quickstart model has no vision tower to consume this mix"
    else:
        res["training"] = training_rate(overrides, train_steps)
        res["headroom"] = res["loader"]["tokens_per_s"] / res["training"]["tokens_per_s"]
        res["targets_met"] = {
            "headroom>=5": res["headroom"] >= 5,
            "wait<5%": res["training"]["wait_fraction"] < 0.05,
        }
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="kimi-lab bench data", description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="?", default="data", choices=["data"])
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--data", default="text", help="a conf/data option: text, quickstart_mix, joint_early, ..."
    )
    p.add_argument("--batches", type=int, default=100, help="loader batches to time")
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--workers", type=int, default=None, help="override data.num_workers")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more config overrides, e.g. model=tiny",
    )
    args = p.parse_args(argv)
    res = run(args.data, args.batches, args.train_steps, args.workers, args.set)
    if args.json:
        print(json.dumps(res))
        return res
    raw, ld = res["raw_tar"], res["loader"]
    print(f"data={res['data']} workers={res['num_workers']}")
    print(f"  raw tar read     {raw['samples_per_s']:>10,.0f} samples/s  ({raw['mb_per_s']:.0f} MB/s)")
    print(
        f"  loader           {ld['samples_per_s']:>10,.0f} samples/s  {ld['tokens_per_s']:>12,.0f} tokens/s"
        f"  ({res['loader_vs_raw_samples']:.2f}x raw)"
    )
    if isinstance(res["training"], dict):
        tr = res["training"]
        print(
            f"  training         {tr['tokens_per_s']:>35,.0f} tokens/s  (loader headroom {res['headroom']:.1f}x, target >= 5x)"
        )
        print(f"  data wait        {100 * tr['wait_fraction']:.1f}% of each step (target < 5%)")
    else:
        print(f"  training         {res['training']}")
    return res


if __name__ == "__main__":
    main()
