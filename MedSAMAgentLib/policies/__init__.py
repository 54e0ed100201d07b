"""Policies propose the next action; see ``base.Policy``."""

from .base import Observation, Policy, PolicyError, Proposal

__all__ = ["Observation", "Policy", "PolicyError", "Proposal"]
