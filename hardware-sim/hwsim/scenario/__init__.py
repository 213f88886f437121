"""Scenario runner (``hwsim run --scenario FILE``) and the end-to-end demo (``hwsim demo``)."""

from hwsim.scenario.model import Scenario, ScenarioError, expand, load_scenario, parse_scenario

__all__ = ["Scenario", "ScenarioError", "expand", "load_scenario", "parse_scenario"]
