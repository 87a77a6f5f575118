"""Tiny random-initialised causal LMs of every registered architecture, for exact invariants.

A registered model type without a config here must be listed in tests/test_arch.py's ALIASES (the test there
fails otherwise). By default their vocabulary is small (SMALL_VOCAB: the LM head is most of a tiny model's
compute, ~9x faster forwards than at SmolLM2's 49152). A model that the real tokenizer feeds text needs SmolLM2's
vocabulary: ``make_tiny(arch, vocab=SMOL_VOCAB)``; the ``tiny`` fixture gives those to tests that use the
``tokenizer`` fixture.
"""

from __future__ import annotations

import torch
import transformers as tf

from steerlab import SteeringVector
from steerlab._models import fingerprint, model_id
from steerlab.engines import pad_batch

SMOL_VOCAB = 49152  # SmolLM2's: the real tokenizer's ids
SMALL_VOCAB = 4096  # above every token id the tests write by hand (PROMPTS)
WIDTH = 32
LAYERS = 4

_COMMON = dict(
    hidden_size=WIDTH,
    num_hidden_layers=LAYERS,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=256,
)

# arch -> config of that architecture with vocabulary size v
CONFIGS = {
    "gpt2": lambda v: tf.GPT2Config(vocab_size=v, n_embd=WIDTH, n_layer=LAYERS, n_head=4, n_positions=256),
    "llama": lambda v: tf.LlamaConfig(**_COMMON, vocab_size=v, num_key_value_heads=2),
    "mistral": lambda v: tf.MistralConfig(**_COMMON, vocab_size=v, num_key_value_heads=2),
    "qwen2": lambda v: tf.Qwen2Config(**_COMMON, vocab_size=v, num_key_value_heads=2),
    "qwen3": lambda v: tf.Qwen3Config(**_COMMON, vocab_size=v, num_key_value_heads=2, head_dim=8),
    "gemma": lambda v: tf.GemmaConfig(**_COMMON, vocab_size=v, num_key_value_heads=2, head_dim=8),
    "gemma2": lambda v: tf.Gemma2Config(**_COMMON, vocab_size=v, num_key_value_heads=2, head_dim=8),
    "gemma3_text": lambda v: tf.Gemma3TextConfig(**_COMMON, vocab_size=v, num_key_value_heads=2, head_dim=8),
    "phi3": lambda v: tf.Phi3Config(**_COMMON, vocab_size=v, num_key_value_heads=2, pad_token_id=0),
    "gpt_neox": lambda v: tf.GPTNeoXConfig(**_COMMON, vocab_size=v),
    "olmo": lambda v: tf.OlmoConfig(**_COMMON, vocab_size=v),
    "olmo2": lambda v: tf.Olmo2Config(**_COMMON, vocab_size=v),
    "phi": lambda v: tf.PhiConfig(**_COMMON, vocab_size=v),
    # Logits multiplied by config.logit_scale; attention and MLP in parallel.
    "cohere": lambda v: tf.CohereConfig(**_COMMON, vocab_size=v, num_key_value_heads=2),
    # Logits divided by config.logits_scaling, sublayer outputs multiplied by config.residual_multiplier before
    # the residual add (both 1.0 by default, which would hide a fact steerlab forgot).
    "granite": lambda v: tf.GraniteConfig(
        **_COMMON, vocab_size=v, num_key_value_heads=2, logits_scaling=4.0, residual_multiplier=0.5
    ),
    "opt": lambda v: tf.OPTConfig(
        vocab_size=v,
        hidden_size=WIDTH,
        word_embed_proj_dim=WIDTH,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        ffn_dim=64,
        max_position_embeddings=256,
    ),
    # These four still return tuples from their decoder layers in transformers 5.
    "gpt_neo": lambda v: tf.GPTNeoConfig(
        vocab_size=v,
        hidden_size=WIDTH,
        num_layers=LAYERS,
        num_heads=4,
        attention_types=[[["global", "local"], LAYERS // 2]],
        max_position_embeddings=256,
    ),
    "gptj": lambda v: tf.GPTJConfig(
        vocab_size=v, n_embd=WIDTH, n_layer=LAYERS, n_head=4, rotary_dim=4, n_positions=256
    ),
    "falcon": lambda v: tf.FalconConfig(
        vocab_size=v, hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=4
    ),
    "bloom": lambda v: tf.BloomConfig(vocab_size=v, hidden_size=WIDTH, n_layer=LAYERS, n_head=4),
}

ARCHS = sorted(CONFIGS)


def make_tiny(arch: str, seed: int = 0, vocab: int = SMALL_VOCAB) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = CONFIGS[arch](vocab)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = 1, 2, 2  # SmolLM2's ids
    model = tf.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    # Random init at this width leaves activations tiny; scale embeddings up so steering effects and padding
    # mistakes are far above float noise.
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(20.0)
    model.eval()
    model.config.name_or_path = f"tiny-{arch}"  # what from_pretrained would set: the name model_id() reports
    return model


PROMPTS = [[5, 17, 923, 44, 8], [301, 7], [12, 99, 4000, 18, 2711, 36, 70]]


def random_vector(model, layers=(1,), seed=1, scale=3.0) -> SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    fp = fingerprint(model)
    dirs = {layer: torch.randn(fp.hidden_size, generator=gen) * scale for layer in layers}
    return SteeringVector(dirs, model_id=model_id(model), fingerprint=fp)


def greedy(model, rows, *, use_cache=True, new=6):
    ids, mask = pad_batch(rows, 2, side="left")
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new,
            do_sample=False,
            use_cache=use_cache,
            pad_token_id=2,
            eos_token_id=None,
        )
    return out[:, ids.shape[1] :]
