"""Launchers: sbatch scripts for Slurm (`slurm.py`) and JobSet manifests for Kubernetes (`k8s.py`).

Both run `scalekit train` as one JAX process per GPU or per node; `scalekit.parallel.distributed` turns the
scheduler's environment into jax.distributed settings inside each process.
"""
