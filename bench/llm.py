"""How fast do language models generate, serve and train in foundry, against plain Hugging Face?

Parts (each a function returning key -> value; the last line printed is all of them, machine-readable):

* **generation** (``bench_generation``, here): SmolLM2-135M (``load_base_language_model("smollm2-135m")``,
  float32), batch 1, greedy, 128 new tokens from a chat prompt. **ours** is ``models.generation.generate`` as
  `foundry generate` runs it (KV cache, logits of the last position only, incremental detokenization and stop
  handling of every token) with the stop ids ignored, so that every run makes exactly 128 tokens; **hf** is
  ``model.generate(do_sample=False, max_new_tokens=128, min_new_tokens=128)`` on the same model and prompt
  (min_new_tokens keeps it from stopping early). After one untimed warm-up of each they run interleaved,
  alternating which goes first. tokens/s = 128 / wall seconds of the whole call (prefill included), median
  over the repetitions; ``gen_vs_hf`` is the median of the per-repetition ratios ours / hf (target >= 1.0),
  ``gen_vs_hf_cpu`` the same by CPU time of this process (steadier on a shared machine: time spent waiting
  for a core does not count). A step of SmolLM2 on a CPU is ~99% matrix products that both sides share, so
  these ratios sit near 1.0; ``gen_loop_vs_hf_tiny`` is the CPU-time ratio on a tiny random Llama (2 layers,
  width 32), where the loop's own per-token work is most of a step (what matters on a GPU).
  ``gen_bandwidth_fraction`` = ours tokens/s / (copy bandwidth / weight bytes), where the copy bandwidth is
  bytes read + bytes written per second of ``dst.copy_(src)`` on a 512 MiB float32 tensor (median of 5, in
  this run) and the weight bytes are every parameter once (a decoding step reads all the weights; the tied
  embedding matrix once, as the output layer): 1.0 would be a decoder bound only by memory bandwidth.
  ``gen_bf16_tok_s`` is ours with bfloat16 weights (CPUs without native bfloat16 may well be slower).
* **server** (``bench_server`` in bench/llm_server.py) and **training** (``bench_training`` in
  bench/llm_training.py), when those modules exist.

Run from the repository root::

    python bench/llm.py                   # every part (generation: about 3 minutes on a quiet 2-core machine)
    python bench/llm.py --quick           # a fast smoke run (32 tokens, 2 repetitions)
    python bench/llm.py --parts generation --threads 1   # a busy machine: one thread per process
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import statistics
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
PROMPT = "Write a long story about a lighthouse keeper who finds a map in a bottle."
PARTS = {"generation": ("llm", "bench_generation"), "server": ("llm_server", "bench_server"),
         "training": ("llm_training", "bench_training")}


def copy_bandwidth_gb_s(mib: int = 512, repeats: int = 5) -> float:
    """GB/s of bytes read + bytes written by `dst.copy_(src)` on a `mib` MiB float32 tensor (median)."""
    import torch

    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch the pages first
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * 4 / statistics.median(times) / 1e9


def _ours(lm: Any, prompt_ids: list[int], tokens: int) -> tuple[float, float]:
    """(wall, CPU) seconds of `generate` making `tokens` tokens."""
    from modelfoundry.models.generation import SamplingParams, generate

    wall, cpu = time.perf_counter(), time.process_time()
    made = sum(1 for _ in generate(lm, prompt_ids, SamplingParams(max_new_tokens=tokens)))
    assert made > 0
    return time.perf_counter() - wall, time.process_time() - cpu


def _hf(lm: Any, prompt_ids: list[int], tokens: int) -> tuple[float, float]:
    """(wall, CPU) seconds of Hugging Face `generate` making exactly `tokens` tokens, greedy."""
    import torch

    ids = torch.tensor([prompt_ids])
    wall, cpu = time.perf_counter(), time.process_time()
    out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=tokens,
                            min_new_tokens=tokens, pad_token_id=lm.tokenizer.pad_token_id)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert out.shape[1] - ids.shape[1] == tokens, out.shape
    return wall, cpu


def _without_stop_ids(lm: Any) -> Any:
    """`lm` whose answers end only at the token limit (its stop ids ignored)."""
    import copy

    free = copy.copy(lm)
    free.stop_ids = list  # the instance attribute shadows the method: no stop ids
    return free


def compare(lm: Any, prompt_ids: list[int], tokens: int, repeats: int) -> dict[str, float]:
    """Ours vs Hugging Face, interleaved (the order alternates), after one warm-up of each: median tokens/s
    of each (wall time) and the medians of the per-repetition ratios, by wall and by CPU time."""
    _ours(lm, prompt_ids, tokens), _hf(lm, prompt_ids, tokens)  # warm-up
    sides: dict[str, list[tuple[float, float]]] = {"ours": [], "hf": []}
    for rep in range(repeats):
        for side in (("ours", "hf") if rep % 2 == 0 else ("hf", "ours")):
            sides[side].append((_ours if side == "ours" else _hf)(lm, prompt_ids, tokens))
    ours, hf = sides["ours"], sides["hf"]
    return {"ours": tokens / statistics.median(w for w, _ in ours),
            "hf": tokens / statistics.median(w for w, _ in hf),
            "ratio": statistics.median(h[0] / o[0] for o, h in zip(ours, hf)),
            "ratio_cpu": statistics.median(h[1] / o[1] for o, h in zip(ours, hf))}


def loop_overhead_ratio(tokens: int = 128, repeats: int = 5) -> float:
    """Ours vs Hugging Face by CPU time on a tiny random Llama (2 layers, width 32; tests/llm_tiny.py), where
    the decoding loop's own work, not the model, is most of a step."""
    import tempfile

    sys.path.insert(0, str(BENCH.parent))
    from modelfoundry.models.llm import load_base_language_model
    from tests.llm_tiny import make_tiny_llm

    with tempfile.TemporaryDirectory() as tmp:
        tiny = _without_stop_ids(load_base_language_model(str(make_tiny_llm(Path(tmp)))))
        prompt_ids = tiny.prompt_ids([{"role": "user", "content": "hello"}])
        return compare(tiny, prompt_ids, tokens, repeats)["ratio_cpu"]


