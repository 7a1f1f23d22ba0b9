"""The single-process training engine (optimizer, schedule, seeds, one epoch); acol.distributed.train runs it under Ray Train."""
