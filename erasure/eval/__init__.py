"""Evaluation: judges applied to generated images, metrics, suites and reports."""
