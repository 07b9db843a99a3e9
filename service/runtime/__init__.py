"""The runtime layer: owns live runs, the store and the sinks (between the API and the core)."""
