from dataclasses import dataclass

import pytest
import torch

from steerlab._extract import METHODS, actadd, mean_diff, pca_center, pca_diff
from steerlab.errors import ExtractionError


def planted(n=40, hidden=24, strength=3.0, seed=0):
    """Pairs that differ along a planted unit direction, plus shared per-pair content and noise."""
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(hidden, generator=gen)
    direction /= direction.norm()
    content = torch.randn(n, hidden, generator=gen) * 2.0
    amount = strength * (1 + 0.5 * torch.rand(n, 1, generator=gen))  # pairs differ by how much, not which way
    noise = lambda: torch.randn(n, hidden, generator=gen) * 0.05  # noqa: E731
    pos = content + amount / 2 * direction + noise()
    neg = content - amount / 2 * direction + noise()
    return pos, neg, direction


def cosine(a, b):
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


@pytest.mark.parametrize("method", ["mean_diff", "pca_diff", "pca_center"])
def test_recovers_planted_direction_with_sign(method):
    pos, neg, direction = planted()
    found = METHODS[method](pos, neg)
    assert cosine(found, direction) > 0.99
    flipped = METHODS[method](neg, pos)  # swapping the roles flips the sign
    assert cosine(flipped, direction) < -0.99


def test_mean_diff_keeps_magnitude_pca_is_unit():
    pos, neg, _ = planted(strength=4.0)
    assert float(mean_diff(pos, neg).norm()) == pytest.approx(float((pos - neg).mean(0).norm()), rel=1e-5)
    assert float(pca_diff(pos, neg).norm()) == pytest.approx(1.0, abs=1e-6)
    assert float(pca_center(pos, neg).norm()) == pytest.approx(1.0, abs=1e-6)


def test_pca_diff_is_the_axis_of_variation_of_the_differences():
    # Differences = a constant offset along e0 plus a varying amount along e1: pca_diff (centred, as repeng)
    # finds e1; pca_center (uncentred) is dominated by the large constant offset e0.
    n, hidden = 30, 8
    amount = torch.linspace(-1, 1, n)[:, None]
    e0, e1 = torch.eye(hidden)[0], torch.eye(hidden)[1]
    pos = 10 * e0 + amount * e1 + torch.randn(n, hidden) * 1e-3
    neg = torch.zeros(n, hidden)
    assert abs(cosine(pca_diff(pos, neg), e1)) > 0.99
    assert cosine(pca_center(pos, neg), e0) > 0.99


def test_actadd_single_pair():
    pos, neg = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, -1.0]])
    assert torch.equal(actadd(pos, neg), torch.tensor([0.5, 3.0]))
    with pytest.raises(ExtractionError, match="actadd needs exactly 1 pair, found 2"):
        actadd(torch.zeros(2, 2), torch.ones(2, 2))


def test_bad_activations():
    with pytest.raises(ExtractionError, match=r"same shape; found \(3, 4\) and \(2, 4\)"):
        mean_diff(torch.zeros(3, 4), torch.zeros(2, 4))
    bad = torch.zeros(3, 4)
    bad[1, 2] = float("nan")
    with pytest.raises(ExtractionError, match=r"pairs \[1\] contain NaN"):
        mean_diff(bad, torch.ones(3, 4))
    with pytest.raises(ExtractionError, match="pca_diff needs at least 2 pairs, found 1"):
        pca_diff(torch.zeros(1, 4), torch.ones(1, 4))
    with pytest.raises(ExtractionError, match="all pair differences are identical"):
        pca_diff(torch.ones(3, 4), torch.zeros(3, 4))


PAIRS_TEXT = [
    ("I loved the film", "I hated the film"),
    ("What a wonderful, bright morning it is", "What a dreadful morning"),
    ("Great, just great", "Awful, truly awful and boring"),
    ("The team won again and we celebrated", "The team lost"),
    ("Kind words", "Cruel words"),
]


