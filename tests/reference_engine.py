"""A single colocated vLLM engine: the reference the cluster's outputs must equal.

Reads {"prompts": [[ids]], "sampling": [{...}, ...], "engine": {...}} on stdin ("engine",
optional: further `LLM` keywords, e.g. a small chunked-prefill budget); writes a JSON list
of output token-id lists (for each sampling, for each prompt) to the file named by
argv[2]. Run as a subprocess (vLLM spawns processes and logs to stdout).
"""

import json
import sys


def main() -> None:
    from vllm import LLM, SamplingParams

    job = json.loads(sys.stdin.read())
    llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=2048, seed=0,
              **job.get("engine", {}))
    outs = []
    for entry in job["sampling"]:
        params = SamplingParams(**entry)
        results = llm.generate([{"prompt_token_ids": p} for p in job["prompts"]], params)
        outs.extend(list(r.outputs[0].token_ids) for r in results)
    with open(sys.argv[2], "w") as f:
        json.dump(outs, f)


if __name__ == "__main__":
    main()
