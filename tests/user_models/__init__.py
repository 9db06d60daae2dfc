"""Test fixtures for a user's own models: tiny diffusers pipelines and factory files (used by several test files)."""
