"""Rerunnable measurements of iprm (see benchmarks/README.md); `common` holds what the scripts share."""
