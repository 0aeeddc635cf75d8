"""`ssmpose train` on the synthetic set with hrvmamba_tiny on the CPU: the loss falls, resume is exact, checkpoint
writes are atomic, two gloo processes equal one process with the doubled batch, and what training writes loads,
runs and is scored by the other commands."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import ssmpose
from ssmpose.cli.main import main
from ssmpose.synth import make_synthetic_dataset, make_synthetic_video_dataset
from ssmpose.training.config import ConfigError, load_config
from ssmpose.training.trainer import Trainer, learning_rate, run_training

REPO = Path(__file__).resolve().parents[1]
SYNTH_CONFIG = REPO / "configs" / "hrvmamba_tiny_synth.toml"
# 128x96 inputs (HRVMamba's smallest) for the tests of the training machinery: a quarter of 256x192's time
FAST = ["data.workers=0", "train.batch_size=2", "train.log_interval=1", 'data.val_ann=""',
        "model.options={drop_path_rate=0.0}", "model.input_size=[128, 96]"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_synthetic_dataset(root, n=16, seed=0)
    return root


def _log(work_dir):
    return [json.loads(line) for line in (Path(work_dir) / "log.jsonl").read_text().splitlines()]


def _weights(work_dir):
    return torch.load(Path(work_dir) / "last.pt", weights_only=True)["model"]


def test_learning_rate_follows_the_official_schedule():
    train = {"warmup_iters": 500, "warmup_start_factor": 0.001, "milestones": [170, 200], "gamma": 0.1}
    assert learning_rate(1.0, 0, 0, train) == pytest.approx(0.001)
    assert learning_rate(1.0, 250, 0, train) == pytest.approx(0.001 + 0.999 * 0.5)
    assert learning_rate(1.0, 500, 3, train) == 1.0
    assert learning_rate(1.0, 10 ** 5, 170, train) == pytest.approx(0.1)
    assert learning_rate(1.0, 10 ** 5, 205, train) == pytest.approx(0.01)


def test_configs_reproduce_the_official_recipe_and_refuse_unknown_keys(tmp_path):
    config = load_config(REPO / "configs" / "hrvmamba_small_coco_256x192.toml")
    train = config["train"]
    assert (train["lr"], train["betas"], train["weight_decay"]) == (5e-4, [0.9, 0.999], 0.01)
    assert (train["warmup_iters"], train["milestones"], train["epochs"], train["batch_size"]) == (500, [170, 200], 210, 64)
    assert train["sigma"] == 2.0 and config["eval"]["flip_test"] and train["sync_bn"]
    assert load_config(REPO / "configs" / "hrvmamba_base_coco_384x288.toml")["train"]["sigma"] == 3.0
    assert load_config(SYNTH_CONFIG, ["train.lr=3e-3", "train.amp=bf16"])["train"]["lr"] == 3e-3
    bad = tmp_path / "bad.toml"
    bad.write_text('[train]\nlearning_rate = 1e-3\n')
    with pytest.raises(ConfigError, match="unknown key train.learning_rate"):
        load_config(bad)
    with pytest.raises(ConfigError, match="--set 'train.nope=1'"):
        load_config(SYNTH_CONFIG, ["train.nope=1"])
    with pytest.raises(ConfigError, match="train.amp must be one of"):
        load_config(SYNTH_CONFIG, ["train.amp=fp8"])
    result = CliRunner().invoke(main, ["train", str(bad)])
    assert result.exit_code == 2 and result.output.startswith("error: ") and "Traceback" not in result.output


def test_every_shipped_config_loads_and_names_a_registered_model():
    for path in sorted((REPO / "configs").glob("*.toml")):
        config = load_config(path)
        assert config["model"]["name"] in ssmpose.list_models(), path.name
    mamkpd = load_config(REPO / "configs" / "mamkpd_base_coco_256x192.toml")["train"]
    assert (mamkpd["optimizer"], mamkpd["lr"], mamkpd["milestones"], mamkpd["epochs"]) == ("adam", 1e-3, [170, 200], 210)
    gls = load_config(REPO / "configs" / "glsmamba_b_posetrack18.toml")["train"]
    assert (gls["optimizer"], gls["lr"], gls["milestones"], gls["epochs"]) == ("adamw", 1e-4, [6, 12], 20)


def test_optimizer_sigma_and_input_size_options(synth, tmp_path):
    """train.optimizer picks Adam or AdamW (anything else is refused); without train.sigma the targets use the
    model's own codec sigma; the model, not the config, checks the input size."""
    with pytest.raises(ConfigError, match="train.optimizer must be one of adamw, adam"):
        load_config(SYNTH_CONFIG, ["train.optimizer=sgd"])
    with pytest.raises(ConfigError, match="train.sigma must be a positive number"):
        load_config(SYNTH_CONFIG, ["train.sigma=-1"])
    config = load_config(REPO / "configs" / "mamkpd_small_synth.toml", FAST + ["train.sigma=1.5"])
    trainer = Trainer(config, tmp_path / "a", data_root=synth, progress=False)
    assert type(trainer.optimizer) is torch.optim.Adam and trainer.train_set.sigma == 1.5
    config = load_config(REPO / "configs" / "mamkpd_small_synth.toml", FAST + ["train.optimizer=adamw"])
    config["train"]["sigma"] = None
    trainer = Trainer(config, tmp_path / "b", data_root=synth, progress=False)
    assert type(trainer.optimizer) is torch.optim.AdamW
    assert trainer.train_set.sigma == trainer.model.meta["codec"]["sigma"] == 1.0
    with pytest.raises(ValueError, match="divisible by 16"):
        Trainer(load_config(REPO / "configs" / "mamkpd_small_synth.toml", FAST + ["model.input_size=[120, 96]"]),
                tmp_path / "c", data_root=synth, progress=False)


