"""SLURM launch, parallel-layout tuning and run recipes."""
