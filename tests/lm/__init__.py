"""Tests of qelm_core/lm."""
