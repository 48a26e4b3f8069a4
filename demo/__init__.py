"""demo: the main job, `hv demo --out runs/demo` (`make demo`): every stage of the factory end to end on
data it makes itself. See `demo.run`."""
