"""Evaluation: metrics (pure numpy), baselines, reports."""
