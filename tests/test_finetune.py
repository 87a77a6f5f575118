"""Steering while fine-tuning: the hooks are differentiable, exact (training under a hook equals training the model
with the same change baked into its weights), scoped, and a failed run leaves the model as it was."""

from __future__ import annotations

import copy
import warnings

import peft
import pytest
import torch

from steerlab import Intervention, directional_ablation, steer
from steerlab.arch import get_layout
from steerlab.bake import bake_addition, orthogonalize
from steerlab.errors import DataError, SteeringError, VectorMismatchError
from steerlab.finetune import finetune
from steerlab.recipes import steered_finetuning
from tiny import make_tiny, random_vector

TEXTS = ["the cat sat on the mat", "a dog ran in the park today", "rain fell all night long", "we ate bread"]


class CharTokenizer:
    """One token per character: real text for a tiny model without a tokenizer download."""

    bos_token = None
    chat_template = None
    pad_token_id = 0
    eos_token_id = 1

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [2 + ord(c) % 90 for c in text]}


TOK = CharTokenizer()
QKV = ["q_proj", "k_proj", "v_proj"]  # adapters that do not write to the residual stream


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_training_under_an_added_vector_equals_training_the_baked_model():
    model = make_tiny("llama")
    vec = random_vector(model, layers=(1,))
    add = Intervention(vec, alpha=1.0, scale="absolute")
    hooked = finetune(copy.deepcopy(model), TOK, TEXTS, steering=add, steps=4, batch_size=2, lr=1e-2, progress=False)
    baked = finetune(bake_addition(model, add), TOK, TEXTS, steps=4, batch_size=2, lr=1e-2, progress=False)
    plain = finetune(copy.deepcopy(model), TOK, TEXTS, steps=4, batch_size=2, lr=1e-2, progress=False)
    assert hooked.losses == pytest.approx(baked.losses, abs=1e-5)
    assert hooked.losses != pytest.approx(plain.losses, abs=1e-3)  # the steering did change training
    ours, theirs = _weights(hooked.model), _weights(baked.model)
    for name, value in ours.items():  # the same update everywhere; the baked model has its bias besides
        torch.testing.assert_close(value, theirs[name], atol=1e-5, rtol=1e-4)


def test_training_under_directional_ablation_equals_training_the_orthogonalised_model():
    model = make_tiny("llama")
    vec = random_vector(model, layers=(2,))
    ablation = directional_ablation(model, vec, source=2)
    kwargs = dict(steps=4, batch_size=2, lr=1e-2, target_modules=QKV, progress=False)
    hooked = finetune(copy.deepcopy(model), TOK, TEXTS, steering=ablation, **kwargs)
    baked = finetune(orthogonalize(model, vec, source=2), TOK, TEXTS, **kwargs)
    assert hooked.losses == pytest.approx(baked.losses, abs=1e-5)
    # The adapters learned the same update: the merged q/k/v weights differ from the originals by the same amount.
    start, ortho = _weights(model), _weights(orthogonalize(model, vec, source=2))
    ours, theirs = _weights(hooked.model), _weights(baked.model)
    for name in (n for n in ours if any(p in n for p in QKV)):
        torch.testing.assert_close(ours[name] - start[name], theirs[name] - ortho[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "mode, alpha", [("add", 1.0), ("ablate", 1.0), ("ablate_then_add", 0.5), ("clamp", (-0.2, 0.2))]
)
def test_gradients_flow_through_every_operator(mode, alpha):
    model = make_tiny("llama")
    vec = random_vector(model, layers=(1,))
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=QKV, lora_dropout=0.0))
    ids = torch.randint(2, 90, (2, 6))
    item = Intervention(vec, alpha=alpha, mode=mode, scale="absolute", positions="all", preserve_norm=mode == "add")
    with steer(wrapped, item):
        loss = wrapped(input_ids=ids, labels=ids).loss
    grads = torch.autograd.grad(loss, [p for p in wrapped.parameters() if p.requires_grad], allow_unused=True)
    used = [g for g in grads if g is not None]
    assert used and all(torch.isfinite(g).all() for g in used) and any(g.abs().sum() > 0 for g in used)
    wrapped.unload()


def test_a_peft_wrapper_is_steered_at_the_blocks_of_the_model_it_wraps():
    model = make_tiny("qwen2")
    base_blocks = get_layout(model).layers
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=QKV, lora_dropout=0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # found through the registry, not guessed
        layout = get_layout(wrapped)
    assert layout.layers is base_blocks and layout.source == "registry"
    wrapped.unload()


