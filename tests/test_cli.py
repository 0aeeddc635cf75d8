"""The command line, called as a user would (through click's runner and as a subprocess)."""
import json
import subprocess
import sys

import cv2
import pytest
from click.testing import CliRunner
from conftest import DATA

import ssmpose
from ssmpose.checkpoint import save_official_checkpoint
from ssmpose.cli.main import main
from ssmpose.custom_ops import openvino_library


def test_version_and_models():
    runner = CliRunner()
    assert runner.invoke(main, ["--version"]).output.strip() == f"ssmpose, version {ssmpose.__version__}"
    result = runner.invoke(main, ["models", "--json"])
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["hrvmamba_small"]["params"] == 8_034_401
    assert rows["hrvmamba_base"]["params"] == 47_100_993
    assert rows["hrvmamba_tiny"]["params"] == 2_322_945
    assert rows["hrvmamba_cls_nano"]["params"] == 12_284_240
    assert rows["hrvmamba_small"]["input_sizes"] == [[256, 192], [384, 288]]


def test_convert_command(tmp_path):
    src = save_official_checkpoint(ssmpose.build_model("hrvmamba_tiny"), tmp_path / "t.pth")
    out = tmp_path / "t.safetensors"
    result = CliRunner().invoke(main, ["convert", str(src), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert ssmpose.load_checkpoint(out).name == "hrvmamba_tiny"


def test_convert_errors_are_one_line_and_write_nothing(tmp_path):
    src = save_official_checkpoint(ssmpose.build_model("hrvmamba_tiny"), tmp_path / "t.pth")
    out = tmp_path / "out.safetensors"
    result = CliRunner().invoke(main, ["convert", str(src), "-o", str(out), "--model", "hrvmamba_small"])
    assert result.exit_code == 2
    assert "error: checkpoint" in result.output and "does not fit model hrvmamba_small" in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == [src]


def test_figure_runs_as_a_console_command():
    proc = subprocess.run([sys.executable, "-m", "ssmpose.cli.main", "figure", "--model", "hrvmamba_tiny", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["heatmap_shape"] == [1, 17, 64, 48]
    assert len(report["keypoints"]) == 17
    for (x, y), score in zip(report["keypoints"], report["scores"]):
        if score > 0:
            assert 0 <= x <= 192 and 0 <= y <= 256
        else:                     # no positive heatmap value: location -1 heatmap px (mmpose's decode)
            assert (x, y) == (-4, -4)


@pytest.mark.slow   # its own export of both forms (~80 s) and every backend: ~2 min on the CI machine
def test_demo_exports_and_compares_every_backend(tmp_path):
    """The README's main job, on the tiny model: both ONNX forms, every backend here, one table."""
    report_path = tmp_path / "demo.json"
    result = CliRunner().invoke(main, ["demo", "--model", "hrvmamba_tiny", "--output-dir", str(tmp_path),
                                       "--json", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    rows = {(r["backend"], r["form"]): r for r in report["rows"]}
    expected = [("ort-cpu", "custom"), ("ort-cpu", "portable"), ("torch", "eager, reference ops")]
    if openvino_library.openvino_library_path() is not None:
        expected += [("openvino", "custom"), ("openvino", "portable")]
    for key in expected:
        assert rows[key]["status"] == "ok", rows[key]
        assert rows[key]["max_abs_error_over_max_ref"] <= 1e-4, rows[key]
    assert "ort-cpu" in result.output and "portable" in result.output
    # the real COCO samples are the inputs, and the whole pipeline is drawn on one of them
    assert report["inputs"].startswith("2 person crops of the COCO samples") and report["input_shape"][0] == 2
    overlay = cv2.imread(report["overlay"])
    assert overlay is not None and overlay.shape == cv2.imread(str(DATA / "coco" / "000000000785.jpg")).shape


def test_bench_command_times_the_torch_backend_and_checks_cuda_options(tmp_path):
    runner = CliRunner()
    out = tmp_path / "bench.json"
    result = runner.invoke(main, ["bench", "hrvmamba_tiny", "--device", "cpu", "--batch", "1", "--repeats", "1",
                                  "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert rows[0]["batch"] == 1 and rows[0]["images_per_s"] > 0 and rows[0]["model"] == "hrvmamba_tiny"
    result = runner.invoke(main, ["bench", "hrvmamba_tiny", "--cuda-option", "enable_cuda_graph=1"])
    assert result.exit_code == 2 and "--cuda-option applies to --backend ort-cuda only" in result.output
    result = runner.invoke(main, ["bench", "x.onnx", "--backend", "ort-cuda", "--cuda-option", "enable_cuda_graph"])
    assert result.exit_code == 2 and "expects KEY=VALUE, got 'enable_cuda_graph'" in result.output
    result = runner.invoke(main, ["bench", "hrvmamba_tiny", "--max-batch-per-run", "2"])
    assert result.exit_code == 2 and "--max-batch-per-run applies to --backend ort-cpu or ort-cuda only" in result.output


def test_every_command_has_help_text():
    for name, command in main.commands.items():
        assert command.help and len(command.help.split()) >= 4, name
