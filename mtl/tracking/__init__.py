"""Experiment tracking: the MLflow record of a sweep (a parent run, a child run per trial).

:mod:`mtl.tracking.uri` resolves and checks a tracking URI before anything is written,
:mod:`mtl.tracking.mlflow` keeps the runs, :mod:`mtl.tracking.runlog` writes into one run. The
package consumes :mod:`mtl.results` types and plain values; it imports neither Ray nor the sweep
driver, and mlflow only inside the functions that write.
"""
