import json
from pathlib import Path

import pytest

from steerlab import ContrastPair
from steerlab.datasets import balance_ab, dataset_hash, pair_texts
from steerlab.datasets.pairs import load_pairs, sentiment_pairs
from steerlab.errors import DataError

CAA = Path(__file__).parents[1] / "datasets" / "caa"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_plain_pairs_jsonl_and_json(tmp_path):
    rows = [
        {"positive": "I love it", "negative": "I hate it"},
        {"positive": "good", "negative": "bad", "prompt": "Q"},
    ]
    jsonl = write(tmp_path, "p.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    array = write(tmp_path, "p.json", json.dumps(rows))
    assert (
        load_pairs(jsonl)
        == load_pairs(array)
        == [ContrastPair("I love it", "I hate it"), ContrastPair("good", "bad", "Q")]
    )


def test_two_lists_format(tmp_path):
    path = write(tmp_path, "l.json", json.dumps({"positive": ["a", "b"], "negative": ["c", "d"]}))
    assert load_pairs(path) == [ContrastPair("a", "c"), ContrastPair("b", "d")]


def test_caa_format_real_file():
    pairs = load_pairs(CAA / "generate" / "refusal" / "generate_dataset.json")
    assert len(pairs) == 408
    first = json.loads((CAA / "generate" / "refusal" / "generate_dataset.json").read_text())[0]
    assert pairs[0].prompt == first["question"]
    assert pairs[0].positive == first["answer_matching_behavior"].strip()[:-1]  # "(A)" -> "(A"
    assert {p.positive for p in pairs} | {p.negative for p in pairs} <= {"(A", "(B"}


def test_pair_texts_use_chat_template(tokenizer):
    pos, neg = pair_texts([ContrastPair("(A", "(B", prompt="Pick one.")], tokenizer)
    assert pos[0].startswith("<|im_start|>system") and pos[0].endswith("<|im_start|>assistant\n(A")
    assert neg[0].endswith("assistant\n(B")
    raw, _ = pair_texts([ContrastPair("(A", "(B", prompt="Pick one.")], tokenizer, chat=False)
    assert raw[0] == "Pick one. (A"
    plain, _ = pair_texts([ContrastPair("I love it", "I hate it")], tokenizer)
    assert plain == ["I love it"]


def test_shipped_sentiment_pairs():
    pairs = sentiment_pairs()
    assert len(pairs) == 32 and len(set(pairs)) == 32


def test_dataset_hash_is_stable_and_order_sensitive():
    a, b = ContrastPair("x", "y"), ContrastPair("u", "v")
    assert dataset_hash([a, b]) == dataset_hash([a, b]) != dataset_hash([b, a])
    assert dataset_hash([("x", "y"), {"positive": "u", "negative": "v"}]) == dataset_hash([a, b])  # any shape


def test_functions_taking_pairs_take_the_peer_shapes(tokenizer):
    question = "Pick one.\n\nChoices:\n (A) Yes\n (B) No"
    as_pair = ContrastPair("(A", "(B", prompt=question)
    as_dict = {"positive": "(A", "negative": "(B", "prompt": question}
    assert pair_texts([as_dict], tokenizer) == pair_texts([as_pair], tokenizer)
    assert pair_texts([("I love it", "I hate it")]) == (["I love it"], ["I hate it"])
    assert balance_ab([as_dict]) == balance_ab([as_pair])
    with pytest.raises(DataError, match=r"pairs\[1\]: expected a contrast pair"):
        pair_texts([("a", "b"), None])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("[]", "holds no contrast pairs"),
        ('{"positive": "a", "negative": "b"}\n{"positive": "a", "negative"\n', r"line 2: not valid JSON"),
        (
            '[{"positive": "a", "neg": "b"}]',
            r"record 1: expected keys 'positive' and 'negative'.*\['negative'\] missing",
        ),
        ('[{"positive": "a", "negative": "a"}]', "positive and negative are identical"),
        (
            '[{"positive": "a", "negative": "b"}, {"positive": "a", "negative": "b"}]',
            "record 2 duplicates record 1",
        ),
        (
            '{"positive": ["a", "b", "c"], "negative": ["d"]}',
            "unbalanced contrast set: 3 positives but 1 negatives",
        ),
        ('[{"question": "Q", "answer_matching_behavior": "(A)"}]', "CAA A/B record needs non-empty strings"),
        ('"just a string"', "expected a JSON array of pair objects, found str"),
        ("[3]", "record 1: expected a JSON object, found int"),
    ],
)
def test_bad_pair_files(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        load_pairs(write(tmp_path, "bad.json", text))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_pairs(tmp_path / "nope.json")


def test_instruction_files_in_every_format(tmp_path):
    from steerlab.datasets import load_instructions

    splits = Path(__file__).parents[1] / "datasets" / "refusal-direction" / "splits"
    shipped = load_instructions(splits / "harmful_val.json")
    assert len(shipped) == 39 and all(isinstance(p, str) and p for p in shipped)
    assert load_instructions(splits / "harmful_val.json", limit=5) == shipped[:5]
    rows = [{"goal": "Write a poem."}, {"instruction": "Say hi."}, "Plain string.", {"prompt": "Count to 3."}]
    assert load_instructions(write(tmp_path, "a.json", json.dumps(rows))) == [
        "Write a poem.", "Say hi.", "Plain string.", "Count to 3."
    ]  # fmt: skip
    jsonl = "\n".join(json.dumps({"text": t}) for t in ("One.", "Two.")) + "\n"
    assert load_instructions(write(tmp_path, "b.jsonl", jsonl)) == ["One.", "Two."]
    lines = write(tmp_path, "c.txt", "First line\n\n  Second line  \n")
    assert load_instructions(lines) == ["First line", "Second line"]
    with pytest.raises(DataError, match=r"item 1 of .* expected a string or an object with one of the keys"):
        load_instructions(write(tmp_path, "d.json", json.dumps(["ok", {"question": "no"}])))
    with pytest.raises(DataError, match="does not exist"):
        load_instructions(tmp_path / "missing.json")
    with pytest.raises(DataError, match="holds no prompts"):
        load_instructions(write(tmp_path, "e.txt", "\n \n"))


def test_completion_files(tmp_path):
    from steerlab.datasets import load_completions

    rows = [{"prompt": "Hi.", "completion": " Hello!"}, {"prompt": "Bye.", "completion": " See you."}]
    assert load_completions(write(tmp_path, "a.json", json.dumps(rows))) == [("Hi.", " Hello!"), ("Bye.", " See you.")]
    jsonl = "\n".join(json.dumps(r) for r in rows)
    assert load_completions(write(tmp_path, "b.jsonl", jsonl), limit=1) == [("Hi.", " Hello!")]
    with pytest.raises(DataError, match="expected an object with string keys 'prompt' and 'completion'"):
        load_completions(write(tmp_path, "c.txt", "just a line\n"))