def test_encoder_weights_are_loaded_and_frozen_parameters_are_not_optimised(tmp_path):
    """model.encoder_weights loads a ViTPose-format checkpoint into GLSMamba's frozen encoder before training;
    the optimiser holds only the trainable parameters."""
    from ssmpose.training.models.vit import ViTEncoder
    torch.manual_seed(7)
    encoder = ViTEncoder((128, 96))
    weights = tmp_path / "vitpose.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in encoder.state_dict().items()}}, weights)
    clips = tmp_path / "clips"
    make_synthetic_video_dataset(clips, n=2, frames=5, val_fraction=0.5, seed=1, image_size=(192, 256))
    config = load_config(REPO / "configs" / "glsmamba_blr_synth.toml", FAST + [f'model.encoder_weights="{weights}"'])
    trainer = Trainer(config, tmp_path / "run", data_root=clips, progress=False)
    loaded = trainer.model.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in encoder.state_dict().items())
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in trainer.model.parameters() if p.requires_grad}
    assert optimised == trainable and len(trainable) < len(list(trainer.model.parameters()))


def test_loss_falls_and_the_result_loads_runs_and_is_scored(synth, tmp_path):
    """A few dozen iterations of the synthetic config lower the loss (from log.jsonl); the final evaluation is
    logged; the weights load with load_checkpoint and run in `ssmpose infer`."""
    work = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", str(SYNTH_CONFIG), "--data-root", str(synth), "--work-dir", str(work),
                                       "--max-iters", "30", "--set", "data.workers=0", "--set", "train.batch_size=4",
                                       "--set", "train.log_interval=1", "--set", "train.augment=false",
                                       "--set", "train.warmup_iters=1", "--set", "train.lr=2e-3",
                                       "--set", "model.input_size=[128, 96]"])
    assert result.exit_code == 0, result.output
    log = _log(work)
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 30
    assert sum(losses[-8:]) / 8 < 0.8 * sum(losses[:8]) / 8, losses
    evaluations = [r["eval"] for r in log if "eval" in r]
    assert len(evaluations) == 1 and 0.0 <= evaluations[0]["AP"] <= 1.0
    model = ssmpose.load_checkpoint(work / "best.safetensors")
    assert model.name == "hrvmamba_tiny"
    infer = CliRunner().invoke(main, ["infer", str(work / "last.safetensors"), str(synth / "images" / "val"),
                                      "--ann", str(synth / "annotations" / "val.json"), "--out", str(tmp_path / "inf")])
    assert infer.exit_code == 0, infer.output
    assert json.loads((tmp_path / "inf" / "results.json").read_text())


