"""The training loop of `ssmpose train`: the official HRVMamba recipe (AdamW, linear warm-up, step decay,
linearly scaled learning rate, MSE on target-weighted MSRA heatmaps), AMP, gradient clipping, optional EMA,
periodic COCO-AP evaluation through the eval code, atomic checkpoints with exact resume, and DDP under
torchrun. A video model (meta `num_frames` T > 1) trains on clips (B, T, 3, H, W) of video annotations, with
the targets of the centre frame (data.TopDownDataset); nothing else changes.

Work-dir layout: log.jsonl (one JSON object per logged step and per evaluation), last.pt (full training
state, for --resume), last.safetensors / best.safetensors / epoch_N.safetensors (model weights in the
ssmpose format: they load with ssmpose.load_checkpoint, export and run in ssmpose infer).
"""
from __future__ import annotations

import copy
import json
import random
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import _atomic_write, save_checkpoint
from .distributed import DistInfo, EpochSampler, convert_sync_batchnorm, init_distributed, mean_over_ranks
from .models import build_model

STATE_VERSION = 1


def keypoint_mse_loss(heatmaps: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """mmpose KeypointMSELoss(use_target_weight=True): mean over every element of the squared error, each
    keypoint's channel multiplied by its target weight."""
    return (F.mse_loss(heatmaps.float(), targets, reduction="none") * weights[:, :, None, None]).mean()


def learning_rate(base_lr: float, iteration: int, epoch: int, train: dict) -> float:
    """Linear warm-up over the first warmup_iters iterations (mmpose LinearLR, by iteration), times gamma for
    every milestone epoch reached (MultiStepLR, by epoch)."""
    factor = 1.0
    warmup = int(train["warmup_iters"])
    if iteration < warmup:
        start = float(train["warmup_start_factor"])
        factor = start + (1.0 - start) * iteration / warmup
    decays = sum(epoch >= m for m in train["milestones"])
    return base_lr * factor * float(train["gamma"]) ** decays


class Trainer:
    def __init__(self, config: dict, work_dir, data_root=None, device: Optional[str] = None,
                 max_iters: Optional[int] = None, progress: bool = True):
        from .data import TopDownDataset
        from .transforms import AugmentConfig
        from .config import data_path
        self.config, self.train_cfg = config, config["train"]
        self.work_dir = Path(work_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dist = init_distributed(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.max_iters = max_iters
        self.progress = progress and self.dist.is_main
        seed = int(self.train_cfg["seed"])
        self._seed_everything(seed + self.dist.rank)
        if self.train_cfg["deterministic"]:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False

        model_cfg = config["model"]
        self.model = build_model(model_cfg["name"], input_size=tuple(model_cfg["input_size"]),
                                 **model_cfg.get("options", {}))
        if model_cfg["encoder_weights"]:
            from .models.vit import load_vitpose_weights
            load_vitpose_weights(self.model, Path(model_cfg["encoder_weights"]).expanduser())
        self.model.to(self.device)
        meta = self.model.meta
        sigma = self.train_cfg["sigma"] if self.train_cfg["sigma"] is not None else meta["codec"]["sigma"]
        self.train_set = TopDownDataset(
            data_path(config, "train_ann", data_root), data_path(config, "train_images", data_root),
            input_size=tuple(meta["input_size"]), sigma=float(sigma), mean=meta["mean"],
            std=meta["std"], color_order=meta["color_order"],
            augment=AugmentConfig() if self.train_cfg["augment"] else None, seed=seed,
            dataset=config["data"]["dataset"] or None, num_frames=int(meta.get("num_frames", 1)))
        if self.train_set.info.keypoint_names != tuple(meta["keypoint_names"]):
            raise ValueError(f"{model_cfg['name']} is built for the {meta.get('dataset')} keypoints "
                             f"({meta['num_keypoints']}); the training set has {self.train_set.num_keypoints} "
                             f"({self.train_set.info.name}): set model.options = {{dataset = \"<name>\"}}")
        self.val_ann = data_path(config, "val_ann", data_root)
        self.val_images = data_path(config, "val_images", data_root)
        self.val_boxes = data_path(config, "val_boxes", data_root)

        batch = int(self.train_cfg["batch_size"])
        self.sampler = EpochSampler(len(self.train_set), self.dist, seed)
        self.iters_per_epoch = len(self.sampler) // batch
        if self.iters_per_epoch < 1:
            raise ValueError(f"the training set has {len(self.train_set)} samples, fewer than one batch of {batch} "
                             f"per process")
        self.loader_args = dict(batch_size=batch, sampler=self.sampler, drop_last=True,
                                num_workers=int(config["data"]["workers"]), pin_memory=self.device.type == "cuda")
        scale = batch * self.dist.world_size / int(self.train_cfg["base_batch_size"])
        self.base_lr = float(self.train_cfg["lr"]) * (scale if self.train_cfg["scale_lr"] else 1.0)

        if self.dist.enabled and self.train_cfg["sync_bn"]:
            self.model = convert_sync_batchnorm(self.model, self.device.type)
        self.net = self.model
        if self.dist.enabled:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        optimizer = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[self.train_cfg["optimizer"]]
        # Frozen parameters (GLSMamba's encoder) stay out of the optimiser.
        self.optimizer = optimizer([p for p in self.model.parameters() if p.requires_grad], lr=self.base_lr,
                                   betas=tuple(self.train_cfg["betas"]),
                                   weight_decay=float(self.train_cfg["weight_decay"]))
        amp = self.train_cfg["amp"]
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.scaler = torch.amp.GradScaler(self.device.type) if amp == "fp16" else None
        self.ema = None
        if float(self.train_cfg["ema_decay"]) > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(float(self.train_cfg["ema_decay"])),
                                     use_buffers=True)
        self.epoch, self.iteration, self.epoch_step, self.best_ap = 0, 0, 0, None
        self.log_file = None
        self.tensorboard = None

    # -----------------------------------------------------------------------------------------------------
    # state

    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        torch.manual_seed(seed)

    def state(self) -> dict:
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        rng = {"python": random.getstate(), "torch": torch.get_rng_state(),
               "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss]}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"version": STATE_VERSION, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "ema": self.ema.state_dict() if self.ema else None, "rng": rng,
                "position": {"epoch": self.epoch, "iteration": self.iteration, "epoch_step": self.epoch_step},
                "best_ap": self.best_ap, "world_size": self.dist.world_size,
                "build_config": self.model.build_config, "config": self.config}

    def resume(self, path) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--resume: checkpoint {path} does not exist")
        try:  # tensors and plain containers only: no code from the file runs
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as err:  # noqa: BLE001  (pickle and zip errors have many types)
            raise ValueError(f"--resume: {path} is not a readable ssmpose training checkpoint: {err}") from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"--resume: {path} is not an ssmpose training checkpoint (last.pt)")
        if state["world_size"] != self.dist.world_size:
            raise ValueError(f"--resume: {path} was written by {state['world_size']} process(es); this run has "
                             f"{self.dist.world_size}, so the data order would not continue exactly")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema and state["ema"]:
            self.ema.load_state_dict(state["ema"])
        position = state["position"]
        self.epoch, self.iteration, self.epoch_step = position["epoch"], position["iteration"], position["epoch_step"]
        self.best_ap = state["best_ap"]
        rng = state["rng"]
        random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))
        kind, keys, position, has_gauss, gauss = rng["numpy"]
        np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), position, has_gauss, gauss))
        torch.set_rng_state(rng["torch"].cpu())
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])

    def save(self, name: str = "last") -> None:
        """Rank 0 writes last.pt and the weights atomically: a run killed mid-write leaves the previous files."""
        if not self.dist.is_main:
            return
        state = self.state()
        _atomic_write(self.work_dir / f"{name}.pt", lambda tmp: torch.save(state, tmp))
        save_checkpoint(self.eval_model(), self.work_dir / f"{name}.safetensors")

    def eval_model(self) -> torch.nn.Module:
        """The model to evaluate and ship: the EMA weights when EMA is on. A copy, in eval mode, on the CPU
        layout of the original (synchronised BN back to plain BN keys, which are the same)."""
        source = self.ema.module if self.ema else self.model
        model = copy.deepcopy(source).eval()
        model.build_config = self.model.build_config
        return model

    # -----------------------------------------------------------------------------------------------------
    # loop

    def log(self, record: dict) -> None:
        """One JSON line in log.jsonl, and the numbers to TensorBoard when it is installed (rank 0)."""
        if not self.dist.is_main:
            return
        if self.log_file is None:
            self.log_file = open(self.work_dir / "log.jsonl", "a")
            self.tensorboard = _tensorboard_writer(self.work_dir / "tensorboard")
        self.log_file.write(json.dumps(record) + "\n")
        self.log_file.flush()
        if self.tensorboard is not None:
            scalars = {**{k: v for k, v in record.items() if k in ("loss", "lr")},
                       **{f"eval/{k}": v for k, v in record.get("eval", {}).items() if isinstance(v, float)}}
            for name, value in scalars.items():
                self.tensorboard.add_scalar(name, value, record["iter"])

    def train(self) -> dict:
        from tqdm import tqdm
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.train_set.problems and self.iteration == 0:
            self.log({"iter": 0, "epoch": 0, "data_problems": len(self.train_set.problems),
                      "examples": self.train_set.problems[:20]})
            if self.dist.is_main:
                print(f"note: {len(self.train_set.problems)} training annotation(s) skipped, e.g. "
                      f"{self.train_set.problems[0]} (all counted in log.jsonl)", file=sys.stderr)
        epochs = int(self.train_cfg["epochs"])
        total = epochs * self.iters_per_epoch
        if self.max_iters is not None:
            total = min(total, self.max_iters)
        bar = tqdm(total=total, initial=min(self.iteration, total), desc="train", unit="it", disable=not self.progress)
        clip = float(self.train_cfg["grad_clip"])
        log_every = int(self.train_cfg["log_interval"])
        started = time.perf_counter()
        while self.epoch < epochs and self.iteration < total:
            self.sampler.set_epoch(self.epoch, skip=self.epoch_step * self.loader_args["batch_size"])
            self.train_set.set_epoch(self.epoch)
            # its own generator: worker seeds must not draw from the global RNG, whose state a resume restores
            generator = torch.Generator().manual_seed(int(self.train_cfg["seed"]) * 1000 + self.epoch)
            loader = torch.utils.data.DataLoader(self.train_set, generator=generator, **self.loader_args)
            self.net.train()
            for batch in loader:
                lr = learning_rate(self.base_lr, self.iteration, self.epoch, self.train_cfg)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                loss = self._step(batch, clip)
                self.iteration += 1
                self.epoch_step += 1
                bar.update(1)
                if self.iteration % log_every == 0 or self.iteration == total:
                    record = {"iter": self.iteration, "epoch": self.epoch, "loss": mean_over_ranks(loss, self.dist),
                              "lr": lr, "seconds": round(time.perf_counter() - started, 3)}
                    self.log(record)
                    bar.set_postfix(loss=f"{record['loss']:.3g}", lr=f"{lr:.2e}")
                if self.iteration >= total:
                    break
            if self.epoch_step >= self.iters_per_epoch:
                self.epoch += 1
                self.epoch_step = 0
                self._end_of_epoch()
        bar.close()
        if self.epoch_step:          # stopped by --max-iters inside an epoch: evaluate where it stands
            self.evaluate_and_keep_best()
            self.save("last")
        if self.log_file:
            self.log_file.close()
            self.log_file = None
        if self.tensorboard is not None:
            self.tensorboard.close()
        return {"iterations": self.iteration, "epochs": self.epoch, "best_ap": self.best_ap,
                "work_dir": str(self.work_dir)}

    def _end_of_epoch(self) -> None:
        interval = int(self.config["eval"]["interval"])
        if interval > 0 and self.epoch % interval == 0:
            self.evaluate_and_keep_best()
        self.save("last")
        every = int(self.config["checkpoint"]["interval"])
        if every > 0 and self.epoch % every == 0 and self.dist.is_main:
            save_checkpoint(self.eval_model(), self.work_dir / f"epoch_{self.epoch}.safetensors")

    def _step(self, batch: dict, clip: float) -> float:
        images = batch["image"].to(self.device, non_blocking=True)
        targets = batch["heatmaps"].to(self.device, non_blocking=True)
        weights = batch["weights"].to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            heatmaps = self.net(images)
        loss = keypoint_mse_loss(heatmaps, targets, weights)
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema:
            self.ema.update_parameters(self.model)
        return float(loss.detach())

    def evaluate_and_keep_best(self) -> Optional[dict]:
        """COCO AP on the validation set (rank 0, through ssmpose eval's code); keeps best.safetensors."""
        if not self.dist.is_main or self.val_ann is None:
            return None
        from .. import runtimes
        from ..evaluate import evaluate
        from .topdown import TopDownEstimator
        model = self.eval_model()
        session = runtimes.load(model, "torch", device=str(self.device))
        estimator = TopDownEstimator(session, flip_test=bool(self.config["eval"]["flip_test"]),
                                     batch_size=int(self.config["eval"]["batch_size"]))
        metrics, _ = evaluate(self.val_ann, estimator=estimator, image_dir=self.val_images,
                              boxes_file=self.val_boxes, progress=False)
        score = metrics.get("AP", metrics.get("PCKh"))
        self.log({"iter": self.iteration, "epoch": self.epoch, "eval": metrics})
        if self.best_ap is None or score > self.best_ap:
            self.best_ap = score
            save_checkpoint(model, self.work_dir / "best.safetensors")
        return metrics


def _tensorboard_writer(directory: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(directory))


def run_training(config: dict, work_dir, data_root=None, resume=None, max_iters=None, device=None,
                 progress: bool = True) -> dict:
    trainer = Trainer(config, work_dir, data_root=data_root, device=device, max_iters=max_iters, progress=progress)
    try:
        if resume:
            trainer.resume(resume)
        return trainer.train()
    finally:
        if trainer.dist.enabled:
            torch.distributed.destroy_process_group()


__all__ = ["Trainer", "run_training", "keypoint_mse_loss", "learning_rate", "DistInfo"]
