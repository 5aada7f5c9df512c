"""Errors shared across stages and their parts."""


class StageUnavailable(ValueError):
    """The run lacks something a stage needs (a concept bank covering the classes, a phrase bank...): the stage
    is skipped with this reason when it was picked by default, and the run fails when the user asked for it."""
