"""Pure aggregation: run state, schedule, naming (no web, storage or sink imports)."""
