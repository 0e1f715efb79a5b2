"""Rank optimization on the device (Hajimolahoseini et al. 2023, Algorithm 1, eqs. 5-6; joint
selection after Idelbayev & Carreira-Perpinan's runtime lookup tables).

    plan = lrdnb.optimize_ranks(model, x, plan, search=RankSearch(grid=16), timing=Timing(threads=1))

Modules, lowest first: :mod:`.config` (the two settings), :mod:`.measure` (runners, round-robin
rounds, a layer's bench), :mod:`.sweep` (a layer's curve, cached), :mod:`.select` (Algorithm 1
and joint selection, pure), :mod:`.verify` (paired re-timing of steps, layers and whole models),
:mod:`.staircase` (one signature's search), :mod:`.search` (``optimize_ranks``).
"""
from .config import PASSES, RankSearch, Timing, runs_channels_last, split_settings
from .measure import interleaved, make_runner, paired_ratios, time_callable
from .search import optimize_ranks, rounded_plan
from .select import algorithm1, curve_steps, joint_select, step_table, top_candidates
from .sweep import curve_arrays, rank_range, sweep

__all__ = ["optimize_ranks", "RankSearch", "Timing", "split_settings", "rounded_plan", "PASSES",
           "runs_channels_last", "rank_range", "sweep", "curve_arrays", "algorithm1", "curve_steps",
           "joint_select", "step_table", "top_candidates", "interleaved", "make_runner", "paired_ratios",
           "time_callable"]
