import gguf
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from steerlab import SteeringVector
from steerlab.cli import app
from steerlab.errors import FormatError, VectorMismatchError
from steerlab.io import export_gguf, import_gguf
from tiny import random_vector


def write_control_vector(path, tensors, arch="controlvector", hint="llama"):
    """A control vector written the way repeng's export_gguf writes one (same calls, no steerlab header)."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string(f"{arch}.model_hint", hint)
    writer.add_uint32(f"{arch}.layer_count", len(tensors))
    for name, values in tensors.items():
        writer.add_tensor(name, np.asarray(values, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_round_trip_is_exact_with_metadata(tiny, tmp_path):
    model = tiny("llama")
    vec = random_vector(model, layers=(1, 3))
    vec.resid_norm = {1: 12.5, 3: 20.0}
    path = export_gguf(vec, tmp_path / "v.gguf")
    reader = gguf.GGUFReader(str(path))
    assert sorted(t.name for t in reader.tensors) == ["direction.1", "direction.3"]
    back = import_gguf(path, model)
    assert back.layers == [1, 3] and back.resid_norm == {1: 12.5, 3: 20.0}
    for layer in (1, 3):
        assert torch.equal(back.directions[layer], vec.directions[layer])


def test_repeng_style_file_imports(tiny, tmp_path):
    model = tiny("llama")
    values = np.linspace(-1, 1, 32, dtype=np.float32)
    path = write_control_vector(tmp_path / "r.gguf", {"direction.2": values, "direction.3": 2 * values})
    vec = import_gguf(path, model)
    assert vec.layers == [2, 3] and vec.method == "gguf-import"
    assert torch.equal(vec.directions[3], torch.from_numpy(2 * values))


def test_a_file_without_norms_gets_them_measured_so_relative_strengths_work(tiny, tokenizer, tmp_path):
    from steerlab import Intervention, record, steer
    from steerlab.errors import SteeringError

    model = tiny("llama")
    values = np.linspace(-1, 1, 32, dtype=np.float32)
    path = write_control_vector(tmp_path / "r.gguf", {"direction.2": values})
    bare = import_gguf(path, model)
    with pytest.raises(SteeringError, match=r"scale='relative' \(the default\) needs the residual norm"):
        Intervention(bare, alpha=0.1, scale="relative").deltas()
    texts = ["The weather is mild today.", "A train leaves the station at noon."]
    vec = import_gguf(path, model, tokenizer=tokenizer, norm_texts=texts)
    want = record(model, tokenizer, texts, layers=[2], reduce="mean").resid_norm[2]
    assert vec.resid_norm == {2: pytest.approx(want)} and vec.extra["resid_norm_measured_on"] == "2 texts at import"
    with steer(model, vec, alpha=0.1, scale="relative"):
        pass  # resolves: the measured norm makes a relative strength usable
    with pytest.raises(FormatError, match="norm_texts"):
        import_gguf(path, model, tokenizer=tokenizer)


def test_export_refusals(tiny, tmp_path):
    model = tiny("llama")
    with pytest.raises(FormatError, match="cannot load a direction for layer 0"):
        export_gguf(random_vector(model, layers=(0, 1)), tmp_path / "x.gguf")
    vec = random_vector(model, layers=(1,))
    vec.site = "mlp_out"
    with pytest.raises(FormatError, match="site 'mlp_out' and cannot be exported"):
        export_gguf(vec, tmp_path / "y.gguf")


def test_bad_files(tiny, tmp_path):
    model = tiny("llama")
    ones = np.ones(32, dtype=np.float32)
    cases = [
        (
            write_control_vector(tmp_path / "a.gguf", {"direction.1": ones}, arch="llama"),
            FormatError,
            "architecture 'llama', not a control vector",
        ),
        (write_control_vector(tmp_path / "b.gguf", {"direction.0": ones}), FormatError, "holds direction.0"),
        (
            write_control_vector(tmp_path / "c.gguf", {"direction.1": np.ones(64)}),
            VectorMismatchError,
            "has 64 values but the model's hidden size is 32",
        ),
        (
            write_control_vector(tmp_path / "d.gguf", {"direction.9": ones}),
            VectorMismatchError,
            "beyond the model's 4 layers",
        ),
        (write_control_vector(tmp_path / "e.gguf", {"bias.1": ones}), FormatError, "unexpected tensor 'bias.1'"),
        (write_control_vector(tmp_path / "f.gguf", {"direction.1": np.full(32, np.nan)}), FormatError, "NaN"),
    ]
    for path, error, message in cases:
        with pytest.raises(error, match=message):
            import_gguf(path, model)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF but not really")
    with pytest.raises(FormatError, match="not a readable GGUF file"):
        import_gguf(junk, model)
    with pytest.warns(UserWarning, match="model type 'mistral', the model is 'llama'"):
        import_gguf(write_control_vector(tmp_path / "g.gguf", {"direction.1": ones}, hint="mistral"), model)


def test_cli_export_import(tmp_path, smol):
    runner = CliRunner()
    vec = random_vector(smol[0], layers=(5, 6))
    src = vec.save(tmp_path / "v.safetensors")
    result = runner.invoke(app, ["export", str(src), "--format", "gguf", "--out", str(tmp_path / "v.gguf")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["import", str(tmp_path / "v.gguf"), "--out", str(tmp_path / "back.safetensors")])
    assert result.exit_code == 0, result.output
    back = SteeringVector.load(tmp_path / "back.safetensors")
    assert back.layers == [5, 6] and torch.equal(back.directions[6], vec.directions[6])
    result = runner.invoke(app, ["export", str(src), "--format", "onnx", "--out", str(tmp_path / "v.onnx")])
    assert result.exit_code == 1 and "use gguf or hub" in result.stderr