def test_a_failed_run_leaves_the_model_and_its_hooks_as_they_were(monkeypatch):
    from transformers import Trainer

    model = make_tiny("llama")
    before = _weights(model)
    names = [n for n, _ in model.named_modules()]
    vec = random_vector(model, layers=(1,))
    calls = []

    def failing_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory, say")
        return original(self, *args, **kwargs)

    original = Trainer.training_step
    monkeypatch.setattr(Trainer, "training_step", failing_step)
    with pytest.raises(RuntimeError, match="out of memory"):
        finetune(model, TOK, TEXTS, steering=Intervention(vec, alpha=1.0, scale="absolute"), steps=3,
                 batch_size=2, lr=1e-2, progress=False)  # fmt: skip
    assert len(calls) == 2  # it did train a step before failing
    assert [n for n, _ in model.named_modules()] == names  # no adapter left behind
    after = _weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())
    # the autouse fixture checks that no steering hook is left


def test_bad_input_fails_before_the_model_changes():
    model = make_tiny("llama")
    other = random_vector(make_tiny("gpt2"), layers=(1,))
    names = [n for n, _ in model.named_modules()]
    with pytest.raises(VectorMismatchError):
        finetune(model, TOK, TEXTS, steering=Intervention(other, alpha=1.0, scale="absolute"), steps=1)
    vec = random_vector(model, layers=(1,))
    with pytest.raises(SteeringError, match="generated"):
        finetune(model, TOK, TEXTS, steering=Intervention(vec, alpha=1.0, scale="absolute", positions="generated"))
    with pytest.raises(DataError, match="no"):
        finetune(model, TOK, [], steps=1)
    with pytest.raises(DataError, match="max_length"):
        finetune(model, TOK, ["x" * 50], steps=1, max_length=20)
    with pytest.raises(DataError, match="tokenises to nothing"):
        finetune(model, TOK, [("prompt", "")], steps=1)
    assert [n for n, _ in model.named_modules()] == names


def test_pairs_train_only_the_completion():
    model = make_tiny("llama")
    tuned = finetune(copy.deepcopy(model), TOK, [("the prompt ", "and its answer")] * 4, steps=2, batch_size=2,
                     lr=1e-2, progress=False)  # fmt: skip
    # The loss is the completion's alone: equal to the mean NLL of its 14 tokens under the untrained model.
    ids = torch.tensor([TOK("the prompt and its answer")["input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    nll = -logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]][-len("and its answer") :].mean()
    assert tuned.losses[0] == pytest.approx(float(nll), abs=1e-4)
    assert tuned.meta["n_examples"] == 4 and len(tuned.losses) == 2


def test_the_recipe_measures_every_arm_unsteered_beside_the_base_model(tiny, tokenizer):
    model = tiny("llama")
    trait = random_vector(model, layers=(2,))
    trait = type(trait)(**{**trait.__dict__, "resid_norm": {2: 4.0}})  # relative strengths need a recorded norm
    before = _weights(model)
    result = steered_finetuning(model, tokenizer, TEXTS, ["Tell me about", "Once upon"], trait, layer=2,
                                arms=("finetune", "add_trait", "ablate_random"), steps=2, batch_size=2,
                                max_new_tokens=4, chat=False, progress=False)  # fmt: skip
    assert [r["arm"] for r in result.table.records] == ["base", "finetune", "add_trait", "ablate_random"]
    assert all(torch.equal(before[k], v) for k, v in _weights(model).items())  # each arm trained its own copy
    rows = {r["arm"]: r for r in result.table.records}
    assert rows["finetune"]["change"] is None and rows["add_trait"]["change_lo"] <= rows["add_trait"]["change_hi"]
    assert rows["base"]["final_loss"] is None and len(result.losses["add_trait"]) == 2
    assert result.losses["add_trait"] != result.losses["finetune"]  # the steering was on while training
    assert all(r["n"] == 2 and r["projection_lo"] <= r["projection"] <= r["projection_hi"] for r in rows.values())
    assert "| add_trait | add trait |" in result.markdown()
    with pytest.raises(DataError, match="unknown arms"):
        steered_finetuning(model, tokenizer, TEXTS, ["x"], trait, layer=2, arms=("sideways",))
