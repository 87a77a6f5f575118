import pytest
import torch

from steerlab import record
from steerlab.engines import encode
from steerlab.errors import ArchitectureError, DataError
from tiny import ARCHS

TEXTS = [
    "I love it",
    "The weather today is grey and cold, and the streets are wet.",
    "No",
    "Tell me a story.",
]
LAYERS = [0, 2]


def reference(model, tokenizer, text, layer):
    ids = torch.tensor([encode(tokenizer, [text])[0]])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    return out.hidden_states[layer + 1][0]  # (tokens, hidden); index 0 is the embeddings


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.filterwarnings("ignore:some texts have a single token")
def test_recorded_equals_output_hidden_states(tiny, tokenizer, arch, side):
    model = tiny(arch)
    last = record(model, tokenizer, TEXTS, layers=LAYERS, reduce="last", batch_size=3, padding_side=side)
    mean = record(model, tokenizer, TEXTS, layers=LAYERS, reduce="mean", batch_size=3, padding_side=side)
    every = record(model, tokenizer, TEXTS, layers=LAYERS, reduce="all", batch_size=3, padding_side=side)
    for layer in LAYERS:
        for i, text in enumerate(TEXTS):
            ref = reference(model, tokenizer, text, layer)
            torch.testing.assert_close(last.values[layer][i], ref[-1], rtol=1e-4, atol=1e-4)
            kept = ref[1:] if ref.shape[0] > 1 else ref  # the attention-sink token is left out
            torch.testing.assert_close(mean.values[layer][i], kept.mean(0), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(every.per_text(layer)[i], kept, rtol=1e-4, atol=1e-4)


def test_sink_token_can_be_included(tiny, tokenizer):
    model = tiny("llama")
    acts = record(model, tokenizer, TEXTS[:2], layers=[1], reduce="mean", exclude_first_token=False)
    ref = reference(model, tokenizer, TEXTS[1], 1)
    torch.testing.assert_close(acts.values[1][1], ref.mean(0), rtol=1e-4, atol=1e-4)


def test_forward_stops_after_deepest_layer(tiny, tokenizer):
    model = tiny("llama")
    calls = []
    handles = [
        model.model.layers[3].register_forward_hook(lambda *a: calls.append("layer3")),
        model.lm_head.register_forward_hook(lambda *a: calls.append("lm_head")),
    ]
    try:
        record(model, tokenizer, TEXTS, layers=[1, 2])
        assert calls == []
        model(input_ids=torch.tensor([[5, 6, 7]]))
        assert calls == ["layer3", "lm_head"]  # the user's hooks are still there, untouched
    finally:
        for h in handles:
            h.remove()


def test_resid_norm_is_mean_token_norm(tiny, tokenizer):
    model = tiny("qwen2")
    texts = [t for t in TEXTS if len(encode(tokenizer, [t])[0]) > 1]
    acts = record(model, tokenizer, texts, layers=[2], reduce="last")
    norms = torch.cat([reference(model, tokenizer, t, 2)[1:].norm(dim=-1) for t in texts])
    assert acts.resid_norm[2] == pytest.approx(float(norms.mean()), rel=1e-4)


def test_single_token_text_warns_and_keeps_its_token(tiny, tokenizer):
    model = tiny("llama")
    assert len(encode(tokenizer, ["No"])[0]) == 1
    with pytest.warns(UserWarning, match="single token"):
        acts = record(model, tokenizer, ["No", "I love it"], layers=[1], reduce="mean")
    torch.testing.assert_close(acts.values[1][0], reference(model, tokenizer, "No", 1)[0], rtol=1e-4, atol=1e-4)


def test_bad_inputs(tiny, tokenizer):
    model = tiny("gpt2")
    with pytest.raises(DataError, match="no texts"):
        record(model, tokenizer, [], layers=[0])
    with pytest.raises(DataError, match="non-empty string"):
        record(model, tokenizer, ["ok", ""], layers=[0])
    with pytest.raises(ArchitectureError, match="layer index 9 is out of range"):
        record(model, tokenizer, ["ok"], layers=[9])
    with pytest.raises(DataError, match="reduce="):
        record(model, tokenizer, ["ok"], layers=[0], reduce="max")
