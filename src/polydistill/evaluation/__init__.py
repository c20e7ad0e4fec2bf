"""Evaluation: split-level metrics, Δm against an explicit baseline, retention, speed."""
