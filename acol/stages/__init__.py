"""The body of each pipeline stage (prepare, evaluate, metrics, report, reevaluate, score_npy) and the CLI helpers that pipelines/*.py call."""
