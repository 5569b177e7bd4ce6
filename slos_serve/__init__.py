"""slos-serve: disaggregated prefill/decode LLM serving with a multi-SLO planner."""

__version__ = "0.1.0"
