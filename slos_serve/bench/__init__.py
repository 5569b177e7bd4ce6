"""`slos-serve bench`: the live benchmark suite (load generator, systems, capacity, plots).

Pure logic (no gRPC, no vLLM, no HTTP): `workload` (workload -> calls to send), `records`
(per-request records and their SLO verdicts), `summary` (attainment, goodput, percentiles,
the printed table), `capacity` (rate search over a probe function, the simulator's JSON
format), `plots` (matplotlib, from records alone). I/O: `loadgen` (open-loop sending, one
asyncio loop), `driver_grpc` (the SDK against a coordinator), `driver_http` (vLLM's
OpenAI-compatible /v1/completions), `systems` (starting and stopping the systems under
test), `runner` (a comparison run and a capacity run), `overhead` (load-generator check and
coordinator overhead on the SIMULATED engine), `corpus` (prompt token ids), `report` (table,
summary.json and plots from records.jsonl), `signals` (Ctrl-C / SIGTERM), `cli`.
"""
