"""Launch stage: choosing the parallel layout (``longvlm tune``) and running jobs on a scheduler."""
