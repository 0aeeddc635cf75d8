"""`ssmpose train`: the training loop on a config file (configs/*.toml); the same command runs under torchrun."""
from __future__ import annotations

import json

import click


@click.command("train")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--work-dir", default=None, type=click.Path(file_okay=False),
              help="Logs and checkpoints (default: outputs/train/<config name>).")
@click.option("--data-root", default=None, type=click.Path(file_okay=False),
              help="Dataset folder the config's data paths are relative to (default: the config's data.root).")
@click.option("--resume", "resume", is_flag=False, flag_value="__last__", default=None,
              help="Continue from a training checkpoint; without a value, WORK_DIR/last.pt.")
@click.option("--max-iters", type=click.IntRange(min=1), default=None, help="Stop after this many iterations.")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--set", "overrides", multiple=True, metavar="TABLE.KEY=VALUE",
              help="Override a config value (TOML syntax), e.g. --set train.lr=1e-3; repeatable.")
def train_command(config_path, work_dir, data_root, resume, max_iters, device, overrides):
    """Train the model of CONFIG. Under `torchrun --nproc-per-node N -m ssmpose.cli.main train ...` each process
    takes one GPU (NCCL) or CPU share (gloo); rank 0 logs and writes the checkpoints."""
    from pathlib import Path

    from ..training.config import load_config
    from ..training.trainer import run_training
    config = load_config(config_path, overrides)
    work_dir = Path(work_dir or Path("outputs/train") / Path(config_path).stem)
    if resume == "__last__":
        resume = work_dir / "last.pt"
    summary = run_training(config, work_dir, data_root=data_root, resume=resume, max_iters=max_iters, device=device)
    click.echo(json.dumps(summary))
