"""Evaluation of predicted SQL, as a library (it never imports a stage module):

- metrics.py: every metric of one prediction, and their means with bootstrap intervals;
- execution.py: test-suite execution scoring (does the prediction return the gold's result on
  every suite database?);
- recovery.py: value recovery (snap predicted literals to values that exist);
- errors.py: why a wrong prediction is wrong (error categories);
- suite_sources.py: the values the test suite is built from, and how SQLite compares them;
- false_pass.py: how often a wrong query passes the suite.

The stages medsql.evaluate, medsql.analyze_errors and medsql.build_suite use them."""
