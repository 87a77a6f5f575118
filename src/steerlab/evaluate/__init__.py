"""Measure what steering does: side-by-side generation, behaviour and coherence metrics, layer x strength
sweeps and calibration, probes and activation structure, the breakdown point, judges, plots and reports.

Built on the core (:mod:`steerlab`); nothing in the core imports it. Each submodule is public and documented;
the names most analyses need are re-exported here.

Example:
    >>> from steerlab.evaluate import calibrate, load_ab, sweep
    >>> questions = load_ab("datasets/caa/test/refusal/test_dataset_ab.json")[:20]
    >>> table = sweep(model, tokenizer, vec, questions, layers=[10, 12], alphas=[-0.2, 0, 0.2])
    >>> rec = calibrate(table, goal="increase")
"""

from steerlab._replay import logits_over_alphas
from steerlab.evaluate.baselines import prompting_baseline
from steerlab.evaluate.breakdown_point import breakdown
from steerlab.evaluate.circuits import mediation, patch_nodes
from steerlab.evaluate.comparison import Comparison, Generation, compare, generate_rows
from steerlab.evaluate.conditions import ConditionSearch, find_condition_point
from steerlab.evaluate.judges import RefusalClassifier, phrase_refusal
from steerlab.evaluate.metrics import (
    ABBehaviour,
    ABQuestion,
    NeutralKL,
    generation_perplexity,
    kl_from_unsteered,
    load_ab,
    logit_diff,
    neutral_texts,
    p_matching,
    sentiment,
    token_projections,
)
from steerlab.evaluate.patching import activation_patching, attribution_patching, logit_diff_metric, patching_error
from steerlab.evaluate.probes import (
    LabelledActivations,
    fit_probes,
    probe_layers,
    record_labelled,
    train_probe,
    transfer_matrix,
)
from steerlab.evaluate.report import write_report
from steerlab.evaluate.results import ResultTable
from steerlab.evaluate.sae import SparseAutoencoder, train_sae
from steerlab.evaluate.sae_targeting import FeatureEffects, compare_targeting, feature_effect, feature_effects
from steerlab.evaluate.structure import activation_covariance, activation_pca, cosine_matrix, cross_layer_cosine
from steerlab.evaluate.sweeps import DEFAULT_KL_BUDGET, Recommendation, calibrate, sweep

__all__ = [
    "DEFAULT_KL_BUDGET",
    "ABBehaviour",
    "ABQuestion",
    "Comparison",
    "ConditionSearch",
    "FeatureEffects",
    "Generation",
    "LabelledActivations",
    "NeutralKL",
    "Recommendation",
    "RefusalClassifier",
    "ResultTable",
    "SparseAutoencoder",
    "activation_covariance",
    "activation_patching",
    "activation_pca",
    "attribution_patching",
    "breakdown",
    "calibrate",
    "compare",
    "compare_targeting",
    "cosine_matrix",
    "cross_layer_cosine",
    "feature_effect",
    "feature_effects",
    "find_condition_point",
    "fit_probes",
    "generate_rows",
    "generation_perplexity",
    "kl_from_unsteered",
    "load_ab",
    "logit_diff",
    "logit_diff_metric",
    "logits_over_alphas",
    "mediation",
    "neutral_texts",
    "p_matching",
    "patch_nodes",
    "patching_error",
    "prompting_baseline",
    "phrase_refusal",
    "probe_layers",
    "record_labelled",
    "sentiment",
    "sweep",
    "token_projections",
    "train_sae",
    "train_probe",
    "transfer_matrix",
    "write_report",
]
