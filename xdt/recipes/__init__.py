"""One file per training command, each its setup and loop read top to bottom: `setup` (what every training
command does first), `teacher` (`xdt teacher train`), `cache` (`xdt teacher cache`), `distill` (`xdt distill`),
`run` (`xdt run`, the chain). The components they drive live in `xdt.distill`, `xdt.models`, `xdt.engine`.

The command line imports a recipe inside the command that runs it, so that `xdt --help`, `xdt eval` and the
`xdt slurm` commands start without torch, DeepSpeed and transformers: the only imports inside functions that
start-up time needs.
"""
