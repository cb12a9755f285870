"""Strata layers: the content-addressed layer store."""
