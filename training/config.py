"""Training configs: plain TOML files (configs/*.toml) with [model], [data], [train], [eval] and [checkpoint]
tables, defaults for every key left out, and `--set table.key=value` overrides (values in TOML syntax)."""
from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Sequence

DEFAULTS = {
    "model": {"name": "hrvmamba_tiny", "input_size": [256, 192], "options": {}, "encoder_weights": ""},
    "data": {"root": ".", "train_ann": "", "train_images": "", "val_ann": "", "val_images": "", "val_boxes": "",
             "workers": 2, "dataset": ""},
    "train": {
        "epochs": 210, "batch_size": 64, "base_batch_size": 256, "scale_lr": True,
        "optimizer": "adamw", "lr": 5e-4, "betas": [0.9, 0.999], "weight_decay": 0.01,
        "warmup_iters": 500, "warmup_start_factor": 0.001, "milestones": [170, 200], "gamma": 0.1,
        "amp": "none", "grad_clip": 0.0, "ema_decay": 0.0, "seed": 0, "deterministic": True,
        "augment": True, "sigma": None, "log_interval": 10, "sync_bn": True,
    },
    "eval": {"interval": 2, "flip_test": True, "batch_size": 32},
    "checkpoint": {"interval": 10},
}
AMP_MODES = ("none", "bf16", "fp16")
OPTIMIZERS = ("adamw", "adam")


class ConfigError(ValueError):
    pass


def load_config(path, overrides: Sequence[str] = ()) -> dict:
    """The config at `path` merged over DEFAULTS, then `overrides` ("train.lr=1e-3"); validated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} does not exist")
    try:
        with open(path, "rb") as f:
            user = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from None
    config = copy.deepcopy(DEFAULTS)
    for table, values in user.items():
        if table not in config or not isinstance(values, dict):
            raise ConfigError(f"{path}: unknown table [{table}]; tables are {', '.join(DEFAULTS)}")
        for key, value in values.items():
            if key not in config[table]:
                raise ConfigError(f"{path}: unknown key {table}.{key}; known: {', '.join(config[table])}")
            config[table][key] = value
    for item in overrides:
        apply_override(config, item)
    config["source"] = str(path)
    validate(config)
    return config


def apply_override(config: dict, item: str) -> None:
    key, sep, raw = item.partition("=")
    table, _, name = key.strip().partition(".")
    if not sep or table not in DEFAULTS or name not in DEFAULTS[table]:
        raise ConfigError(f"--set {item!r}: expected table.key=value with a known key (e.g. train.lr=1e-3)")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()          # a bare word is a string
    config[table][name] = value


def validate(config: dict) -> None:
    train = config["train"]
    if train["optimizer"] not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {train['optimizer']!r}")
    if train["sigma"] is not None and not (isinstance(train["sigma"], (int, float)) and train["sigma"] > 0):
        raise ConfigError(f"train.sigma must be a positive number (or left out: the model's codec sigma), "
                          f"got {train['sigma']!r}")
    if train["amp"] not in AMP_MODES:
        raise ConfigError(f"train.amp must be one of {', '.join(AMP_MODES)}, got {train['amp']!r}")
    for key in ("epochs", "batch_size", "base_batch_size", "log_interval"):
        if not isinstance(train[key], int) or train[key] < 1:
            raise ConfigError(f"train.{key} must be a positive integer, got {train[key]!r}")
    if not (isinstance(train["lr"], (int, float)) and train["lr"] > 0):
        raise ConfigError(f"train.lr must be positive, got {train['lr']!r}")
    if not 0 <= float(train["ema_decay"]) < 1:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {train['ema_decay']!r}")
    for key in ("train_ann", "train_images"):
        if not config["data"][key]:
            raise ConfigError(f"data.{key} is not set")
    size = config["model"]["input_size"]
    if not isinstance(size, list) or len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise ConfigError(f"model.input_size must be [H, W], positive integers, got {size!r}")
    # Each model checks its own divisibility (32 for HRVMamba, 16 for MamKPD, patch and windows for GLSMamba).


def data_path(config: dict, key: str, data_root=None) -> Path:
    """data.<key> resolved against --data-root, else data.root (itself relative to the config file)."""
    value = config["data"][key]
    if not value:
        return None
    root = Path(data_root) if data_root else Path(config["source"]).parent / config["data"]["root"]
    return root / value
