"""Evaluation of predicted SQL: metrics (metrics.py), value recovery (recovery.py), error
categories (errors.py). The stages medsql.evaluate and medsql.analyze_errors use them."""