def bench_generation(quick: bool = False, tokens: int = 128, repeats: int = 6) -> dict[str, Any]:
    """Ours vs Hugging Face generate on SmolLM2-135M, batch 1, greedy; see the module docstring."""
    import torch

    from modelfoundry.models.llm import load_base_language_model

    tokens, repeats = (32, 2) if quick else (tokens, repeats)
    lm = _without_stop_ids(load_base_language_model("smollm2-135m"))
    prompt_ids = lm.prompt_ids([{"role": "user", "content": PROMPT}])
    result = compare(lm, prompt_ids, tokens, repeats)
    bandwidth, weight_bytes = copy_bandwidth_gb_s(), lm.weight_bytes()
    del lm
    bf16 = _without_stop_ids(load_base_language_model("smollm2-135m", dtype="bfloat16"))
    _ours(bf16, prompt_ids, 8)
    bf16_tok_s = tokens / statistics.median(_ours(bf16, prompt_ids, tokens)[0] for _ in range(max(2, repeats // 2)))
    return {"gen_tokens": tokens, "gen_prompt_tokens": len(prompt_ids), "gen_tok_s": round(result["ours"], 2),
            "hf_gen_tok_s": round(result["hf"], 2), "gen_vs_hf": round(result["ratio"], 3),
            "gen_vs_hf_cpu": round(result["ratio_cpu"], 3),
            "gen_loop_vs_hf_tiny": round(loop_overhead_ratio(tokens, repeats), 3),
            "copy_gb_s": round(bandwidth, 2), "weight_mb": round(weight_bytes / 1e6, 1),
            "gen_bandwidth_fraction": round(result["ours"] / (bandwidth * 1e9 / weight_bytes), 3),
            "gen_bf16_tok_s": round(bf16_tok_s, 2), "threads": torch.get_num_threads()}


def run_part(name: str, quick: bool, threads: int | None) -> dict[str, Any] | None:
    """The keys of one part, or None when its module is not there. `quick` and `threads` go to the parts
    whose function takes them."""
    module_name, function_name = PARTS[name]
    if module_name == "llm":
        function = bench_generation
    else:
        if str(BENCH) not in sys.path:
            sys.path.insert(0, str(BENCH))
        if importlib.util.find_spec(module_name) is None:
            return None
        function = getattr(importlib.import_module(module_name), function_name)
    accepted = inspect.signature(function).parameters
    options = {"quick": quick, "threads": threads}
    return function(**{k: v for k, v in options.items() if k in accepted})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's; on a busy machine 1 avoids "
                        "threads spinning while they wait for a core)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {}
    for name in args.parts.split(","):
        if name not in PARTS:
            parser.error(f"unknown part {name!r}; parts are {', '.join(PARTS)}")
        keys = run_part(name, args.quick, args.threads)
        if keys is None:
            print(f"{name}: skipped (bench/{PARTS[name][0]}.py is not there)")
            continue
        for key, value in keys.items():
            print(f"{name}: {key} = {value}")
        results.update(keys)
    print(" ".join(f"{key}={value}" for key, value in results.items()))


if __name__ == "__main__":
    main()
