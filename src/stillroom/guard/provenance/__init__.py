"""Provenance: keyed watermarks on what the model serves, and tests that tie a text or a suspect model to a cohort's key."""
