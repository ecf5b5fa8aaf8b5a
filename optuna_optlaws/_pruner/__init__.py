"""OptLawsPruner internals: the frontier and one prune check."""
