"""`ssmpose synth-data`: a COCO-format keypoint dataset of drawn stick figures, for runs without COCO."""
from __future__ import annotations

import click


@click.command("synth-data")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--n", type=int, default=200, show_default=True, help="Images in all (train + val).")
@click.option("--val-fraction", type=float, default=0.2, show_default=True, help="Share of the images for val.")
@click.option("--seed", type=int, default=0, show_default=True, help="The same seed writes the same files.")
def synth_data_command(out, n, val_fraction, seed):
    """Write OUT/images/{train,val}/*.jpg and OUT/annotations/{train,val}.json (COCO person keypoints) of
    1-3 drawn figures per image. OUT must be new, empty or an earlier synthetic dataset (overwritten)."""
    from ..synth import make_synthetic_dataset
    summary = make_synthetic_dataset(out, n=n, val_fraction=val_fraction, seed=seed)
    for split, s in summary["splits"].items():
        click.echo(f"{split}: {s['images']} images, {s['instances']} instances, {s['annotations']}")
