"""Tiny random-initialised causal LMs of every registered architecture, for exact invariants.

A registered model type without a config here must be listed in tests/test_arch.py's ALIASES (the test there
fails otherwise). They use SmolLM2's vocabulary size so that the real tokenizer can feed them text.
"""

from __future__ import annotations

import torch
import transformers as tf

from steerlab import SteeringVector
from steerlab._models import fingerprint, model_id
from steerlab.engines import pad_batch

VOCAB = 49152
WIDTH = 32
LAYERS = 4

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=WIDTH,
    num_hidden_layers=LAYERS,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=256,
)

CONFIGS = {
    "gpt2": lambda: tf.GPT2Config(vocab_size=VOCAB, n_embd=WIDTH, n_layer=LAYERS, n_head=4, n_positions=256),
    "llama": lambda: tf.LlamaConfig(**_COMMON, num_key_value_heads=2),
    "mistral": lambda: tf.MistralConfig(**_COMMON, num_key_value_heads=2),
    "qwen2": lambda: tf.Qwen2Config(**_COMMON, num_key_value_heads=2),
    "qwen3": lambda: tf.Qwen3Config(**_COMMON, num_key_value_heads=2, head_dim=8),
    "gemma": lambda: tf.GemmaConfig(**_COMMON, num_key_value_heads=2, head_dim=8),
    "gemma2": lambda: tf.Gemma2Config(**_COMMON, num_key_value_heads=2, head_dim=8),
    "gemma3_text": lambda: tf.Gemma3TextConfig(**_COMMON, num_key_value_heads=2, head_dim=8),
    "phi3": lambda: tf.Phi3Config(**_COMMON, num_key_value_heads=2, pad_token_id=0),
    "gpt_neox": lambda: tf.GPTNeoXConfig(**_COMMON),
    "olmo": lambda: tf.OlmoConfig(**_COMMON),
    "olmo2": lambda: tf.Olmo2Config(**_COMMON),
    "phi": lambda: tf.PhiConfig(**_COMMON),
    # Logits multiplied by config.logit_scale; attention and MLP in parallel.
    "cohere": lambda: tf.CohereConfig(**_COMMON, num_key_value_heads=2),
    # Logits divided by config.logits_scaling, sublayer outputs multiplied by config.residual_multiplier before
    # the residual add (both 1.0 by default, which would hide a fact steerlab forgot).
    "granite": lambda: tf.GraniteConfig(**_COMMON, num_key_value_heads=2, logits_scaling=4.0, residual_multiplier=0.5),
    "opt": lambda: tf.OPTConfig(
        vocab_size=VOCAB,
        hidden_size=WIDTH,
        word_embed_proj_dim=WIDTH,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        ffn_dim=64,
        max_position_embeddings=256,
    ),
    # These four still return tuples from their decoder layers in transformers 5.
    "gpt_neo": lambda: tf.GPTNeoConfig(
        vocab_size=VOCAB,
        hidden_size=WIDTH,
        num_layers=LAYERS,
        num_heads=4,
        attention_types=[[["global", "local"], LAYERS // 2]],
        max_position_embeddings=256,
    ),
    "gptj": lambda: tf.GPTJConfig(
        vocab_size=VOCAB, n_embd=WIDTH, n_layer=LAYERS, n_head=4, rotary_dim=4, n_positions=256
    ),
    "falcon": lambda: tf.FalconConfig(
        vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=4
    ),
    "bloom": lambda: tf.BloomConfig(vocab_size=VOCAB, hidden_size=WIDTH, n_layer=LAYERS, n_head=4),
}

ARCHS = sorted(CONFIGS)


def make_tiny(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = CONFIGS[arch]()
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
