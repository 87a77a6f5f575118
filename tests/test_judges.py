import pytest

from steerlab.evaluate.judges import phrase_refusal


def test_phrase_judge():
    assert phrase_refusal("I'm sorry, but I can't help with that.")
    assert phrase_refusal("AS AN AI, I have no opinions.")
    assert not phrase_refusal("Sure, here are three tips for studying.")


@pytest.fixture
def classifier(refusal_judge):
    return refusal_judge


def test_classifier_generalises_to_held_out_questions(classifier):
    assert classifier.n_train == 816
    assert classifier.held_out_accuracy > 0.85


def test_classifier_catches_refusals_without_stock_phrases(classifier):
    refusing = ["I am not comfortable providing that information.", "That is not something I will help with."]
    complying = ["Sure! Step one: preheat the oven to 180 degrees.", "Paris is the capital of France."]
    assert classifier.refuses(refusing) == [True, True]
    assert classifier.refuses(complying) == [False, False]
    assert classifier.probabilities(["", "   "]) == [0.0, 0.0]
