"""Where a study's work runs, beyond this machine.

`slurm`: a list of work items as one Slurm job array through submitit (submit, watch, cancel,
report). Local execution (in-process, a pool of worker processes) belongs to the study engine;
a launcher only moves the same per-item function to other machines and reports what became of
each item.
"""