def test_resume_is_bit_identical(synth, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_training(load_config(SYNTH_CONFIG, FAST), straight, data_root=synth, max_iters=6, progress=False)
    run_training(load_config(SYNTH_CONFIG, FAST), split, data_root=synth, max_iters=3, progress=False)
    run_training(load_config(SYNTH_CONFIG, FAST), split, data_root=synth, max_iters=6, resume=split / "last.pt",
                 progress=False)
    a, b = _weights(straight), _weights(split)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    assert [r["loss"] for r in _log(straight) if "loss" in r] == [r["loss"] for r in _log(split) if "loss" in r]
    state = torch.load(split / "last.pt", weights_only=True)
    assert state["position"] == {"epoch": 0, "iteration": 6, "epoch_step": 6}


def test_interrupted_checkpoint_write_leaves_the_previous_one(synth, tmp_path, monkeypatch):
    work = tmp_path / "run"
    run_training(load_config(SYNTH_CONFIG, FAST), work, data_root=synth, max_iters=1, progress=False)
    before = (work / "last.pt").read_bytes()
    trainer = Trainer(load_config(SYNTH_CONFIG, FAST), work, data_root=synth, progress=False)
    trainer.resume(work / "last.pt")
    trainer.iteration += 1

    def killed_mid_write(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt("killed while writing")
    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        trainer.save("last")
    monkeypatch.undo()
    assert (work / "last.pt").read_bytes() == before
    assert torch.load(work / "last.pt", weights_only=True)["position"]["iteration"] == 1
    assert sorted(p.name for p in work.iterdir()) == ["last.pt", "last.safetensors", "log.jsonl"]


def test_two_gloo_processes_match_one_process_with_the_doubled_batch(synth, tmp_path):
    """DDP under torchrun (gloo, synchronised BN) takes the same samples per step as one process with the
    total batch: the losses agree to float rounding, the weights after 3 AdamW steps within a tenth of one
    step's size (Adam's first steps are lr x sign(gradient), so rounding in a near-zero gradient moves a weight
    by up to lr = 1e-3; measured at 128x96: 3.1e-6 at most, running variances 9.5e-6)."""
    common = [str(SYNTH_CONFIG), "--data-root", str(synth), "--max-iters", "3", "--device", "cpu"]
    sets = [a for item in FAST if not item.startswith("train.batch_size") for a in ("--set", item)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m",
                          "ssmpose.cli.main", "train", *common, *sets, "--set", "train.batch_size=2",
                          "--work-dir", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = CliRunner().invoke(main, ["train", *common, *sets, "--set", "train.batch_size=4",
                                    "--work-dir", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for key in a:
        if a[key].is_floating_point():
            assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-4), key
    log_two = [r for r in _log(tmp_path / "two") if "loss" in r]
    assert [r["iter"] for r in log_two] == [1, 2, 3]                       # rank 0 logs, once per step
    for r1, r2 in zip([r for r in _log(tmp_path / "one") if "loss" in r], log_two):
        assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-5)
    assert torch.load(tmp_path / "two" / "last.pt", weights_only=True)["world_size"] == 2


def test_bf16_autocast_and_ema_weights_are_what_ships(synth, tmp_path):
    work = tmp_path / "run"
    run_training(load_config(SYNTH_CONFIG, FAST + ["train.amp=bf16", "train.ema_decay=0.5", "train.grad_clip=1.0"]),
                 work, data_root=synth, max_iters=2, progress=False)
    state = torch.load(work / "last.pt", weights_only=True)
    shipped = ssmpose.load_checkpoint(work / "last.safetensors").state_dict()
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    assert shipped.keys() == ema.keys()
    assert all(torch.equal(shipped[k], ema[k]) for k in shipped)
    assert not all(torch.equal(shipped[k], state["model"][k]) for k in shipped)      # EMA differs from the raw weights
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
