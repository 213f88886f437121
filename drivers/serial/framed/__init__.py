"""Declarative framed protocols of simple vendor devices."""