@pytest.mark.parametrize(
    ("arch", "method", "reduce", "site", "batch_size"),
    [
        ("llama", "mean_diff", "last", "resid_post", 3),
        ("llama", "pca_diff", "mean", "resid_post", 4),
        ("gpt2", "pca_center", "last", "attn_out", 1),
        ("gemma2", "mean_diff", "mean", "mlp_out", 16),
        ("gpt_neox", "pca_diff", "last", "resid_pre", 2),
    ],
)
def test_streaming_extraction_equals_record_then_method(tiny, tokenizer, arch, method, reduce, site, batch_size):
    from steerlab import ContrastPair, extract_vector, record

    model = tiny(arch)
    pairs = [ContrastPair(p, n) for p, n in PAIRS_TEXT]
    vec = extract_vector(
        model, tokenizer, pairs, layers=[1, 3], method=method, reduce=reduce, site=site, batch_size=batch_size
    )
    texts = [p for p, _ in PAIRS_TEXT] + [n for _, n in PAIRS_TEXT]
    acts = record(model, tokenizer, texts, layers=[1, 3], reduce=reduce, site=site, batch_size=7)
    for layer in (1, 3):
        values = acts.values[layer]
        expected = METHODS[method](values[:5], values[5:])
        torch.testing.assert_close(vec.directions[layer], expected, rtol=1e-5, atol=1e-5)
        assert vec.resid_norm[layer] == pytest.approx(acts.resid_norm[layer], rel=1e-5)
    assert vec.site == site


def test_too_few_pairs_fail_before_the_model_runs(tiny, tokenizer):
    from steerlab import ContrastPair, extract_vector

    model = tiny("llama")
    one = [ContrastPair("good", "bad")]
    with pytest.raises(ExtractionError, match="pca_diff needs at least 2 pairs, found 1"):
        extract_vector(model, tokenizer, one, layers=[1], method="pca_diff")
    with pytest.raises(ExtractionError, match="actadd needs exactly 1 pair, found 2"):
        extract_vector(model, tokenizer, one * 2, layers=[1], method="actadd")


SHARED_BEGINNINGS = [
    ("The weather report for tomorrow says it will be sunny and warm", "The weather report for tomorrow says rain"),
    ("Question: is the sky blue? Answer: (A) yes", "Question: is the sky blue? Answer: (B) no"),
    ("My honest review of the new phone: wonderful", "My honest review of the new phone: awful, slow and broken"),
    ("In short, I think we did great", "Sad"),  # nothing shared: runs whole, beside the shared ones
]


