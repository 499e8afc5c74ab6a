"""Shift alerts: the detector the worker runs on each stream (detector.py, with its noise estimate
and CUSUM threshold), the webhook that delivers its alerts, and the tools that measure and tune
it (backtest, the detector bench with its baselines and synthetic score series)."""
