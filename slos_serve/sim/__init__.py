"""Cluster simulator and workloads.

- workloads: the paper's six scenarios, SLO tiers, Poisson/gamma/trace arrivals (shared with
  the live benchmark).
- request: a request's mutable state; core: the discrete-event cluster (workers timed by
  slos_serve.core.perf_model, KV transfer, speculative acceptance); metrics: TTFT/TPOT/
  attainment as the project defines them.
- fcfs, baselines: vllm, sarathi, distserve; slos_system: the planner (slos_serve.core.planner)
  driving the cluster; simulator: systems by name; capacity: the rate search; cli.
"""
