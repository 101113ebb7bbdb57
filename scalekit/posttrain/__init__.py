"""Post-training and test-time studies: GRPO against a verifier, study stages run through the sweep driver, and their
analysis (coverage laws, SFT scaling, the total-compute frontier).

Supervised fine-tuning needs nothing here: `scalekit train --config.init_from=<run> --config.data.source=task
--config.data.task=<family>` trains on prompt/answer rows with the loss on answer tokens (scalekit.data.tasks).
GRPO: `scalekit rl` (scalekit.cli.rl) or `scalekit.posttrain.rl.run_grpo(cfg, workdir)`.

Modules: grpo.py (advantages, objective, jitted sharded step), rl.py (the GRPO driver), stage.py (one study stage
as a sweep run), study.py (StudyPlan, run_stages, load_results), analysis.py, plots.py.
"""
