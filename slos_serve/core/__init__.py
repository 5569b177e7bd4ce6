"""The pure core: SLOs, stages, plans, the performance model, the planner and the engines'
execution policy. Imports neither gRPC nor vLLM nor torch, nor any other part of the project:
the coordinator, the engines' schedulers and the simulator all import it (tests/test_layers.py
holds the line)."""
