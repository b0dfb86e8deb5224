"""Post-hoc analysis over finished runs and sweeps, each module a `python -m iprm.analysis.<name>` command:
`claims` (paired differences with bootstrap intervals, `interval`), `compare`, `worlds` (over-worlds
tables), `figures`, `frontier` (accuracy against FLOPs), `tune` (lr and epochs chosen on dev),
`overoptimisation` (why best-of-N falls with N; remedies chosen on dev), `as_policy` (the trained policy
as a generator)."""
