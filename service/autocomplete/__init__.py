"""Autocomplete: typists' slots, the pure step planner, the engine that runs the steps, grounding and suggestions."""
