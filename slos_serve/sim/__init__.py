"""Cluster simulator and workloads.

- workloads: the paper's six scenarios, SLO tiers, Poisson/gamma/trace arrivals (shared with
  the live benchmark).
- request: a request's mutable state; core: the discrete-event cluster (workers timed by
  slos_serve.core.perf_model, KV transfer, speculative acceptance); metrics: TTFT/TPOT/
  attainment as the project defines them.
- fcfs, vllm_v0, baselines: vllm, vllm-spec (fixed-length speculation), vllm-v0 (the
  scheduler before V1), sarathi, distserve; slos_system: the planner (slos_serve.core.planner)
  driving the cluster; simulator: systems by name; capacity: the rate search;
  capacity_report: capacity over seeds, best baseline, tables and JSON; traces: synthetic
  Azure-format traces with bursts (shipped ones in data/); cli.
"""
