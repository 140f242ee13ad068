"""`kflowers export`: each format, run by its own runtime, predicts what the `.keras` model predicts."""

import json
import os

import numpy as np
import pytest

import kflowers
from clitools import kflowers as run_cli
from kflowers.inference.export import ExportMismatch
from kflowers.inference.export import class_names_path
from kflowers.inference.export import export_model


@pytest.fixture(scope="module")
def model_file(small_model_file):
    return small_model_file


@pytest.mark.slow
@pytest.mark.parametrize("format", ["onnx", "saved_model", "litert"])
def test_export_is_checked_against_the_keras_model(model_file, flowers_dir, tmp_path, format):
    pytest.importorskip(
        "onnxruntime" if format == "onnx" else "tensorflow",
        reason=f"{format} export needs its runtime: pip install 'kflowers[export]'",
    )
    image = kflowers.scan_folder(flowers_dir).paths[0]
    out = tmp_path / f"flowers.{format}"
    result = run_cli("export", "--model", model_file, "--format", format, "--out", out, "--check-images", image)
    assert f"{format}: {out} (checked on 5 images: same top-1" in result.stdout
    assert os.path.exists(out) and [n for n in os.listdir(tmp_path) if n.startswith(".")] == []
    names = ["daisy", "dandelion", "rose", "sunflower", "tulip"]
    if format == "onnx":
        import onnx

        assert json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["class_names"]) == names
    else:
        with open(class_names_path(format, str(out))) as f:
            assert json.load(f) == names
    if format == "onnx":  # the file stands on its own: run it here, on another batch size
        import onnxruntime

        pixels = np.random.default_rng(5).integers(0, 256, (3, 32, 32, 3)).astype("float32")
        got = onnxruntime.InferenceSession(str(out)).run(None, {"images": pixels})[0]
        expected = kflowers.load_model(model_file).predict(pixels, verbose=0)
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_an_export_that_disagrees_is_not_kept(model_file, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the onnx export needs onnxruntime: pip install 'kflowers[export]'")
    import keras

    from kflowers.inference import export

    if keras.backend.backend() != "torch":
        pytest.skip("exercised in-process on the torch backend, where onnx is exported")
    real = export.RUNNERS["onnx"]
    monkeypatch.setitem(export.RUNNERS, "onnx", lambda path, pixels: real(path, pixels)[:, ::-1])
    with pytest.raises(ExportMismatch, match="the onnx export disagrees with .*top-1 differs"):
        export_model(model_file, "onnx", tmp_path / "bad.onnx")
    assert os.listdir(tmp_path) == []


def test_unknown_format_and_missing_model_are_one_line(model_file, tmp_path):
    result = run_cli("export", "--model", model_file, "--format", "coreml", "--out", tmp_path / "x", check=False)
    assert result.returncode == 2 and "invalid choice: 'coreml'" in result.stderr
    result = run_cli(
        "export", "--model", tmp_path / "none.keras", "--format", "onnx", "--out", tmp_path / "x", check=False
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "model file not found" in result.stderr


@pytest.mark.one_backend  # the refusal comes before any exporter runs
def test_a_quantized_model_is_refused_in_one_line_where_the_exporter_cannot_convert_it(model_file, tmp_path):
    """Issue 34, item 9: `model.quantize("int8")` then ONNX export failed deep in torch's exporter with
    "Couldn't export operator aten::to" (and TFLite's converter on int8 kernels): one line saying why."""
    from kflowers.inference.export import quantization_mode

    model = kflowers.load_model(model_file)
    assert quantization_mode(model) is None
    model.quantize("int8")
    assert quantization_mode(model) == "int8"
    quantized = tmp_path / "int8.keras"
    kflowers.save_model(model, quantized, model.class_names)
    result = run_cli("export", "--model", quantized, "--format", "onnx", "--out", tmp_path / "int8.onnx", check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "is quantized (int8)" in lines[0] and "aten::to" in lines[0] and "saved_model" in lines[0]
    assert not (tmp_path / "int8.onnx").exists()
