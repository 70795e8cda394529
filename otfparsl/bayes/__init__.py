"""Bayesian machinery in plain torch: sigma head, likelihood, transfer prior, SGHMC chains."""

from otfparsl.bayes.chain import Chain, ChainUpdateStats, load_sample, minibatch_objective
from otfparsl.bayes.heads import SigmaHead
from otfparsl.bayes.likelihood import log_likelihood
from otfparsl.bayes.model import BayesianModel
from otfparsl.bayes.prior import TransferPrior
from otfparsl.bayes.sghmc import (
    AMSGradSGHMC,
    SGHMCConfig,
    cosine_step_size,
    noise_temperature,
    sample_minibatch,
)
from otfparsl.bayes.types import Batch, CoreModel, Prediction

__all__ = [
    "AMSGradSGHMC",
    "Batch",
    "BayesianModel",
    "Chain",
    "ChainUpdateStats",
    "CoreModel",
    "Prediction",
    "SGHMCConfig",
    "SigmaHead",
    "TransferPrior",
    "cosine_step_size",
    "load_sample",
    "log_likelihood",
    "minibatch_objective",
    "noise_temperature",
    "sample_minibatch",
]
