"""Observability: one metrics registry the training loop writes to, with JSONL, Prometheus and TensorBoard sinks.

- metrics.py     MetricsRecorder: log_train / log_eval / observe / checkpoint_save / close
- prometheus.py  the per-process exporter and the metric catalogue (METRICS); file_sd targets for Slurm jobs
- goodput.py     Goodput: wall time split by phase (compile found from jax.monitoring), lost-to-restart seconds
- profile.py     Profiler: `profile_steps=A:B` -> a jax.profiler trace of those steps
- system.py      host and device memory, host name, local process index
- tensorboard.py a dependency-free TensorBoard scalar writer

Alert rules and the scrape config are in deploy/prometheus/, the Grafana dashboard in deploy/grafana/.
"""