@pytest.mark.parametrize("arch", __import__("tiny").ARCHS)
def test_shared_prefixes_give_the_numbers_of_whole_texts(tiny, tokenizer, arch, monkeypatch):
    from steerlab import ContrastPair, extract_vector
    from steerlab._record import ActivationReader
    from steerlab._text import takes_position_ids

    model = tiny(arch)
    calls = []
    original = ActivationReader.run_pairs
    monkeypatch.setattr(ActivationReader, "run_pairs", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    pairs = [ContrastPair(p, n) for p, n in SHARED_BEGINNINGS]
    options = dict(layers=[1, 3], method="pca_diff", batch_size=4, chat=False)
    shared = extract_vector(model, tokenizer, pairs, share_prefixes=True, **options)
    whole = extract_vector(model, tokenizer, pairs, share_prefixes=False, **options)
    for layer in (1, 3):
        torch.testing.assert_close(shared.directions[layer], whole.directions[layer], rtol=1e-4, atol=1e-4)
        assert shared.resid_norm[layer] == pytest.approx(whole.resid_norm[layer], rel=1e-4)
    assert bool(calls) == takes_position_ids(model)  # the shared path ran wherever it applies (not Bloom)


@dataclass(frozen=True)
class DatasetEntry:
    """repeng's pair type, as repeng defines it (a dataclass with two text fields)."""

    positive: str
    negative: str


def test_peer_shapes_give_the_vector_of_contrast_pairs(tiny, tokenizer):
    """steering-vectors' tuples, repeng's dicts and DatasetEntry objects are the same pairs as ContrastPairs."""
    from steerlab import ContrastPair, extract_vector

    model = tiny("llama")
    prompted = ("Pick one.", "(A", "(B")
    pairs = [ContrastPair(p, n) for p, n in PAIRS_TEXT] + [ContrastPair(prompted[1], prompted[2], prompted[0])]
    shapes = {
        "tuples": [(p, n) for p, n in PAIRS_TEXT],
        "lists": [[p, n] for p, n in PAIRS_TEXT],
        "dicts": [{"positive": p, "negative": n} for p, n in PAIRS_TEXT],
        "DatasetEntry": [DatasetEntry(p, n) for p, n in PAIRS_TEXT],
    }
    options = dict(layers=[1, 3], method="pca_diff", batch_size=3)
    expected = extract_vector(model, tokenizer, pairs, **options)
    prompt_dict = {"positive": prompted[1], "negative": prompted[2], "prompt": prompted[0]}
    for name, items in shapes.items():
        vec = extract_vector(model, tokenizer, iter([*items, prompt_dict]), **options)  # any iterable
        for layer in (1, 3):
            assert torch.equal(vec.directions[layer], expected.directions[layer]), name
        assert vec.dataset_hash == expected.dataset_hash, name


@pytest.mark.parametrize(
    ("pairs", "found"),
    [
        ([("good", "bad"), 3], r"pairs\[1\]: .*found int 3"),
        ([("good", "bad"), ("a", "b", "c")], r"pairs\[1\]: .*found a tuple of length 3"),
        ([("good", "bad"), ("fine", "")], r"pairs\[1\]: 'negative' must be a non-empty string"),
        ([{"positive": "good", "neg": "bad"}], r"pairs\[0\]: expected keys 'positive' and 'negative'.*\['negative'\]"),
        ([{"positive": "good", "negative": "bad", "prompt": 1}], r"pairs\[0\]: 'prompt' must be a string"),
        (("good", "bad"), "found a single tuple; wrap it in a list"),
        ("good", "found a single str"),
    ],
)
def test_a_bad_pair_is_refused_by_index_with_the_accepted_shapes(pairs, found):
    from steerlab import extract_vector
    from steerlab.errors import DataError

    # Checked before the model is touched: none is needed to see the error.
    with pytest.raises(DataError, match=found) as caught:
        extract_vector(None, None, pairs, layers=[0])
    if "expected a contrast pair" in str(caught.value) or "single" in str(caught.value):
        for shape in ("ContrastPair", "(positive, negative) tuple", "keys 'positive' and 'negative'", "DatasetEntry"):
            assert shape in str(caught.value)


def test_negative_layers_count_from_the_last_and_none_is_every_block(tiny, tokenizer):
    from steerlab import extract_vector, record
    from steerlab.errors import ArchitectureError
    from tiny import LAYERS

    model = tiny("gpt2")
    pairs = PAIRS_TEXT
    positive = extract_vector(model, tokenizer, pairs, layers=[LAYERS - 3, LAYERS - 1])
    negative = extract_vector(model, tokenizer, pairs, layers=[-1, -3])
    assert negative.layers == positive.layers == [LAYERS - 3, LAYERS - 1]  # stored 0-based
    for layer in positive.layers:
        assert torch.equal(negative.directions[layer], positive.directions[layer])
    assert list(negative.resid_norm) == positive.layers
    every = extract_vector(model, tokenizer, pairs)
    assert every.layers == list(range(LAYERS))
    for layer in positive.layers:
        torch.testing.assert_close(every.directions[layer], positive.directions[layer], rtol=1e-6, atol=1e-6)
    assert record(model, tokenizer, ["ok"]).layers == list(range(LAYERS))
    assert extract_vector(model, tokenizer, pairs, layers=[-1, LAYERS - 1]).layers == [LAYERS - 1]
    for bad in (-LAYERS - 1, LAYERS):
        with pytest.raises(ArchitectureError, match=rf"layer index {bad} is out of range.*-{LAYERS}\.\.-1 counted"):
            extract_vector(model, tokenizer, pairs, layers=[bad])
