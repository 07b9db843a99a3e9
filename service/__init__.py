"""linnaeus-metrics service: exact global metrics for multi-task training."""
