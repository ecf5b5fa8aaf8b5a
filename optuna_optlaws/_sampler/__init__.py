"""OptLawsSampler internals: the schedule search space, candidates and the acquisition."""
