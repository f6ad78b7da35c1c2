"""How a model is laid out over processes: expert parallelism on a (data x expert) device mesh."""
