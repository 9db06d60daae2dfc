"""samplerbench harness."""
