"""Many seeds of one run as one group: ``cifarctl train MODEL --seeds N`` (``train_group``, ``resume_group``).

Seed ``S`` of a group is exactly the single run ``--seed S`` (the same config but its seed, in its own
ordinary run folder ``GROUP/seed-S``), so a group's seeds can be compared with single runs and resumed
like them. With a time budget every seed gets the same budget, counting the start-up the first seed
paid, so a group's seeds compare with single commands; a family's choice is made once, for every seed.

- ``plan``: what ``--seeds``, ``--jobs``, ``--target`` ask, checked before anything runs
- ``seed``: one seed, trained or resumed alone, and its result as its checkpoint records it
- ``jobs``: ``--jobs J``, seeds in J processes on one machine
- ``group``: the group's life (start, seeds here, in jobs or on torchrun ranks, resume, summary.json)

The record on disk is ``cifarctl.run.group``; the statistics ``cifarctl.stats``.
"""

from cifarctl.groups.group import GroupResult, resume_group, train_group
from cifarctl.groups.plan import DEFAULT_JOBS, check_group_flags, check_jobs, parse_seeds, plan_group
from cifarctl.groups.seed import GroupHooks, SeedResult

__all__ = ["DEFAULT_JOBS", "GroupHooks", "GroupResult", "SeedResult", "check_group_flags", "check_jobs",
           "parse_seeds", "plan_group", "resume_group", "train_group"]
