"""Tests of qelm_core/quantum."""
