"""Plots and the run report."""
