"""``longvlm slurm``: training and the sharded preprocessing stages on a SLURM cluster (sbatch scripts,
job arrays with their merge, status of a run's jobs), and the same training job on one machine
without SLURM (``local``). Guide: docs/slurm.md."""
