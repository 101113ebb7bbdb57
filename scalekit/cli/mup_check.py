"""`scalekit mup-check --config FILE[:PRESET] --widths 64,128,... --out DIR [--config.field=value ...]`."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from scalekit.config import ConfigError

DEFAULT_WIDTHS = "64,128,256,512,1024"

USAGE = f"""usage: scalekit mup-check --config FILE[:PRESET] --out DIR [--widths W1,W2,...] [--steps N] [--lr X]
                          [--seed S] [--seeds K] [--config.FIELD=VALUE ...]

The muP coordinate check (Yang et al. 2022, Figures 1 and 5): train the config's model at each width (d_model;
n_heads fixed, head_dim = width / n_heads; muP's base width = the smallest) for a few AdamW steps under standard
parametrization and under muP, and measure the RMS of every layer's output after each step. Under muP the sizes
stay flat in width (log-log slope ~0); under standard they grow with it. Examples:
  scalekit mup-check --config configs/train.py:tiny --out runs/coord
  scalekit mup-check --config configs/train.py:tiny --widths 64,128,256 --steps 3 --lr 3e-2 --out runs/coord \\
      --config.data.batch_size=4

Options:
  --widths   comma-separated widths, at least 2 distinct, each a multiple of 2 * model.n_heads (default
             {DEFAULT_WIDTHS})
  --steps    AdamW steps per width (default 5)
  --lr       Adam learning rate, constant, no warmup or clipping (default 1e-2)
  --seed     seed of the initialisation and of the batches (default 0)
  --seeds    initialisations to average over (default 1)
Writes DIR/coord_check.png and DIR/coord_check.json and prints the slopes per layer group at the last step.

Exit codes: 0 done; 2 bad arguments or config."""

EXIT_USAGE = 2


def _parse_widths(text: str) -> list[int]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    widths = []
    for p in parts:
        try:
            w = int(p)
        except ValueError:
            raise ConfigError(f"--widths {text!r}: {p!r} is not a positive integer; give comma-separated widths like "
                              f"{DEFAULT_WIDTHS}") from None
        if w < 1:
            raise ConfigError(f"--widths {text!r}: {w} is not a positive integer; give comma-separated widths like "
                              f"{DEFAULT_WIDTHS}")
        widths.append(w)
    if len(set(widths)) < 2:
        raise ConfigError(f"--widths {text!r}: a slope needs at least 2 distinct widths; give e.g. --widths 64,128,256")
    return widths


def _parse_positive(flag: str, text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or (kind is float and not math.isfinite(value)) or value <= 0:
        what = "a positive integer" if kind is int else "a positive finite number"
        raise ConfigError(f"{flag} {text!r}: must be {what}, e.g. {flag} {'5' if kind is int else '1e-2'}")
    return value


def _format_table(results: dict, step: int) -> str:
    """Slopes per layer group at `step`: a size and a change column per parametrization."""
    from scalekit.analysis.coord_check import GROUPS

    cols = [(name, kind) for name in results for kind in ("size", "change")]
    lines = [f"{'layer group':<15}" + "".join(f"{name if kind == 'size' else '':>10}" for name, kind in cols),
             f"{'':<15}" + "".join(f"{kind:>10}" for _, kind in cols)]
    for g in GROUPS:
        row = f"{g:<15}"
        for name, kind in cols:
            cc = results[name]
            if g not in cc.groups:
                row += f"{'-':>10}"
            else:
                row += f"{(cc.group_slopes[g][step] if kind == 'size' else cc.group_delta_slopes[g][step - 1]):>+10.2f}"
        lines.append(row)
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Run `scalekit mup-check ARGV`; return its exit code."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else EXIT_USAGE
    from scalekit.cli.configs import parse_config_args
    from scalekit.cli.train import OneLineParser, UsageError, check_workdir, fail
    from scalekit.config import validate

    prog = "scalekit mup-check"
    parser = OneLineParser(prog=prog, usage=USAGE)
    parser.add_argument("--out", required=True)
    parser.add_argument("--widths", default=DEFAULT_WIDTHS)
    parser.add_argument("--steps", default="5")
    parser.add_argument("--lr", default="1e-2")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--seeds", default="1")
    try:
        cfg, rest = parse_config_args(argv)
        args = parser.parse_args(rest)
        widths = _parse_widths(args.widths)
        steps = int(_parse_positive("--steps", args.steps, int))
        lr = float(_parse_positive("--lr", args.lr, float))
        seeds = int(_parse_positive("--seeds", args.seeds, int))
        try:
            seed = int(args.seed)
        except ValueError:
            raise ConfigError(f"--seed {args.seed!r}: must be an integer, e.g. --seed 0") from None
        if seed < 0:
            raise ConfigError(f"--seed {seed}: must be a non-negative integer, e.g. --seed 0")
        if cfg.model.parametrization != "standard" or cfg.model.base_width or cfg.model.base_head_dim:
            raise ConfigError("--config.model.parametrization/base_width/base_head_dim: mup-check runs both "
                              "parametrizations itself (base width = the smallest --widths); leave them unset")
        validate(cfg)
        from scalekit.analysis.coord_check import check_widths
        try:
            widths = check_widths(cfg.model, widths, flag=f"--widths {args.widths}")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        check_workdir(args.out, "--out")
        out = Path(args.out).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK | os.X_OK):
            raise ConfigError(f"--out {args.out}: is not writable; give a directory you can write to")
    except (ConfigError, UsageError) as e:
        return fail(prog, e)
    except OSError as e:
        return fail(prog, f"--out {args.out}: cannot create the directory ({e.strerror or e}); give a directory you "
                          "can write to")

    from scalekit.analysis.coord_check import coord_check, plot_coord_check
    from scalekit.data.errors import DataError
    results = {}
    t0 = time.perf_counter()
    try:
        for p in ("standard", "mup"):
            results[p] = coord_check(cfg, widths, parametrization=p, steps=steps, lr=lr, seeds=seeds, seed=seed)
    except (ConfigError, DataError) as e:
        return fail(prog, e)
    elapsed = time.perf_counter() - t0
    doc = {"config": cfg.to_dict(), "widths": widths, "steps": steps, "lr": lr, "seed": seed, "seeds": seeds,
           "wall_s": round(elapsed, 2), "results": {p: cc.to_dict() for p, cc in results.items()}}
    json_path, png_path = out / "coord_check.json", out / "coord_check.png"
    json_path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    plot_coord_check(results, png_path)
    print(f"coordinate check: widths {','.join(map(str, widths))}, n_heads {cfg.model.n_heads}, {steps} AdamW "
          f"step(s) at lr {lr:g}, {seeds} seed(s), {elapsed:.1f} s")
    print(f"log-log slope against width at step {steps} (size: RMS of the activation; change: RMS of its change "
          "since initialisation); muP ~0, standard > 0")
    print(_format_table(results, steps))
    print(f"wrote {png_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
