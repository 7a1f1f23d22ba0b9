"""One module per pipeline stage, each with one entry `run(params, paths...)` that does the stage's whole job
(its output files, its MLflow run, registration and promotion where the stage does them): synthesize, prepare,
train, extract, evaluate, metrics, report, reevaluate. `pipelines/<stage>.py` parses the command line and calls
`run`; `cli` is what those scripts share. Beside them: `evaluation` (the evaluate stage's metrics library),
`plots` and ``templates/`` (the report's figures and page), `compare` (runs side by side), `rehearse` (a
preset's real path) and `score_npy` (``python -m acol.evaluate``).
"""
