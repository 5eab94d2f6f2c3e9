"""Training stage: the loop, its optimizers and schedules, callbacks, and the runtime it runs on."""
