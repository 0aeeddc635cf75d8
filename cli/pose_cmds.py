"""`ssmpose infer`, `ssmpose eval` and `ssmpose parity`: the top-down pipeline on real data, on any backend.

Exit codes: 0 success; 1 infer: some inputs failed (listed), parity: a backend broke a tolerance (named);
2 bad arguments or input (one line on stderr).
"""
from __future__ import annotations

import contextlib
import json
import sys
import warnings

import click

from ..runtimes import BACKENDS


@contextlib.contextmanager
def _warnings_as_notes():
    """Library warnings (e.g. seeded random weights) as one 'note:' line each on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        yield
    for message in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)):
        click.echo(f"note: {message}", err=True)


def _estimator(model, backend, form, fp16, flip_test, batch, device=None, export_dir=None):
    from ..model_source import open_session
    from ..runtimes import BackendUnavailable
    from ..training.topdown import TopDownEstimator
    options = {"device": device} if device else {}
    with _warnings_as_notes():
        try:
            session = open_session(model, backend, form=form, fp16=fp16, export_dir=export_dir, **options)
        except BackendUnavailable as err:
            raise ValueError(f"backend {backend or 'default'} is not available here: {err}") from None
    return TopDownEstimator(session, flip_test=flip_test, batch_size=batch)


def _model_options(function):
    options = [
        click.option("--backend", type=click.Choice(BACKENDS), default=None,
                     help="Runtime (default: torch for a model name or checkpoint, ort-cpu for an .onnx file). "
                          "A PyTorch model on an ONNX backend is exported first."),
        click.option("--ops", "form", type=click.Choice(["custom", "portable"]), default="custom", show_default=True,
                     help="ONNX form to export to when a PyTorch model runs on an ONNX backend."),
        click.option("--fp16", is_flag=True, help="float16: torch in half precision, or an fp16 export."),
        click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True,
                     help="Crops per model run (memory grows with it: the portable form of hrvmamba_small on "
                          "ONNX Runtime CPU takes about 0.6 GiB a crop)."),
        click.option("--device", default=None,
                     help="torch backend: cpu, cuda or cuda:N (default: cuda when available). ONNX backends choose "
                          "their device by name (ort-cpu, ort-cuda)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@click.command("infer")
@click.argument("model")
@click.argument("source", type=click.Path())
@_model_options
@click.option("--boxes", "boxes_file", type=click.Path(dir_okay=False), default=None,
              help="COCO detection results (person boxes with scores), matched to images by file name "
                   "(image ids -> names from --ann, else COCO's 000000000785.jpg naming); for a video, "
                   "image_id is the frame number (0 first).")
@click.option("--ann", "ann_file", type=click.Path(dir_okay=False), default=None,
              help="COCO-format annotation file: its ground-truth boxes and image ids (matched by file name).")
@click.option("--box-thr", type=float, default=0.0, show_default=True,
              help="--boxes: ignore detections scoring below this.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="outputs/infer", show_default=True)
@click.option("--flip-test", is_flag=True, help="Average with the horizontally flipped crop (official test setting).")
@click.option("--score-thr", type=float, default=0.3, show_default=True,
              help="Keypoints scoring at or below this are not drawn.")
@click.option("--no-draw", is_flag=True, help="Write results.json only, no overlays.")
def infer_command(model, source, backend, form, fp16, batch, device, boxes_file, ann_file, box_thr, out_dir, flip_test,
                  score_thr, no_draw):
    """Estimate poses in SOURCE (an image, a folder of images or a video) with MODEL (a registered model name
    with seeded weights, a checkpoint, or an exported .onnx file).

    Without --boxes or --ann the whole image is one box. Writes OUT/results.json (COCO keypoint results) and
    overlays (OUT/<name>.jpg, or OUT/<name>.mp4 for a video). Exit code 1 when some inputs failed.

    A video model (clips of T frames) takes a video or a folder of frames (file-name order), through a
    sliding window of T frames centred on each frame; the first and last frames repeat at the ends."""
    from ..infer import collect_images, run_infer
    collect_images(source)  # argument errors before the model is loaded (and perhaps exported)
    estimator = _estimator(model, backend, form, fp16, flip_test, batch, device)
    report = run_infer(estimator, source, out_dir, boxes_file=boxes_file, ann_file=ann_file, box_threshold=box_thr,
                       score_threshold=score_thr, draw=not no_draw)
    click.echo(f"{report.processed} {'frame' if report.kind == 'video' else 'image'}(s), {len(report.results)} "
               f"instance(s) -> {report.outputs[0]}")
    if len(report.outputs) > 1:
        click.echo(f"overlays: {len(report.outputs) - 1} file(s) in {out_dir}")
    if report.without_boxes:
        click.echo(f"skipped {len(report.without_boxes)} image(s) the boxes/annotations do not cover: "
                   f"{', '.join(report.without_boxes[:5])}{' ...' if len(report.without_boxes) > 5 else ''}")
    if report.failed:
        click.echo(f"failed: {len(report.failed)} input(s):", err=True)
        for name, reason in report.failed:
            click.echo(f"  {name}: {reason}", err=True)
        sys.exit(1)


@click.command("eval")
@click.argument("model", required=False)
@click.option("--ann", "ann_file", required=True, type=click.Path(dir_okay=False),
              help="COCO-format keypoint annotations (any keypoint count), or MMPose's MPII JSON.")
@click.option("--results", "results_file", type=click.Path(dir_okay=False), default=None,
              help="Keypoint results to score (COCO results format; for MPII, image_id = entry index).")
@click.option("--images", "image_dir", type=click.Path(file_okay=False), default=None,
              help="Image folder, to run MODEL on the annotated images.")
@click.option("--boxes", "boxes_file", type=click.Path(dir_okay=False), default=None,
              help="COCO detection results to use instead of the ground-truth boxes.")
@_model_options
@click.option("--flip-test/--no-flip-test", default=True, show_default=True)
@click.option("--dataset", default=None, help="Dataset conventions (OKS sigmas) when the keypoint names do not "
                                              "identify them: coco, mpii, ap10k, crowdpose, aic, ochuman, "
                                              "posetrack18.")
@click.option("--save-results", type=click.Path(dir_okay=False), default=None, help="Write the evaluated results.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the metrics here.")
def eval_command(model, ann_file, results_file, image_dir, boxes_file, backend, form, fp16, batch, device, flip_test,
                 dataset, save_results, json_path):
    """Score keypoints against --ann: COCO keypoint AP through pycocotools, or PCKh@0.5 for MPII.

    Either --results RES.json, or MODEL (a registered model name with seeded weights, a checkpoint, or an
    exported .onnx file) with --images DIR. A video model needs PoseTrack18-format annotations: each
    labelled frame is predicted from the clip of its neighbouring frames."""
    from ..evaluate import annotation_kind, evaluate, read_results
    if (results_file is None) == (model is None):
        raise click.UsageError("give either --results RES.json or a MODEL with --images DIR (not both)")
    if model is not None and image_dir is None:
        raise click.UsageError("MODEL needs --images DIR (the folder of the annotated images)")
    annotation_kind(ann_file)
    results = read_results(results_file) if results_file else None
    estimator = _estimator(model, backend, form, fp16, flip_test, batch, device) if model else None
    metrics, evaluated = evaluate(ann_file, results=results, estimator=estimator, image_dir=image_dir,
                                  boxes_file=boxes_file, dataset=dataset)
    _print_metrics(metrics)
    if save_results:
        with open(save_results, "w") as f:
            json.dump(evaluated, f)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(metrics, f, indent=2)


def _print_metrics(metrics: dict) -> None:
    names = [k for k, v in metrics.items() if isinstance(v, float)]
    click.echo(f"{metrics['metric']} on {metrics['dataset']} ({metrics['instances']} instances)")
    click.echo(" ".join(f"{n:>8}" for n in names))
    click.echo(" ".join(f"{metrics[n]:>8.4f}" if metrics["metric"] == "coco_keypoint_ap" else f"{metrics[n]:>8.2f}"
                        for n in names))
    if metrics.get("images_not_found"):
        click.echo(f"note: {len(metrics['images_not_found'])} annotated image(s) not found, their persons count as "
                   f"missed", err=True)
    if metrics.get("frames_replaced"):
        click.echo(f"note: {metrics['frames_replaced']} neighbour frame(s) of the annotated frames are not in the "
                   f"image folder; each was replaced by the nearest existing frame of its video", err=True)


@click.command("parity")
@click.argument("model")
@click.option("--backends", default="torch,ort-cpu,openvino", show_default=True,
              help="Comma-separated backends to compare with PyTorch fp32 on the CPU.")
@click.option("--forms", default="custom,portable", show_default=True, help="ONNX forms to export and run.")
@click.option("--fp16", is_flag=True, help="Also run fp16 (torch half precision, fp16 exports).")
@click.option("--inputs", default="random", show_default=True,
              help="'random' (seeded normal crops) or an image folder (crops of its images). A video model: "
                   "a video or a folder of frames (whole-frame clips), or with --ann the annotations' image root.")
@click.option("--ann", "ann_file", type=click.Path(dir_okay=False), default=None,
              help="COCO-format annotations of the --inputs images: crops of the annotated persons (for a video "
                   "model, PoseTrack18 format: clips of their frames' neighbourhoods), and each runtime's AP "
                   "with its delta to torch.")
@click.option("--onnx", "onnx_files", multiple=True, type=click.Path(dir_okay=False),
              help="Check this exported file instead of exporting MODEL (repeatable).")
@click.option("--export-dir", type=click.Path(file_okay=False), default=None,
              help="Keep (and reuse) the exports here, keyed by the weights' fingerprint.")
@click.option("--save-io", type=click.Path(file_okay=False), default=None,
              help="Write inputs, the torch reference and every output (npz) to this folder.")
@click.option("--load-io", type=click.Path(file_okay=False), default=None,
              help="Replay inputs and the torch reference saved with --save-io (e.g. on another machine).")
@click.option("--localize", is_flag=True, help="ONNX backends: name the first node whose output diverges.")
@click.option("--tolerance", "tolerances", multiple=True, metavar="MEASURE=VALUE",
              help="Override a tolerance: fp32_max_abs_error_over_max_ref (default 1e-4) or "
                   "fp16_mean_keypoint_displacement_px (default 0.5).")
@click.option("--device", default=None, help="Device of the torch candidate rows (default: cuda when available).")
@click.option("--cuda-option", "cuda_options", multiple=True, metavar="KEY=VALUE",
              help="ort-cuda: a CUDA execution provider option, e.g. use_tf32=0; repeatable.")
@click.option("--crops", type=click.IntRange(min=1), default=None,
              help="Crops to compare: random ones to draw (default 4), or at most this many image crops (default 64).")
@click.option("--batch", type=click.IntRange(min=1), default=4, show_default=True, help="Crops per model run.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the report here.")
def parity_command(model, backends, forms, fp16, inputs, ann_file, onnx_files, export_dir, save_io, load_io, localize,
                   tolerances, device, cuda_options, crops, batch, json_path):
    """Run the same crops through each backend and report DESIGN.md §7's measures against torch fp32.

    MODEL: registered name or checkpoint (the reference). Exit code 1 names each backend and measure that
    broke its tolerance."""
    from ..parity_check import DEFAULT_TOLERANCES, report_json, run_parity
    from .runtime_cmds import parse_cuda_options
    overrides = {}
    for item in tolerances:
        key, _, value = item.partition("=")
        if key not in DEFAULT_TOLERANCES:
            raise click.UsageError(f"--tolerance {item!r}: unknown measure; use {', '.join(DEFAULT_TOLERANCES)}")
        try:
            overrides[key] = float(value)
        except ValueError:
            raise click.UsageError(f"--tolerance {item!r}: {value!r} is not a number") from None
    with _warnings_as_notes():
        report = run_parity(model, [b.strip() for b in backends.split(",") if b.strip()],
                            [f.strip() for f in forms.split(",") if f.strip()], fp16=fp16, inputs=inputs,
                            ann_file=ann_file, onnx_files=onnx_files, export_dir=export_dir, save_io=save_io,
                            load_io=load_io, localize=localize, tolerances=overrides, device=device, crops=crops,
                            cuda_options=parse_cuda_options(cuda_options), batch=batch,
                            log=lambda m: click.echo(m, err=True))
    _print_parity(report)
    if json_path:
        with open(json_path, "w") as f:
            f.write(report_json(report))
    if report["failures"]:
        for failure in report["failures"]:
            click.echo(f"parity failed: {failure}", err=True)
        sys.exit(1)


def _print_parity(report: dict) -> None:
    click.echo(f"model {report['model']}, inputs: {report['inputs']} {tuple(report['input_shape'])}, "
               f"reference: {report['reference']}")
    with_ap = report["reference_AP"] is not None
    header = (f"{'backend / form / precision':<28} {'max abs':>9} {'mean abs':>9} {'max rel':>9} {'cosine':>9} "
              f"{'argmax':>7} {'kp mean px':>10} {'kp max px':>9} {'OKS':>6}" + (f" {'AP':>6} {'dAP':>7}" if with_ap
                                                                                   else "") + "  check")
    click.echo(header)
    for r in report["rows"]:
        if r["status"] == "unavailable":
            click.echo(f"{r['label']:<28} unavailable: {r['reason']}")
            continue
        m = r["measures"]
        line = (f"{r['label']:<28} {m['max_abs_error']:>9.2e} {m['mean_abs_error']:>9.2e} {m['max_rel_error']:>9.2e} "
                f"{m['cosine']:>9.6f} {m['argmax_agreement']:>7.3f} {m['mean_keypoint_displacement_px']:>10.3f} "
                f"{m['max_keypoint_displacement_px']:>9.2f} {m['mean_oks']:>6.3f}")
        if with_ap:
            line += f" {r['AP']:>6.3f} {r['AP_delta']:>+7.3f}"
        check = r["checks"][0]
        line += f"  {'ok' if check['ok'] else 'FAIL'} ({check['measure']} {check['value']:.3g} <= {check['limit']:g})"
        click.echo(line)
        if "localized" in r:
            loc = r["localized"]
            if loc["diverged"]:
                error = "n/a" if loc["error"] is None else f"{loc['error']:.3g}"
                click.echo(f"    first divergent node: {loc['node']} ({loc['op_type']}, node {loc['index']}), output "
                           f"{loc['output']}: error {error} ({loc['reason']}); inputs {', '.join(loc['inputs'])}")
            else:
                click.echo(f"    no node diverges beyond {loc['tolerance']:g} ({loc['compared']} tensors compared)")
    if with_ap:
        click.echo(f"torch fp32 AP on these crops: {report['reference_AP']:.4f}")
