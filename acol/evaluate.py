"""``python -m acol.evaluate``: the documented name of the saved-score-map scorer, `acol.stages.score_npy`."""

from acol.stages.score_npy import main

if __name__ == "__main__":
    main()
