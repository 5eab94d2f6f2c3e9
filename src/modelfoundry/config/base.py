"""The base of every config section, and limits that several sections share."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section: unknown keys are errors, defaults are validated too.

    No .inf / .nan anywhere: no setting means infinity, and they only surface later as NaN losses or overflows.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


SEED_MAX = 2 ** 32 - 1  # numpy and scikit-learn take seeds in [0, 2**32 - 1]
