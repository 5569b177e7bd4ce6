"""A single colocated vLLM engine: the reference the cluster's outputs must equal.

Reads {"prompts": [[ids]], "sampling": {...}} on stdin; prints a JSON list of
output token-id lists as its last line. Run as a subprocess (vLLM spawns).
"""

import json
import sys


def main() -> None:
    from vllm import LLM, SamplingParams

    job = json.loads(sys.stdin.read())
    llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=2048, seed=0)
    outs = []
    for entry in job["sampling"] if isinstance(job["sampling"], list) else [job["sampling"]]:
        params = SamplingParams(**entry)
        results = llm.generate([{"prompt_token_ids": p} for p in job["prompts"]], params)
        outs.extend(list(r.outputs[0].token_ids) for r in results)
    print(json.dumps(outs))


if __name__ == "__main__":
    main()
