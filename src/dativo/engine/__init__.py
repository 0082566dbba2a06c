"""The engine: job -> plan -> runtime -> batches -> writer -> commit."""
