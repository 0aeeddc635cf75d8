"""`ssmpose synth-data`: a COCO-format keypoint dataset of drawn stick figures, for runs without COCO; with
--frames, short videos of moving figures in the PoseTrack18 layout, for video models."""
from __future__ import annotations

import click


@click.command("synth-data")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--n", type=int, default=200, show_default=True,
              help="Images in all (train + val); with --frames, videos in all.")
@click.option("--val-fraction", type=float, default=0.2, show_default=True,
              help="Share of the images (videos) for val.")
@click.option("--seed", type=int, default=0, show_default=True, help="The same seed writes the same files.")
@click.option("--frames", type=click.IntRange(min=1), default=1, show_default=True,
              help="Frames a video: above 1, N videos of moving figures, every frame annotated, as "
                   "OUT/images/{train,val}/<video>/<frame>.jpg with PoseTrack18's video fields.")
def synth_data_command(out, n, val_fraction, seed, frames):
    """Write OUT/images/{train,val}/*.jpg and OUT/annotations/{train,val}.json (COCO person keypoints) of
    1-3 drawn figures per image. OUT must be new, empty or an earlier synthetic dataset (overwritten)."""
    from ..synth import make_synthetic_dataset, make_synthetic_video_dataset
    if frames > 1:
        summary = make_synthetic_video_dataset(out, n=n, frames=frames, val_fraction=val_fraction, seed=seed)
    else:
        summary = make_synthetic_dataset(out, n=n, val_fraction=val_fraction, seed=seed)
    for split, s in summary["splits"].items():
        videos = f"{s['videos']} videos, " if "videos" in s else ""
        click.echo(f"{split}: {videos}{s['images']} images, {s['instances']} instances, {s['annotations']}")
