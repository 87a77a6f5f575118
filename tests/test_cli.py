import json

import pytest
import torch
from typer.testing import CliRunner

from steerlab import SteeringVector
from steerlab._models import ModelFingerprint
from steerlab.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "pairs.jsonl"
    rows = [
        ("I love it.", "I hate it."),
        ("What a great day!", "What a terrible day!"),
        ("So happy.", "So sad."),
    ]
    path.write_text("\n".join(json.dumps({"positive": p, "negative": n}) for p, n in rows))
    return path


@pytest.fixture(scope="module")
def vector_file(pairs_file, smol):
    out = pairs_file.parent / "v.safetensors"
    result = runner.invoke(app, ["extract", "--pairs", str(pairs_file), "--layers", "8-9", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "extracted mean_diff from 3 pairs" in result.stderr
    return out


def test_extract_and_info(vector_file):
    vec = SteeringVector.load(vector_file)
    assert vec.layers == [8, 9] and vec.model_id == "smollm2-135m" and vec.method == "mean_diff"
    result = runner.invoke(app, ["info", str(vector_file)])
    assert result.exit_code == 0 and "smollm2-135m" in result.stdout and "mean_diff" in result.stdout
    header = json.loads(runner.invoke(app, ["info", str(vector_file), "--json"]).stdout)
    assert header["fingerprint"] == {"model_type": "llama", "hidden_size": 576, "num_layers": 30}
    assert set(header["resid_norm"]) == {"8", "9"}


def test_generate_json_lines(vector_file, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Tell me about your day.\n\nDescribe a cat.\n")
    result = runner.invoke(
        app,
        [
            "generate",
            "--vector",
            str(vector_file),
            "--prompts",
            str(prompts),
            "--alphas",
            "-0.2,0,0.2",
            "--max-new-tokens",
            "6",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["prompt"] for line in lines] == ["Tell me about your day.", "Describe a cat."]
    for line in lines:
        assert [g["alpha"] for g in line["generations"]] == [-0.2, 0.0, 0.2]  # relative: the default scale
        assert [g["size"] for g in line["generations"]] == [0.2, None, 0.2]
        assert all(g["text"] and g["nll"] > 0 for g in line["generations"])


def test_generate_uses_the_calibrated_setting(vector_file, tmp_path):
    """Without --alphas, a vector that carries a calibrated setting is shown unsteered and at that setting."""
    import dataclasses

    vec = SteeringVector.load(vector_file)
    rec = {"found": True, "layer": 9, "alpha": 0.1, "mode": "add", "scale": "relative"}
    path = dataclasses.replace(vec, extra={**vec.extra, "recommended": rec}).save(tmp_path / "cal.safetensors")
    base = ["generate", "--vector", str(path), "--prompt", "Hi", "--max-new-tokens", "3", "--json"]
    result = runner.invoke(app, base)
    assert result.exit_code == 0, result.output
    generations = json.loads(result.stdout.splitlines()[0])["generations"]
    assert [g["alpha"] for g in generations] == [None, 0.1] and "calibrated setting: layer 9" in result.stderr
    clash = runner.invoke(app, [*base, "--layers", "8"])
    assert clash.exit_code == 1 and "contradicts" in clash.stderr
    plain = runner.invoke(app, ["generate", "--vector", str(vector_file), "--prompt", "Hi", "--max-new-tokens", "2",
                                "--json"])  # fmt: skip
    assert [g["alpha"] for g in json.loads(plain.stdout.splitlines()[0])["generations"]] == [-0.15, 0.0, 0.15]


def test_generate_table(vector_file):
    result = runner.invoke(
        app,
        [
            "generate",
            "--vector",
            str(vector_file),
            "--prompt",
            "Hi there",
            "--layers",
            "9",
            "--positions",
            "generated",
            "--max-new-tokens",
            "5",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "unsteered" in result.stdout and "Hi there" in result.stdout
    assert "size" in result.stdout and "-0.15" in result.stdout and "+0.15" in result.stdout  # the default alphas


def test_generate_states_the_size_of_absolute_strengths_and_refuses_huge_ones(vector_file):
    vec = SteeringVector.load(vector_file)
    base = ["generate", "--vector", str(vector_file), "--prompt", "Hi", "--layers", "9", "--max-new-tokens", "3"]
    result = runner.invoke(app, [*base, "--scale", "absolute", "--alphas", "4", "--json"])
    assert result.exit_code == 0, result.output
    (steered,) = json.loads(result.stdout)["generations"]
    assert steered["size"] == pytest.approx(4 * float(vec.directions[9].norm()) / vec.resid_norm[9])
    one_line_error(runner.invoke(app, [*base, "--alphas", "1000"]), "past the limit of 3x")


def test_demo_runs(smol):
    result = runner.invoke(app, ["demo", "--max-new-tokens", "6"])
    assert result.exit_code == 0, result.output
    assert "sentiment vector" in result.stdout and result.stdout.count("(unsteered)") == 3


def usage_error(result, bad, choices):
    """The parser's refusal of a value outside a steerlab.types literal: exit 2, the value and the choices named."""
    text = " ".join(result.output.replace("│", " ").split())  # the message is boxed and wrapped
    assert result.exit_code == 2 and f"'{bad}' is not one of" in text and choices in text, result.output


def one_line_error(result, message):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert message in " ".join(result.stderr.split()), result.stderr


def test_error_paths(pairs_file, vector_file, tmp_path):
    out = str(tmp_path / "x.safetensors")
    one_line_error(
        runner.invoke(app, ["extract", "--pairs", str(tmp_path / "none.json"), "--layers", "3", "--out", out]),
        "does not exist",
    )
    one_line_error(
        runner.invoke(app, ["extract", "--pairs", str(pairs_file), "--layers", "ten", "--out", out]),
        "--layers 'ten' is not a list of integers",
    )
    one_line_error(
        runner.invoke(app, ["extract", "--pairs", str(pairs_file), "--layers", "30", "--out", out]),
        "layer index 30 is out of range: this model has 30 decoder layers",
    )
    # Choices come from steerlab.types: the parser refuses an unknown one (usage error, exit 2) and lists them.
    for args, choices in (
        (["extract", "--pairs", str(pairs_file), "--layers", "3", "--method", "magic", "--out", out], "'mean_diff'"),
        (["generate", "--vector", out, "--prompt", "hi", "--mode", "magic"], "'ablate_then_add', 'clamp'"),
        (["generate", "--vector", out, "--prompt", "hi", "--scale", "magic"], "'absolute', 'relative'"),
    ):
        usage_error(runner.invoke(app, args), "magic", choices)
    bad = tmp_path / "bad.safetensors"
    bad.write_text("not a vector")
    one_line_error(runner.invoke(app, ["info", str(bad)]), "not a readable .safetensors file")
    one_line_error(
        runner.invoke(app, ["generate", "--vector", str(vector_file)]),
        "give exactly one of --prompt TEXT or --prompts FILE",
    )
    one_line_error(
        runner.invoke(app, ["generate", "--vector", str(vector_file), "--prompt", "x", "--alphas", "a,b"]),
        "--alphas 'a,b' is not a list of numbers",
    )
    one_line_error(
        runner.invoke(app, ["generate", "--vector", str(vector_file), "--prompt", "x", "--layers", "12"]),
        "layers [12] are not in the vector, which has layers [8, 9]",
    )
    one_line_error(
        runner.invoke(app, ["generate", "--vector", str(vector_file), "--prompt", "x", "--positions", "middle"]),
        "positions='middle' is not valid",
    )
    foreign = tmp_path / "foreign.safetensors"
    SteeringVector({3: torch.ones(64)}, model_id="tiny", fingerprint=ModelFingerprint("gpt2", 64, 4)).save(foreign)
    one_line_error(
        runner.invoke(app, ["generate", "--vector", str(foreign), "--prompt", "x"]),
        "hidden size 64 (vector) vs 576 (model)",
    )


def test_generate_modes_sites_and_combined_vectors(vector_file):
    base = ["generate", "--prompt", "Describe a cat.", "--max-new-tokens", "5", "--json"]
    result = runner.invoke(
        app,
        [
            *base,
            "--vector",
            str(vector_file),
            "--vector",
            f"{vector_file}:-0.5",
            "--mode",
            "ablate_then_add",
            "--alphas",
            "-0.1,0.1",
            "--site",
            "mlp_out",
        ],
    )
    assert result.exit_code == 0, result.output
    gens = json.loads(result.stdout)["generations"]
    assert [g["alpha"] for g in gens] == [None, -0.1, 0.1]  # the unsteered model is shown first
    result = runner.invoke(app, [*base, "--vector", str(vector_file), "--mode", "clamp", "--alphas", "-1:1,:0"])
    assert result.exit_code == 0, result.output
    assert [g["alpha"] for g in json.loads(result.stdout)["generations"]] == [None, [-1.0, 1.0], [None, 0.0]]
    one_line_error(
        runner.invoke(app, [*base, "--vector", str(vector_file), "--mode", "clamp", "--alphas", "3"]),
        "mode clamp takes bands lo:hi",
    )
    usage_error(runner.invoke(app, [*base, "--vector", str(vector_file), "--mode", "boost"]), "boost", "'clamp'")
    usage_error(
        runner.invoke(app, [*base, "--vector", str(vector_file), "--site", "resid_mid"]), "resid_mid", "'resid_post'"
    )


def test_bake_add_and_ablate(vector_file, tmp_path, smol):
    from transformers import AutoModelForCausalLM

    from steerlab import steer

    result = runner.invoke(
        app, ["bake", "--vector", str(vector_file), "--alpha", "0.1", "--layers", "9", "--out", str(tmp_path / "baked")]
    )
    assert result.exit_code == 0, result.output
    assert "plain transformers reproduces the hooked logits" in result.stderr
    model, tokenizer = smol
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "baked").eval()
    ids = tokenizer("I think that", return_tensors="pt")
    vec = SteeringVector.load(vector_file)
    with torch.no_grad():
        with steer(model, vec, 0.1, layers=[9]):
            hooked = model(**ids).logits
        torch.testing.assert_close(plain(**ids).logits, hooked, rtol=1e-4, atol=1e-4)

    result = runner.invoke(
        app, ["bake", "--vector", str(vector_file), "--ablate", "--source-layer", "9", "--out", str(tmp_path / "ortho")]
    )
    assert result.exit_code == 0, result.output
    one_line_error(
        runner.invoke(app, ["bake", "--vector", str(vector_file), "--out", str(tmp_path / "baked")]),
        "exists and is not empty",
    )
    one_line_error(
        runner.invoke(app, ["bake", "--vector", str(vector_file), "--ablate", "--out", str(tmp_path / "o2")]),
        "the vector has layers [8, 9]; say whose direction to remove everywhere with --source-layer L.",
    )
    one_line_error(
        runner.invoke(app, ["bake", "--vector", str(vector_file), "--out", str(tmp_path / "o3")]),
        "give the strength with --alpha",
    )


def test_version_flag():
    import steerlab

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"steerlab {steerlab.__version__}"


def test_every_model_loading_command_takes_device_and_dtype():
    import typer

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        if "--model" in options:
            assert {"--device", "--dtype"} <= options, f"steerlab {name} takes --model but not --device/--dtype"


def test_optimize_promotes_a_completion_and_refuses_bad_data(smol, tmp_path):
    data = tmp_path / "targets.jsonl"
    data.write_text(json.dumps({"prompt": "Describe your day.", "completion": " It was wonderful"}) + "\n")
    out = tmp_path / "opt.safetensors"
    result = runner.invoke(app, ["optimize", "--data", str(data), "--objective", "promote", "--layer", "10",
                                 "--steps", "3", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    vec = SteeringVector.load(out)
    assert vec.layers == [10] and vec.method == "optimized_promote" and vec.extra["steps"] >= 1
    assert "optimised promote on 1 examples" in result.stderr and "--scale absolute" in result.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Only a prompt."}) + "\n")
    result = runner.invoke(app, ["optimize", "--data", str(bad), "--objective", "promote", "--layer", "10",
                                 "--out", str(tmp_path / "x.safetensors")])  # fmt: skip
    assert result.exit_code == 1 and "'prompt' and 'completion'" in result.stderr
    assert not (tmp_path / "x.safetensors").exists()
