"""Tests of qelm_core/classify."""
