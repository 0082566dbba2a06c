"""Job files: YAML loading with line numbers, interpolation, secrets and validation."""
