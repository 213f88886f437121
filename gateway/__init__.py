"""Community edge gateway: the core (config, canonical model, profiles, pipeline, supervisor)."""

__version__ = "0.1.0"
