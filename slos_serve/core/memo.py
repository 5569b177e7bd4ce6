"""Bounded memo tables for values kept across plans.

A table that only grows costs the planner twice: its entries are long-lived objects that every
full garbage collection walks (with ~6k cached configurations a full pass inside a plan took
~5 ms of the plan's CPU time), and a table cleared when full makes the next plan start cold.
Trimmed instead: when over its limit, its older half (insertion order) goes.
"""

from __future__ import annotations

from itertools import islice


def trim(table: dict, limit: int) -> None:
    """Drop the older half of `table` if it holds more than `limit` entries."""
    if len(table) > limit:
        for key in list(islice(table, len(table) // 2)):
            del table[key]
