"""Inference: KV-cache decoding (jitted, batched, sharded), sampling, pass@k / majority vote / best-of-n, and
inference FLOPs in training units.

    from scalekit.infer.evaluate import load_model, evaluate
    cfg, model_def, decoder, params = load_model("runs/sft")          # a finished run directory
    evaluate(decoder, params, tasks.test_problems("sort", 3, 128), n=64, temperature=1.0)

Modules: decode.py (Decoder, generate with/without a cache), sampling.py (SamplingConfig, temperature/top-k/top-p),
metrics.py (pass@k, coverage curves, majority vote, best-of-n), accounting.py (generation FLOPs),
evaluate.py (sample and verify task problems).
"""
